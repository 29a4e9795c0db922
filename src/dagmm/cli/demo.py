"""``dagmm demo``: train OutlierAEGMM on synthetic data and print its quality."""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from ..detectors.aegmm import OutlierAEGMM
from ..synthetic import make_outlier_data

__all__ = ["THRESHOLD_PERC", "run_demo"]

#: Percentile of the (all normal) training energies used as threshold: about 0.1% false alarms.
THRESHOLD_PERC = 99.9


def run_demo(n_samples: int = 20000, epochs: Optional[int] = None, seed: int = 0, verbose: bool = True) -> dict:
    """Fit ``OutlierAEGMM()`` with its defaults on the raw inliers of a random half, score the other half.

    The columns are put in different units first (scaled from 0.01 to 1000
    and shifted): the detector standardises them itself.  ``epochs=None``
    uses the automatic schedule.  The training rows are all normal, so the
    threshold is a false-alarm rate, not the outlier rate: the 99.9th
    percentile of their energies (:data:`THRESHOLD_PERC`) flags about 1 normal
    row in 1,000.  (The 95th would flag 5% of the normal rows, as many as there
    are outliers, and halve the precision.)
    """
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    X, y = make_outlier_data(n_samples=n_samples, n_features=20, n_clusters=1, latent_dim=2, seed=seed)
    rng = np.random.default_rng(seed)
    train = rng.random(len(X)) < 0.5
    X_train = X[train & (y == 0)]
    X_test, y_test = X[~train], y[~train]
    units = np.logspace(-2, 3, X.shape[1], dtype=np.float32)  # raw columns in mixed units
    X_train, X_test = X_train * units + 7.0, X_test * units + 7.0

    start = time.perf_counter()
    od = OutlierAEGMM(data_type="tabular")
    od.fit(X_train, epochs=epochs, verbose=verbose, seed=seed)
    od.infer_threshold(X_train, threshold_perc=THRESHOLD_PERC)
    preds = od.predict(X_test)
    seconds = time.perf_counter() - start
    flagged = preds["data"]["is_outlier"]
    p, r, f1, _ = precision_recall_fscore_support(y_test, flagged, average="binary", zero_division=0)
    auroc = roc_auc_score(y_test, preds["data"]["instance_score"])
    false_alarms = float(flagged[y_test == 0].mean())
    result = {"precision": p, "recall": r, "f1": f1, "auroc": auroc, "seconds": seconds,
              "n_train": len(X_train), "n_test": len(X_test), "false_alarm_rate": false_alarms}
    print(f"OutlierAEGMM on synthetic data: trained on {len(X_train)} normal rows, "
          f"tested on {len(X_test)} rows ({int(y_test.sum())} outliers), {seconds:.1f} s")
    print(f"threshold: the {THRESHOLD_PERC}th percentile of the training energies (all normal rows), so about "
          f"1 normal row in 1,000 is flagged; here {100 * false_alarms:.2f}% of the normal test rows")
    print(f"precision {p:.3f}  recall {r:.3f}  F1 {f1:.3f}  AUROC {auroc:.3f}")
    return result
