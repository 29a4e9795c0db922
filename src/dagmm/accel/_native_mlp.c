/* A fully connected stack's forward pass in one call (inference), float32: dagmm.accel.reconstructor and
 * dagmm.accel.energy_scorer.
 *
 * Private: only dagmm.accel calls it, with raw data addresses, after its facade checked device, dtype,
 * shapes and contiguity; everything else runs the modules of dagmm.models.
 *
 * Why: scoring a batch ran each layer as torch.mm over the whole batch, then a pass for the bias
 * and the activation.  For DAGMM's narrow layers (a 30 -> 10 product ran at a quarter of the
 * speed of the 120 -> 60 one per multiply-add) and batches of 16384 rows the activations went out
 * to memory and back at every layer.  Here a tile of rows goes through every layer while its
 * activations stay in the core's caches, each layer a register-blocked product (6 rows x 16
 * outputs of accumulators, the weights transposed and zero-padded to a multiple of 8 outputs)
 * with the bias as the accumulators' start and the activation applied to the tile in place
 * (benchmarks/results/NOTES-speed.md, sixth pass).
 *
 * Rounding: each output is the bias plus the products summed in input order, one rounding per
 * multiply-add in the x86-64-v3 clone (fused) and two in the baseline one; torch.addmm sums in
 * another order, so results agree to float32 rounding, not bit for bit (tests/test_native.py).
 * The tanh is tanh_f of _native.h, as in the training kernels.
 */
#include "_native_block.h"

#include <math.h>
#include <stdlib.h>

/* Run `rows` rows of x (row stride ldx) through the layers, the activations alternating between
   buf[0] and buf[1]; the last layer writes to `out` (row stride ldo) when not NULL.  Returns where
   the output is, its row stride in *ld. */
static inline __attribute__((always_inline)) const float *run_tile(const Layer *L, int nl, const float *x,
                                                                   Py_ssize_t ldx, Py_ssize_t rows, float *const *buf,
                                                                   float *out, Py_ssize_t ldo, Py_ssize_t *ld)
{
    const float *h = x;
    Py_ssize_t ldh = ldx;
    for (int l = 0; l < nl; l++) {
        float *o = l == nl - 1 && out ? out : buf[l & 1];
        const Py_ssize_t ldn = l == nl - 1 && out ? ldo : L[l].ow;
        layer(h, ldh, rows, L[l].in, L[l].wt, L[l].ow, L[l].b, L[l].act, o, ldn);
        h = o;
        ldh = ldn;
    }
    *ld = ldh;
    return h;
}

/* x (n, L[0].in) -> y (n, L[nl-1].out), both row-major contiguous, `tile` rows at a time; `work`
   holds two (tile, wide) buffers the activations alternate between. */
KERNEL_FMA static void mlp_forward(const float *restrict x, Py_ssize_t n, const Layer *L, int nl, float *restrict y,
                                   Py_ssize_t tile, float *restrict work, Py_ssize_t wide)
{
    float *buf[2] = {work, work + tile * wide};
    const Layer *last = L + nl - 1;
    /* the last layer writes straight into y when its width needs no padding */
    const int direct = last->out == last->ow;
    for (Py_ssize_t t0 = 0; t0 < n; t0 += tile) {
        const Py_ssize_t rows = n - t0 < tile ? n - t0 : tile;
        Py_ssize_t ld;
        const float *h = run_tile(L, nl, x + t0 * L[0].in, L[0].in, rows, buf, direct ? y + t0 * last->out : NULL,
                                  last->out, &ld);
        if (!direct) {
            for (Py_ssize_t r = 0; r < rows; r++)
                memcpy(y + (t0 + r) * last->out, h + r * ld, (size_t)last->out * sizeof(float));
        }
    }
}

/* Fill in the shapes of the layers described by spec (nl rows of five int64: in, out, weight
   address (out, in) row-major, bias address or 0, activation); returns the widest padded width. */
Py_ssize_t describe_layers(const int64_t *spec, int nl, Layer *L)
{
    Py_ssize_t wide = 8;
    for (int l = 0; l < nl; l++) {
        const int64_t *s = spec + 5 * l;
        L[l].in = (Py_ssize_t)s[0];
        L[l].out = (Py_ssize_t)s[1];
        L[l].ow = (L[l].out + 7) / 8 * 8;
        L[l].act = (int)s[4];
        if (L[l].ow > wide)
            wide = L[l].ow;
    }
    return wide;
}

/* The described layers' weights transposed and zero-padded, biases padded, in one allocation
   followed by `extra` floats of work space (*work).  NULL with MemoryError set when out of memory. */
