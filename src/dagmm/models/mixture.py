"""Maximum-likelihood Gaussian mixtures of fixed codes: EM, k-means starts, choice of K by BIC.

DAGMM's estimation network gives a mixture fitted jointly with the auto-encoder
on mini-batches.  After training, the codes are fixed, and a mixture fitted to
them by EM (float64, z-scores, a small diagonal regularisation, as
scikit-learn's ``GaussianMixture``) with as many components as the rows
support models their density more closely; :func:`select_mixture` is what
``OutlierAEGMM()`` scores with by default.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import torch

from .gmm import GMMParams, batch_gmm_params, cholesky_with_jitter, gmm_log_prob, precision_cholesky

__all__ = ["fit_gmm_em", "kmeans_em", "mixture_bic", "select_mixture"]


def _zscores(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 ``(z-scores, center, scale)`` of ``z`` (N, D); a feature with zero spread keeps scale 1."""
    z = z.double()
    center = z.mean(0)  # (D,)
    scale = z.std(0, unbiased=False)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (z - center) / scale, center, scale


def fit_gmm_em(z: torch.Tensor, gamma: torch.Tensor, reg: float = 1e-6, max_iter: int = 100,
               tol: float = 1e-4) -> tuple[GMMParams, int]:
    """Maximum-likelihood mixture of ``z`` by EM, started from the memberships ``gamma``.

    Runs in float64 on the z-scores of ``z`` (a feature with zero spread
    keeps scale 1) with ``reg`` added to every covariance diagonal, as
    scikit-learn's ``GaussianMixture(reg_covar=reg)`` does; the result is
    mapped back to the units of ``z``.  Stops when the mean log-likelihood
    per row changes by less than ``tol``.

    Parameters
    ----------
    z : (N, D) tensor
    gamma : (N, K) tensor
        Initial soft memberships (rows summing to one).
    reg : float, default 1e-6
        Diagonal added to the covariances of the z-scores.
    max_iter : int, default 100
    tol : float, default 1e-4

    Returns
    -------
    params : GMMParams
        float64 ``phi`` (K,), ``mu`` (K, D), ``cov`` (K, D, D), the regularisation included.
    n_iter : int
        EM iterations run.
    """
    zs, center, scale = _zscores(z)  # (N, D)
    eye = torch.eye(z.shape[1], dtype=torch.float64, device=z.device)
    params = batch_gmm_params(zs, gamma.double())
    prev = -math.inf
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        chol, _ = cholesky_with_jitter(params.cov, max(reg, 1e-12))
        log_p = gmm_log_prob(zs, params.phi, params.mu, precision_cholesky(chol))  # (N, K)
        log_norm = torch.logsumexp(log_p, 1, keepdim=True)  # (N, 1)
        mean_ll = float(log_norm.mean())
        params = batch_gmm_params(zs, torch.exp(log_p - log_norm))
        if abs(mean_ll - prev) < tol:
            break
        prev = mean_ll
    cov = (params.cov + reg * eye) * (scale[:, None] * scale[None, :])  # (K, D, D)
    return GMMParams(params.phi, params.mu * scale + center, cov), n_iter


def kmeans_em(z: torch.Tensor, n_components: int, reg: float = 1e-6, seed: Optional[int] = None,
              tol: float = 1e-4) -> GMMParams:
    """EM mixture of ``z`` (N, D) with ``n_components`` components started from k-means.

    k-means (scikit-learn, 3 starts, on the z-scores of ``z``) gives the
    initial hard memberships, :func:`fit_gmm_em` the maximum-likelihood
    mixture; components that end with no weight are dropped.
    """
    from sklearn.cluster import KMeans

    z = z.double()
    k = max(1, min(int(n_components), int(z.shape[0])))
    zs = _zscores(z)[0].cpu().numpy()
    with warnings.catch_warnings():  # duplicated codes may leave fewer distinct clusters than k
        warnings.simplefilter("ignore")
        labels = KMeans(k, n_init=3, random_state=seed).fit_predict(zs) if k > 1 else [0] * len(zs)
    gamma = torch.nn.functional.one_hot(torch.as_tensor(labels, dtype=torch.int64), k).to(z)  # (N, K)
    params, _ = fit_gmm_em(z, gamma, reg=reg, tol=tol)
    keep = params.phi > 1e-12
    return GMMParams(params.phi[keep] / params.phi[keep].sum(), params.mu[keep], params.cov[keep])


def mixture_bic(params: GMMParams, z: torch.Tensor) -> float:
    """Bayesian information criterion ``-2 log L + p log N`` of a full-covariance mixture on ``z`` (N, D)."""
    k, d = params.mu.shape
    chol, _ = cholesky_with_jitter(params.cov, 1e-300)  # cov already holds its regularisation
    log_lik = float(torch.logsumexp(gmm_log_prob(z.double(), params.phi, params.mu, precision_cholesky(chol)), 1).sum())
    n_params = (k - 1) + k * d + k * d * (d + 1) // 2
    return -2.0 * log_lik + n_params * math.log(z.shape[0])


def select_mixture(z: torch.Tensor, candidates: Sequence[int] = (1, 2, 4, 8, 16), rows_per_component: int = 20,
                   reg: float = 1e-6, seed: Optional[int] = None, max_rows: int = 4096) -> tuple[GMMParams, dict]:
    """The mixture of ``z`` (N, D) whose number of components has the lowest BIC.

    Each candidate ``K`` with at least ``rows_per_component`` rows per
    component (a single candidate is used as given) is fitted by :func:`kmeans_em` on at most ``max_rows`` random
    rows (which bounds the cost of the choice), the one with the lowest
    :func:`mixture_bic` there is refitted on all rows.

    Returns
    -------
    params : GMMParams
    info : dict
        ``{"n_components": K chosen, "bic": {K: BIC on the selection rows}}`` (JSON-able).
    """
    n = int(z.shape[0])
    ks = sorted({int(k) for k in candidates if k == 1 or n >= rows_per_component * k}) or [1]
    if len(candidates) == 1:  # one candidate: used as given (at most one component per row)
        ks = [int(candidates[0])]
    sel = z
    if n > max_rows:
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        sel = z[torch.randperm(n, generator=gen)[:max_rows]]
    fits = {k: kmeans_em(sel, k, reg=reg, seed=seed, tol=1e-3) for k in ks}
    bic = {k: mixture_bic(p, sel) for k, p in fits.items()}
    best = min(ks, key=lambda k: bic[k])
    params = fits[best] if sel is z else kmeans_em(z, best, reg=reg, seed=seed)
    return params, {"n_components": int(params.phi.shape[0]), "bic": {str(k): round(v, 3) for k, v in bic.items()}}
