"""Screen which code the scoring mixture of ``OutlierAEGMM()`` models, now that the score has the residual's
likelihood (development aid, issue 19).

The default code is ``[latent, log mse, cosine]``; the score adds the residual's full-covariance Gaussian NLL,
so the log-MSE feature counts the reconstruction error a second time.  Trains the default ``OutlierAEGMM()``
once per (table, seed) under the protocol of ``benchmarks/adbench.py`` and scores the test rows with a
BIC-chosen mixture (the default candidates) of these parts of the code, each plus the same residual term:

- ``default``: the detector's score (``[latent, log mse, cosine]``);
- ``lat+cos``: ``[latent, cosine]``;  ``lat``: the latent code alone.

    OMP_NUM_THREADS=1 nice python benchmarks/aegmm_code_screen.py --suite both --seeds 0,1,2 --jsonl J
    python benchmarks/aegmm_code_screen.py --report --jsonl J
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
    from dagmm.models.gmm import cholesky_with_jitter, precision_cholesky, sample_energy
    from dagmm.models.mixture import select_mixture

    t0 = time.perf_counter()
    od = dagmm.OutlierAEGMM().fit(X_tr, verbose=False, seed=seed)
    fit_s = time.perf_counter() - t0
    cfg = od.auto_config_
    default = od.score(X_tr), od.score(X_te)
    od.aegmm.eval()
    with torch.inference_mode():
        z = [od.aegmm(torch.from_numpy(od._checked(X)))[1].double() for X in (X_tr, X_te)]  # (N, D)
    energy = [sample_energy(c, od.phi_, od.mu_, od.prec_chol_).numpy() for c in z]
    residual = [s - e for s, e in zip(default, energy)]  # the residual term alone
    d = z[0].shape[1]
    scores = {"default": default}
    ks = {}
    for name, cols in (("lat+cos", [*range(d - 2), d - 1]), ("lat", list(range(d - 2)))):
        params, info = select_mixture(z[0][:, cols], cfg["mixture_components"], reg=cfg["em_reg"], seed=seed)
        chol, _ = cholesky_with_jitter(params.cov.double(), od.cov_eps)
        prec = precision_cholesky(chol)
        scores[name] = tuple(sample_energy(c[:, cols], params.phi, params.mu, prec).numpy() + r
                             for c, r in zip(z, residual))
        ks[f"k_{name}"] = info["n_components"]
    return {"fit_s": fit_s, **ks, "auroc": {k: ab.metrics(y_te, v[1])[0] for k, v in scores.items()}}


if __name__ == "__main__":
    aes.screen_row = screen_row
    aes.main()
