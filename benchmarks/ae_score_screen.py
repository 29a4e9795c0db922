"""Screen other instance scores of one trained ``OutlierAE()`` per table (development aid, issue 19).

Trains the default ``OutlierAE()`` once per (table, seed) under the protocol of ``benchmarks/adbench.py``
and scores the test rows several ways, paired (the same net, only the score differs):

- ``default``: the detector's instance score (mean of the error-scaled squared errors);
- ``top50`` / ``top25``: the mean of the largest 50 % / 25 % of those feature scores (``outlier_perc``);
- ``maha``: the squared Mahalanobis distance of the signed residual ``x - recon`` (z-score units) under the
  training residuals' covariance, Ledoit-Wolf shrunk (the residuals of correlated columns move together);
- ``lat``: the squared Mahalanobis distance of the code (Ledoit-Wolf), for reference;
- ``gmmlat``: the code's negative log-density under a mixture, components chosen by BIC (scikit-learn);
- ``default+lat`` / ``maha+lat`` / ``...+gmmlat``: the sum of two scores, each in units of its training
  rows' mean and standard deviation;
- ``gmmlat+nll`` / ``gmmlat+maha-nll``: ``gmmlat`` plus the residual's Gaussian negative log-likelihood
  in nats, diagonal with each feature's training mean squared error as its variance, or ``0.5 * maha``;
- ``joint``: a DAGMM-like energy, one BIC-chosen mixture of the code and the log of the default score.

    OMP_NUM_THREADS=1 nice python benchmarks/ae_score_screen.py --suite both --seeds 0,1,2 --jsonl J
    python benchmarks/ae_score_screen.py --report --jsonl J
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("_adbench", ROOT / "benchmarks" / "adbench.py")
ab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ab)


def mahalanobis(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared Mahalanobis distances of both sets under a Ledoit-Wolf fit on ``train`` (float64)."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(train.astype(np.float64))
    return lw.mahalanobis(train.astype(np.float64)), lw.mahalanobis(test.astype(np.float64))


def gmm_energy(train: np.ndarray, test: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Negative log-density of both sets under a full-covariance mixture of the standardised ``train``,
    components chosen by BIC among 1, 2, 4, 8, 16 (at least 20 rows each) on at most 4,096 rows."""
    from sklearn.mixture import GaussianMixture

    mean, std = train.mean(0), np.maximum(train.std(0), 1e-12)
    tr, te = (train - mean) / std, (test - mean) / std
    sel = tr[np.random.default_rng(seed).permutation(len(tr))[:4096]]
    ks = [k for k in (1, 2, 4, 8, 16) if k == 1 or len(tr) >= 20 * k]
    fits = {k: GaussianMixture(k, reg_covar=1e-6, random_state=seed).fit(sel) for k in ks}
    best = min(ks, key=lambda k: fits[k].bic(sel))
    gm = GaussianMixture(best, reg_covar=1e-6, random_state=seed).fit(tr)
    return -gm.score_samples(tr), -gm.score_samples(te)


