"""Fused execution of plain fully connected stacks.

DAGMM's networks are small: on a CPU each layer's ``tanh`` cost about as much
as its matrix product, and scoring allocated a fresh multi-megabyte result
per layer and batch.  An ``nn.Sequential`` made only of ``nn.Linear`` layers
and the elementwise layers below runs here with each activation written in
place over its layer's product (into buffers reused from batch to batch while
scoring, see :func:`reuse_buffers`) and a faster ``tanh``.  With gradients, a
stack with a ``Tanh`` runs as one autograd node whose backward is written out
by hand (one product for the weight gradient, one for the input gradient, a
row sum for the bias, one kernel per activation).

Supported layers (exact types, so a subclass with its own ``forward`` is never
bypassed): ``Linear``, ``Tanh``, ``ReLU``, ``Sigmoid``, ``Identity``,
``Dropout``, nested ``Sequential``, ``Flatten()`` as the first layer,
``Unflatten(1, shape)`` and ``Softmax(dim=1)`` as the last.  Anything else, any
registered hook, or inputs that are not 2-D after the leading ``Flatten`` make
:func:`run` call the module as usual, so the result never depends on whether
the fast path applies beyond float rounding.  When gradients are wanted, only
stacks with a ``Tanh`` take the fused node (their ``tanh`` must be the one
scoring uses); the others train as plain modules, whose forward is the same
arithmetic and whose backward torch runs faster from C++.

A closing ``Linear`` + ``Softmax`` is computed laid out (out, N), where the
softmax runs over the first, long axis (about five times faster at 1024 x 4,
``benchmarks/results/NOTES-speed.md``);
the result is the transposed view of that (N, out) tensor, so it is not
contiguous (``.reshape`` works on it, ``.view`` does not).

``tanh`` is computed as ``2 * sigmoid(2 x) - 1`` (the factor 2 folded into the
layer's product): the same function, faster than ``torch.tanh`` on CPUs whose
vectorised ``tanh`` is slow (about half the time on 1024 x 60 here, see
``benchmarks/results/NOTES-speed.md``), with an absolute difference below
``3e-7`` in float32 (see ``tests/test_fused.py``).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Hashable, Iterator, Optional

import torch
from torch import nn
from torch.nn.modules import module as _module

from . import native

__all__ = ["buffer", "plan", "reuse_buffers", "run", "tanh"]

_LINEAR, _TANH, _RELU, _SIGMOID, _DROPOUT, _SOFTMAX = range(6)
_ELEMENTWISE = {nn.Tanh: _TANH, nn.ReLU: _RELU, nn.Sigmoid: _SIGMOID}
_aten = torch.ops.aten


_ARENA = threading.local()


@contextlib.contextmanager
def reuse_buffers() -> Iterator[None]:
    """Keep the outputs of inference-mode fused stacks in buffers reused from call to call.

    Scoring runs the same shapes batch after batch; a fresh multi-megabyte
    result per layer is a fresh ``mmap`` from the C allocator, and touching
    its pages for the first time cost more than the arithmetic on this kind
    of machine.  Inside this context every such result (and the temporaries
    of the default reconstruction features) lives in one buffer per layer,
    sized for the largest batch seen, so a result is only valid until the
    next call: the caller must consume or copy it first, as
    :meth:`dagmm.base.BaseDetector._batched_into` does.
    """
    previous = getattr(_ARENA, "buffers", None)
    _ARENA.buffers = {}
    try:
        yield
    finally:
        _ARENA.buffers = previous


def buffer(key: Hashable, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """A (rows, cols) tensor like ``like``: a reused one inside :func:`reuse_buffers`, else new."""
    buffers = getattr(_ARENA, "buffers", None)
    if buffers is None:
        return torch.empty((rows, cols), dtype=like.dtype, device=like.device)
    buf = buffers.get(key)
    if buf is None or buf.shape[0] < rows or buf.shape[1] != cols or buf.dtype != like.dtype or buf.device != like.device:
        buf = buffers[key] = torch.empty((rows, cols), dtype=like.dtype, device=like.device)
    return buf[:rows]  # contiguous: rows of a row-major buffer


def tanh(x: torch.Tensor) -> torch.Tensor:
    """``tanh`` as fused stacks compute it, out of place: the C kernel, else ``2 sigmoid(2 x) - 1``."""
    if _native_tanh(x):
        y = torch.empty((1, x.numel()), dtype=x.dtype).copy_(x.reshape(1, -1))  # (1, numel)
        native.kernels.bias_tanh(y.data_ptr(), 0, *y.shape)
        return y.view(x.shape)
    return torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)


def _native_tanh(*tensors: torch.Tensor) -> bool:
    """Whether the C tanh kernels take these tensors (float32 on the CPU, kernels built and on)."""
    return all(t.dtype == torch.float32 for t in tensors) and native.usable(
        *(t if t.dim() == 2 else t.reshape(1, -1) for t in tensors))


class Plan:
    """The layers of a fusable stack, flattened: ``ops`` holds (kind, module) pairs."""

    __slots__ = ("ops", "flatten", "unflatten", "params")

    def __init__(self, ops: list, flatten: bool, unflatten: Optional[tuple]) -> None:
        self.ops = ops
        self.flatten = flatten
        self.unflatten = unflatten
        self.params = [p for kind, m in ops if kind == _LINEAR for p in (m.weight, m.bias) if p is not None]


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _global_hooks() -> bool:
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks
                or _module._global_backward_hooks or getattr(_module, "_global_backward_pre_hooks", None))


def _leaves(seq: nn.Sequential, out: list) -> bool:
    """Append the leaf layers of ``seq`` (nested Sequentials opened); False if one is hooked."""
    if _hooked(seq):
        return False
    for m in seq:
        if type(m) is nn.Sequential:
            if not _leaves(m, out):
                return False
        elif _hooked(m):
            return False
        else:
            out.append(m)
    return True


def plan(module: nn.Module) -> Optional[Plan]:
    """The fused form of ``module``, or None when it must run as a plain module.

    Cheap (a walk over the layers), so it is recomputed on every call and a
    model changed after construction is never run from a stale description.
    """
    if type(module) is not nn.Sequential or _global_hooks():
        return None
    leaves: list = []
    if not _leaves(module, leaves) or not leaves:
        return None
    flatten, unflatten = False, None
    if type(leaves[0]) is nn.Flatten:
        if leaves[0].start_dim != 1 or leaves[0].end_dim != -1:
            return None
        flatten, leaves = True, leaves[1:]
    if leaves and type(leaves[-1]) is nn.Unflatten:
        if leaves[-1].dim != 1:
            return None
        unflatten, leaves = tuple(leaves[-1].unflattened_size), leaves[:-1]
    ops = []
    for i, m in enumerate(leaves):
        kind = type(m)
        if kind is nn.Linear:
            ops.append((_LINEAR, m))
        elif kind in _ELEMENTWISE:
            ops.append((_ELEMENTWISE[kind], m))
        elif kind is nn.Dropout:
            ops.append((_DROPOUT, m))
        elif kind is nn.Softmax and m.dim in (1, -1) and i == len(leaves) - 1:
            ops.append((_SOFTMAX, m))
        elif kind is not nn.Identity:
            return None
    if not any(kind == _LINEAR for kind, _ in ops):
        return None
    return Plan(ops, flatten, unflatten)


def run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, fused when :func:`plan` allows it."""
    p = plan(module)
    if p is None or x.dim() < 2 or (x.dim() != 2 and not p.flatten):
        return module(x)
    h = x.flatten(1) if p.flatten else x  # (N, F)
    # Dropout's mode is read now: it is what module(x) would use.
    spec = tuple((kind, m.p if kind == _DROPOUT and m.training else None) for kind, m in p.ops)
    if torch.is_grad_enabled() and (h.requires_grad or any(q.requires_grad for q in p.params)):
        if not any(kind == _TANH for kind, _ in spec):
            # Without tanh the fused forward is the module's own arithmetic, and torch's C++
            # autograd beats the Python backward below (an A/B of a ReLU auto-encoder's step:
            # 3.1 vs 3.3 ms): train with the module itself, score fused.
            return module(x)
        out = _FusedStack.apply(h, spec, p.ops, *p.params)
    else:
        out, _ = _forward(h, spec, p.ops, keep=False)
    return out.unflatten(1, p.unflatten) if p.unflatten is not None else out


