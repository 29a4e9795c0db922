/* Optional C kernel for a two-layer softmax head: Linear (din -> h), Tanh, optional Dropout,
 * Linear (h -> k), Softmax over the k outputs -- DAGMM's estimation network (3 -> 10 -> 4 in the
 * paper's KDDCUP configuration) -- forward and backward, float32.
 *
 * Private: dagmm.accel's one-node training loss (_train.py) calls it with raw data addresses after the
 * facade checked device, dtype, shapes and strides; everything else runs the module (dagmm.models).
 *
 * Why: at these widths each operation of the head is a few microseconds of arithmetic behind a
 * fixed cost several times larger, and as torch operations the head was about twenty of them per
 * training step (benchmarks/results/NOTES-speed.md, fifth pass).  Here it is one call each way.
 * Activations are laid out (features, N) so that every loop runs over the rows and vectorises,
 * with the float32 tanh_f / exp_neg of _native.h.
 *
 * Dropout takes the caller's uniforms u (N, h) (torch.rand: three times cheaper than nn.Dropout's
 * bernoulli_, so the masks differ from the module's for the same seed, with the same distribution):
 * mask = floor(u + keep) / keep in float32; keep = 0 drops everything.  Parameter gradients (sums over the rows) are accumulated in float64.
 */
#include "_native.h"

#include <math.h>
#include <stdlib.h>

/* A strided (rows, cols) float32 matrix. */
typedef struct {
    const float *data;
    Py_ssize_t s0, s1;
} view32;

static inline float mask_of(const view32 *u, Py_ssize_t i, int j, float keep)
{
    return keep > 0.0f ? floorf(u->data[i * u->s0 + j * u->s1] + keep) / keep : 0.0f;
}

static inline double dot_rows(const float *restrict a, const float *restrict b, Py_ssize_t n)
{
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (Py_ssize_t i = 0; i < n; i++)
        s += (double)a[i] * (double)b[i];
    return s;
}

static inline double sum_rows(const float *restrict a, Py_ssize_t n)
{
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (Py_ssize_t i = 0; i < n; i++)
        s += (double)a[i];
    return s;
}

/* x (N, din) -> xt (din, N) */
static void transpose_in(const view32 *x, Py_ssize_t n, int din, float *restrict xt)
{
    for (int c = 0; c < din; c++)
        for (Py_ssize_t i = 0; i < n; i++)
            xt[c * n + i] = x->data[i * x->s0 + c * x->s1];
}

/* out[i] = bias + sum_c w[c * w_step] in[c * n + i] for the n rows: one layer's output row (features, N) */
static inline void affine_rows(float *restrict out, float bias, const float *w, Py_ssize_t w_step, int n_in,
                               const float *restrict in, Py_ssize_t n)
{
#pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++)
        out[i] = bias;
    for (int c = 0; c < n_in; c++) {
        const float wc = w[c * w_step];
        const float *restrict ic = in + c * n;
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++)
            out[i] += wc * ic[i];
    }
}

/* t (h, N) = tanh(W1 x + b1); y (k, N) = softmax(W2 (t * mask) + b2) over k.
   work: (din + h) * N floats. */
KERNEL_FMA static void head_forward(const view32 *x, Py_ssize_t n, int din, const float *w1, const float *b1, int h,
                                    const float *w2, const float *b2, int k, const view32 *u, float keep,
                                    float *restrict t, float *restrict y, float *restrict work)
{
    float *restrict xt = work, *restrict dropped = work + din * n;
    transpose_in(x, n, din, xt);
    for (int j = 0; j < h; j++) {
        float *restrict tj = t + j * n;
        affine_rows(tj, b1 ? b1[j] : 0.0f, w1 + j * din, 1, din, xt, n);
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++)
            tj[i] = tanh_f(tj[i]);
        if (u) {
            float *restrict dj = dropped + j * n;
            for (Py_ssize_t i = 0; i < n; i++)
                dj[i] = tj[i] * mask_of(u, i, j, keep);
        }
    }
    const float *d = u ? dropped : t;
    for (int o = 0; o < k; o++)
        affine_rows(y + o * n, b2 ? b2[o] : 0.0f, w2 + o * h, 1, h, d, n);
    /* softmax over k per row: the largest logit out first, as torch.softmax does */
    float *restrict mx = xt; /* reuse: (N,) */
#pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++)
        mx[i] = y[i];
    for (int o = 1; o < k; o++) {
        const float *restrict yo = y + o * n;
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++)
            mx[i] = yo[i] > mx[i] ? yo[i] : mx[i];
    }
    for (int o = 0; o < k; o++) {
        float *restrict yo = y + o * n;
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++)
            yo[i] = exp_neg(yo[i] - mx[i]);
    }
    float *restrict tot = mx; /* the maxima are no longer needed */
#pragma omp simd
    for (Py_ssize_t i = 0; i < n; i++)
        tot[i] = y[i];
    for (int o = 1; o < k; o++) {
        const float *restrict yo = y + o * n;
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++)
            tot[i] += yo[i];
    }
    for (int o = 0; o < k; o++) {
        float *restrict yo = y + o * n;
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++)
            yo[i] = yo[i] / tot[i];
    }
}

/* Gradients of head_forward for the incoming gradient g (N, k): gw1 (h, din), gb1 (h), gw2 (k, h),
   gb2 (k) (gb1 / gb2 may be NULL) and, unless gx is NULL, the input gradient gx (din, N).
   work: (din + k + 2 h) * N floats. */