def unit(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """``test`` in units of ``train``'s mean and standard deviation."""
    return (test - train.mean()) / max(float(train.std()), 1e-12)


def screen_row(X_tr: np.ndarray, X_te: np.ndarray, y_te: np.ndarray, seed: int) -> dict:
    import dagmm

    t0 = time.perf_counter()
    od = dagmm.OutlierAE().fit(X_tr, verbose=False, seed=seed)
    fit_s = time.perf_counter() - t0
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    f_tr, i_tr = od.score(X_tr)
    f_te, i_te = od.score(X_te)
    scores["default"] = i_tr, i_te
    for perc in (50, 25):
        scores[f"top{perc}"] = od.score(X_tr, outlier_perc=perc)[1], od.score(X_te, outlier_perc=perc)[1]

    def z_units(X: np.ndarray) -> np.ndarray:
        return (X - od.scaler_mean_) / od.scaler_scale_ if od.scaler_mean_ is not None else X

    r_tr = z_units(X_tr) - z_units(od.reconstruct(X_tr))  # (N, F) signed residuals
    r_te = z_units(X_te) - z_units(od.reconstruct(X_te))
    scores["maha"] = mahalanobis(r_tr, r_te)
    with torch.inference_mode():
        od.ae.eval()
        code = [od.ae.encoder(torch.from_numpy(z_units(X).astype(np.float32))).double().numpy() for X in (X_tr, X_te)]
    scores["lat"] = mahalanobis(*code)
    scores["gmmlat"] = gmm_energy(*code, seed)
    for name in ("default", "maha"):
        tr, te = scores[name]
        for lat in ("lat", "gmmlat"):
            lt_tr, lt_te = scores[lat]
            scores[f"{name}+{lat}"] = unit(tr, tr) + unit(lt_tr, lt_tr), unit(tr, te) + unit(lt_tr, lt_te)
    # likelihoods in nats: the code's mixture energy plus the residual's Gaussian negative log-likelihood,
    # diagonal (each feature's training mean squared error as its variance: 0.5 * F * default) or full (0.5 * maha)
    f = int(np.prod(X_tr.shape[1:]))
    g_tr, g_te = scores["gmmlat"]
    scores["gmmlat+nll"] = g_tr + 0.5 * f * i_tr, g_te + 0.5 * f * i_te
    scores["gmmlat+maha-nll"] = g_tr + 0.5 * scores["maha"][0], g_te + 0.5 * scores["maha"][1]
    # a DAGMM-like energy: one mixture of the code and the log of the default score
    scores["joint"] = gmm_energy(*[np.c_[c, np.log(np.maximum(s, 1e-12))] for c, s in zip(code, scores["default"])],
                                 seed)
    return {"fit_s": fit_s, "auroc": {k: ab.metrics(y_te, v[1])[0] for k, v in scores.items()}}


def conditional_row(X_tr: np.ndarray, X_te: np.ndarray, y_te: np.ndarray, seed: int) -> dict:
    """``--screen conditional``: per-feature scores from the residuals' joint Gaussian, instance score their mean.

    - ``default``: the detector's instance score (mean of ``r_j^2 / s_j``);
    - ``cond``: the mean over features of ``(r_j - E[r_j | r_-j])^2 / Var(r_j | r_-j)`` under the Ledoit-Wolf
      Gaussian of the training residuals (``(Lambda (r - m))_j^2 / Lambda_jj``, ``Lambda`` its precision): how
      unexpected feature j's error is given the other features' errors, still one score per feature;
    - ``maha``: the squared Mahalanobis distance of the residual (``--screen score``'s, for reference);
    - ``cond-floor``: as ``cond`` with the covariance's variances floored at 0.01 of their mean (as the
      detector's error scales).
    """
    import dagmm
    from scipy.linalg import cho_factor, cho_solve
    from sklearn.covariance import LedoitWolf

    t0 = time.perf_counter()
    od = dagmm.OutlierAE().fit(X_tr, verbose=False, seed=seed)
    fit_s = time.perf_counter() - t0
    scores = {"default": (od.score(X_tr)[1], od.score(X_te)[1])}

    def z_units(X: np.ndarray) -> np.ndarray:
        return (X - od.scaler_mean_) / od.scaler_scale_ if od.scaler_mean_ is not None else X

    res = [(z_units(X) - z_units(od.reconstruct(X))).reshape(len(X), -1).astype(np.float64) for X in (X_tr, X_te)]
    lw = LedoitWolf().fit(res[0])
    scores["maha"] = lw.mahalanobis(res[0]), lw.mahalanobis(res[1])
    for name, floor in (("cond", 0.0), ("cond-floor", 0.01)):
        cov = lw.covariance_.copy()
        d = np.diag(cov)
        np.fill_diagonal(cov, np.maximum(d, floor * d.mean()))
        prec = cho_solve(cho_factor(cov), np.eye(len(cov)))  # the precision Lambda, float64 (its diagonal is used)
        scores[name] = tuple((((r - lw.location_) @ prec) ** 2 / np.diag(prec)).mean(1) for r in res)
    return {"fit_s": fit_s, "auroc": {k: ab.metrics(y_te, v[1])[0] for k, v in scores.items()}}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--screen", default="score", choices=("score", "conditional"),
                   help="score: the instance scores of the module docstring; conditional: conditional_row's")
    p.add_argument("--suite", default="both")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--jsonl", default="/tmp/ae_score_screen.jsonl")
    p.add_argument("--report", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    path = Path(a.jsonl.split(",")[0])
    tables = ab.suite_tables(a.suite)
    if not a.report:
        done = {(r["table"], r["seed"]) for r in map(json.loads, path.read_text().splitlines())} \
            if path.exists() else set()
        for s in map(int, a.seeds.split(",")):
            for t, (suite, load) in tables.items():
                if (t, s) in done:
                    continue
                X, y = ab.subsample(*load(s), s)
                X_tr, X_te, y_te = ab.split(X, y, s)
                row_fn = screen_row if a.screen == "score" else conditional_row
                row = {"table": t, "seed": s, "suite": suite, **row_fn(X_tr, X_te, y_te, s)}
                with path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(t, s, {k: round(v, 3) for k, v in row["auroc"].items()}, flush=True)
    rows = [json.loads(line) for f in a.jsonl.split(",") for line in Path(f).read_text().splitlines()]
    names = list(rows[0]["auroc"])
    by_table: dict[str, list[dict]] = {}
    for r in rows:
        by_table.setdefault(r["table"], []).append(r["auroc"])
    means = {t: {n: float(np.mean([r[n] for r in rs])) for n in names} for t, rs in by_table.items()}
    print(f"{len(by_table)} tables, {len(rows)} (table, seed) rows")
    print("| table | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for t, m in means.items():
        print(f"| {t} | " + " | ".join(f"{m[n]:.3f}" for n in names) + " |")
    print("| **mean** | " + " | ".join(f"{np.mean([m[n] for m in means.values()]):.4f}" for n in names) + " |")


if __name__ == "__main__":
    main()
