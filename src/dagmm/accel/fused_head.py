"""A two-layer softmax head (DAGMM's estimation network) on the C kernel of ``dagmm/accel/_native_head.c``.

:func:`dagmm.accel.fused.run` hands a stack here when it is exactly ``Linear, Tanh,
[Dropout,] Linear, Softmax(dim=1)`` (``dagmm.accel.fused._HEADS``) with float32 CPU parameters and input and
the kernels are built and on (:mod:`dagmm.accel.native`).  The result is the same
function as the torch code of :mod:`dagmm.accel.fused` up to float32 rounding, laid
out the same way (the transposed view of a (k, N) tensor), with the same
dropout draws: the uniforms come from torch's generator exactly as
``fused._dropout_mask`` draws them.  Forward and backward are one kernel call
each instead of about twenty torch operations (``benchmarks/results/NOTES-speed.md``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from . import native

__all__ = ["layers", "run"]

# Linear weight, Linear bias (or None) of each layer, then the dropout probability in effect
Layers = tuple


def layers(plan, spec: tuple) -> Layers:
    """``(w1, b1, w2, b2, prob)`` of a head's :class:`dagmm.accel.fused.Plan` and its per-layer ``spec``."""
    (_, _, w1, b1, _), (_, _, w2, b2, _) = [op for op in plan.ops if op[2] is not None]
    return w1, b1, w2, b2, spec[2] if len(spec) == 5 else None


def run(x: torch.Tensor, plan, spec: tuple) -> torch.Tensor:
    """The head's output (N, k) for float32 CPU ``x`` (N, din), as :func:`dagmm.accel.fused.run` returns it."""
    w1, b1, w2, b2, prob = layers(plan, spec)
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in plan.params)):
        return _Head.apply(x, prob, b1 is not None, b2 is not None, *plan.params)
    return forward(x, w1, b1, w2, b2, prob)[0].t()


def _uniforms(n: int, h: int, prob: Optional[float]) -> tuple[Optional[torch.Tensor], float]:
    """The draws of ``fused._dropout_mask`` for an (n, h) activation, and the keep probability."""
    if not prob:
        return None, 1.0
    if prob >= 1.0:  # everything dropped; nothing drawn, as fused._dropout_mask
        return torch.zeros((n, h)), 0.0
    return torch.rand((n, h)), 1.0 - prob


def forward(x, w1, b1, w2, b2, prob) -> tuple:
    """``(y (k, N), t (h, N), u, keep)``: outputs, tanh activations, dropout uniforms (or None), keep."""
    n, din = x.shape
    h, k = w1.shape[0], w2.shape[0]
    u, keep = _uniforms(n, h, prob)
    t = x.new_empty((h, n))
    y = x.new_empty((k, n))
    # named, so that copies made here live until the kernel has read them
    w1c, w2c = w1.detach().contiguous(), w2.detach().contiguous()
    b1c = None if b1 is None else b1.detach().contiguous()
    b2c = None if b2 is None else b2.detach().contiguous()
    native.kernels.head_forward(
        x.data_ptr(), *x.stride(), n, din, w1c.data_ptr(), 0 if b1c is None else b1c.data_ptr(),
        h, w2c.data_ptr(), 0 if b2c is None else b2c.data_ptr(), k,
        0 if u is None else u.data_ptr(), *(u.stride() if u is not None else (0, 0)), keep,
        t.data_ptr(), y.data_ptr())
    return y, t, u, keep


def backward(x, w1, w2, has_b1: bool, has_b2: bool, u, keep: float, t, y, g, input_grad: bool) -> tuple:
    """Gradients of :func:`forward` for ``g`` (N, k), any strides: ``(gx (din, N) or None, [gw1, gb1, gw2, gb2])``

    (the biases' entries only where the layers have one, the order of ``Plan.params``).
    """
    n, din = x.shape
    h, k = w1.shape[0], w2.shape[0]
    g = g if g.dtype == torch.float32 else g.float()
    gx = x.new_empty((din, n)) if input_grad else None
    gw1, gw2 = torch.empty_like(w1), torch.empty_like(w2)
    gb1 = w1.new_empty(h) if has_b1 else None
    gb2 = w2.new_empty(k) if has_b2 else None
    w1c, w2c = w1.detach().contiguous(), w2.detach().contiguous()
    native.kernels.head_backward(
        x.data_ptr(), *x.stride(), n, din, w1c.data_ptr(), h, w2c.data_ptr(), k,
        0 if u is None else u.data_ptr(), *(u.stride() if u is not None else (0, 0)), keep,
        t.data_ptr(), y.data_ptr(), g.data_ptr(), *g.stride(), 0 if gx is None else gx.data_ptr(),
        gw1.data_ptr(), 0 if gb1 is None else gb1.data_ptr(), gw2.data_ptr(), 0 if gb2 is None else gb2.data_ptr())
    return gx, [gr for gr in (gw1, gb1, gw2, gb2) if gr is not None]


class _Head(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, prob, has_b1, has_b2, *params):
        it = iter(params)
        w1 = next(it)
        b1 = next(it) if has_b1 else None
        w2 = next(it)
        b2 = next(it) if has_b2 else None
        y, t, u, keep = forward(x, w1, b1, w2, b2, prob)
        ctx.keep, ctx.has_b1, ctx.has_b2 = keep, has_b1, has_b2
        ctx.save_for_backward(x, w1, w2, t, y, *([u] if u is not None else []))
        return y.t()  # (N, k) view of (k, N)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, w1, w2, t, y, *rest = ctx.saved_tensors
        need = ctx.needs_input_grad  # (x, prob, has_b1, has_b2, *params)
        gx, grads = backward(x, w1, w2, ctx.has_b1, ctx.has_b2, rest[0] if rest else None, ctx.keep, t, y, g, need[0])
        grads = [gr if need[4 + j] else None for j, gr in enumerate(grads)]
        return (None if gx is None else gx.t(), None, None, None, *grads)
