"""Gaussian-mixture maths of DAGMM as pure, stateless torch functions.

Everything here works on a latent matrix ``z`` of shape ``(N, D)`` and soft
memberships ``gamma`` of shape ``(N, K)``.  The small ``D x D`` algebra runs in
float64: the latent space of DAGMM is tiny (``D`` is usually 3 or 4), so the
cost is negligible and the Cholesky factorisations stay well conditioned.

The energy is computed like scikit-learn's ``GaussianMixture``: the Cholesky
factor of each covariance, a triangular solve for the precision factor, and a
``logsumexp`` over components.  No explicit inverse or determinant is formed.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = [
    "GMMParams",
    "GMMStats",
    "CholeskyError",
    "batch_gmm_params",
    "gmm_stats",
    "add_stats",
    "gmm_params_from_stats",
    "cholesky_with_jitter",
    "precision_cholesky",
    "gmm_log_prob",
    "sample_energy",
    "cov_diag_penalty",
]

_LOG_2PI = math.log(2.0 * math.pi)


class CholeskyError(RuntimeError):
    """A covariance matrix stayed singular even after adding diagonal jitter."""


class GMMParams(NamedTuple):
    """Mixture parameters (all float64).

    phi : (K,) mixture weights.
    mu : (K, D) component means.
    cov : (K, D, D) component covariances (without jitter).
    """

    phi: torch.Tensor
    mu: torch.Tensor
    cov: torch.Tensor


class GMMStats(NamedTuple):
    """Additive sufficient statistics of a weighted mixture, float64.

    Moments are taken about ``shift`` (a fixed reference point) so that the
    second moment does not lose precision to cancellation when the latent
    means are large compared with their spread.

    n : () number of rows seen.
    sum_gamma : (K,) sum of memberships.
    sum_gamma_z : (K, D) sum of ``gamma * (z - shift)``.
    sum_gamma_zz : (K, D, D) sum of ``gamma * (z - shift)(z - shift)^T``.
    shift : (D,) reference point of the moments.
    """

    n: torch.Tensor
    sum_gamma: torch.Tensor
    sum_gamma_z: torch.Tensor
    sum_gamma_zz: torch.Tensor
    shift: torch.Tensor


def batch_gmm_params(z: torch.Tensor, gamma: torch.Tensor) -> GMMParams:
    """Differentiable mixture parameters of one batch (the paper's eq. 5).

    Parameters
    ----------
    z : (N, D) tensor
        Latent representations.
    gamma : (N, K) tensor
        Soft memberships; each row sums to one.

    Returns
    -------
    GMMParams
        float64 ``phi`` (K,), ``mu`` (K, D) and ``cov`` (K, D, D).
    """
    z = z.double()
    gamma = gamma.double()
    n = z.shape[0]
    sum_gamma = gamma.sum(0)  # (K,)
    # A component that received no mass in this batch would divide by zero;
    # the tiny floor keeps its (irrelevant) mean finite.
    denom = sum_gamma.clamp_min(torch.finfo(torch.float64).tiny)
    phi = sum_gamma / n
    mu = (gamma.T @ z) / denom[:, None]  # (K, D)
    diff = z[:, None, :] - mu[None, :, :]  # (N, K, D)
    weighted = diff * gamma[:, :, None]  # (N, K, D)
    cov = torch.einsum("nkd,nke->kde", weighted, diff) / denom[:, None, None]  # (K, D, D)
    return GMMParams(phi, mu, cov)


def gmm_stats(z: torch.Tensor, gamma: torch.Tensor, shift: torch.Tensor) -> GMMStats:
    """Sufficient statistics of one batch, to be summed over batches or shards.

    Parameters
    ----------
    z : (N, D) tensor
    gamma : (N, K) tensor
    shift : (D,) tensor
        Reference point; use the same one for every batch that is summed.
    """
    shift = shift.double()
    zc = z.double() - shift  # (N, D)
    gamma = gamma.double()
    sum_gamma_zz = torch.einsum("nk,nd,ne->kde", gamma, zc, zc)  # (K, D, D)
    return GMMStats(
        n=torch.tensor(float(z.shape[0]), dtype=torch.float64, device=z.device),
        sum_gamma=gamma.sum(0),
        sum_gamma_z=gamma.T @ zc,
        sum_gamma_zz=sum_gamma_zz,
        shift=shift,
    )


def add_stats(a: GMMStats, b: GMMStats) -> GMMStats:
    """Sum two sets of statistics taken about the same ``shift``."""
    if not torch.equal(a.shift, b.shift):
        raise ValueError("add_stats: both statistics must be taken about the same shift.")
    return GMMStats(
        a.n + b.n,
        a.sum_gamma + b.sum_gamma,
        a.sum_gamma_z + b.sum_gamma_z,
        a.sum_gamma_zz + b.sum_gamma_zz,
        a.shift,
    )


def gmm_params_from_stats(stats: GMMStats) -> GMMParams:
    """Exact mixture parameters from summed statistics.

    Gives the same ``phi``, ``mu`` and ``cov`` as :func:`batch_gmm_params` on
    the concatenation of all batches, up to float64 rounding.
    """
    denom = stats.sum_gamma.clamp_min(torch.finfo(torch.float64).tiny)
    phi = stats.sum_gamma / stats.n
    mean_c = stats.sum_gamma_z / denom[:, None]  # (K, D), about the shift
    second = stats.sum_gamma_zz / denom[:, None, None]  # (K, D, D)
    cov = second - mean_c[:, :, None] * mean_c[:, None, :]
    cov = 0.5 * (cov + cov.transpose(1, 2))  # exact symmetry for Cholesky
    return GMMParams(phi, mean_c + stats.shift, cov)


def cholesky_with_jitter(
    cov: torch.Tensor, eps: float = 1e-6, max_tries: int = 6
) -> tuple[torch.Tensor, float]:
    """Cholesky factors of ``cov + eps * I``, raising ``eps`` tenfold on failure.

    Parameters
    ----------
    cov : (K, D, D) tensor
        Symmetric covariance matrices.
    eps : float, default 1e-6
        Initial diagonal jitter.
    max_tries : int, default 6
        Number of tenfold increases tried before giving up.

    Returns
    -------
    chol : (K, D, D) lower-triangular factors.
    eps_used : float
        The jitter that succeeded.

    Raises
    ------
    CholeskyError
        If every jitter up to ``eps * 10**max_tries`` fails.
    """
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    jitter = float(eps)
    for _ in range(max_tries + 1):
        chol, info = torch.linalg.cholesky_ex(cov + jitter * eye)
        if not bool((info != 0).any()):
            return chol, jitter
        jitter *= 10.0
    bad = torch.nonzero(info != 0).flatten().tolist()
    finite = bool(torch.isfinite(cov).all())
    raise CholeskyError(
        f"Cholesky factorisation of the GMM covariance failed for component(s) {bad} "
        f"even with diagonal jitter {jitter / 10.0:.1e}"
        + ("" if finite else " (the covariance contains NaN or inf: training diverged)")
        + ". Try a larger `cov_eps`, a larger `batch_size`, fewer components (`n_gmm`), "
        "a lower learning rate, or standardising the input features."
    )


def precision_cholesky(chol: torch.Tensor) -> torch.Tensor:
    """Upper factor ``P`` with ``P P^T = cov^-1``, by a triangular solve.

    Parameters
    ----------
    chol : (K, D, D) lower Cholesky factors of the covariances.

    Returns
    -------
    (K, D, D) tensor ``L^{-T}``, so that ``||(z - mu) P||^2`` is the squared
    Mahalanobis distance.
    """
    eye = torch.eye(chol.shape[-1], dtype=chol.dtype, device=chol.device).expand_as(chol)
    return torch.linalg.solve_triangular(chol, eye, upper=False).transpose(-1, -2)


def gmm_log_prob(
    z: torch.Tensor, phi: torch.Tensor, mu: torch.Tensor, prec_chol: torch.Tensor
) -> torch.Tensor:
    """``log(phi_k) + log N(z; mu_k, cov_k)`` for every row and component.

    Parameters
    ----------
    z : (N, D) tensor
    phi : (K,) tensor
    mu : (K, D) tensor
    prec_chol : (K, D, D) tensor from :func:`precision_cholesky`.

    Returns
    -------
    (N, K) float64 tensor of weighted log-densities.
    """
    z = z.to(prec_chol.dtype)
    d = z.shape[1]
    # (z - mu) P == z P - mu P: one matrix product for all components.
    y = torch.einsum("nd,kde->nke", z, prec_chol) - torch.einsum(
        "kd,kde->ke", mu, prec_chol
    )  # (N, K, D)
    maha = (y * y).sum(-1)  # (N, K)
    log_det_prec = torch.log(torch.diagonal(prec_chol, dim1=-2, dim2=-1)).sum(-1)  # (K,)
    log_phi = torch.log(phi.clamp_min(torch.finfo(phi.dtype).tiny))
    return log_phi + log_det_prec - 0.5 * (d * _LOG_2PI + maha)


def sample_energy(
    z: torch.Tensor, phi: torch.Tensor, mu: torch.Tensor, prec_chol: torch.Tensor
) -> torch.Tensor:
    """Sample energy ``E(z) = -log sum_k phi_k N(z; mu_k, cov_k)``, shape (N,), float64."""
    return -torch.logsumexp(gmm_log_prob(z, phi, mu, prec_chol), dim=1)


def cov_diag_penalty(cov: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """The paper's singularity penalty ``sum_k sum_j 1 / cov_k[j, j]``."""
    return (1.0 / (torch.diagonal(cov, dim1=-2, dim2=-1) + eps)).sum()
