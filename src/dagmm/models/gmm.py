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
from typing import NamedTuple, Union

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
# tenfold increases of the Cholesky jitter tried before giving up
_JITTER_TRIES = 6


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


def _moment_features(zt: torch.Tensor) -> torch.Tensor:
    """``[1, zc, zc (x) zc]`` per column of a (D, N) matrix: (1 + D + D*D, N).

    Row ``1 + D + d*D + e`` is ``zc_d * zc_e``.  Rows of the batch run along
    the last, contiguous axis: with D this small, products and reductions
    over a short innermost axis cost several times more than laid out this way.
    """
    d, n = zt.shape
    outer = (zt[:, None, :] * zt[None, :, :]).reshape(d * d, n)  # (D*D, N)
    return torch.cat([torch.ones_like(zt[:1]), zt, outer], 0)


def _weighted_moments(zc: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``gamma^T [1, zc, zc (x) zc]``: every membership-weighted moment in one product.

    Returns (K, 1 + D + D*D): column 0 is ``sum_n gamma_nk``, the next ``D``
    are ``sum_n gamma_nk zc_n`` and the last ``D*D`` are ``sum_n gamma_nk
    zc_n zc_n^T`` (row-major).  One (K, N) x (N, 1 + D + D*D) matrix product
    replaces the (N, K, D) intermediates of the textbook formula; its
    backward is one product as well.
    """
    return gamma.T @ _moment_features(zc.T).T  # (K, 1 + D + D*D)


def _params_from_moments(moments: torch.Tensor, n: Union[float, torch.Tensor], shift: torch.Tensor) -> GMMParams:
    """phi, mu, cov from the (K, 1 + D + D*D) moments taken about ``shift``."""
    d = shift.shape[0]
    sum_gamma = moments[:, 0]  # (K,)
    # A component that received no mass would divide by zero; the tiny floor
    # keeps its (irrelevant) mean finite.
    scaled = moments[:, 1:] / sum_gamma.clamp_min(torch.finfo(torch.float64).tiny)[:, None]  # (K, D + D*D)
    mean_c = scaled[:, :d]  # (K, D), about the shift
    cov = scaled[:, d:].reshape(-1, d, d) - mean_c[:, :, None] * mean_c[:, None, :]  # (K, D, D)
    cov = 0.5 * (cov + cov.transpose(1, 2))  # exact symmetry for Cholesky
    return GMMParams(sum_gamma / n, mean_c + shift, cov)


def batch_gmm_params(z: torch.Tensor, gamma: torch.Tensor) -> GMMParams:
    """Differentiable mixture parameters of one batch (the paper's eq. 5).

    The moments are taken about the batch mean (a constant for the gradient:
    the covariance does not depend on it), so the second moment loses no
    precision to cancellation, and all of them come from one matrix product
    (see :func:`gmm_stats`, which this shares its formula with).

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
    shift = z.detach().mean(0)  # (D,)
    moments = _weighted_moments(z - shift, gamma.double())
    return _params_from_moments(moments, float(z.shape[0]), shift)


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
    d = shift.shape[0]
    moments = _weighted_moments(z.double() - shift, gamma.double())  # (K, 1 + D + D*D)
    return GMMStats(
        n=torch.tensor(float(z.shape[0]), dtype=torch.float64, device=z.device),
        sum_gamma=moments[:, 0],
        sum_gamma_z=moments[:, 1:1 + d],
        sum_gamma_zz=moments[:, 1 + d:].reshape(-1, d, d),
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
    k, d = stats.sum_gamma_z.shape
    moments = torch.cat([stats.sum_gamma[:, None], stats.sum_gamma_z, stats.sum_gamma_zz.reshape(k, d * d)], 1)
    return _params_from_moments(moments, stats.n, stats.shift)


def cholesky_with_jitter(
    cov: torch.Tensor, eps: float = 1e-6, max_tries: int = _JITTER_TRIES
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
    raise _cholesky_failure(torch.nonzero(info != 0).flatten().tolist(), jitter / 10.0,
                            bool(torch.isfinite(cov).all()))


def _cholesky_failure(bad: list, jitter: float, finite: bool) -> CholeskyError:
    """The error for components ``bad`` still singular with the largest ``jitter`` tried."""
    return CholeskyError(
        f"Cholesky factorisation of the GMM covariance failed for component(s) {bad} "
        f"even with diagonal jitter {jitter:.1e}"
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
    (N, K) float64 tensor of weighted log-densities (a transposed view of a
    (K, N) result).
    """
    return _log_prob_t(z.T, phi, mu, prec_chol).T


def _log_prob_t(zt: torch.Tensor, phi: torch.Tensor, mu: torch.Tensor, prec_chol: torch.Tensor) -> torch.Tensor:
    """:func:`gmm_log_prob` of a (D, N) ``zt``, laid out (K, N): rows of the batch along the contiguous axis.

    With K and D this small, sums and broadcasts over a short innermost axis
    cost several times the same arithmetic laid out this way.
    """
    return log_prob_from_terms(zt, *energy_terms(phi, mu, prec_chol))


def log_prob_from_terms(zt: torch.Tensor, prec_t: torch.Tensor, offset: torch.Tensor,
                        const: torch.Tensor) -> torch.Tensor:
    """``log phi_k N(z; mu_k, cov_k)`` laid out (K, N) for a (D, N) ``zt``, from :func:`energy_terms`.

    The ONNX export (:func:`dagmm.export_onnx`) calls it with the terms precomputed as constants.
    """
    k, d = offset.shape
    # the P_k^T stacked form one (K*D, D) matrix: a single product serves every component
    proj = torch.addmm(offset.reshape(k * d, 1), prec_t.reshape(k * d, d), zt.to(prec_t.dtype), beta=-1.0)  # (K*D, N)
    maha = proj.square().reshape(k, d, -1).sum(1)  # (K, N)
    return const[:, None] - 0.5 * maha


def energy_terms(phi: torch.Tensor, mu: torch.Tensor, prec_chol: torch.Tensor) -> tuple:
    """``(P^T (K, D, D), P^T mu (K, D), c (K,))``: ``log phi_k N(z; mu_k, cov_k) = c_k - |P_k^T (z - mu_k)|^2 / 2``.

    ``P_k`` is the precision's Cholesky factor; ``c_k = log phi_k + log det P_k - D log(2 pi) / 2``.
    Shared by :func:`sample_energy`, the C scoring kernel (:func:`dagmm.accel.energy_scorer`) and the ONNX
    export (:func:`dagmm.export_onnx`).
    """
    d = mu.shape[1]
    prec_t = prec_chol.transpose(1, 2)  # (K, D, D): P_k^T
    offset = torch.bmm(prec_t, mu[:, :, None])[:, :, 0]  # (K, D)
    log_det_prec = torch.log(torch.diagonal(prec_chol, dim1=-2, dim2=-1)).sum(-1)  # (K,)
    log_phi = torch.log(phi.clamp_min(torch.finfo(phi.dtype).tiny))
    return prec_t, offset, log_phi + log_det_prec - 0.5 * d * _LOG_2PI


def sample_energy(
    z: torch.Tensor, phi: torch.Tensor, mu: torch.Tensor, prec_chol: torch.Tensor
) -> torch.Tensor:
    """Sample energy ``E(z) = -log sum_k phi_k N(z; mu_k, cov_k)``, shape (N,), float64."""
    return -torch.logsumexp(_log_prob_t(z.T, phi, mu, prec_chol), dim=0)


def cov_diag_penalty(cov: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """The paper's singularity penalty ``sum_k sum_j 1 / cov_k[j, j]``."""
    return (1.0 / (torch.diagonal(cov, dim1=-2, dim2=-1) + eps)).sum()

