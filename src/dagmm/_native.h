/* Shared by the C files of the optional extension dagmm._native (see _native.c). */
#ifndef DAGMM_NATIVE_H
#define DAGMM_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* The loops over rows are vectorised; built for the baseline x86-64 (2 doubles per vector) they
   run about 1.5x slower than with AVX2 (4).  Where the toolchain resolves function clones at load
   time (GCC, glibc), the kernels get an AVX2 clone chosen on CPUs that have it.  No -ffp-contract
   (ISO C mode keeps it off), so both clones round every operation alike; only the sums' order differs. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
#define KERNEL __attribute__((target_clones("avx2", "default")))
/* For the elementwise tanh kernels, whose tests bound the error rather than fix the rounding: the
   x86-64-v3 level (AVX2 + FMA, chosen by a feature test at load) with multiply-adds fused, about
   0.75x the time of the AVX2 clone at 16384 x 60 (NOTES-speed.md, fifth pass). */
#define KERNEL_FMA __attribute__((target_clones("arch=x86-64-v3", "default"), optimize("fp-contract=fast")))
#else
#define KERNEL
#define KERNEL_FMA
#endif

/* _native_act.c: the tanh layers of dagmm.fused */
PyObject *py_bias_tanh(PyObject *self, PyObject *args);
PyObject *py_tanh_grad(PyObject *self, PyObject *args);

#endif
