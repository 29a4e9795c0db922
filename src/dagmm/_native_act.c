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
 * The float32 tanh itself (tanh_f) is in _native.h.
 */
#include "_native.h"

#include <stdlib.h>

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
