"""Screen other scores of one trained ``OutlierAEGMM()`` per table (development aid, issue 19).

Trains the default ``OutlierAEGMM()`` once per (table, seed) under the protocol of ``benchmarks/adbench.py``
and scores the test rows several ways, paired (the same net, only the score differs); ``--screen score`` (the
default, 2026-12-04, run when the detector scored the energy alone):

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

``--screen mixture`` (2026-12-04, the then-default with the diagonal residual term and 1-16 components):

- ``default``: the detector's score then (BIC mixture among 1-16 components + the diagonal residual NLL);
- ``maha``: the same mixture's energy + half the squared Mahalanobis distance of the signed residual under
  its Ledoit-Wolf training covariance (the full-covariance Gaussian NLL, nats);
- ``k64`` / ``k64+maha``: the mixture chosen by BIC among 1-64 components (at least 20 rows each), with the
  diagonal or the full-covariance residual term; ``k64r50`` / ``k64r50+maha``: at least 50 rows per
  component; ``k128+maha``: up to 128 components;
- ``ensN-default`` / ``ensN-k64+maha``: the mean score of N fits (member m trains with seed + 1000 m;
  ``SCREEN_MEMBERS`` members, default 3).

The number of components each mixture chose is stored as ``k_default`` / ``k64`` / ``k64r50`` / ``k128``.

``--screen component`` (the same ``global-residual`` default; its ``comp-full`` is what became the default): the residual's Gaussian per mixture component; columns in
:func:`component_row`.

``--screen code`` (under candidate ``global-residual`` of ``benchmarks/adbench.py``, the default of the evening of
2026-12-04: the global full-covariance residual, 1-64 components): which
part of the code the scoring mixture models, each plus the same residual term: ``default`` (``[latent,
log mse, cosine]``), ``lat+cos`` (``[latent, cosine]``), ``lat`` (the latent code alone).

    OMP_NUM_THREADS=1 nice python benchmarks/aegmm_score_screen.py [--screen mixture|code|component] --suite both --seeds 0,1,2 --jsonl J
    python benchmarks/aegmm_score_screen.py --report --jsonl J
"""

from __future__ import annotations

import importlib.util
import os
import sys
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
    with ab.candidate_config("energy-only"):  # the default when this screen ran
        od = dagmm.OutlierAEGMM().fit(X_tr, verbose=False, seed=seed)
    fit_s = time.perf_counter() - t0
    od.error_scale_ = od.residual_mean_ = od.residual_prec_chol_ = None  # the energy alone; residual terms below
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


def member_scores(X_tr: np.ndarray, X_te: np.ndarray, seed: int) -> tuple[dict, dict]:
    """Scores ``name -> (train, test)`` of one default fit under each scoring, and the chosen components."""
    import dagmm
    from dagmm.models.mixture import select_mixture

    with ab.candidate_config("diag-k16"):  # the default when this screen ran
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


def mixture_row(X_tr: np.ndarray, X_te: np.ndarray, y_te: np.ndarray, seed: int) -> dict:
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


def code_row(X_tr: np.ndarray, X_te: np.ndarray, y_te: np.ndarray, seed: int) -> dict:
    import dagmm
    from dagmm.models.gmm import cholesky_with_jitter, precision_cholesky, sample_energy
    from dagmm.models.mixture import select_mixture

    t0 = time.perf_counter()
    with ab.candidate_config("global-residual"):  # the default when this screen ran
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


