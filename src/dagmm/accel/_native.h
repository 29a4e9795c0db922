/* Shared by the C files of the optional extension dagmm.accel._native (see _native.c). */
#ifndef DAGMM_NATIVE_H
#define DAGMM_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* Constants the Python side needs too, defined only here: the module exports each under its name
   without the DAGMM_ prefix, and dagmm.accel reads them from there (no copy in Python).
   Layers per stack (per encoder + decoder in training); latent code + 2 features; mixture components. */
#define DAGMM_MAX_LAYERS 64
#define DAGMM_MAX_Z 64
#define DAGMM_MAX_K 64
/* Rows per tile: the activations of a tile of the KDDCUP networks (widest 120) fit in L1/L2; tiles of
   24 to 128 rows made no measurable difference in training (NOTES-speed.md, seventh pass). */
#define DAGMM_TILE 48
/* Activation after a layer, and the first reconstruction feature (relative distance / log mean
   squared error; the second is always the cosine). */
enum { ACT_NONE = 0, ACT_TANH = 1, ACT_RELU = 2 };
enum { FEAT_RELATIVE = 0, FEAT_LOG_MSE = 1 };

/* The loops over rows are vectorised; built for the baseline x86-64 (2 doubles per vector) they
   run about 1.5x slower than with AVX2 (4).  Where the toolchain resolves function clones at load
   time (GCC, glibc), the kernels get an AVX2 clone chosen on CPUs that have it.  No -ffp-contract
   (ISO C mode keeps it off), so both clones round every operation alike; only the sums' order differs. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__)
#define KERNEL __attribute__((target_clones("avx2", "default")))
/* For the stack kernels (_native_mlp.c, _native_train.c), whose tests bound the error rather than fix the rounding: the
   x86-64-v3 level (AVX2 + FMA, chosen by a feature test at load) with multiply-adds fused, about
   0.75x the time of the AVX2 clone at 16384 x 60 (NOTES-speed.md, fifth pass). */
#define KERNEL_FMA __attribute__((target_clones("arch=x86-64-v3", "default"), optimize("fp-contract=fast")))
#define DAGMM_CLONES 1
#else
#define DAGMM_CLONES 0
#define KERNEL
#define KERNEL_FMA
#endif

/* ---- float32 tanh and exp, written so that GCC vectorises loops calling them ----
 *
 * tanh(a) = expm1(2a) / (expm1(2a) + 2), with expm1 computed in float32 from the reduction
 * 2a = n ln2 + r, |r| <= ln2 / 2 (ln2 split in two so n ln2 is exact), a degree-6 polynomial
 * for expm1(r) (relative error 1.4e-8 on that interval, fitted for this file), and 2^n built
 * from its exponent bits.  expm1 rather than exp keeps small |a| exact to float32 rounding
 * (tanh(1e-4) is 1e-4, not 1.0002e-4 as 1 - 2 / (exp(2a) + 1) would give).  |a| is clamped to 9,
 * where tanh is 1 to float32 precision; NaN passes through as NaN.  Largest absolute error
 * against float64 tanh, over all float32 in [-12, 12] sampled finely: under 1.5e-7
 * (tests/test_native.py bounds it at 2e-7).  Written without intrinsics so that GCC
 * vectorises it; -fno-trapping-math lets it turn the clamps into selects (the values computed
 * are the same; only floating-point exception flags, which nothing here reads, may differ).
 */
static inline float expm1_reduced(float u, float *scale)
{
    /* u = n ln2 + r: returns expm1(r), and 2^n in *scale (for -126 <= n <= 127) */
    float nf = (u * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(u / ln2) */
    float r = u - nf * 0.693145751953125f;                               /* ln2, high part: exact */
    r = r - nf * 1.428606765330187e-06f;                                 /* ln2, low part */
    float r2 = r * r;
    /* r + r^2 / 2 + r^3 (c3 + c4 r + c5 r^2 + c6 r^3), the cubic in two halves */
    float p = (0.16666549444198608f + 0.04166685417294502f * r) +
              r2 * (0.008366034366190434f + 0.0013898223405703902f * r);
    int32_t n = (int32_t)nf;
    uint32_t bits = ((uint32_t)n + 127u) << 23;
    memcpy(scale, &bits, sizeof *scale);
    return r + r2 * (0.5f + r * p);
}

static inline float tanh_f(float x)
{
    float a = x > 9.0f ? 9.0f : x;
    a = a < -9.0f ? -9.0f : a; /* NaN fails both tests and stays NaN */
    float s;
    float q = expm1_reduced(a + a, &s);
    float em1 = q * s + (s - 1.0f); /* expm1(2a) = 2^n expm1(r) + 2^n - 1: exactly q when n = 0 */
    return em1 / (em1 + 2.0f);
}

/* exp(x) for x <= 0 (a softmax's shifted logits): 0 below -87, where float32 turns subnormal */
static inline float exp_neg(float x)
{
    float s;
    float q = expm1_reduced(x < -87.0f ? -87.0f : x, &s);
    float e = q * s + s;
    return x < -87.0f ? 0.0f : e; /* NaN fails the test and stays NaN */
}

/* _native.c: the reconstruction features of rows of x (n, f) and x' (rows ldr apart), mode 0 relative
   distance / 1 log mean squared error, then cosine, into out (n, 2); per-row norms into saved unless NULL */
void recon_forward(const void *x, const void *r, Py_ssize_t ldr, Py_ssize_t n, Py_ssize_t f, int is_double, int mode,
                   double eps, double log_eps, void *out, double *saved);

/* _native.c: the gradient with respect to x' of those features for grad (n, 2) (element strides gs0, gs1),
   plus sq_coef (x' - x), into out (rows ldo apart) */
void recon_backward(const void *x, const void *r, Py_ssize_t ldr, Py_ssize_t n, Py_ssize_t f, int is_double, int mode,
                    double eps, double log_eps, const void *gp, Py_ssize_t gs0, Py_ssize_t gs1, int g_double,
                    const double *saved, double sq_coef, void *out, Py_ssize_t ldo);

/* _native_act.c: Adam's update for dagmm.training.loop.LeanAdam */
PyObject *py_adam_step(PyObject *self, PyObject *args);

/* _native_head.c: the two-layer softmax head (DAGMM's estimation network) */
PyObject *py_head_forward(PyObject *self, PyObject *args);
PyObject *py_head_backward(PyObject *self, PyObject *args);

/* _native_mlp.c: inference through fully connected stacks, and the sample energy */
PyObject *py_mlp_forward(PyObject *self, PyObject *args);
PyObject *py_aegmm_energy(PyObject *self, PyObject *args);
PyObject *py_mlp_fast(PyObject *self, PyObject *args);

/* _native_train.c: the auto-encoder of the one-node training loss, forward and backward */
PyObject *py_train_forward(PyObject *self, PyObject *args);
PyObject *py_train_backward(PyObject *self, PyObject *args);

#endif
