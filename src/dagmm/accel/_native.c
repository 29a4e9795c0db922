/* Optional C kernels for DAGMM's training step on CPU tensors: the mixture objective and the
 * reconstruction features; and the module definition of dagmm.accel._native, whose other kernels are in
 * _native_adam.c (Adam's step), _native_head.c (the estimation network), _native_mlp.c (inference) and
 * _native_train.c (the auto-encoder's training step).
 *
 * Private: only dagmm.accel calls them, with raw data addresses, after its facade (dagmm/accel/__init__.py)
 * checked device, dtype, shapes, strides and the tensors' lifetime; elsewhere the torch code of
 * dagmm.models runs instead.  No torch headers: it builds with a plain C compiler in seconds.
 *
 * Why: with DAGMM's tiny mixture (K = 4 components of D = 3 dimensions) the K-level
 * algebra is a few thousand flops, but as torch operations it was some 160 dispatches
 * per training step, each costing more than its arithmetic; the two features were a
 * dozen passes over (N, F) with their temporaries (benchmarks/results/NOTES-speed.md,
 * fourth pass).  Here the objective -- value and both gradients -- is a few
 * vectorised loops over the rows plus loops over K x D x D, and the features one pass
 * over the rows forward and one backward.
 *
 * Numerics are those of dagmm.models.gmm / dagmm.models.losses.mixture_objective: float64 throughout, moments
 * about the batch mean, Cholesky factor of Sigma_k + eps I with the jitter raised
 * tenfold for every component when one fails, Mahalanobis distances through the
 * inverse Cholesky factor, log-sum-exp with the maximum taken out.  The gradient is
 * the closed form in dagmm/models/losses.py's docstring.  Compiled without -ffast-math:
 * the NaN checks and the summation order must stay as written.
 */
#include "_native.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A strided (rows, cols) matrix of float32 or float64. */
typedef struct {
    const char *data;
    Py_ssize_t s0, s1; /* strides in elements */
    int is_double;
} strided;

static inline double at(const strided *m, Py_ssize_t i, Py_ssize_t j)
{
    Py_ssize_t o = i * m->s0 + j * m->s1;
    return m->is_double ? ((const double *)m->data)[o] : (double)((const float *)m->data)[o];
}

/* Lower Cholesky factor of a + jitter I (d x d, row-major); 0 on success. */
static int cholesky(const double *a, double jitter, int d, double *l)
{
    for (int j = 0; j < d; j++) {
        for (int i = 0; i < d; i++)
            l[i * d + j] = 0.0;
    }
    for (int j = 0; j < d; j++) {
        double s = a[j * d + j] + jitter;
        for (int p = 0; p < j; p++)
            s -= l[j * d + p] * l[j * d + p];
        if (!(s > 0.0)) /* also catches NaN, as LAPACK's potrf does */
            return 1;
        double ljj = sqrt(s);
        l[j * d + j] = ljj;
        for (int i = j + 1; i < d; i++) {
            double t = a[i * d + j];
            for (int p = 0; p < j; p++)
                t -= l[i * d + p] * l[j * d + p];
            l[i * d + j] = t / ljj;
        }
    }
    return 0;
}

/* Inverse of a lower-triangular matrix by forward substitution (column by column). */
static void lower_inverse(const double *l, int d, double *li)
{
    for (int c = 0; c < d; c++) {
        for (int i = 0; i < d; i++) {
            double t = (i == c) ? 1.0 : 0.0;
            for (int p = c; p < i; p++)
                t -= l[i * d + p] * li[p * d + c];
            li[i * d + c] = (i < c) ? 0.0 : t / l[i * d + i];
        }
    }
}

typedef struct {
    double value, jitter;
    int failed, finite;
} result;

/* sum of a[i] over n doubles; the simd reduction vectorises it */
static inline double vsum(const double *restrict a, Py_ssize_t n)
{
    double t = 0.0;
#pragma omp simd reduction(+ : t)
    for (Py_ssize_t i = 0; i < n; i++)
        t += a[i];
    return t;
}