float *pack_layers(const int64_t *spec, int nl, Layer *L, size_t extra, float **work)
{
    size_t packed = 0;
    for (int l = 0; l < nl; l++)
        packed += (size_t)((L[l].in + 1) * L[l].ow);
    float *mem = malloc((packed + extra) * sizeof(float));
    if (!mem) {
        PyErr_NoMemory();
        return NULL;
    }
    float *p = mem;
    for (int l = 0; l < nl; l++) {
        const int64_t *s = spec + 5 * l;
        const float *w = (const float *)(uintptr_t)s[2], *b = (const float *)(uintptr_t)s[3];
        float *wt = p, *bp = p + L[l].in * L[l].ow;
        memset(p, 0, (size_t)((L[l].in + 1) * L[l].ow) * sizeof(float));
        for (Py_ssize_t o = 0; o < L[l].out; o++) {
            for (Py_ssize_t i = 0; i < L[l].in; i++)
                wt[i * L[l].ow + o] = w[o * L[l].in + i];
            if (b)
                bp[o] = b[o];
        }
        L[l].wt = wt;
        L[l].b = bp;
        p += (L[l].in + 1) * L[l].ow;
    }
    *work = p;
    return mem;
}

int check_layers(const char *kernel, int nl, Py_ssize_t tile)
{
    if (nl < 1 || nl > DAGMM_MAX_LAYERS || tile < 1) {
        PyErr_Format(PyExc_ValueError, "%s: 1 to %d layers and a positive tile are required", kernel,
                     DAGMM_MAX_LAYERS);
        return -1;
    }
    return 0;
}

/* Whether the kernels below run as their x86-64-v3 (AVX2 + FMA) clone.  The baseline build of the
   8-float vectors is correct, but GCC lowers them for SSE2 into code about 17 times slower than
   torch (benchmarks/results/NOTES-speed.md, sixth pass), so dagmm.accel uses these kernels
   only when this is true. */
PyObject *py_mlp_fast(PyObject *self, PyObject *args)
{
    (void)self;
    (void)args;
#if DAGMM_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v3")) /* the test the clones' resolver makes */
        Py_RETURN_TRUE;
#endif
    Py_RETURN_FALSE;
}

/* mlp_forward(x, n, y, spec, nl, tile) */
PyObject *py_mlp_forward(PyObject *self, PyObject *args)
{
    unsigned long long xp, yp, sp;
    Py_ssize_t n, tile, wide;
    int nl;
    float *work;
    Layer L[DAGMM_MAX_LAYERS];
    (void)self;
    if (!PyArg_ParseTuple(args, "KnKKin", &xp, &n, &yp, &sp, &nl, &tile) ||
        check_layers("mlp_forward", nl, tile) < 0)
        return NULL;
    const int64_t *spec = (const int64_t *)(uintptr_t)sp;
    wide = describe_layers(spec, nl, L);
    float *mem = pack_layers(spec, nl, L, 2 * (size_t)tile * (size_t)wide, &work);
    if (!mem)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    mlp_forward((const float *)(uintptr_t)xp, n, L, nl, (float *)(uintptr_t)yp, tile, work, wide);
    Py_END_ALLOW_THREADS
    free(mem);
    Py_RETURN_NONE;
}

/* ---- DAGMM's sample energy straight from the input rows (OutlierAEGMM.score) ----
 * Per tile: encoder -> latent, decoder -> x' (never written out), the reconstruction features by
 * recon_forward of _native.c (the training kernels' code for the same features), then in float64 E(z) = -log sum_k exp(c_k - |P_k^T z - P_k^T mu_k|^2 / 2), the
 * formula of dagmm.models.gmm.sample_energy (c_k = log phi_k + log det P_k - d log(2 pi) / 2), plus, when
 * inv_var is given (f,), the residual's Gaussian term 0.5 sum_j (x_j - x'_j)^2 inv_var_j in float64
 * (OutlierAEGMM's error_scale_), or, when the whitening layer W is given (f -> f, weight P^T, bias -mean P),
 * its full-covariance form 0.5 |(x - x') P - mean P|^2: the product by layer() in float32 like the networks',
 * the sum of squares in float64 (dagmm.models.covariance.residual_nll); or, with log-determinants, the joint
 * mixture of the code and the residual: W holds every component's P_k side by side (f -> k f, bias -m_k P_k)
 * and log det P_k - |.|^2 / 2 of block k joins component k's log-density before the log-sum-exp
 * (dagmm.models.covariance.component_residual_log_prob). */
typedef struct {
    int k, d;
    const double *pt;  /* (k, d, d): P_k^T */
    const double *off; /* (k, d): P_k^T mu_k */
    const double *c;   /* (k,) */
} Mixture;

