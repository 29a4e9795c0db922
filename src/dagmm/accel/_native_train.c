/* DAGMM's auto-encoder in training, float32: the one-node loss of dagmm.accel (_train.py) runs its encoder,
 * decoder and reconstruction features forward in one call and backward in another.
 *
 * Private: only dagmm.accel calls these, with raw data addresses, after its facade checked device, dtype,
 * shapes and contiguity (the same conditions as the inference kernel of _native_mlp.c); everything else
 * runs the modules of dagmm.models under autograd.
 *
 * Why: at batch 1024 each layer was torch.mm per direction plus a pass for the bias and tanh and
 * one for its gradient, each a dispatch and an OpenMP fork and join over both cores; the eight
 * layers' 21 products and their passes were about two thirds of a training step
 * (benchmarks/results/NOTES-speed.md, seventh pass).  Here a tile of rows goes through every layer
 * with the register-blocked product of _native_block.h, the activation in place while the tile is
 * in cache, and every layer's output kept for the backward.  The backward takes the same tiles
 * through the layers in reverse: the activation's derivative and the bias gradient in one pass
 * over the tile, the weight gradient as a rank-`rows` update of a padded (out, in) sum, the input
 * gradient as a product with the weight.  Rows are split between threads (each with its own
 * gradient sums, added at the end), so no OpenMP runtime is needed.
 *
 * Rounding: sums run in another order than torch.mm's, so results agree with the torch path to
 * float32 rounding (tests/test_train_step.py); bias gradients are summed in float64.
 */
#include "_native_block.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>

enum { MAX_THREADS = 8 };

/* What every thread reads: the batch, the layers, where the activations live. */
typedef struct {
    const float *x;             /* (n, f) */
    Py_ssize_t n, f, tile, wide;
    const Layer *L;             /* encoder layers 0 .. ne - 1, then the decoder's */
    int nl, ne;
    const float *wp[DAGMM_MAX_LAYERS]; /* backward: each weight (out, in) zero-padded to (out, ow of its input) */
    float *acts[DAGMM_MAX_LAYERS];    /* every layer's output, (n, ow) */
    int mode;
    double eps, log_eps;
    float *z;                   /* forward: (n, lat + 2), the latent code and the two features */
    double *norms;              /* (n, 5): per-row norms of the features (recon_forward) */
    const float *gz;            /* backward: dJ/dz, (lat + 2, n) */
    double sq_coef;             /* backward: the squared error's factor (recon_backward) */
} Net;

/* One thread's rows and its scratch: the tile buffers, and its own gradient sums */
typedef struct {
    const Net *net;
    Py_ssize_t r0, r1;
    float *work;
    float *gw[DAGMM_MAX_LAYERS];  /* (out, ow of the input) */
    double *gb[DAGMM_MAX_LAYERS]; /* (out,) */
} Part;

static inline Py_ssize_t in_width(const Net *N, int l) { return l == 0 ? (N->f + 7) / 8 * 8 : N->L[l - 1].ow; }

static inline __attribute__((always_inline)) void forward_rows(const Part *P)
{
    const Net *N = P->net;
    const Layer *L = N->L;
    const Py_ssize_t lat = L[N->ne - 1].out, d = lat + 2, ldl = L[N->ne - 1].ow, ldr = L[N->nl - 1].ow;
    float *feat = P->work; /* (tile, 2) */
    for (Py_ssize_t t0 = P->r0; t0 < P->r1; t0 += N->tile) {
        const Py_ssize_t rows = P->r1 - t0 < N->tile ? P->r1 - t0 : N->tile;
        const float *h = N->x + t0 * N->f;
        Py_ssize_t ldh = N->f;
        for (int l = 0; l < N->nl; l++) {
            float *y = N->acts[l] + t0 * L[l].ow;
            layer(h, ldh, rows, L[l].in, L[l].wt, L[l].ow, L[l].b, L[l].act, y, L[l].ow);
            h = y;
            ldh = L[l].ow;
        }
        recon_forward(N->x + t0 * N->f, h, ldr, rows, N->f, 0, N->mode, N->eps, N->log_eps, feat, N->norms + 5 * t0);
        const float *code = N->acts[N->ne - 1] + t0 * ldl;
        for (Py_ssize_t r = 0; r < rows; r++) {
            float *zr = N->z + (t0 + r) * d;
            for (Py_ssize_t j = 0; j < lat; j++)
                zr[j] = code[r * ldl + j];
            zr[lat] = feat[2 * r];
            zr[lat + 1] = feat[2 * r + 1];
        }
    }
}

