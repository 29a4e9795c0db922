"""Screen other scores of one trained ``OutlierAEGMM()`` per table (development aid, issue 19).

Trains the default ``OutlierAEGMM()`` once per (table, seed) under the protocol of ``benchmarks/adbench.py``
and scores the test rows several ways, paired (the same net, only the score differs):

- ``default``: the energy alone (BIC-chosen mixture of the code and the reconstruction features), the
  detector's score until 2026-12-04 (``error_scale_`` is set to None for it);
- ``msn``: ``OutlierAE()``'s score on this net's reconstruction: each feature's squared error over its
  mean on the training rows (floored at 0.01 of their mean), averaged over features;
- ``default+msn``: the sum of the two, each in units of its training rows' mean and standard deviation;
- ``codegmm`` / ``codegmm+msn``: a BIC-chosen mixture of the network's code alone (scikit-learn), and
  that energy plus ``msn`` as above;
- ``default+nll`` / ``codegmm+nll``: the energy plus the residual's Gaussian negative log-likelihood with
  each feature's training mean squared error as its variance (``0.5 * F * msn``), both in nats
  (``default+nll`` is the detector's score since 2026-12-04);
- ``default+maha-nll``: the energy plus half the squared Mahalanobis distance of the signed residual under
  its Ledoit-Wolf training covariance (the full-covariance Gaussian NLL, in nats);
- ``joint``: a BIC-chosen mixture of the code and ``log msn`` (the error in the units ``OutlierAE()``
  scores, in place of the relative Euclidean distance and cosine).

    OMP_NUM_THREADS=1 nice python benchmarks/aegmm_score_screen.py --suite both --seeds 0,1,2 --jsonl J
    python benchmarks/aegmm_score_screen.py --report --jsonl J
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ab = _load("adbench")
aes = _load("ae_score_screen")


def screen_row(X_tr: np.ndarray, X_te: np.ndarray, y_te: np.ndarray, seed: int) -> dict:
    import dagmm

    t0 = time.perf_counter()
    od = dagmm.OutlierAEGMM().fit(X_tr, verbose=False, seed=seed)
    fit_s = time.perf_counter() - t0
    od.error_scale_ = None  # the energy alone; the residual term is added below
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {"default": (od.score(X_tr), od.score(X_te))}

    def z_units(X: np.ndarray) -> np.ndarray:
        return ((X - od.scaler_mean_) / od.scaler_scale_ if od.scaler_mean_ is not None else X).astype(np.float32)

    od.aegmm.eval()
    with torch.inference_mode():
        out = [od.aegmm.encode(torch.from_numpy(z_units(X))) for X in (X_tr, X_te)]
    sq = [(torch.from_numpy(z_units(X)) - r).square().double().numpy() for X, (r, _) in zip((X_tr, X_te), out)]
    m = sq[0].mean(0)  # (F,) training mean squared error per feature
    scale = np.maximum(m, max(0.01 * m.mean(), 1e-12))
    msn = [(s / scale).mean(1) for s in sq]
    scores["msn"] = msn[0], msn[1]
    n_lat = od.aegmm.encoder(torch.from_numpy(z_units(X_tr[:1]))).shape[1]
    code = [z[:, :n_lat].double().numpy() for _, z in out]
    scores["codegmm"] = aes.gmm_energy(*code, seed)
    for name in ("default", "codegmm"):
        tr, te = scores[name]
        scores[f"{name}+msn"] = (aes.unit(tr, tr) + aes.unit(msn[0], msn[0]),
                                 aes.unit(tr, te) + aes.unit(msn[0], msn[1]))
        # a likelihood: the energy (nats) plus the Gaussian negative log-likelihood of the residual with each
        # feature's training mean squared error as its variance, 0.5 * sum_f r_f^2 / s_f = 0.5 * F * msn
        f = sq[0].shape[1]
        scores[f"{name}+nll"] = tr + 0.5 * f * msn[0], te + 0.5 * f * msn[1]
    # the residual's full-covariance Gaussian NLL instead (Ledoit-Wolf on the training residuals), in nats
    res = [(torch.from_numpy(z_units(X)) - r).double().numpy() for X, (r, _) in zip((X_tr, X_te), out)]
    m_tr, m_te = aes.mahalanobis(*res)
    scores["default+maha-nll"] = scores["default"][0] + 0.5 * m_tr, scores["default"][1] + 0.5 * m_te
    scores["joint"] = aes.gmm_energy(*[np.c_[c, np.log(np.maximum(s, 1e-12))] for c, s in zip(code, msn)], seed)
    return {"fit_s": fit_s, "auroc": {k: ab.metrics(y_te, v[1])[0] for k, v in scores.items()}}


if __name__ == "__main__":
    aes.screen_row = screen_row  # the same driver and report, this detector's scores
    aes.main()
