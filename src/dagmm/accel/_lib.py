"""The compiled kernels (``dagmm.accel._native``), private to :mod:`dagmm.accel`.

The constants Python and C share (layer limits, tile size, activation and
feature codes) are defined once, in ``_native.h``, and exported by the module:
they are read from ``lib`` here, never copied.  Without the extension
(no C compiler at install) ``lib`` is None and the plain torch code runs.
"""

from __future__ import annotations

try:
    from . import _native as lib
except ImportError:  # pragma: no cover - depends on the build
    lib = None

__all__ = ["FAST", "lib"]

#: Built with the kernels' x86-64-v3 (AVX2 + FMA) clone and running on a CPU that has it.  Elsewhere
#: the stack kernels are correct but slower than torch (the baseline SSE2 build of their 8-float
#: vectors, ``_native_mlp.c``), so the torch code runs instead.
FAST: bool = lib is not None and bool(lib.mlp_fast())
