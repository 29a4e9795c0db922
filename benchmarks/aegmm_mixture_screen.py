"""Screen larger scoring mixtures and a full-covariance residual term for ``OutlierAEGMM()`` (issue 19).

Trains the default ``OutlierAEGMM()`` once per (table, seed) under the protocol of ``benchmarks/adbench.py``
and scores the test rows several ways, paired (the same trained net, only the scoring model differs):

- ``default``: the detector's score (BIC mixture among 1-16 components + the diagonal residual NLL);
- ``maha``: the same mixture's energy + half the squared Mahalanobis distance of the signed residual under
  its Ledoit-Wolf training covariance (the full-covariance Gaussian NLL, nats);
- ``k64`` / ``k64+maha``: the mixture chosen by BIC among 1-64 components (at least 20 rows each), with the
  diagonal or the full-covariance residual term;
- ``k64r50``: as ``k64`` with at least 50 rows per component.

The number of components each mixture chose is stored as ``k_default`` / ``k64`` / ``k64r50``.

    OMP_NUM_THREADS=1 nice python benchmarks/aegmm_mixture_screen.py --suite both --seeds 0,1,2 --jsonl J
    python benchmarks/aegmm_mixture_screen.py --report --jsonl J
"""

from __future__ import annotations

import importlib.util
import os
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


def member_scores(X_tr: np.ndarray, X_te: np.ndarray, seed: int) -> tuple[dict, dict]:
    """Scores ``name -> (train, test)`` of one default fit under each scoring, and the chosen components."""
    import dagmm
    from dagmm.models.mixture import select_mixture

    od = dagmm.OutlierAEGMM().fit(X_tr, verbose=False, seed=seed)
    cfg = od.auto_config_
    scores = {"default": (od.score(X_tr), od.score(X_te))}
    ks = {"k_default": cfg["mixture_fit"]["n_components"]}

    def z_units(X: np.ndarray) -> np.ndarray:
        return ((X - od.scaler_mean_) / od.scaler_scale_ if od.scaler_mean_ is not None else X).astype(np.float32)

    Z_tr = z_units(X_tr)
    od.aegmm.eval()
    with torch.inference_mode():  # (N, F) signed residuals in z-units, and the training codes (N, D)
        res = [(Z - od.aegmm.encode(torch.from_numpy(Z))[0].numpy()).astype(np.float64) for Z in (Z_tr, z_units(X_te))]
        z = torch.cat([od.aegmm(torch.from_numpy(Z_tr[i:i + 8192]))[1].double() for i in range(0, len(Z_tr), 8192)])
    m_tr, m_te = aes.mahalanobis(*res)
    od.error_scale_ = None
    e_def = od.score(X_tr), od.score(X_te)
    scores["maha"] = e_def[0] + 0.5 * m_tr, e_def[1] + 0.5 * m_te
    nll = [e - d for e, d in zip(scores["default"], e_def)]  # the diagonal residual term alone
    for name, cands, rpc in (("k64", (1, 2, 4, 8, 16, 32, 64), 20), ("k64r50", (1, 2, 4, 8, 16, 32, 64), 50),
                             ("k128", (1, 2, 4, 8, 16, 32, 64, 128), 20)):
        params, info = select_mixture(z, cands, rows_per_component=rpc, reg=cfg["em_reg"], seed=seed)
        od.set_mixture(params)
        ks[name] = info["n_components"]
        e = od.score(X_tr), od.score(X_te)
        if name != "k128":
            scores[name] = e[0] + nll[0], e[1] + nll[1]
        scores[f"{name}+maha"] = e[0] + 0.5 * m_tr, e[1] + 0.5 * m_te
    return scores, ks


def screen_row(X_tr: np.ndarray, X_te: np.ndarray, y_te: np.ndarray, seed: int) -> dict:
    t0 = time.perf_counter()
    members = []
    for m in range(MEMBERS):  # member m trains with seed + 1000 m; member 0 is adbench.py's run
        members.append(member_scores(X_tr, X_te, seed + 1000 * m))
    fit_s = (time.perf_counter() - t0) / MEMBERS
    scores = dict(members[0][0])
    for n in range(2, MEMBERS + 1):
        for name in ("default", "k64+maha"):  # the mean energy of n fits (nats, the same units)
            scores[f"ens{n}-{name}"] = tuple(np.mean([mem[0][name][i] for mem in members[:n]], 0) for i in (0, 1))
    return {"fit_s": fit_s, **members[0][1], "auroc": {k: ab.metrics(y_te, v[1])[0] for k, v in scores.items()}}


MEMBERS = int(os.environ.get("SCREEN_MEMBERS", "3"))


if __name__ == "__main__":
    aes.screen_row = screen_row
    aes.main()