static inline double vdot(const double *restrict a, const double *restrict b, Py_ssize_t n)
{
    double t = 0.0;
#pragma omp simd reduction(+ : t)
    for (Py_ssize_t i = 0; i < n; i++)
        t += a[i] * b[i];
    return t;
}

static inline double vdot3(const double *restrict a, const double *restrict b, const double *restrict c, Py_ssize_t n)
{
    double t = 0.0;
#pragma omp simd reduction(+ : t)
    for (Py_ssize_t i = 0; i < n; i++)
        t += a[i] * b[i] * c[i];
    return t;
}

/* diff (D, N) = zc - c: the rows about one component's mean */
static inline void centre(const double *restrict zc, const double *restrict c, int d, Py_ssize_t n,
                          double *restrict diff)
{
    for (int a = 0; a < d; a++) {
        const double *za = zc + a * n;
        double ca = c[a];
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++)
            diff[a * n + i] = za[i] - ca;
    }
}

/* Rows of the batch run along the innermost axis of every row-level array ((D, N),
   (K, N)), so that each loop over them is a plain vectorisable loop. */
KERNEL static int objective(const strided *z, const strided *gm, void *gz, void *gg, Py_ssize_t n, int d, int k,
                     double w_energy, double w_cov_diag, double eps, int max_tries, result *res, int *bad)
{
    const Py_ssize_t dd = (Py_ssize_t)d * d, kd = (Py_ssize_t)k * d, kdd = (Py_ssize_t)k * dd;
    /* row-level: zc, diff, acc_z (D, N); gamma, r (K, N); eight (N,) temporaries */
    double *rows = (double *)malloc(sizeof(double) * (size_t)n * (size_t)(3 * d + 2 * k + 8));
    /* K-level: s, lconst, big_r, gconst (K); c, rd, gmu (K, D); cov, l, li, ainv, rdd, g (K, D, D); t1 (D, D) */
    double *small = (double *)calloc((size_t)(4 * k + 3 * kd + 6 * kdd + dd + d), sizeof(double));
    if (rows == NULL || small == NULL) {
        free(rows);
        free(small);
        return -1;
    }
    double *zc = rows, *diff = zc + d * n, *acc_z = diff + d * n, *gam = acc_z + d * n, *r = gam + k * n;
    double *tmp = r + k * n, *maha = tmp + n, *top = maha + n, *sum_e = top + n, *lse = sum_e + n, *gdiff = lse + n,
           *lin = gdiff + n, *quad = lin + n;
    double *s = small, *lconst = s + k, *big_r = lconst + k, *gconst = big_r + k, *c = gconst + k, *rd = c + kd,
           *gmu = rd + kd, *cov = gmu + kd, *l = cov + kdd, *li = l + kdd, *ainv = li + kdd, *rdd = ainv + kdd,
           *g = rdd + kdd, *t1 = g + kdd, *mean = t1 + dd;

    /* load, transposed to (D, N) / (K, N) and in float64; moments about the batch mean */
    for (int a = 0; a < d; a++) {
        double *za = zc + a * n;
        for (Py_ssize_t i = 0; i < n; i++)
            za[i] = at(z, i, a);
        mean[a] = vsum(za, n) / (double)n;
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++)
            za[i] -= mean[a];
    }
    for (int q = 0; q < k; q++)
        for (Py_ssize_t i = 0; i < n; i++)
            gam[q * n + i] = at(gm, i, q);
    int finite = 1;
    for (int q = 0; q < k; q++) {
        const double *gq = gam + q * n;
        double *cq = c + q * d, *covq = cov + q * dd;
        s[q] = vsum(gq, n);
        /* a component that received no mass gets a tiny floor, as in dagmm.models.gmm */
        double sq = s[q] > DBL_MIN ? s[q] : DBL_MIN;
        for (int a = 0; a < d; a++)
            cq[a] = vdot(gq, zc + a * n, n) / sq;
        for (int a = 0; a < d; a++)
            for (int b = 0; b <= a; b++) {
                double v = vdot3(gq, zc + a * n, zc + b * n, n) / sq - cq[a] * cq[b];
                covq[a * d + b] = v;
                covq[b * d + a] = v;
                if (!isfinite(v))
                    finite = 0;
            }
    }
    /* Cholesky with the same jitter for every component, raised tenfold until all succeed */
    double jitter = eps;
    int failed = 1;
    for (int t = 0; t <= max_tries; t++) {
        failed = 0;
        for (int q = 0; q < k; q++) {
            bad[q] = cholesky(cov + q * dd, jitter, d, l + q * dd);
            failed |= bad[q];
        }
        if (!failed)
            break;
        if (t < max_tries)
            jitter *= 10.0;
    }
    res->failed = failed;
    res->finite = finite;
    res->jitter = jitter;
    if (failed) {
        free(rows);
        free(small);
        return 0;
    }
    const double half_log_2pi = 0.91893853320467274178; /* log(2 pi) / 2 */
    for (int q = 0; q < k; q++) {
        double *liq = li + q * dd, *aq = ainv + q * dd;
        lower_inverse(l + q * dd, d, liq);
        /* (Sigma + eps I)^-1 = L^-T L^-1 */
        for (int a = 0; a < d; a++)
            for (int b = 0; b < d; b++) {
                double t = 0.0;
                for (int p = (a > b ? a : b); p < d; p++)
                    t += liq[p * d + a] * liq[p * d + b];
                aq[a * d + b] = t;
            }
        double phi = s[q] / (double)n;
        double lc = log(phi > DBL_MIN ? phi : DBL_MIN) - d * half_log_2pi;
        for (int a = 0; a < d; a++)
            lc += log(liq[a * d + a]); /* log det of the precision factor */
        lconst[q] = lc;
    }

    /* log-densities: ||L^-1 (zc - c_k)||^2 by rows of L^-1, into r (K, N) */
    for (int q = 0; q < k; q++) {
        const double *liq = li + q * dd, *cq = c + q * d;
        double *lp = r + q * n;
        centre(zc, cq, d, n, diff);
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++)
            maha[i] = 0.0;
        for (int a = 0; a < d; a++) {
#pragma omp simd
            for (Py_ssize_t i = 0; i < n; i++)
                tmp[i] = 0.0;
            for (int b = 0; b <= a; b++) {
                const double lab = liq[a * d + b], *db = diff + b * n;
#pragma omp simd
                for (Py_ssize_t i = 0; i < n; i++)
                    tmp[i] += lab * db[i];
            }
#pragma omp simd
            for (Py_ssize_t i = 0; i < n; i++)
                maha[i] += tmp[i] * tmp[i];
        }
        const double lc = lconst[q];
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++)
            lp[i] = lc - 0.5 * maha[i];
    }
    /* log-sum-exp over components with the maximum taken out; responsibilities from the same exponentials */
    for (Py_ssize_t i = 0; i < n; i++) {
        double m = r[i];
        for (int q = 1; q < k; q++)
            m = r[q * n + i] > m ? r[q * n + i] : m;
        top[i] = isfinite(m) ? m : 0.0;
        sum_e[i] = 0.0;
    }
    for (int q = 0; q < k; q++)
        for (Py_ssize_t i = 0; i < n; i++) {
            double e = exp(r[q * n + i] - top[i]);
            r[q * n + i] = e;
            sum_e[i] += e;
        }
    for (Py_ssize_t i = 0; i < n; i++)
        lse[i] = log(sum_e[i]) + top[i];
    for (int q = 0; q < k; q++) {
        double *rq = r + q * n;
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++)
            rq[i] /= sum_e[i];
    }
    double penalty = 0.0;
    for (int q = 0; q < k; q++)
        for (int a = 0; a < d; a++)
            penalty += 1.0 / (cov[q * dd + a * d + a] + jitter);
    res->value = w_energy * (-vsum(lse, n) / (double)n) + w_cov_diag * penalty;

    /* K-level gradient: dJ/dmu, dJ/dSigma (G) and the row-independent part of dJ/dgamma */
    const double wn = w_energy / (double)n;
    for (int q = 0; q < k; q++) {
        const double *rq = r + q * n, *cq = c + q * d, *aq = ainv + q * dd, *covq = cov + q * dd;
        double *rdq = rd + q * d, *rddq = rdd + q * dd, *gq = g + q * dd, *gmuq = gmu + q * d;
        /* sum_i r_ik (zc_i - c_k) and sum_i r_ik (zc_i - c_k)(zc_i - c_k)^T */
        centre(zc, cq, d, n, diff);
        big_r[q] = vsum(rq, n);
        for (int a = 0; a < d; a++) {
            rdq[a] = vdot(rq, diff + a * n, n);
            for (int b = 0; b <= a; b++) {
                double v = vdot3(rq, diff + a * n, diff + b * n, n);
                rddq[a * d + b] = v;
                rddq[b * d + a] = v;
            }
        }
        for (int a = 0; a < d; a++) {
            double t = 0.0;
            for (int b = 0; b < d; b++)
                t += aq[a * d + b] * rdq[b];
            gmuq[a] = -wn * t;
        }
        /* G = w/2 (R A^-1 - A^-1 S_r A^-1) - lambda_2 diag(1 / Sigma_jj^2) */
        for (int a = 0; a < d; a++)
            for (int b = 0; b < d; b++) {
                double t = 0.0;
                for (int p = 0; p < d; p++)
                    t += aq[a * d + p] * rddq[p * d + b];
                t1[a * d + b] = t;
            }
        for (int a = 0; a < d; a++)
            for (int b = 0; b < d; b++) {
                double t = 0.0;
                for (int p = 0; p < d; p++)
                    t += t1[a * d + p] * aq[p * d + b];
                gq[a * d + b] = 0.5 * wn * (big_r[q] * aq[a * d + b] - t);
            }
        for (int a = 0; a < d; a++) {
            double sjj = covq[a * d + a] + jitter;
            gq[a * d + a] -= w_cov_diag / (sjj * sjj);
        }
        /* exactly symmetric: the quadratic forms below rely on it */
        for (int a = 0; a < d; a++)
            for (int b = 0; b < a; b++) {
                double v = 0.5 * (gq[a * d + b] + gq[b * d + a]);
                gq[a * d + b] = v;
                gq[b * d + a] = v;
            }
        double gphi = s[q] > DBL_MIN * (double)n ? -wn * big_r[q] : 0.0; /* S_k dJ/dphi_k / N */
        double gc = 0.0;
        for (Py_ssize_t a = 0; a < dd; a++)
            gc += gq[a] * covq[a];
        gconst[q] = gphi - gc;
    }

    /* dJ/dz_i = w sum_k r_ik A_k^-1 (zc_i - c_k) + sum_k gamma_ik / S_k (dJ/dmu_k + 2 G_k (zc_i - c_k)),
       dJ/dgamma_ik = (gconst_k + (zc_i - c_k).dJ/dmu_k + (zc_i - c_k)^T G_k (zc_i - c_k)) / S_k */
    for (Py_ssize_t j = 0; j < d * n; j++)
        acc_z[j] = 0.0;
    for (int q = 0; q < k; q++) {
        const double *rq = r + q * n, *cq = c + q * d, *aq = ainv + q * dd, *gq = g + q * dd, *gmuq = gmu + q * d;
        const double sq = s[q] > DBL_MIN ? s[q] : DBL_MIN;
        double *gamq = gam + q * n;
        centre(zc, cq, d, n, diff);
#pragma omp simd
        for (Py_ssize_t i = 0; i < n; i++) {
            lin[i] = 0.0;
            quad[i] = 0.0;
            gamq[i] /= sq;
        }
        for (int a = 0; a < d; a++) {
#pragma omp simd
            for (Py_ssize_t i = 0; i < n; i++) {
                tmp[i] = 0.0;
                gdiff[i] = 0.0;
            }
            for (int b = 0; b < d; b++) {
                const double ab = aq[a * d + b], gab = gq[a * d + b], *db = diff + b * n;
#pragma omp simd
                for (Py_ssize_t i = 0; i < n; i++) {
                    tmp[i] += ab * db[i];
                    gdiff[i] += gab * db[i];
                }
            }
            const double gma = gmuq[a], *da = diff + a * n;
            double *za = acc_z + a * n;
#pragma omp simd
            for (Py_ssize_t i = 0; i < n; i++) {
                za[i] += wn * rq[i] * tmp[i] + gamq[i] * (gma + 2.0 * gdiff[i]);
                lin[i] += da[i] * gma;
                quad[i] += da[i] * gdiff[i];
            }
        }
        const double gcq = gconst[q];
        if (gm->is_double) {
            double *out = (double *)gg + q * n;
#pragma omp simd
            for (Py_ssize_t i = 0; i < n; i++)
                out[i] = (gcq + lin[i] + quad[i]) / sq;
        } else {
            float *out = (float *)gg + q * n;
#pragma omp simd
            for (Py_ssize_t i = 0; i < n; i++)
                out[i] = (float)((gcq + lin[i] + quad[i]) / sq);
        }
    }
    if (z->is_double)
        memcpy(gz, acc_z, sizeof(double) * (size_t)(d * n));
    else
        for (Py_ssize_t j = 0; j < d * n; j++)
            ((float *)gz)[j] = (float)acc_z[j];
    free(rows);
    free(small);
    return 0;
}

