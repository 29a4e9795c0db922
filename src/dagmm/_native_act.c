/* Optional C kernels for the tanh layers of fused fully connected stacks (dagmm.fused), float32.
 *
 * Private: dagmm.fused calls them through dagmm.native with raw data addresses, after checking
 * device, dtype, shapes and contiguity, and keeps its torch code for everything else.
 *
 * Why: on a CPU a tanh layer of DAGMM's narrow networks cost about as much as its matrix
 * product, as four passes over the (N, M) product: the bias broadcast into the output before
 * the product, sigmoid, a multiply and a subtract (tanh = 2 sigmoid(2 a) - 1, which torch
 * computes faster than its own tanh here).  bias_tanh is one pass; tanh_grad is the backward
 * (g (1 - y^2)) and the bias gradient (column sums) in one pass too
 * (benchmarks/results/NOTES-speed.md, fifth pass).
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
#include "_native.h"

#include <stdint.h>
#include <string.h>

static inline float tanh_f(float x)
{
    float a = x > 9.0f ? 9.0f : x;
    a = a < -9.0f ? -9.0f : a; /* NaN fails both tests and stays NaN */
    float u = a + a;
    float nf = (u * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(u / ln2), |u| <= 18 */
    float r = u - nf * 0.693145751953125f;                               /* ln2, high part: exact */
    r = r - nf * 1.428606765330187e-06f;                                 /* ln2, low part */
    float r2 = r * r;
    /* expm1(r) = r + r^2 / 2 + r^3 (c3 + c4 r + c5 r^2 + c6 r^3), evaluated in two halves */
    float p = (0.16666549444198608f + 0.04166685417294502f * r) +
              r2 * (0.008366034366190434f + 0.0013898223405703902f * r);
    float q = r + r2 * (0.5f + r * p);
    int32_t n = (int32_t)nf;
    uint32_t bits = ((uint32_t)n + 127u) << 23; /* 2^n, -26 <= n <= 26 */
    float s;
    memcpy(&s, &bits, sizeof s);
    float em1 = q * s + (s - 1.0f); /* expm1(u) = 2^n expm1(r) + 2^n - 1: exactly q when n = 0 */
    return em1 / (em1 + 2.0f);
}

/* y[i, j] = tanh(y[i, j] + b[j]) in place, y contiguous (n, m); no bias when b is NULL. */
KERNEL_FMA static void bias_tanh(float *restrict y, const float *restrict b, Py_ssize_t n, Py_ssize_t m)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        float *restrict row = y + i * m;
        if (b) {
#pragma omp simd
            for (Py_ssize_t j = 0; j < m; j++)
                row[j] = tanh_f(row[j] + b[j]);
        } else {
#pragma omp simd
            for (Py_ssize_t j = 0; j < m; j++)
                row[j] = tanh_f(row[j]);
        }
    }
}

/* out = g (1 - y^2), all contiguous (n, m); and, when gb is not NULL, gb[j] = sum_i out[i, j]
   (summed in float64, in the order of the rows). */
KERNEL_FMA static void tanh_grad(const float *restrict g, const float *restrict y, float *restrict out,
                             float *restrict gb, double *restrict acc, Py_ssize_t n, Py_ssize_t m)
{
    if (gb) {
        for (Py_ssize_t j = 0; j < m; j++)
            acc[j] = 0.0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const float *restrict gr = g + i * m;
        const float *restrict yr = y + i * m;
        float *restrict o = out + i * m;
#pragma omp simd
        for (Py_ssize_t j = 0; j < m; j++)
            o[j] = gr[j] * (1.0f - yr[j] * yr[j]);
        if (gb) {
#pragma omp simd
            for (Py_ssize_t j = 0; j < m; j++)
                acc[j] += (double)o[j];
        }
    }
    if (gb) {
        for (Py_ssize_t j = 0; j < m; j++)
            gb[j] = (float)acc[j];
    }
}

PyObject *py_bias_tanh(PyObject *self, PyObject *args)
{
    unsigned long long yp, bp;
    Py_ssize_t n, m;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKnn", &yp, &bp, &n, &m))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    bias_tanh((float *)(uintptr_t)yp, (const float *)(uintptr_t)bp, n, m);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

PyObject *py_tanh_grad(PyObject *self, PyObject *args)
{
    unsigned long long gp, yp, op, bp;
    Py_ssize_t n, m;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKKKnn", &gp, &yp, &op, &bp, &n, &m))
        return NULL;
    double *acc = NULL;
    if (bp) {
        acc = malloc((size_t)m * sizeof *acc);
        if (!acc)
            return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    tanh_grad((const float *)(uintptr_t)gp, (const float *)(uintptr_t)yp, (float *)(uintptr_t)op,
              (float *)(uintptr_t)bp, acc, n, m);
    Py_END_ALLOW_THREADS
    free(acc);
    Py_RETURN_NONE;
}