/* g (rows, out) becomes the gradient before the activation, in place, given the layer's output y;
   its column sums are added to gb */
static inline __attribute__((always_inline)) void activation_grad(float *restrict g, Py_ssize_t ldg,
                                                                    const float *restrict y, Py_ssize_t ldy,
                                                                    Py_ssize_t rows, Py_ssize_t out, int act,
                                                                    double *restrict gb)
{
    for (Py_ssize_t r = 0; r < rows; r++) {
        float *restrict gr = g + r * ldg;
        const float *restrict yr = y + r * ldy;
        if (act == ACT_TANH) {
#pragma omp simd
            for (Py_ssize_t j = 0; j < out; j++)
                gr[j] *= 1.0f - yr[j] * yr[j];
        } else if (act == ACT_RELU) {
#pragma omp simd
            for (Py_ssize_t j = 0; j < out; j++)
                gr[j] = yr[j] <= 0.0f ? 0.0f : gr[j]; /* as torch's threshold_backward: NaN passes g */
        }
#pragma omp simd
        for (Py_ssize_t j = 0; j < out; j++)
            gb[j] += (double)gr[j];
    }
}

static inline __attribute__((always_inline)) void backward_rows(const Part *P)
{
    const Net *N = P->net;
    const Layer *L = N->L;
    const Py_ssize_t lat = L[N->ne - 1].out, f = N->f, fw = in_width(N, 0), last = L[N->nl - 1].ow;
    float *buf[2] = {P->work, P->work + N->tile * N->wide};
    float *xpad = buf[1] + N->tile * N->wide, *zeros = xpad + N->tile * fw;
    for (Py_ssize_t t0 = P->r0; t0 < P->r1; t0 += N->tile) {
        const Py_ssize_t rows = P->r1 - t0 < N->tile ? P->r1 - t0 : N->tile;
        const float *xt = N->x + t0 * f;
        /* the first layer's weight gradient reads its input 8 columns at a time: pad x when f is not a
           multiple of 8 (the activations are padded already, with zeros) */
        const float *x8 = xt;
        if (fw != f) {
            for (Py_ssize_t r = 0; r < rows; r++) {
                memcpy(xpad + r * fw, xt + r * f, (size_t)f * sizeof(float));
                memset(xpad + r * fw + f, 0, (size_t)(fw - f) * sizeof(float));
            }
            x8 = xpad;
        }
        int cur = 0;
        float *g = buf[cur];
        Py_ssize_t ldg = last;
        /* the features' gradient (and the squared error's) with respect to x' */
        recon_backward(xt, N->acts[N->nl - 1] + t0 * last, last, rows, f, 0, N->mode, N->eps, N->log_eps,
                       N->gz + lat * N->n + t0, 1, N->n, 0, N->norms + 5 * t0, N->sq_coef, g, ldg);
        for (int l = N->nl - 1; l >= 0; l--) {
            const Layer *Y = L + l;
            const Py_ssize_t iw = in_width(N, l);
            activation_grad(g, ldg, N->acts[l] + t0 * Y->ow, Y->ow, rows, Y->out, Y->act, P->gb[l]);
            /* weight gradient: gw (out, iw) += g^T (out, rows) h (rows, iw) */
            const float *h = l == 0 ? x8 : N->acts[l - 1] + t0 * iw;
            product(g, 1, ldg, Y->out, rows, h, iw, iw, NULL, P->gw[l], iw, 1);
            if (l == 0)
                break;
            /* input gradient: (rows, iw) = g (rows, out) wp (out, iw) */
            float *gi = buf[cur ^ 1];
            product(g, ldg, 1, rows, Y->out, N->wp[l], iw, iw, zeros, gi, iw, 0);
            if (l == N->ne) { /* the latent code also reaches the estimation network and the objective */
                for (Py_ssize_t r = 0; r < rows; r++) {
                    for (Py_ssize_t j = 0; j < lat; j++)
                        gi[r * iw + j] += N->gz[j * N->n + t0 + r];
                }
            }
            cur ^= 1;
            g = gi;
            ldg = iw;
        }
    }
}

KERNEL_FMA static void *forward_part(void *arg)
{
    forward_rows((const Part *)arg);
    return NULL;
}

KERNEL_FMA static void *backward_part(void *arg)
{
    backward_rows((const Part *)arg);
    return NULL;
}