def _dropout_mask(h: torch.Tensor, prob: float) -> torch.Tensor:
    """The scaled keep-mask: ``floor(u + keep)`` is 1 with probability ``keep`` for uniform ``u``.

    Drawn from the same generator as ``nn.Dropout`` (so ``torch.manual_seed``
    makes it reproducible), but with uniforms instead of ``bernoulli_``,
    which is about three times slower on CPU.
    """
    if prob >= 1.0:
        return torch.zeros_like(h)
    keep = 1.0 - prob
    return torch.rand_like(h).add_(keep).floor_().div_(keep)


def _softmax_tail(spec: tuple, i: int) -> bool:
    """Whether op ``i`` is a Linear followed only by the closing Softmax."""
    return i + 2 == len(spec) and spec[i + 1][0] == _SOFTMAX


def _forward(h: torch.Tensor, spec: tuple, ops: list, keep: bool) -> tuple[torch.Tensor, list]:
    """Run the stack; with ``keep`` also return what the backward needs, one entry per op."""
    saved: list = []
    # May h be overwritten?  Never the caller's input, nor a tensor kept for the backward.
    owned = False
    done = False  # the C kernel applied this tanh with its layer's product
    for i, (kind, prob) in enumerate(spec):
        m = ops[i][1]
        if done:
            saved.append(h if keep else None)
            owned, done = not keep, False
            continue
        if kind == _LINEAR and _softmax_tail(spec, i):
            # A softmax over a short last axis costs several times one over the first:
            # the last product is laid out (out, N), the result is its transposed view.
            if m.bias is None:
                out_t = torch.mm(m.weight, h.t())  # (out, N)
            else:
                out_t = torch.addmm(m.bias[:, None], m.weight, h.t())  # (out, N)
            y_t = torch.softmax(out_t, 0)  # (out, N)
            saved += [h if keep else None, y_t if keep else None]
            return y_t.t(), saved
        if kind == _LINEAR:
            to_tanh = i + 1 < len(spec) and spec[i + 1][0] == _TANH
            out = buffer((id(m), "out"), h.shape[0], m.out_features, h) if not keep else None  # (N, out)
            if to_tanh and _native_tanh(h, m.weight, *([] if m.bias is None else [m.bias])) and (
                    m.bias is None or m.bias.is_contiguous()):
                # one pass for bias and tanh after the bare product (dagmm/_native_act.c)
                out = torch.mm(h, m.weight.t(), out=out)  # (N, out)
                native.kernels.bias_tanh(out.data_ptr(), 0 if m.bias is None else m.bias.data_ptr(), *out.shape)
                saved.append(h if keep else None)
                h, owned, done = out, True, True
                continue
            # tanh(a) = 2 sigmoid(2a) - 1: the inner 2 costs nothing inside the product
            scale = 2.0 if to_tanh else 1.0
            if m.bias is None:
                out = torch.mm(h, m.weight.t(), out=out)  # (N, out)
                if scale != 1.0:
                    out.mul_(scale)
            else:
                out = torch.addmm(m.bias, h, m.weight.t(), beta=scale, alpha=scale, out=out)  # (N, out)
            saved.append(h if keep else None)
            h, owned = out, True
        elif kind == _DROPOUT:
            mask = None if prob is None or prob == 0.0 else _dropout_mask(h, prob)
            if mask is not None:
                h, owned = (h.mul_(mask) if owned else h * mask), True
            saved.append(mask if keep else None)
        else:
            if kind == _TANH:
                if i > 0 and spec[i - 1][0] == _LINEAR:
                    h = h.sigmoid_()  # the product already holds 2a
                else:
                    h = torch.sigmoid(h * 2.0)
                h = h.mul_(2.0).sub_(1.0)
            elif kind == _RELU:
                h = h.clamp_min_(0.0) if owned else h.clamp_min(0.0)
            elif kind == _SIGMOID:
                h = h.sigmoid_() if owned else h.sigmoid()
            else:  # _SOFTMAX
                h = torch.softmax(h, 1)
            saved.append(h if keep else None)
            owned = not keep
    return h, saved