static PyObject *py_mixture_objective(PyObject *self, PyObject *args)
{
    unsigned long long zp, gp, gzp, ggp;
    Py_ssize_t zs0, zs1, gs0, gs1, n;
    int zdbl, gdbl, d, k, max_tries;
    double w_energy, w_cov_diag, eps;
    (void)self;
    if (!PyArg_ParseTuple(args, "KnnpKnnpKKniidddi", &zp, &zs0, &zs1, &zdbl, &gp, &gs0, &gs1, &gdbl, &gzp, &ggp,
                          &n, &d, &k, &w_energy, &w_cov_diag, &eps, &max_tries))
        return NULL;
    if (n < 1 || d < 1 || k < 1 || max_tries < 0) {
        PyErr_SetString(PyExc_ValueError, "mixture_objective: n, d and k must be positive, max_tries >= 0");
        return NULL;
    }
    strided z = {(const char *)(uintptr_t)zp, zs0, zs1, zdbl};
    strided g = {(const char *)(uintptr_t)gp, gs0, gs1, gdbl};
    int *bad = (int *)calloc((size_t)k, sizeof(int));
    if (bad == NULL)
        return PyErr_NoMemory();
    result res = {0.0, 0.0, 0, 1};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = objective(&z, &g, (void *)(uintptr_t)gzp, (void *)(uintptr_t)ggp, n, d, k, w_energy, w_cov_diag, eps,
                   max_tries, &res, bad);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        free(bad);
        return PyErr_NoMemory();
    }
    PyObject *bad_list = PyList_New(0);
    if (bad_list == NULL) {
        free(bad);
        return NULL;
    }
    for (int q = 0; res.failed && q < k; q++) {
        if (bad[q]) {
            PyObject *v = PyLong_FromLong(q);
            if (v == NULL || PyList_Append(bad_list, v) < 0) {
                Py_XDECREF(v);
                Py_DECREF(bad_list);
                free(bad);
                return NULL;
            }
            Py_DECREF(v);
        }
    }
    free(bad);
    return Py_BuildValue("ddNO", res.value, res.jitter, bad_list, res.finite ? Py_True : Py_False);
}