static inline void energy_rows(const float *lat, Py_ssize_t ldl, int nl_lat, const float *feat, Py_ssize_t rows,
                               const Mixture *g, const double *extra, double *out)
{
    double z[DAGMM_MAX_Z], lp[DAGMM_MAX_K];
    for (Py_ssize_t r = 0; r < rows; r++) {
        for (int j = 0; j < nl_lat; j++)
            z[j] = lat[r * ldl + j];
        z[nl_lat] = feat[2 * r];
        z[nl_lat + 1] = feat[2 * r + 1];
        double m = -HUGE_VAL;
        for (int q = 0; q < g->k; q++) {
            const double *pt = g->pt + (Py_ssize_t)q * g->d * g->d, *off = g->off + (Py_ssize_t)q * g->d;
            double maha = 0.0;
            for (int j = 0; j < g->d; j++) {
                double p = -off[j];
                for (int i = 0; i < g->d; i++)
                    p += pt[j * g->d + i] * z[i];
                maha += p * p;
            }
            lp[q] = g->c[q] - 0.5 * maha + (extra ? extra[r * g->k + q] : 0.0);
            m = lp[q] > m ? lp[q] : m;
        }
        double s = 0.0;
        for (int q = 0; q < g->k; q++)
            s += exp(lp[q] - m);
        out[r] = -(m + log(s));
    }
}

KERNEL_FMA static void aegmm_energy(const float *restrict x, Py_ssize_t n, const Layer *E, int ne, const Layer *D,
                                    int nd, int mode, double eps, double log_eps, const Mixture *g,
                                    const double *restrict inv_var, const Layer *W, const double *restrict wlogdet,
                                    float *restrict ybuf, double *restrict extra, double *restrict out,
                                    Py_ssize_t tile, float *restrict work, Py_ssize_t wide)
{
    float *buf[2] = {work, work + tile * wide}, *lat = work + 2 * tile * wide;
    float *feat = lat + tile * E[ne - 1].ow;
    const Py_ssize_t f = E[0].in, nlat = E[ne - 1].out;
    for (Py_ssize_t t0 = 0; t0 < n; t0 += tile) {
        const Py_ssize_t rows = n - t0 < tile ? n - t0 : tile;
        const float *xt = x + t0 * f;
        Py_ssize_t ldl, ldr;
        run_tile(E, ne, xt, f, rows, buf, lat, E[ne - 1].ow, &ldl);
        const float *rec = run_tile(D, nd, lat, ldl, rows, buf, NULL, 0, &ldr);
        recon_forward(xt, rec, ldr, rows, f, 0, mode, eps, log_eps, feat, NULL);
        if (wlogdet) {
            /* the joint mixture: per component k, log det P_k - |r P_k - m_k P_k|^2 / 2 joins the code's
               log-density before the log-sum-exp; W holds every P_k side by side (f -> k f outputs) */
            float *res = (float *)rec;
            for (Py_ssize_t r = 0; r < rows; r++)
                for (Py_ssize_t j = 0; j < f; j++)
                    res[r * ldr + j] = xt[r * f + j] - res[r * ldr + j];
            layer(res, ldr, rows, W->in, W->wt, W->ow, W->b, ACT_NONE, ybuf, W->ow);
            for (Py_ssize_t r = 0; r < rows; r++)
                for (int q = 0; q < g->k; q++) {
                    const float *y = ybuf + r * W->ow + (Py_ssize_t)q * f;
                    double s = 0.0;
                    for (Py_ssize_t j = 0; j < f; j++)
                        s += (double)y[j] * (double)y[j];
                    extra[r * g->k + q] = wlogdet[q] - 0.5 * s;
                }
            energy_rows(lat, ldl, (int)nlat, feat, rows, g, extra, out + t0);
            continue;
        }
        energy_rows(lat, ldl, (int)nlat, feat, rows, g, NULL, out + t0);
        if (W) {
            /* the residual overwrites x' in its buffer (nothing reads x' after the features); the product
               goes to the other buffer, which the decoder's widest layer sized for W's padded width */
            float *res = (float *)rec, *y = buf[(nd & 1)];
            for (Py_ssize_t r = 0; r < rows; r++)
                for (Py_ssize_t j = 0; j < f; j++)
                    res[r * ldr + j] = xt[r * f + j] - res[r * ldr + j];
            layer(res, ldr, rows, W->in, W->wt, W->ow, W->b, ACT_NONE, y, W->ow);
            for (Py_ssize_t r = 0; r < rows; r++) {
                double s = 0.0;
                for (Py_ssize_t j = 0; j < f; j++) {
                    const double e = (double)y[r * W->ow + j];
                    s += e * e;
                }
                out[t0 + r] += 0.5 * s;
            }
        } else if (inv_var)
            for (Py_ssize_t r = 0; r < rows; r++) {
                double s = 0.0;
                for (Py_ssize_t j = 0; j < f; j++) {
                    const double e = (double)xt[r * f + j] - (double)rec[r * ldr + j];
                    s += e * e * inv_var[j];
                }
                out[t0 + r] += 0.5 * s;
            }
    }
}