class _FusedStack(torch.autograd.Function):
    """One autograd node for a whole stack; ``params`` are the Linear weights and biases in order."""

    @staticmethod
    def forward(ctx, x, spec, ops, *params):
        out, saved = _forward(x, spec, ops, keep=True)
        ctx.spec, ctx.ops = spec, ops
        ctx.slots = [s is not None for s in saved]
        ctx.save_for_backward(*[s for s in saved if s is not None])
        return out

    @staticmethod
    def backward(ctx, grad):
        spec, ops = ctx.spec, ctx.ops
        it = iter(ctx.saved_tensors)
        saved = [next(it) if slot else None for slot in ctx.slots]
        need = ctx.needs_input_grad  # (x, spec, ops, *params)
        param_grads: list = []
        # the input gradient of op i is needed while an earlier op has a parameter, or x wants one
        first_param = next((i for i, (kind, _) in enumerate(spec) if kind == _LINEAR), len(spec))
        g = grad
        bias_grad = None  # computed by the C kernel together with a tanh's backward
        for i in range(len(spec) - 1, -1, -1):
            kind, prob = spec[i]
            if kind == _LINEAR and _softmax_tail(spec, i):
                m = ops[i][1]
                # g is the (out, N) gradient of the transposed product, see _forward
                gb = g.sum(1) if m.bias is not None else None
                gw = g.mm(saved[i])  # (out, in)
                param_grads.append((gw, gb))
                if i > first_param or need[0]:
                    g = g.t().mm(m.weight)  # (N, in)
                else:
                    g = None
                    break
            elif kind == _LINEAR:
                m = ops[i][1]
                a = saved[i]
                gb = bias_grad if bias_grad is not None else g.sum(0) if m.bias is not None else None
                bias_grad = None
                gw = g.t().mm(a)  # (out, in)
                param_grads.append((gw, gb))
                if i > first_param or need[0]:
                    g = g.mm(m.weight)  # (N, in)
                else:
                    g = None
                    break
            elif kind == _DROPOUT:
                if saved[i] is not None:
                    g = g * saved[i]
            elif kind == _TANH:
                y = saved[i]
                if g.is_contiguous() and y.is_contiguous() and g.shape == y.shape and _native_tanh(g, y):
                    # g (1 - y^2) and, after a layer with a bias, its column sums in one pass
                    m = ops[i - 1][1] if i > 0 and spec[i - 1][0] == _LINEAR else None
                    out = torch.empty_like(y)
                    if m is not None and m.bias is not None:
                        bias_grad = y.new_empty(y.shape[1])
                    native.kernels.tanh_grad(g.data_ptr(), y.data_ptr(), out.data_ptr(),
                                             0 if bias_grad is None else bias_grad.data_ptr(), *y.shape)
                    g = out
                else:
                    g = _aten.tanh_backward(g, y)
            elif kind == _RELU:
                g = _aten.threshold_backward(g, saved[i], 0)
            elif kind == _SIGMOID:
                g = _aten.sigmoid_backward(g, saved[i])
            elif i > 0 and _softmax_tail(spec, i - 1):  # saved (out, N), see _forward
                g = _aten._softmax_backward_data(g.t().contiguous(), saved[i], 0, saved[i].dtype)  # (out, N)
            else:  # _SOFTMAX
                g = _aten._softmax_backward_data(g, saved[i], 1, saved[i].dtype)
        grads: list = []
        for gw, gb in reversed(param_grads):
            grads.append(gw)
            if gb is not None:
                grads.append(gb)
        grads = [gr if need[3 + j] else None for j, gr in enumerate(grads)]
        return (g if need[0] else None, None, None, *grads)