/* ---- reconstruction features (of dagmm.models.features), for _native_mlp.c and _native_train.c: per row of x and x' (both (N, F), contiguous) ----
   saved[i] = (||x||, ||x'||, ||x' - x||, ||x|| ||x'||, cos), float64, for the backward */

#define ROW_SUMS(T)                                                                                                  \
    do {                                                                                                             \
        const T *xi = (const T *)x + i * f, *ri = (const T *)r + i * ldr;                                            \
        _Pragma("omp simd reduction(+ : sx, sr, sxr, sd)") for (Py_ssize_t j = 0; j < f; j++)                       \
        {                                                                                                            \
            double xv = xi[j], rv = ri[j], dv = (double)(ri[j] - xi[j]);                                             \
            sx += xv * xv;                                                                                           \
            sr += rv * rv;                                                                                           \
            sxr += xv * rv;                                                                                          \
            sd += dv * dv;                                                                                           \
        }                                                                                                            \
    } while (0)

/* r's rows are ldr elements apart (f for a contiguous (n, f) x'; more for the padded tiles of
   dagmm/accel/_native_mlp.c, which calls this for the same features while scoring) */
KERNEL void recon_forward(const void *x, const void *r, Py_ssize_t ldr, Py_ssize_t n, Py_ssize_t f, int is_double,
                          int mode, double eps, double log_eps, void *out, double *saved)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        double sx = 0.0, sr = 0.0, sxr = 0.0, sd = 0.0;
        /* the difference is taken in the inputs' precision, as the torch code's r - x */
        if (is_double)
            ROW_SUMS(double);
        else
            ROW_SUMS(float);
        double xn = sqrt(sx), rn = sqrt(sr), err = sqrt(sd), den = xn * rn;
        double cosv = sxr / (den > eps ? den : eps);
        double head = mode == FEAT_RELATIVE ? err / (xn > eps ? xn : eps) : log(sd / (double)f + log_eps);
        if (saved != NULL) {
            double *si = saved + 5 * i;
            si[0] = xn;
            si[1] = rn;
            si[2] = err;
            si[3] = den;
            si[4] = cosv;
        }
        if (is_double) {
            ((double *)out)[2 * i] = head;
            ((double *)out)[2 * i + 1] = cosv;
        } else {
            ((float *)out)[2 * i] = (float)head;
            ((float *)out)[2 * i + 1] = (float)cosv;
        }
    }
}

