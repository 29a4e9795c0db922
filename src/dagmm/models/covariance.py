"""A shrunk covariance of many columns from streamed rows (float64): the residual model of ``OutlierAEGMM``.

The reconstruction residuals ``r = x - x'`` of an auto-encoder are correlated
across columns (columns that move together are missed together), so their
Gaussian negative log-likelihood is taken under a full covariance.  With
``F`` columns and not many more rows than ``F`` the sample covariance is
noisy or singular; Ledoit and Wolf's shrinkage towards ``mu * I``
(O. Ledoit and M. Wolf, "A well-conditioned estimator for large-dimensional
covariance matrices", J. Multivariate Analysis 88, 2004) picks the weight
of the target from the data, with no parameter to tune.

The statistics are sums over rows, so any number of rows is handled batch by
batch: :class:`CentredMoments` accumulates them about a fixed centre.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .gmm import cholesky_with_jitter, precision_cholesky

__all__ = ["CentredMoments", "ComponentMoments", "ledoit_wolf", "floor_diagonal", "whitening_factor",
           "component_gaussians", "stacked_whitening", "residual_nll", "component_residual_log_prob",
           "stacked_log_prob"]


@dataclass
class CentredMoments:
    """Sums over rows of ``c = x - centre``: ``n``, ``outer = sum c c^T`` and ``outer_sq = sum (c*c)(c*c)^T``.

    Parameters
    ----------
    centre : (F,) float64 tensor
        The point the rows are centred on (their mean, from a first pass).
    """

    centre: torch.Tensor
    n: int = 0
    outer: Optional[torch.Tensor] = field(default=None, repr=False)     # (F, F)
    outer_sq: Optional[torch.Tensor] = field(default=None, repr=False)  # (F, F)

    def add(self, rows: torch.Tensor) -> None:
        """Add ``rows`` (N, F), any float dtype and device; the sums are float64."""
        c = rows.double() - self.centre.to(rows.device)  # (N, F)
        sq = c * c
        outer, outer_sq = c.T @ c, sq.T @ sq
        if self.outer is None:
            self.outer, self.outer_sq = outer, outer_sq
        else:
            self.outer += outer
            self.outer_sq += outer_sq
        self.n += int(rows.shape[0])

    def mean_square(self) -> torch.Tensor:
        """``mean(x^2)`` of each column (F,), float64: ``centre^2`` plus the diagonal of ``outer / n``."""
        return self.centre.square() + torch.diagonal(self.outer) / self.n


@dataclass
class ComponentMoments:
    """Membership-weighted sums over rows per mixture component: ``w`` (K,), ``s1 = sum g x`` (K, F) and
    ``s2 = sum g x x^T`` (K, F, F), float64, for :func:`component_gaussians`."""

    w: Optional[torch.Tensor] = field(default=None, repr=False)
    s1: Optional[torch.Tensor] = field(default=None, repr=False)
    s2: Optional[torch.Tensor] = field(default=None, repr=False)

    def add(self, rows: torch.Tensor, gamma: torch.Tensor) -> None:
        """Add ``rows`` (N, F) with memberships ``gamma`` (N, K) (rows of ``gamma`` sum to 1)."""
        r, g = rows.double(), gamma.double()
        w, s1 = g.sum(0), g.T @ r  # (K,), (K, F)
        s2 = torch.stack([(g[:, k, None] * r).T @ r for k in range(g.shape[1])])  # (K, F, F), K products
        if self.w is None:
            self.w, self.s1, self.s2 = w, s1, s2
        else:
            self.w += w
            self.s1 += s1
            self.s2 += s2


def ledoit_wolf(moments: CentredMoments) -> tuple[torch.Tensor, float]:
    """Ledoit-Wolf shrunk covariance ``(1 - s) S + s mu I`` of the accumulated rows.

    ``S`` is the sample covariance about the centre (divided by ``n``, the
    maximum-likelihood one), ``mu = trace(S) / F``, and the shrinkage ``s``
    in [0, 1] is the estimate of the 2004 paper: the estimated variance of
    ``S``'s entries over their squared distance from ``mu I``.

    Returns
    -------
    cov : (F, F) float64 tensor
    shrinkage : float
    """
    n = moments.n
    if n < 1 or moments.outer is None:
        raise ValueError("ledoit_wolf: no rows were accumulated.")
    f = moments.outer.shape[0]
    s = moments.outer / n  # (F, F)
    trace = float(torch.diagonal(s).sum())
    mu = trace / f
    # squared Frobenius distance of S from mu I, per column: sum(S^2) - 2 mu trace + F mu^2
    delta = (float(s.square().sum()) - 2.0 * mu * trace + f * mu * mu) / f
    # estimated variance of S's entries: (sum_i |c_i c_i^T|_F^2 / n - |S|_F^2) / (F n)
    beta = (float(moments.outer_sq.sum()) / n - float(s.square().sum())) / (f * n)
    shrinkage = 0.0 if delta <= 0.0 else min(max(beta, 0.0), delta) / delta
    cov = (1.0 - shrinkage) * s
    cov.diagonal().add_(shrinkage * mu)
    return cov, float(shrinkage)


def floor_diagonal(cov: torch.Tensor, floor: float) -> torch.Tensor:
    """``cov`` with each variance raised to at least ``floor`` times their mean (and 1e-12), in place.

    As ``OutlierAE``'s error scales: a column the auto-encoder reconstructs
    (almost) exactly on the training rows would otherwise turn the smallest
    deviation into an unbounded score.
    """
    diag = cov.diagonal()
    low = max(floor * float(diag.mean()), 1e-12)
    diag.add_((low - diag).clamp_min(0.0))
    return cov


def whitening_factor(cov: torch.Tensor) -> torch.Tensor:
    """Upper factor ``P`` (F, F) with ``P P^T = cov^-1``, so ``|(r - m) P|^2`` is the squared Mahalanobis distance.

    Float64 Cholesky with tenfold jitter on failure (from ``1e-12`` times the
    mean variance), then a triangular solve; never an explicit inverse.
    """
    eps = 1e-12 * max(float(cov.diagonal().mean()), 1e-300)
    chol, _ = cholesky_with_jitter(cov.double()[None], eps, max_tries=8)  # (1, F, F)
    return precision_cholesky(chol)[0]


def residual_nll(residual: torch.Tensor, error_scale: Optional[torch.Tensor] = None,
                 mean: Optional[torch.Tensor] = None, prec_chol: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The residual's Gaussian negative log-likelihood up to its constant, float64, shape (N,).

    ``0.5 * |(r - mean) prec_chol|^2`` with a full covariance (``mean`` (F,)
    and ``prec_chol`` (F, F) from :func:`whitening_factor`), else
    ``0.5 * sum_j r_j^2 / error_scale_j`` with independent columns.

    Parameters
    ----------
    residual : (N, F) tensor
        ``x - x'``, in the network's units.
    """
    r = residual.flatten(1).double()  # (N, F)
    if prec_chol is not None:
        return 0.5 * ((r - mean.double()) @ prec_chol.double()).square().sum(1)
    if error_scale is None:
        raise ValueError("residual_nll: give error_scale or mean and prec_chol.")
    return 0.5 * r.square().div(error_scale.double().flatten()).sum(1)