def component_row(X_tr: np.ndarray, X_te: np.ndarray, y_te: np.ndarray, seed: int) -> dict:
    """``--screen component``: the residual's Gaussian per mixture component, one joint mixture of (z, r).

    - ``default``: the detector's score (energy of z + the residual's global full-covariance NLL);
    - ``comp-diag``: ``-log sum_k phi_k N(z; mu_k, Sigma_k) N(r; m_k, diag s_k)``, with ``m_k``, ``s_k`` the
      residuals' mean and per-feature variance weighted by the training rows' memberships (variances shrunk
      towards the global ones with the weight of ``PRIOR_ROWS`` rows, floored at 0.01 of the global mean);
    - ``global-diag``: the same with one diagonal Gaussian for every component (the normalisers included);
    - ``comp-mean-full``: per-component residual means (memberships' weighted), one pooled full covariance
      (Ledoit-Wolf of the residuals centred on their most likely component's mean, variances floored as
      above), so the product by its whitening factor is made once per row;
    - ``comp-full``: a full covariance per component, the memberships' weighted scatter about the component's
      mean plus the pooled covariance with the weight of F rows (log-determinants included).
    """
    import dagmm
    from dagmm.models.gmm import gmm_log_prob
    from scipy.linalg import solve_triangular
    from scipy.special import logsumexp

    t0 = time.perf_counter()
    with ab.candidate_config("global-residual"):  # the default when this screen ran
        od = dagmm.OutlierAEGMM().fit(X_tr, verbose=False, seed=seed)
    fit_s = time.perf_counter() - t0
    scores = {"default": (od.score(X_tr), od.score(X_te))}
    od.aegmm.eval()
    with torch.inference_mode():
        out = [od.aegmm(torch.from_numpy(od._checked(X))) for X in (X_tr, X_te)]
    res = [(torch.from_numpy(od._checked(X)).flatten(1) - o[0].flatten(1)).double().numpy()
           for X, o in zip((X_tr, X_te), out)]  # (N, F)
    logz = [gmm_log_prob(o[1].double(), od.phi_, od.mu_, od.prec_chol_).numpy() for o in out]  # (N, K)
    gamma = np.exp(logz[0] - logsumexp(logz[0], axis=1, keepdims=True))  # (N, K) training memberships
    g_mean, g_var = res[0].mean(0), res[0].var(0)
    floor = 0.01 * g_var.mean()
    w = gamma.sum(0)  # (K,)
    m = (gamma.T @ res[0] + PRIOR_ROWS * g_mean) / (w + PRIOR_ROWS)[:, None]  # (K, F)
    sq = gamma.T @ res[0] ** 2 - 2 * m * (gamma.T @ res[0]) + w[:, None] * m ** 2  # (K, F) weighted sum of squares
    var = np.maximum((sq + PRIOR_ROWS * g_var) / (w + PRIOR_ROWS)[:, None], floor)

    def log_res(r: np.ndarray, m: np.ndarray, v: np.ndarray) -> np.ndarray:  # (N, K)
        return -0.5 * (((r[:, None, :] - m[None]) ** 2 / v[None]).sum(2) + np.log(2 * np.pi * v).sum(1)[None])

    gv = np.maximum(g_var, floor)
    for name, (mm, vv) in (("comp-diag", (m, var)), ("global-diag", (g_mean[None], gv[None]))):
        scores[name] = tuple(-logsumexp(lz + log_res(r, mm, vv), axis=1) for lz, r in zip(logz, res))
    # per-component means, one pooled full covariance (Ledoit-Wolf of the residuals centred on their own
    # component's mean, hard memberships), so the product by P is made once per row
    from sklearn.covariance import LedoitWolf

    m_soft = (gamma.T @ res[0]) / np.maximum(w, 1e-12)[:, None]  # (K, F)
    centred = res[0] - m_soft[gamma.argmax(1)]
    cov = LedoitWolf(assume_centered=True).fit(centred).covariance_
    d = np.diag(cov).copy()
    np.fill_diagonal(cov, np.maximum(d, 0.01 * d.mean()))
    P = solve_triangular(np.linalg.cholesky(cov), np.eye(len(cov)), lower=True).T  # (F, F), P P^T = cov^-1
    a = m_soft @ P  # (K, F) the components' means, whitened
    for name, lzs in (("comp-mean-full", logz),):
        scores[name] = tuple(-logsumexp(lz - 0.5 * (((r @ P)[:, None, :] - a[None]) ** 2).sum(2), axis=1)
                             for lz, r in zip(lzs, res))
    # a full covariance per component: the memberships' weighted scatter about m_soft plus the pooled
    # covariance with the weight of F rows (invertible below F rows), log-determinants included
    f = res[0].shape[1]
    logr = [np.empty((len(r), len(w))) for r in res]
    for k in range(len(w)):
        c = res[0] - m_soft[k]
        cov_k = ((gamma[:, k, None] * c).T @ c + f * cov) / (w[k] + f)
        L = np.linalg.cholesky(cov_k)
        logdet = 2.0 * np.log(np.diag(L)).sum()
        for out, r in zip(logr, res):
            y = solve_triangular(L, (r - m_soft[k]).T, lower=True)  # (F, N)
            out[:, k] = -0.5 * ((y ** 2).sum(0) + logdet)
    scores["comp-full"] = tuple(-logsumexp(lz + lr, axis=1) for lz, lr in zip(logz, logr))
    return {"fit_s": fit_s, "auroc": {k: ab.metrics(y_te, v[1])[0] for k, v in scores.items()}}


PRIOR_ROWS = 2.0
MEMBERS = int(os.environ.get("SCREEN_MEMBERS", "3"))
SCREENS = {"score": screen_row, "mixture": mixture_row, "code": code_row, "component": component_row}


if __name__ == "__main__":
    screen = "score"
    if "--screen" in sys.argv:  # ours; the rest of the command line is the shared driver's
        at = sys.argv.index("--screen")
        screen = sys.argv[at + 1]
        del sys.argv[at:at + 2]
    aes.screen_row = SCREENS[screen]  # the same driver and report, this detector's scores
    aes.main()
