"""Reconstruction features that DAGMM appends to the latent code.

The paper uses the relative Euclidean distance ``||x - x'|| / ||x||`` and the
cosine similarity ``x . x' / (||x|| ||x'||)``.  Both are computed per row over
all non-batch dimensions, with a floor on the norms so that an all-zero row
gives a finite value instead of NaN.  (alibi-detect passes ``-1`` to the
epsilon argument by accident and returns the negative cosine; these do not.)
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.autograd.function import once_differentiable

from ..accel import native
from ..accel.fused import buffer

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

    On CPU both go through the C kernel of :mod:`dagmm.accel.native` where it is
    built: one pass over the rows forward and one backward, no (N, F) temporaries.
    """
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or x_recon.requires_grad)
    x2, r2 = x.flatten(1), x_recon.flatten(1)  # (N, F)
    fast = native.usable(x2, r2) and x2.dtype == r2.dtype and x2.shape == r2.shape and x2.is_contiguous() \
        and r2.is_contiguous()
    if needs_grad and not x.requires_grad:
        return (_NativeReconPair if fast else _ReconPair).apply(x, x_recon, first)
    if fast and not needs_grad:
        return _native_forward(x2, r2, first, None)
    return _pair_forward(x2, r2, first, reuse=not needs_grad)[0]


_MODES = {"relative": 0, "log_mse": 1}


def _native_forward(x: torch.Tensor, r: torch.Tensor, first: str, saved: Optional[torch.Tensor]) -> torch.Tensor:
    """Features of contiguous (N, F) rows by the C kernel; per-row norms into ``saved`` (N, 5) if given."""
    out = buffer(("recon features", "native"), x.shape[0], 2, x) if saved is None else x.new_empty((x.shape[0], 2))
    native.kernels.recon_forward(x.data_ptr(), r.data_ptr(), x.shape[0], x.shape[1], x.dtype == torch.float64,
                                 _MODES[first], RECON_EPS, LOG_MSE_EPS, out.data_ptr(),
                                 0 if saved is None else saved.data_ptr())
    return out


def _pair_forward(x: torch.Tensor, r: torch.Tensor, first: str, reuse: bool) -> tuple:
    """Features of flattened (N, F) rows, and the per-row quantities the gradient needs.

    With ``reuse`` the two (N, F) temporaries are written into buffers from
    :func:`dagmm.accel.fused.buffer` (reused from batch to batch when scoring);
    never when they are kept for a backward or autograd records the ops.
    """
    x_norm = torch.linalg.vector_norm(x, dim=1)
    r_norm = torch.linalg.vector_norm(r, dim=1)
    if reuse:
        diff = torch.sub(r, x, out=buffer(("recon features", "diff"), *x.shape, x))  # (N, F)
        dot = torch.mul(x, r, out=buffer(("recon features", "product"), *x.shape, x)).sum(1)  # as vecdot computes it
    else:
        diff = r - x  # (N, F)
        dot = torch.linalg.vecdot(x, r)
    err = torch.linalg.vector_norm(diff, dim=1)  # ||x - x'||
    den = x_norm * r_norm
    cos = dot / den.clamp_min(RECON_EPS)
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
        out, parts = _pair_forward(x, r, first, reuse=False)
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


class _NativeReconPair(torch.autograd.Function):
    """:class:`_ReconPair` computed by the C kernel (contiguous CPU rows of one float dtype)."""

    @staticmethod
    def forward(ctx, x, x_recon, first):
        x2, r2 = x.flatten(1), x_recon.flatten(1)  # (N, F)
        saved = torch.empty((x2.shape[0], 5), dtype=torch.float64)  # norms, error, their product, cosine
        out = _native_forward(x2, r2, first, saved)
        ctx.save_for_backward(x2, r2, saved)
        ctx.first, ctx.shape = first, x_recon.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, r, saved = ctx.saved_tensors
        return None, _native_backward(x, r, ctx.first, grad, saved).view(ctx.shape), None


def _native_backward(x: torch.Tensor, r: torch.Tensor, first: str, grad: torch.Tensor, saved: torch.Tensor,
                     sq_coef: float = 0.0) -> torch.Tensor:
    """d/dx' (N, F) of the features by the C kernel for ``grad`` (N, 2), any strides, and ``saved`` from
    :func:`_native_forward`; plus ``sq_coef (x' - x)``, the gradient of ``sq_coef / 2`` times the squared
    error (the loss of :mod:`dagmm.accel.train_step` adds it here)."""
    out = torch.empty_like(r)
    native.kernels.recon_backward(x.data_ptr(), r.data_ptr(), x.shape[0], x.shape[1], x.dtype == torch.float64,
                                  _MODES[first], RECON_EPS, LOG_MSE_EPS, grad.data_ptr(), *grad.stride(),
                                  grad.dtype == torch.float64, saved.data_ptr(), out.data_ptr(), sq_coef)
    return out
