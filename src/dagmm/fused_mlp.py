"""Inference through a plain fully connected stack in one call of the C kernel of ``dagmm/_native_mlp.c``.

:func:`dagmm.fused.run` hands a stack here when no gradient is wanted, the
stack is a chain of ``Linear`` layers each followed by nothing, ``Tanh`` or
``ReLU`` (``Dropout`` that does not drop and ``Identity`` are skipped), every
parameter is float32 on the CPU, and the kernels are built and on
(:mod:`dagmm.native`).  The kernel takes a tile of rows through every layer
while its activations stay in cache, with bias and activation applied to each
product in place; about half the time of ``torch.mm`` per layer plus the
``tanh`` kernel for the KDDCUP networks at 16384 rows
(``benchmarks/results/NOTES-speed.md``, sixth pass).  The result is the same
function as the torch code up to float32 rounding (``tests/test_fused.py``).
"""

from __future__ import annotations

from typing import Optional

import torch

from . import native

__all__ = ["chain", "run"]

# kinds of dagmm.fused (kept in step with its constants: LINEAR, TANH, RELU, DROPOUT)
_LINEAR, _TANH, _RELU, _DROPOUT = 0, 1, 2, 4
_ACT = {_TANH: 1, _RELU: 2}
# rows per tile: the activations of a tile of the KDDCUP networks (widest 120) fit in L1/L2
TILE = 48


def chain(ops: list, spec: tuple) -> Optional[list]:
    """``[(weight, bias, activation code), ...]`` when ``ops`` is a chain the kernel runs, else None."""
    layers: list = []
    for (kind, _, w, b, _), prob in zip(ops, spec):
        if kind == _LINEAR:
            if not w.is_contiguous() or (b is not None and not b.is_contiguous()):
                return None
            if layers and layers[-1][0].shape[0] != w.shape[1]:
                return None
            layers.append([w, b, 0])
        elif kind in _ACT:
            if not layers or layers[-1][2]:
                return None  # an activation first, or two in a row
            layers[-1][2] = _ACT[kind]
        elif kind != _DROPOUT or prob:
            return None  # sigmoid, softmax, or a dropout that drops
    return layers or None


def run(h: torch.Tensor, layers: list, out: torch.Tensor) -> torch.Tensor:
    """Write the stack's output for float32 CPU rows ``h`` (N, in) into ``out`` (N, out_last)."""
    h = h.contiguous()
    spec = torch.tensor([[w.shape[1], w.shape[0], w.data_ptr(), 0 if b is None else b.data_ptr(), act]
                         for w, b, act in layers], dtype=torch.int64)  # (layers, 5)
    native.kernels.mlp_forward(h.data_ptr(), h.shape[0], out.data_ptr(), spec.data_ptr(), len(layers), TILE)
    return out
