/* Optional C kernels for the tanh layers of fused fully connected stacks (dagmm.accel.fused), float32.
 *
 * Private: dagmm.accel.fused calls them through dagmm.accel.native with raw data addresses, after checking
 * device, dtype, shapes and contiguity, and keeps its torch code for everything else.
 *
 * Why: on a CPU a tanh layer of DAGMM's narrow networks cost about as much as its matrix
 * product, as four passes over the (N, M) product: the bias broadcast into the output before
 * the product, sigmoid, a multiply and a subtract (tanh = 2 sigmoid(2 a) - 1, which torch
 * computes faster than its own tanh here).  bias_tanh is one pass; tanh_grad is the backward
 * (g (1 - y^2)) and the bias gradient (column sums) in one pass too
 * (benchmarks/results/NOTES-speed.md, fifth pass).
 *
 * The float32 tanh itself (tanh_f) is in _native.h.  Also here: Adam's step for a whole model
 * (adam_step, for dagmm.training.loop.LeanAdam), another elementwise pass over float32 arrays.
 */
#include "_native.h"

#include <math.h>
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

/* ---- Adam's step over all of a model's float32 parameters in one call (dagmm.training.loop.LeanAdam) ----
 * For each parameter: t += 1 (its float32 step counter), then per element
 *   g = grad + weight_decay p;  m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2;
 *   p -= (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps),
 * the update of torch.optim.Adam's documentation, the bias corrections in float64 and the rest in
 * float32.  torch's fused kernel orders a few of these operations differently, so the two agree to
 * float32 rounding, not bit for bit (tests/test_training.py).  Why: for DAGMM's twenty small tensors
 * the fused kernel's per-tensor dispatch and the step counters' updates cost ten times the arithmetic
 * (benchmarks/results/NOTES-speed.md, seventh pass). */
#define ADAM_LOOP(GRAD)                                                                                             \
    _Pragma("omp simd") for (Py_ssize_t i = 0; i < n; i++)                                                          \
    {                                                                                                                \
        const float gi = GRAD;                                                                                       \
        const float mi = b1 * m[i] + c1 * gi;                                                                        \
        const float vi = b2 * v[i] + c2 * (gi * gi);                                                                 \
        m[i] = mi;                                                                                                   \
        v[i] = vi;                                                                                                   \
        p[i] -= step_size * mi / (sqrtf(vi) * inv_bc2_sqrt + eps);                                                   \
    }

KERNEL static void adam_update(
    float *restrict p, const float *restrict g, float *restrict m, float *restrict v, Py_ssize_t n, float b1,
    float c1, float b2, float c2, float step_size, float inv_bc2_sqrt, float eps, float wd)
{
    if (wd != 0.0f)
        ADAM_LOOP(g[i] + wd * p[i])
    else
        ADAM_LOOP(g[i])
}
#undef ADAM_LOOP

/* adam_step(table, grads, lr, beta1, beta2, eps, weight_decay): table is int64 (n, 5) rows of parameter,
   first moment, second moment and step-counter addresses and the element count; grads a sequence of
   the n gradients' addresses */
PyObject *py_adam_step(PyObject *self, PyObject *args)
{
    unsigned long long tp;
    PyObject *grads;
    double lr, beta1, beta2, eps, wd;
    (void)self;
    if (!PyArg_ParseTuple(args, "KOddddd", &tp, &grads, &lr, &beta1, &beta2, &eps, &wd))
        return NULL;
    PyObject *seq = PySequence_Fast(grads, "adam_step: grads must be a sequence of addresses");
    if (!seq)
        return NULL;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    const int64_t *table = (const int64_t *)(uintptr_t)tp;
    for (Py_ssize_t j = 0; j < n; j++) {
        const float *g = (const float *)(uintptr_t)PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(seq, j));
        if (PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
        const int64_t *row = table + 5 * j;
        float *t = (float *)(uintptr_t)row[3];
        *t += 1.0f;
        const double bc1 = 1.0 - pow(beta1, (double)*t), bc2 = 1.0 - pow(beta2, (double)*t);
        adam_update((float *)(uintptr_t)row[0], g, (float *)(uintptr_t)row[1], (float *)(uintptr_t)row[2],
                    (Py_ssize_t)row[4], (float)beta1, (float)(1.0 - beta1), (float)beta2, (float)(1.0 - beta2),
                    (float)(lr / bc1), (float)(1.0 / sqrt(bc2)), (float)eps, (float)wd);
    }
    Py_DECREF(seq);
    Py_RETURN_NONE;
}