KERNEL_FMA static void head_backward(const view32 *x, Py_ssize_t n, int din, const float *w1, int h, const float *w2,
                                     int k, const view32 *u, float keep, const float *t, const float *y,
                                     const view32 *g, float *gx, float *gw1, float *gb1, float *gw2, float *gb2,
                                     float *restrict work)
{
    float *restrict xt = work, *restrict ga = xt + din * n, *restrict d = ga + k * n, *restrict gh = d + h * n;
    transpose_in(x, n, din, xt);
    /* through the softmax: ga_o = y_o (g_o - sum_p g_p y_p) */
    float *restrict dot = gh; /* reuse: (N,) */
    for (Py_ssize_t i = 0; i < n; i++)
        dot[i] = 0.0f;
    for (int o = 0; o < k; o++) {
        const float *restrict yo = y + o * n;
        float *restrict gao = ga + o * n;
        for (Py_ssize_t i = 0; i < n; i++)
            gao[i] = g->data[i * g->s0 + o * g->s1];
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++)
            dot[i] += gao[i] * yo[i];
    }
    for (int o = 0; o < k; o++) {
        const float *restrict yo = y + o * n;
        float *restrict gao = ga + o * n;
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++)
            gao[i] = yo[i] * (gao[i] - dot[i]);
    }
    /* the second layer's input as the forward fed it (after dropout) */
    for (int j = 0; j < h; j++) {
        const float *restrict tj = t + j * n;
        float *restrict dj = d + j * n;
        if (u) {
            for (Py_ssize_t i = 0; i < n; i++)
                dj[i] = tj[i] * mask_of(u, i, j, keep);
        } else {
#pragma omp simd
            for (Py_ssize_t i = 0; i < n; i++)
                dj[i] = tj[i];
        }
    }
    for (int o = 0; o < k; o++) {
        const float *gao = ga + o * n;
        if (gb2)
            gb2[o] = (float)sum_rows(gao, n);
        for (int j = 0; j < h; j++)
            gw2[o * h + j] = (float)dot_rows(gao, d + j * n, n);
    }
    /* back through the second layer, the dropout and the tanh, then the first layer */
    for (int j = 0; j < h; j++) {
        float *restrict ghj = gh + j * n;
        const float *restrict tj = t + j * n;
        affine_rows(ghj, 0.0f, w2 + j, h, k, ga, n); /* column j of W2 */
        if (u) {
            for (Py_ssize_t i = 0; i < n; i++)
                ghj[i] *= mask_of(u, i, j, keep);
        }
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++)
            ghj[i] *= 1.0f - tj[i] * tj[i];
        if (gb1)
            gb1[j] = (float)sum_rows(ghj, n);
        for (int c = 0; c < din; c++)
            gw1[j * din + c] = (float)dot_rows(ghj, xt + c * n, n);
    }
    if (gx) {
        for (int c = 0; c < din; c++)
            affine_rows(gx + c * n, 0.0f, w1 + c, din, h, gh, n); /* column c of W1 */
    }
}

#define PTR(v) ((float *)(uintptr_t)(v))

PyObject *py_head_forward(PyObject *self, PyObject *args)
{
    unsigned long long xp, w1p, b1p, w2p, b2p, up, tp, yp;
    Py_ssize_t xs0, xs1, us0, us1, n;
    int din, h, k;
    float keep;
    (void)self;
    if (!PyArg_ParseTuple(args, "KnnniKKiKKiKnnfKK", &xp, &xs0, &xs1, &n, &din, &w1p, &b1p, &h, &w2p, &b2p, &k,
                          &up, &us0, &us1, &keep, &tp, &yp))
        return NULL;
    float *work = malloc((size_t)(n > 0 ? n : 1) * (size_t)(din + h) * sizeof(float));
    if (!work)
        return PyErr_NoMemory();
    view32 x = {PTR(xp), xs0, xs1}, u = {PTR(up), us0, us1};
    Py_BEGIN_ALLOW_THREADS
    head_forward(&x, n, din, PTR(w1p), b1p ? PTR(b1p) : NULL, h, PTR(w2p), b2p ? PTR(b2p) : NULL, k,
                 up ? &u : NULL, keep, PTR(tp), PTR(yp), work);
    Py_END_ALLOW_THREADS
    free(work);
    Py_RETURN_NONE;
}

PyObject *py_head_backward(PyObject *self, PyObject *args)
{
    unsigned long long xp, w1p, w2p, up, tp, yp, gp, gxp, gw1p, gb1p, gw2p, gb2p;
    Py_ssize_t xs0, xs1, us0, us1, gs0, gs1, n;
    int din, h, k;
    float keep;
    (void)self;
    if (!PyArg_ParseTuple(args, "KnnniKiKiKnnfKKKnnKKKKK", &xp, &xs0, &xs1, &n, &din, &w1p, &h, &w2p, &k, &up, &us0,
                          &us1, &keep, &tp, &yp, &gp, &gs0, &gs1, &gxp, &gw1p, &gb1p, &gw2p, &gb2p))
        return NULL;
    float *work = malloc((size_t)(n > 0 ? n : 1) * (size_t)(din + k + 2 * h) * sizeof(float));
    if (!work)
        return PyErr_NoMemory();
    view32 x = {PTR(xp), xs0, xs1}, u = {PTR(up), us0, us1}, g = {PTR(gp), gs0, gs1};
    Py_BEGIN_ALLOW_THREADS
    head_backward(&x, n, din, PTR(w1p), h, PTR(w2p), k, up ? &u : NULL, keep, PTR(tp), PTR(yp), &g,
                  gxp ? PTR(gxp) : NULL, PTR(gw1p), gb1p ? PTR(gb1p) : NULL, PTR(gw2p), gb2p ? PTR(gb2p) : NULL,
                  work);
    Py_END_ALLOW_THREADS
    free(work);
    Py_RETURN_NONE;
}
