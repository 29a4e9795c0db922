"""Reconstruction features that DAGMM appends to the latent code.

The paper uses the relative Euclidean distance ``||x - x'|| / ||x||`` and the
cosine similarity ``x . x' / (||x|| ||x'||)``.  Both are computed per row over
all non-batch dimensions, with a floor on the norms so that an all-zero row
gives a finite value instead of NaN.  (alibi-detect passes ``-1`` to the
epsilon argument by accident and returns the negative cosine; these do not.)
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["relative_euclidean", "cosine_similarity", "default_recon_features", "log_mse_cosine", "RECON_EPS",
           "LOG_MSE_EPS"]

#: Floor on vector norms in the reconstruction features.
RECON_EPS = 1e-8
#: Added to the mean squared error before its logarithm.
LOG_MSE_EPS = 1e-6

ReconFeatures = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def relative_euclidean(x: torch.Tensor, x_recon: torch.Tensor, eps: float = RECON_EPS) -> torch.Tensor:
    """``||x - x'||_2 / max(||x||_2, eps)`` per row, shape (N,)."""
    x = x.flatten(1)  # (N, F)
    x_recon = x_recon.flatten(1)  # (N, F)
    return torch.linalg.vector_norm(x - x_recon, dim=1) / torch.linalg.vector_norm(x, dim=1).clamp_min(eps)


def cosine_similarity(x: torch.Tensor, x_recon: torch.Tensor, eps: float = RECON_EPS) -> torch.Tensor:
    """``x . x' / max(||x|| ||x'||, eps)`` per row, shape (N,)."""
    x = x.flatten(1)  # (N, F)
    x_recon = x_recon.flatten(1)  # (N, F)
    norms = torch.linalg.vector_norm(x, dim=1) * torch.linalg.vector_norm(x_recon, dim=1)
    return (x * x_recon).sum(1) / norms.clamp_min(eps)


def default_recon_features(x: torch.Tensor, x_recon: torch.Tensor) -> torch.Tensor:
    """The paper's two reconstruction features, shape (N, 2): relative distance, cosine.

    Same values as :func:`relative_euclidean` and :func:`cosine_similarity`;
    ``||x||`` is computed once for both, and when only ``x_recon`` needs a
    gradient (training) the backward is the closed form of :class:`_ReconPair`.
    """
    return _recon_pair(x, x_recon, "relative")


def log_mse_cosine(x: torch.Tensor, x_recon: torch.Tensor) -> torch.Tensor:
    """Reconstruction features of the automatic architecture, shape (N, 2).

    ``log(mean_j (x_j - x'_j)^2 + 1e-6)`` and the cosine similarity.  On
    standardised inputs the paper's relative distance divides the error by
    ``||x||``, which is largest for the rows farthest from the mean, so it
    hides global outliers and inflates the error of rows near the mean; the
    mean over features does not grow with the number of features, and its
    logarithm is roughly Gaussian for the inliers (errors are heavy-tailed),
    which suits the mixture that models it.
    """
    return _recon_pair(x, x_recon, "log_mse")


def _recon_pair(x: torch.Tensor, x_recon: torch.Tensor, first: str) -> torch.Tensor:
    """The closed-form node when only ``x_recon`` needs a gradient, else the plain formulas.

    The node saves three passes over (N, F) in a training step without the C
    kernels (``benchmarks/results/NOTES-speed.md``, eighth pass); without
    gradients (scoring, ONNX export) the formulas run as they are written.
    """
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or x_recon.requires_grad)
    if needs_grad and not x.requires_grad:
        return _ReconPair.apply(x, x_recon, first)
    return _pair_forward(x.flatten(1), x_recon.flatten(1), first)[0]


def _pair_forward(x: torch.Tensor, r: torch.Tensor, first: str) -> tuple:
    """Features of flattened (N, F) rows, and the per-row quantities the gradient needs."""
    x_norm = torch.linalg.vector_norm(x, dim=1)
    r_norm = torch.linalg.vector_norm(r, dim=1)
    diff = r - x  # (N, F)
    err = torch.linalg.vector_norm(diff, dim=1)  # ||x - x'||
    den = x_norm * r_norm
    cos = (x * r).sum(1) / den.clamp_min(RECON_EPS)  # not vecdot: ONNX has no operator for it
    if first == "relative":
        head = err / x_norm.clamp_min(RECON_EPS)
    else:
        head = torch.log(err.square() / x.shape[1] + LOG_MSE_EPS)
    return torch.stack([head, cos], dim=1), (diff, x_norm, r_norm, err, den, cos)  # (N, 2)


class _ReconPair(torch.autograd.Function):
    """The two features as one autograd node: the gradient with respect to ``x'`` is
    ``a_i (x'_i - x_i) + b_i x'_i + c_i x_i`` per row, three passes over (N, F)
    instead of a dozen.  The difference is kept from the forward rather than
    folded into the other two terms: for well reconstructed rows ``a`` is large
    and the folded form would cancel in float32."""

    @staticmethod
    def forward(ctx, x, x_recon, first):
        shape = x_recon.shape
        x, r = x.flatten(1), x_recon.flatten(1)  # (N, F)
        out, parts = _pair_forward(x, r, first)
        ctx.save_for_backward(x, r, *parts)
        ctx.first, ctx.shape = first, shape
        return out

    @staticmethod
    def backward(ctx, grad):
        x, r, diff, x_norm, r_norm, err, den, cos = ctx.saved_tensors
        g_head, g_cos = grad[:, 0], grad[:, 1]
        # d err / d x' = (x' - x) / err, zero where err == 0 (as torch's norm backward)
        if ctx.first == "relative":
            a = g_head / (err * x_norm.clamp_min(RECON_EPS))
        else:  # d log(err^2 / F + c) / d err = 2 err / (F (err^2 / F + c))
            a = 2.0 * g_head / (err.square() + LOG_MSE_EPS * x.shape[1])
        a = torch.where(err > 0, a, torch.zeros_like(a))
        # cos = x.x' / max(||x|| ||x'||, eps): d/dx' = x / den - cos x' / ||x'||^2 where not clamped
        c = g_cos / den.clamp_min(RECON_EPS)
        b = torch.where((den > RECON_EPS) & (r_norm > 0), -g_cos * cos / r_norm.square(), torch.zeros_like(cos))
        grad_r = torch.addcmul(torch.addcmul(diff * a[:, None], r, b[:, None]), x, c[:, None])  # (N, F)
        return None, grad_r.view(ctx.shape), None