#define ROW_GRAD(T)                                                                                                  \
    do {                                                                                                             \
        const T *xi = (const T *)x + i * f, *ri = (const T *)r + i * ldr;                                            \
        T *oi = (T *)out + i * ldo;                                                                                  \
        _Pragma("omp simd") for (Py_ssize_t j = 0; j < f; j++)                                                     \
        {                                                                                                            \
            double dv = (double)(ri[j] - xi[j]);                                                                     \
            oi[j] = (T)(ca * dv + cb * (double)ri[j] + cc * (double)xi[j]);                                          \
        }                                                                                                            \
    } while (0)

/* d/dx' of g_head * head + g_cos * cos, per row: a (x' - x) + b x' + c x (the closed form of
   dagmm.models.features._ReconPair; the difference is formed again in the inputs' precision, so no
   cancellation between a and the other two terms).  x' and out have rows ldr and ldo elements apart
   (f for contiguous arrays; more for the padded tiles of dagmm/accel/_native_train.c); grad is (n, 2) with
   element strides gs0, gs1. */
KERNEL void recon_backward(const void *x, const void *r, Py_ssize_t ldr, Py_ssize_t n, Py_ssize_t f, int is_double,
                           int mode, double eps, double log_eps, const void *gp, Py_ssize_t gs0, Py_ssize_t gs1,
                           int g_double, const double *saved, double sq_coef, void *out, Py_ssize_t ldo)
{
    const strided gm = {(const char *)gp, gs0, gs1, g_double}, *grad = &gm;
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *si = saved + 5 * i;
        double xn = si[0], rn = si[1], err = si[2], den = si[3], cosv = si[4];
        double g_head = at(grad, i, 0), g_cos = at(grad, i, 1);
        double ca;
        if (mode == FEAT_RELATIVE)
            ca = g_head / (err * (xn > eps ? xn : eps));
        else
            ca = 2.0 * g_head / (err * err + log_eps * (double)f);
        if (!(err > 0.0))
            ca = 0.0; /* as torch's norm backward at zero */
        ca += sq_coef; /* d/dx' of sq_coef / 2 ||x - x'||^2, the squared error the caller adds to its loss */
        double cc = g_cos / (den > eps ? den : eps);
        double cb = (den > eps && rn > 0.0) ? -g_cos * cosv / (rn * rn) : 0.0;
        if (is_double)
            ROW_GRAD(double);
        else
            ROW_GRAD(float);
    }
}