/* Run fn over the parts, parts 1.. in new threads and part 0 in this one; a thread that cannot be started
   has its part run here afterwards */
static void run_parts(void *(*fn)(void *), Part *parts, int np)
{
    pthread_t th[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 1; t < np; t++)
        started[t] = pthread_create(&th[t], NULL, fn, &parts[t]) == 0;
    fn(&parts[0]);
    for (int t = 1; t < np; t++) {
        if (started[t])
            pthread_join(th[t], NULL);
        else
            fn(&parts[t]);
    }
}

/* Rows split into np parts of whole tiles */
static int split(Part *parts, const Net *N, int threads)
{
    const Py_ssize_t tiles = (N->n + N->tile - 1) / N->tile;
    int np = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : threads;
    if (np > tiles)
        np = (int)tiles;
    for (int t = 0; t < np; t++) {
        parts[t].net = N;
        parts[t].r0 = tiles * t / np * N->tile;
        parts[t].r1 = t == np - 1 ? N->n : tiles * (t + 1) / np * N->tile;
    }
    return np;
}

/* What both calls share: checks the arguments, fills N's layers from the spec and its batch, features
   and activation arrays (acts: nl int64 addresses).  -1 with an exception set on failure. */
static int describe_net(const char *kernel, Net *N, Layer *L, const int64_t *spec, int nl, int ne, Py_ssize_t tile,
                        unsigned long long x, Py_ssize_t n, Py_ssize_t f, int mode, double eps, double log_eps,
                        unsigned long long norms, unsigned long long acts)
{
    N->n = n;
    N->f = f;
    if (check_layers(kernel, nl, tile) < 0)
        return -1;
    int chained = 1;
    for (int l = 1; l < nl; l++)
        chained = chained && spec[5 * l] == spec[5 * (l - 1) + 1];
    if (N->n < 1 || ne < 1 || ne >= nl || !chained || spec[0] != N->f || spec[5 * (nl - 1) + 1] != N->f ||
        spec[5 * (ne - 1) + 1] + 2 > DAGMM_MAX_Z) {
        PyErr_Format(PyExc_ValueError, "%s: the encoder (the first n_enc layers) must map the %zd inputs of "
                                       "%zd rows to a latent code at most %d wide, and the decoder map it back, "
                                       "each layer taking the last one's outputs", kernel, N->f, N->n,
                     DAGMM_MAX_Z - 2);
        return -1;
    }
    N->L = L;
    N->nl = nl;
    N->ne = ne;
    N->tile = tile;
    N->wide = describe_layers(spec, nl, L);
    N->x = (const float *)(uintptr_t)x;
    N->mode = mode;
    N->eps = eps;
    N->log_eps = log_eps;
    N->norms = (double *)(uintptr_t)norms;
    for (int l = 0; l < nl; l++)
        N->acts[l] = (float *)(uintptr_t)((const int64_t *)(uintptr_t)acts)[l];
    return 0;
}

/* train_forward(x, n, f, spec, nl, ne, mode, eps, log_eps, acts, z, norms, tile, threads) */
PyObject *py_train_forward(PyObject *self, PyObject *args)
{
    unsigned long long xp, sp, ap, zp, np_;
    Py_ssize_t n, f, tile;
    int nl, ne, mode, threads;
    double eps, log_eps;
    Layer L[DAGMM_MAX_LAYERS];
    Part parts[MAX_THREADS];
    Net N;
    (void)self;
    if (!PyArg_ParseTuple(args, "KnnKiiiddKKKni", &xp, &n, &f, &sp, &nl, &ne, &mode, &eps, &log_eps, &ap, &zp, &np_,
                          &tile, &threads))
        return NULL;
    const int64_t *spec = (const int64_t *)(uintptr_t)sp;
    if (describe_net("train_forward", &N, L, spec, nl, ne, tile, xp, n, f, mode, eps, log_eps, np_, ap) < 0)
        return NULL;
    N.z = (float *)(uintptr_t)zp;
    const int np = split(parts, &N, threads);
    float *work;
    float *mem = pack_layers(spec, nl, L, (size_t)np * 2 * (size_t)tile, &work);
    if (!mem)
        return NULL;
    for (int t = 0; t < np; t++)
        parts[t].work = work + (size_t)t * 2 * (size_t)tile;
    Py_BEGIN_ALLOW_THREADS
    run_parts(forward_part, parts, np);
    Py_END_ALLOW_THREADS
    free(mem);
    Py_RETURN_NONE;
}

