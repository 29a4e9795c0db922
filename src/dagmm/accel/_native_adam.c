/* Adam's step over all of a model's float32 parameters in one call, for dagmm.training.loop.LeanAdam.
 *
 * Private: dagmm.accel calls it with raw data addresses from an AdamPlan, which checked every tensor's
 * device, dtype, shape and contiguity when it was made and checks before each step that no parameter
 * was given new storage; torch.optim.Adam's own kernel runs for everything else.
 */
#include "_native.h"

#include <math.h>
#include <stdlib.h>

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