def component_gaussians(moments: ComponentMoments, prior: torch.Tensor,
                        prior_rows: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One Gaussian per mixture component from membership-weighted sums, shrunk towards ``prior``.

    Component ``k`` has mean ``m_k = s1_k / w_k`` and covariance ``(S_k +
    prior_rows * prior) / (w_k + prior_rows)``, ``S_k`` its weighted scatter
    about ``m_k``: the pooled covariance counts as ``prior_rows`` rows, so a
    component with few rows (or fewer than F) still has a well-conditioned
    covariance, and one with many rows has its own.

    Returns
    -------
    mean : (K, F) float64
    prec_chol : (K, F, F) float64, upper factors (:func:`whitening_factor`)
    """
    w = moments.w.clamp_min(1e-300)
    mean = moments.s1 / w[:, None]  # (K, F)
    scatter = moments.s2 - w[:, None, None] * mean[:, :, None] * mean[:, None, :]  # (K, F, F)
    cov = (scatter + prior_rows * prior.double()) / (moments.w + prior_rows)[:, None, None]
    cov = 0.5 * (cov + cov.transpose(1, 2))  # symmetric to rounding before the factorisation
    return mean, torch.stack([whitening_factor(c) for c in cov])


def stacked_whitening(means: torch.Tensor, prec_chols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-component residual Gaussians as one product: ``(p_all, offset, log_det)``.

    ``p_all`` (F, K * F) float32 holds every ``P_k`` side by side (block k),
    ``offset`` (K, F) float64 is ``m_k P_k`` and ``log_det`` (K,) float64 is
    ``log det P_k``, so that row ``r``'s block k of ``r p_all - offset`` is
    ``(r - m_k) P_k``; the torch code, the ONNX graph and the C kernel
    (``dagmm.accel.energy_scorer``) all compute the joint term from these.
    """
    k, f = means.shape
    p64 = prec_chols.double()
    p_all = prec_chols.float().permute(1, 0, 2).reshape(f, k * f)  # (F, K F)
    offset = (means.double()[:, None, :] @ p64)[:, 0]  # (K, F)
    return p_all, offset, torch.log(torch.diagonal(p64, dim1=1, dim2=2)).sum(1)


def component_residual_log_prob(residual: torch.Tensor, means: torch.Tensor, prec_chols: torch.Tensor,
                                max_elements: Optional[int] = 1 << 22) -> torch.Tensor:
    """``log det P_k - 0.5 |(r - m_k) P_k|^2`` for every row and component, float64 (N, K).

    The log-density of the residual under each component's Gaussian, up to the
    constant ``-F log(2 pi) / 2`` common to all: :func:`stacked_log_prob` of
    :func:`stacked_whitening`'s terms.
    """
    return stacked_log_prob(residual, *stacked_whitening(means, prec_chols), max_elements=max_elements)


def stacked_log_prob(residual: torch.Tensor, p_all: torch.Tensor, offset: torch.Tensor, log_det: torch.Tensor,
                     max_elements: Optional[int] = 1 << 22) -> torch.Tensor:
    """:func:`component_residual_log_prob` from :func:`stacked_whitening`'s terms (constants of an ONNX graph).

    ``(r - m_k) P_k`` is ``r P_k - m_k P_k``: one float32 product of the rows
    by ``p_all`` and the offsets in float32 (the C kernel's precision), the
    sums of squares in float64.  Rows are taken in chunks so that the (n, K,
    F) intermediate stays under ``max_elements`` values (None: in one piece,
    as a traced graph must, whose row count is not known).
    """
    r = residual.flatten(1)  # (N, F)
    k, f = offset.shape
    offset32 = offset.float()

    def rows(x: torch.Tensor) -> torch.Tensor:  # (n, F) -> (n, K)
        y = (x.float() @ p_all).reshape(-1, k, f).sub_(offset32)  # (n, K, F)
        return log_det.double() - 0.5 * y.square_().sum(2, dtype=torch.float64)

    if max_elements is None:
        return rows(r)
    step = max(1, max_elements // max(1, k * f))
    parts = [rows(r[start:start + step]) for start in range(0, r.shape[0], step)]
    return torch.cat(parts) if parts else torch.zeros((0, k), dtype=torch.float64, device=r.device)
