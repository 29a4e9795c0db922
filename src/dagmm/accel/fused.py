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

Without gradients, a float32 CPU chain of ``Linear`` layers each followed by
nothing, ``Tanh`` or ``ReLU`` runs as one C call (:mod:`dagmm.accel.fused_mlp`: tiles of
rows through every layer in cache), the same function up to float32 rounding.

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

from . import fused_head, fused_mlp, native

__all__ = ["buffer", "plan", "reuse_buffers", "run", "tanh"]

_LINEAR, _TANH, _RELU, _SIGMOID, _DROPOUT, _SOFTMAX = range(6)
_ELEMENTWISE = {nn.Tanh: _TANH, nn.ReLU: _RELU, nn.Sigmoid: _SIGMOID}
_aten = torch.ops.aten
_F32 = torch.float32
# layer kinds of the two-layer softmax heads that dagmm.accel.fused_head computes in C
_HEADS = ((_LINEAR, _TANH, _LINEAR, _SOFTMAX), (_LINEAR, _TANH, _DROPOUT, _LINEAR, _SOFTMAX))


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
    :meth:`dagmm.detectors.base.BaseDetector._batched_into` does.
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


def _native_tanh(x: torch.Tensor) -> bool:
    """Whether the C tanh kernels take ``x`` (float32 on the CPU, non-empty, kernels built and on)."""
    return (x.dtype == torch.float32 and x.device.type == "cpu" and x.numel() > 0 and native.enabled
            and native.kernels is not None)


class Plan:
    """The layers of a fusable stack, flattened.

    ``ops`` holds one ``(kind, module, weight, bias, link)`` tuple per layer:
    the Linear's parameters as they are now (None for other layers), and
    ``link`` = 1 for a Linear followed by a Tanh, 2 for a Linear followed
    only by the closing Softmax, else 0.  ``c_tanh``: every parameter is a
    float32 CPU tensor and every bias contiguous, as the C tanh kernels need.
    """

    __slots__ = ("ops", "flatten", "unflatten", "params", "c_tanh", "has_tanh", "head")

    def __init__(self, ops: list, flatten: bool, unflatten: Optional[tuple]) -> None:
        self.ops = ops
        self.flatten = flatten
        self.unflatten = unflatten
        params, c_tanh = [], True
        for _, _, w, b, _ in ops:
            if w is not None:
                params.append(w)
                c_tanh = c_tanh and w.dtype == _F32 and w.device.type == "cpu"
                if b is not None:
                    params.append(b)
                    c_tanh = c_tanh and b.dtype == _F32 and b.device.type == "cpu" and b.is_contiguous()
        self.params, self.c_tanh = params, c_tanh
        kinds = tuple(op[0] for op in ops)
        self.has_tanh = _TANH in kinds
        # a two-layer softmax head the C kernel of dagmm.accel.fused_head computes whole
        self.head = unflatten is None and kinds in _HEADS

    def spec(self) -> tuple:
        """Each layer's dropout probability in effect now (None where it does not drop): what module(x) would use."""
        return tuple(m.p if kind == _DROPOUT and m.training else None for kind, m, _, _, _ in self.ops)


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
            w = m._parameters.get("weight")  # the dict itself: Module.__getattr__ costs more than the walk
            if w is None:  # a weight that is no longer a parameter of this module (replaced by user code)
                return None
            ops.append([_LINEAR, m, w, m._parameters.get("bias"), 0])
        elif kind in _ELEMENTWISE:
            ops.append([_ELEMENTWISE[kind], m, None, None, 0])
        elif kind is nn.Dropout:
            ops.append([_DROPOUT, m, None, None, 0])
        elif kind is nn.Softmax and m.dim in (1, -1) and i == len(leaves) - 1:
            ops.append([_SOFTMAX, m, None, None, 0])
        elif kind is not nn.Identity:
            return None
    if not any(op[0] == _LINEAR for op in ops):
        return None
    for i in range(len(ops) - 1):
        if ops[i][0] == _LINEAR:
            nxt = ops[i + 1][0]
            ops[i][4] = 1 if nxt == _TANH else 2 if nxt == _SOFTMAX and i + 2 == len(ops) else 0
    ops = [tuple(op) for op in ops]
    return Plan(ops, flatten, unflatten)


