"""The optional C kernels (``src/dagmm/accel/_native*.c``) and the switch that selects them.

``setup.py`` compiles a few small C files at install time where a C compiler
is present (no torch headers, a few seconds).  They hold, for CPU tensors: the
mixture objective (:mod:`dagmm.accel.objective`) and the reconstruction features
(:mod:`dagmm.models.features`) in ``_native.c``; the tanh layers of fused stacks
(:mod:`dagmm.accel.fused`) in ``_native_act.c``; the estimation network as a whole
(:mod:`dagmm.accel.fused_head`) in ``_native_head.c``; inference through whole fully
connected stacks, and OutlierAEGMM's sample energy straight from the input rows
(:mod:`dagmm.accel.fused_mlp`) in ``_native_mlp.c``; the auto-encoder's training step
in ``_native_train.c`` (the register-blocked product both share is in
``_native_block.h``); Adam's update for :class:`dagmm.training.loop.LeanAdam` in
``_native_act.c``.  :mod:`dagmm.accel.train_step` strings them together into the
default training loss.  They compute the same
formulas as the torch code without the per-operation dispatch that dominates
these small computations (``benchmarks/results/NOTES-speed.md``, fourth and
fifth passes).  Where they were not built, the torch code runs instead, with
the same results up to rounding; the tests run both and compare them
(``tests/test_native.py``, ``tests/test_train_step.py`` and the
``kernel_backend`` fixture); ``benchmarks/native_ab.py`` times them.

``DAGMM_NATIVE=0`` in the environment (read at import) or ``dagmm.accel.native.enabled
= False`` turns the kernels off.
"""

from __future__ import annotations

import os

import torch

try:
    from . import _native as kernels
except ImportError:  # pragma: no cover - depends on the build
    kernels = None

__all__ = ["available", "enabled", "usable"]

#: Whether CPU tensors go through the C kernels when they are built.
enabled: bool = os.environ.get("DAGMM_NATIVE", "1") != "0"

_FLOATS = (torch.float32, torch.float64)


def available() -> bool:
    """Whether the C kernels were built with this install."""
    return kernels is not None


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels are on, built, and take these tensors: 2-D, non-empty, on the CPU, float32/float64."""
    return enabled and kernels is not None and all(
        t.device.type == "cpu" and t.dtype in _FLOATS and t.dim() == 2 and t.shape[0] > 0 and t.shape[1] > 0
        for t in tensors)