static PyMethodDef methods[] = {
    {"mixture_objective", py_mixture_objective, METH_VARARGS,
     "mixture_objective(z_ptr, z_s0, z_s1, z_f64, g_ptr, g_s0, g_s1, g_f64, gz_ptr, gg_ptr, n, d, k,\n"
     "                  w_energy, w_cov_diag, eps, max_tries) -> (value, jitter, bad, finite)\n\n"
     "Private to dagmm.accel: raw addresses, no checks. Writes dJ/dz as a contiguous (d, n) array and\n"
     "dJ/dgamma as a contiguous (k, n) array, in the inputs' dtypes; 'bad' lists the components whose\n"
     "Cholesky failed with every jitter."},
    {"adam_step", py_adam_step, METH_VARARGS,
     "adam_step(table_ptr, grads, lr, beta1, beta2, eps, weight_decay) -> None\n\n"
     "Private to dagmm.accel: Adam's update of float32 contiguous parameters in place; table holds int64\n"
     "(n, 5) rows (parameter, first moment, second moment, float32 step counter addresses, element count),\n"
     "grads the n gradients' addresses."},
    {"head_forward", py_head_forward, METH_VARARGS,
     "head_forward(x_ptr, x_s0, x_s1, n, din, w1_ptr, b1_ptr, h, w2_ptr, b2_ptr, k, u_ptr, u_s0, u_s1, keep,\n"
     "             t_ptr, y_ptr) -> None\n\n"
     "Private to dagmm.accel: the softmax head of float32 x (n, din): tanh activations into t (h, n),\n"
     "outputs into y (k, n); dropout from the uniforms u (n, h) unless u_ptr is 0; biases may be 0."},
    {"head_backward", py_head_backward, METH_VARARGS,
     "head_backward(x_ptr, x_s0, x_s1, n, din, w1_ptr, h, w2_ptr, k, u_ptr, u_s0, u_s1, keep, t_ptr, y_ptr,\n"
     "              g_ptr, g_s0, g_s1, gx_ptr, gw1_ptr, gb1_ptr, gw2_ptr, gb2_ptr) -> None\n\n"
     "Private to dagmm.accel: gradients of head_forward for g (n, k); gx (din, n) unless gx_ptr is 0."},
    {"mlp_forward", py_mlp_forward, METH_VARARGS,
     "mlp_forward(x_ptr, n, y_ptr, spec_ptr, n_layers, tile) -> None\n\n"
     "Private to dagmm.accel: a stack of Linear layers, each followed by nothing, tanh or relu, on contiguous\n"
     "float32 rows x (n, in) into y (n, out); spec holds n_layers rows of int64 (in, out, weight address,\n"
     "bias address or 0, activation 0/1/2)."},
    {"mlp_fast", py_mlp_fast, METH_NOARGS,
     "mlp_fast() -> bool\n\nPrivate to dagmm.accel: whether mlp_forward and aegmm_energy run vectorised (AVX2 + FMA)."},
    {"aegmm_energy", py_aegmm_energy, METH_VARARGS,
     "aegmm_energy(x_ptr, n, enc_spec_ptr, n_enc, dec_spec_ptr, n_dec, mode, eps, log_eps, pt_ptr, off_ptr, c_ptr,\n"
     "             k, inv_var_ptr, whiten_spec_ptr, whiten_logdet_ptr, out_ptr, tile) -> None\n\n"
     "Private to dagmm.accel: DAGMM's sample energy of contiguous float32 rows x (n, f) into float64 out (n,):\n"
     "encoder and decoder as mlp_forward's specs, the features of recon_forward (mode), and the mixture as\n"
     "float64 P_k^T (k, d, d), P_k^T mu_k (k, d) and the constants c (k,); inv_var_ptr 0, or float64 (f,) to add\n"
     "0.5 sum_j (x_j - x'_j)^2 inv_var_j; whiten_spec_ptr 0, or one layer's spec (f -> f, no activation) to add\n"
     "half the squared norm of that layer applied to x - x' instead; with whiten_logdet_ptr (float64 (k,)) the\n"
     "layer maps f -> k f and block q's log det - half squared norm joins component q before the log-sum-exp."},
    {"train_forward", py_train_forward, METH_VARARGS,
     "train_forward(x_ptr, n, f, spec_ptr, n_layers, n_enc, mode, eps, log_eps, acts_ptr, z_ptr, norms_ptr, tile,\n"
     "              threads) -> None\n\n"
     "Private to dagmm.accel: the encoder (the first n_enc layers of spec, as mlp_forward's) and decoder on\n"
     "contiguous float32 rows x (n, f), every layer's output into its array of acts (n_layers int64 addresses\n"
     "of (n, out rounded up to 8) arrays), the latent code and the features of recon_forward into z\n"
     "(n, latent + 2), the norms into float64 norms (n, 5)."},
    {"train_backward", py_train_backward, METH_VARARGS,
     "train_backward(x_ptr, n, f, spec_ptr, n_layers, n_enc, mode, eps, log_eps, acts_ptr, norms_ptr, gz_ptr,\n"
     "               sq_coef, grads_ptr, tile, threads) -> None\n\n"
     "Private to dagmm.accel: the parameter gradients of train_forward's layers for dJ/dz (latent + 2, n)\n"
     "plus sq_coef (x' - x) with respect to x'; grads holds 2 n_layers int64 addresses (weight gradient,\n"
     "bias gradient or 0)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "dagmm.accel._native", "Optional C kernels of dagmm (private).",
                                    -1, methods, NULL, NULL, NULL, NULL};

/* The constants of _native.h that dagmm.accel reads instead of keeping copies. */
PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddIntConstant(m, "MAX_LAYERS", DAGMM_MAX_LAYERS) < 0 ||
        PyModule_AddIntConstant(m, "MAX_Z", DAGMM_MAX_Z) < 0 || PyModule_AddIntConstant(m, "MAX_K", DAGMM_MAX_K) < 0 ||
        PyModule_AddIntConstant(m, "TILE", DAGMM_TILE) < 0 || PyModule_AddIntConstant(m, "ACT_NONE", ACT_NONE) < 0 ||
        PyModule_AddIntConstant(m, "ACT_TANH", ACT_TANH) < 0 || PyModule_AddIntConstant(m, "ACT_RELU", ACT_RELU) < 0 ||
        PyModule_AddIntConstant(m, "FEAT_RELATIVE", FEAT_RELATIVE) < 0 ||
        PyModule_AddIntConstant(m, "FEAT_LOG_MSE", FEAT_LOG_MSE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