/* aegmm_energy(x, n, enc_spec, n_enc, dec_spec, n_dec, mode, eps, log_eps, pt, off, c, k, inv_var or 0,
                whiten_spec or 0, whiten_logdet or 0, out, tile) */
PyObject *py_aegmm_energy(PyObject *self, PyObject *args)
{
    unsigned long long xp, ep, dp, ptp, offp, cp, vp, wp, lp, op;
    Py_ssize_t n, tile;
    int ne, nd, mode, k;
    double eps, log_eps;
    Layer E[DAGMM_MAX_LAYERS], D[DAGMM_MAX_LAYERS], W;
    (void)self;
    if (!PyArg_ParseTuple(args, "KnKiKiiddKKKiKKKKn", &xp, &n, &ep, &ne, &dp, &nd, &mode, &eps, &log_eps, &ptp,
                          &offp, &cp, &k, &vp, &wp, &lp, &op, &tile) ||
        check_layers("aegmm_energy", ne, tile) < 0 || check_layers("aegmm_energy", nd, tile) < 0)
        return NULL;
    const int64_t *es = (const int64_t *)(uintptr_t)ep, *ds = (const int64_t *)(uintptr_t)dp;
    const int64_t lat = es[5 * (ne - 1) + 1];
    if (ds[0] != lat || ds[5 * (nd - 1) + 1] != es[0] || lat + 2 > DAGMM_MAX_Z || k < 1 || k > DAGMM_MAX_K) {
        PyErr_Format(PyExc_ValueError, "aegmm_energy: the decoder must map the latent code (at most %d wide) "
                                       "back to the input width, with 1 to %d components", DAGMM_MAX_Z - 2,
                     DAGMM_MAX_K);
        return NULL;
    }
    const int64_t *ws = (const int64_t *)(uintptr_t)wp;
    const int64_t w_out = lp ? (int64_t)k * es[0] : es[0]; /* the joint mixture: one block of f per component */
    if (ws && (ws[0] != es[0] || ws[1] != w_out || ws[4] != ACT_NONE)) {
        PyErr_SetString(PyExc_ValueError, "aegmm_energy: the whitening layer must map the input width to itself "
                                          "(to k times it with log-determinants), with no activation");
        return NULL;
    }
    if (lp && !ws) {
        PyErr_SetString(PyExc_ValueError, "aegmm_energy: log-determinants need the whitening layer");
        return NULL;
    }
    const Py_ssize_t wide_e = describe_layers(es, ne, E), wide_d = describe_layers(ds, nd, D);
    const Py_ssize_t wide = wide_e > wide_d ? wide_e : wide_d;
    /* work space: two (tile, wide) buffers for the activations, the latent code, the features */
    const size_t extra = (size_t)tile * (size_t)(2 * wide + E[ne - 1].ow + 2);
    float *work_e, *work_d;
    float *mem_e = pack_layers(es, ne, E, 0, &work_e);
    float *mem_d = mem_e ? pack_layers(ds, nd, D, extra, &work_d) : NULL;
    float *mem_w = NULL, *ybuf = NULL;
    double *terms = NULL;
    if (mem_d && ws) {
        describe_layers(ws, 1, &W);
        /* the joint mixture's products (tile, padded k f) follow the packed layer */
        mem_w = pack_layers(ws, 1, &W, lp ? (size_t)tile * (size_t)W.ow : 0, &ybuf);
        if (mem_w && lp && !(terms = malloc((size_t)tile * (size_t)k * sizeof(double)))) {
            PyErr_NoMemory();
            free(mem_w);
            mem_w = NULL;
        }
    }
    if (!mem_d || (ws && !mem_w)) {
        free(mem_e);
        free(mem_d);
        return NULL;
    }
    Mixture g = {k, (int)lat + 2, (const double *)(uintptr_t)ptp, (const double *)(uintptr_t)offp,
                 (const double *)(uintptr_t)cp};
    Py_BEGIN_ALLOW_THREADS
    aegmm_energy((const float *)(uintptr_t)xp, n, E, ne, D, nd, mode, eps, log_eps, &g, (const double *)(uintptr_t)vp,
                 ws ? &W : NULL, (const double *)(uintptr_t)lp, ybuf, terms, (double *)(uintptr_t)op, tile, work_d,
                 wide);
    Py_END_ALLOW_THREADS
    free(mem_e);
    free(mem_d);
    free(mem_w);
    free(terms);
    Py_RETURN_NONE;
}