def run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, fused when :func:`plan` allows it."""
    p = plan(module)
    if p is None or x.dim() < 2 or (x.dim() != 2 and not p.flatten):
        return module(x)
    h = x.flatten(1) if p.flatten else x  # (N, F)
    spec = p.spec()
    c_kernels = p.c_tanh and _native_tanh(h)
    c_tanh = p.has_tanh and c_kernels
    if c_tanh and p.head:
        return fused_head.run(h, p, spec)
    if torch.is_grad_enabled() and (h.requires_grad or any(q.requires_grad for q in p.params)):
        if not p.has_tanh:
            # Without tanh the fused forward is the module's own arithmetic, and torch's C++
            # autograd beats the Python backward below (an A/B of a ReLU auto-encoder's step:
            # 3.1 vs 3.3 ms): train with the module itself, score fused.
            return module(x)
        out = _FusedStack.apply(h, spec, p.ops, c_tanh, *p.params)
    else:
        layers = fused_mlp.chain(p.ops, spec) if c_kernels else None
        if layers is not None:
            out = fused_mlp.run(h, layers, buffer((id(module), "mlp"), h.shape[0], layers[-1][0].shape[0], h))
        else:
            out, _ = _forward(h, spec, p.ops, c_tanh, keep=False)
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


def _forward(h: torch.Tensor, spec: tuple, ops: list, c_tanh: bool, keep: bool) -> tuple[torch.Tensor, list]:
    """Run the stack; with ``keep`` also return what the backward needs, one entry per op.

    ``spec`` holds each layer's dropout probability (None when it does not
    drop); ``c_tanh``: a Linear followed by a Tanh runs as its bare product
    and the C kernel (bias and tanh in one pass, dagmm/accel/_native_act.c).
    """
    saved: list = []
    # May h be overwritten?  Never the caller's input, nor a tensor kept for the backward.
    owned = False
    done = False  # the C kernel applied this tanh with its layer's product
    for i, ((kind, m, w, b, link), prob) in enumerate(zip(ops, spec)):
        if done:
            saved.append(h if keep else None)
            owned, done = not keep, False
        elif kind == _LINEAR:
            if link == 2:
                # A softmax over a short last axis costs several times one over the first:
                # the last product is laid out (out, N), the result is its transposed view.
                out_t = torch.mm(w, h.t()) if b is None else torch.addmm(b[:, None], w, h.t())  # (out, N)
                y_t = torch.softmax(out_t, 0)  # (out, N)
                saved += [h, y_t] if keep else [None, None]
                return y_t.t(), saved
            out = None if keep else buffer((id(m), "out"), h.shape[0], w.shape[0], h)  # (N, out)
            if link == 1 and c_tanh:
                out = torch.mm(h, w.t(), out=out)  # (N, out)
                native.kernels.bias_tanh(out.data_ptr(), 0 if b is None else b.data_ptr(), *out.shape)
                done = True
            elif link == 1:
                # tanh(a) = 2 sigmoid(2a) - 1: the inner 2 costs nothing inside the product
                if b is None:
                    out = torch.mm(h, w.t(), out=out).mul_(2.0)  # (N, out)
                else:
                    out = torch.addmm(b, h, w.t(), beta=2.0, alpha=2.0, out=out)  # (N, out)
            elif b is None:
                out = torch.mm(h, w.t(), out=out)  # (N, out)
            else:
                out = torch.addmm(b, h, w.t(), out=out)  # (N, out)
            saved.append(h if keep else None)
            h, owned = out, True
        elif kind == _DROPOUT:
            mask = None if prob is None or prob == 0.0 else _dropout_mask(h, prob)
            if mask is not None:
                h, owned = (h.mul_(mask) if owned else h * mask), True
            saved.append(mask if keep else None)
        else:
            if kind == _TANH:
                if i > 0 and ops[i - 1][0] == _LINEAR:
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
    def forward(ctx, x, spec, ops, c_tanh, *params):
        out, saved = _forward(x, spec, ops, c_tanh, keep=True)
        ctx.ops, ctx.c_tanh = ops, c_tanh
        ctx.slots = [s is not None for s in saved]
        ctx.save_for_backward(*[s for s in saved if s is not None])
        return out

    @staticmethod
    def backward(ctx, grad):
        it = iter(ctx.saved_tensors)
        saved = [next(it) if slot else None for slot in ctx.slots]
        need = ctx.needs_input_grad  # (x, spec, ops, c_tanh, *params)
        g, grads = backward(ctx.ops, saved, grad, ctx.c_tanh, need[0])
        grads = [gr if need[4 + j] else None for j, gr in enumerate(grads)]
        return (g, None, None, None, *grads)


def backward(ops: list, saved: list, grad: torch.Tensor, c_tanh: bool,
             input_grad: bool) -> tuple[Optional[torch.Tensor], list]:
    """Gradients of a stack run by :func:`_forward` with ``keep=True``, for the output gradient ``grad``.

    Returns the input gradient (None unless ``input_grad``) and the
    parameter gradients in the order of :attr:`Plan.params`.
    """
    param_grads: list = []
    # the input gradient of op i is needed while an earlier op has a parameter, or x wants one
    first_param = next(i for i, op in enumerate(ops) if op[0] == _LINEAR)
    g = grad
    bias_grad = None  # computed by the C kernel together with a tanh's backward
    for i in range(len(ops) - 1, -1, -1):
        kind, _, w, b, link = ops[i]
        if kind == _LINEAR:
            if link == 2:  # g is the (out, N) gradient of the transposed product, see _forward
                gb = g.sum(1) if b is not None else None
                gw = g.mm(saved[i])  # (out, in)
                g_t = g.t()  # (N, out)
            else:
                gb = bias_grad if bias_grad is not None else g.sum(0) if b is not None else None
                bias_grad = None
                gw = g.t().mm(saved[i])  # (out, in)
                g_t = g
            param_grads.append((gw, gb))
            if i == first_param and not input_grad:
                g = None
                break
            g = g_t.mm(w)  # (N, in)
        elif kind == _DROPOUT:
            if saved[i] is not None:
                g = g * saved[i]
        elif kind == _TANH:
            y = saved[i]
            if c_tanh and g.dtype == y.dtype and g.shape == y.shape and g.is_contiguous() and y.is_contiguous():
                # g (1 - y^2) and, after a layer with a bias, its column sums in one pass
                out = torch.empty_like(y)
                if i > 0 and ops[i - 1][0] == _LINEAR and ops[i - 1][3] is not None:
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
        elif i > 0 and ops[i - 1][4] == 2:  # saved (out, N), see _forward
            g = _aten._softmax_backward_data(g.t().contiguous(), saved[i], 0, saved[i].dtype)  # (out, N)
        else:  # _SOFTMAX
            g = _aten._softmax_backward_data(g, saved[i], 1, saved[i].dtype)
    grads: list = []
    for gw, gb in reversed(param_grads):
        grads.append(gw)
        if gb is not None:
            grads.append(gb)
    return (g if input_grad else None), grads
