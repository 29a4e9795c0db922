"""Build hook for the optional C kernel (``dagmm.accel._native``); everything else is in pyproject.toml.

The extension has no dependency beyond the C compiler and Python headers.  It is
optional: where it cannot be compiled the install goes on without it and dagmm
uses its pure-torch code paths (same results up to rounding; see ``dagmm.accel``).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dagmm.accel._native",
            sources=["src/dagmm/accel/_native.c", "src/dagmm/accel/_native_adam.c", "src/dagmm/accel/_native_head.c",
                     "src/dagmm/accel/_native_mlp.c", "src/dagmm/accel/_native_train.c"],
            depends=["src/dagmm/accel/_native.h", "src/dagmm/accel/_native_block.h"],
            # -fopenmp-simd: only the "omp simd" loop hints (vectorised sums), no OpenMP runtime;
            # -fno-trapping-math: selects instead of branches in vector loops (same values computed);
            # -fno-math-errno: sqrt without the errno branch that keeps loops calling it scalar (nothing
            # here reads errno; the values are the same)
            extra_compile_args=["-O3", "-std=c99", "-fopenmp-simd", "-fno-fast-math", "-fno-trapping-math",
                                "-fno-math-errno"],
            optional=True,
        )
    ]
)