/* train_backward(x, n, f, spec, nl, ne, mode, eps, log_eps, acts, norms, gz, sq_coef, grads, tile, threads):
   grads holds 2 nl int64 addresses, each layer's weight gradient (out, in) and bias gradient (out,) or 0 */
PyObject *py_train_backward(PyObject *self, PyObject *args)
{
    unsigned long long xp, sp, ap, np_, gzp, gp;
    Py_ssize_t n, f, tile;
    int nl, ne, mode, threads;
    double eps, log_eps, sq_coef;
    Layer L[DAGMM_MAX_LAYERS];
    Part parts[MAX_THREADS];
    Net N;
    (void)self;
    if (!PyArg_ParseTuple(args, "KnnKiiiddKKKdKni", &xp, &n, &f, &sp, &nl, &ne, &mode, &eps, &log_eps, &ap, &np_,
                          &gzp, &sq_coef, &gp, &tile, &threads))
        return NULL;
    const int64_t *spec = (const int64_t *)(uintptr_t)sp, *grads = (const int64_t *)(uintptr_t)gp;
    if (describe_net("train_backward", &N, L, spec, nl, ne, tile, xp, n, f, mode, eps, log_eps, np_, ap) < 0)
        return NULL;
    N.gz = (const float *)(uintptr_t)gzp;
    N.sq_coef = sq_coef;
    const int np = split(parts, &N, threads);
    /* sizes in floats: the padded weights (shared), then per part its gradient sums (float weights, double
       biases) and its scratch: two (tile, wide) buffers, a padded tile of x, a row of zeros */
    size_t wsize = 0, gsize = 0;
    for (int l = 0; l < nl; l++) {
        wsize += (size_t)(L[l].out * in_width(&N, l));
        gsize += (size_t)(L[l].out * in_width(&N, l) + 2 * L[l].out);
    }
    const size_t scratch = (size_t)tile * (size_t)(2 * N.wide + in_width(&N, 0)) + (size_t)N.wide;
    const size_t per_part = gsize + scratch + 2; /* + 2: keeps each part's doubles 8-byte aligned */
    float *mem = calloc(wsize + (size_t)np * per_part + 2, sizeof(float));
    if (!mem) {
        PyErr_NoMemory();
        return NULL;
    }
    float *p = mem;
    for (int l = 0; l < nl; l++) {
        const Py_ssize_t iw = in_width(&N, l);
        const float *w = (const float *)(uintptr_t)spec[5 * l + 2];
        for (Py_ssize_t o = 0; o < L[l].out; o++)
            memcpy(p + o * iw, w + o * L[l].in, (size_t)L[l].in * sizeof(float));
        N.wp[l] = p;
        p += L[l].out * iw;
    }
    for (int t = 0; t < np; t++) {
        if ((uintptr_t)p % sizeof(double))
            p++;
        for (int l = 0; l < nl; l++) {
            parts[t].gb[l] = (double *)p;
            p += 2 * L[l].out;
            parts[t].gw[l] = p;
            p += L[l].out * in_width(&N, l);
        }
        parts[t].work = p;
        p += scratch;
    }
    Py_BEGIN_ALLOW_THREADS
    run_parts(backward_part, parts, np);
    /* the parts' sums, added in part order, into the gradients' (out, in) and (out,) arrays */
    for (int l = 0; l < nl; l++) {
        const Py_ssize_t iw = in_width(&N, l), in = L[l].in, out = L[l].out;
        float *gw = (float *)(uintptr_t)grads[2 * l], *gb = (float *)(uintptr_t)grads[2 * l + 1];
        for (int t = 1; t < np; t++) {
            for (Py_ssize_t i = 0; i < out * iw; i++)
                parts[0].gw[l][i] += parts[t].gw[l][i];
            for (Py_ssize_t o = 0; o < out; o++)
                parts[0].gb[l][o] += parts[t].gb[l][o];
        }
        for (Py_ssize_t o = 0; o < out; o++)
            memcpy(gw + o * in, parts[0].gw[l] + o * iw, (size_t)in * sizeof(float));
        if (gb) {
            for (Py_ssize_t o = 0; o < out; o++)
                gb[o] = (float)parts[0].gb[l][o];
        }
    }
    Py_END_ALLOW_THREADS
    free(mem);
    Py_RETURN_NONE;
}
