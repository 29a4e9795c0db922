/* Optional C kernel for the mixture objective of DAGMM on CPU tensors.
 *
 * Private: dagmm/objective.py calls it with raw data addresses after checking
 * device, dtype, shapes and strides, and falls back to its torch code when this
 * module was not built.  It has no torch headers, so it builds with a plain C
 * compiler in about a second.
 *
 * Why: with DAGMM's tiny mixture (K = 4 components of D = 3 dimensions) the
 * K-level algebra costs only a few thousand flops, but as torch operations it
 * is some 150 dispatches per training step, each worth more than its
 * arithmetic (benchmarks/results/NOTES-speed.md, fourth pass).  Here the whole
 * objective -- value and both gradients -- is three passes over the rows and
 * a few loops over K x D x D.
 *
 * Numerics are those of dagmm.gmm / dagmm.objective: float64 throughout, moments
 * about the batch mean, Cholesky factor of Sigma_k + eps I with the jitter raised
 * tenfold for every component when one fails, Mahalanobis distances by
 * triangular solve, log-sum-exp with the maximum taken out.  The gradient is the
 * closed form in dagmm/objective.py's docstring.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

static inline void put(void *out, int is_double, Py_ssize_t o, double v)
{
    if (is_double)
        ((double *)out)[o] = v;
    else
        ((float *)out)[o] = (float)v;
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

/* Workspace layout, all doubles. */
typedef struct {
    double *mean, *s, *m1, *m2, *c, *cov, *l, *li, *ainv, *lconst, *r, *big_r, *rd, *rdd, *g, *gmu, *gconst,
        *zc, *diff, *u, *tmp;
    int *bad;
} work;

static double *carve(double **p, Py_ssize_t count)
{
    double *q = *p;
    *p += count;
    return q;
}

static int objective(const strided *z, const strided *gm, void *gz, void *gg, Py_ssize_t n, int d, int k,
                     double w_energy, double w_cov_diag, double eps, int max_tries, result *res, int *bad_out)
{
    const Py_ssize_t dd = (Py_ssize_t)d * d;
    const Py_ssize_t kd = (Py_ssize_t)k * d, kdd = (Py_ssize_t)k * dd;
    const Py_ssize_t total = d + k + kd + kdd /* m2 */ + kd /* c */ + 4 * kdd /* cov l li ainv */ + k
                             + n * k /* r */ + k + kd + kdd /* rdd */ + kdd /* g */ + kd + k + 3 * d + kd + dd;
    double *block = (double *)calloc((size_t)total, sizeof(double));
    if (block == NULL)
        return -1;
    double *p = block;
    work w;
    w.mean = carve(&p, d);
    w.s = carve(&p, k);
    w.m1 = carve(&p, kd);
    w.m2 = carve(&p, kdd);
    w.c = carve(&p, kd);
    w.cov = carve(&p, kdd);
    w.l = carve(&p, kdd);
    w.li = carve(&p, kdd);
    w.ainv = carve(&p, kdd);
    w.lconst = carve(&p, k);
    w.r = carve(&p, n * k);
    w.big_r = carve(&p, k);
    w.rd = carve(&p, kd);
    w.rdd = carve(&p, kdd);
    w.g = carve(&p, kdd);
    w.gmu = carve(&p, kd);
    w.gconst = carve(&p, k);
    w.zc = carve(&p, d);
    w.diff = carve(&p, d);
    w.u = carve(&p, d);
    w.tmp = carve(&p, kd + dd);
    w.bad = bad_out;

    /* pass 1: batch mean, then gamma-weighted moments about it (lower triangle of the second) */
    for (Py_ssize_t i = 0; i < n; i++)
        for (int a = 0; a < d; a++)
            w.mean[a] += at(z, i, a);
    for (int a = 0; a < d; a++)
        w.mean[a] /= (double)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        for (int a = 0; a < d; a++)
            w.zc[a] = at(z, i, a) - w.mean[a];
        for (int q = 0; q < k; q++) {
            double gi = at(gm, i, q);
            double *m1 = w.m1 + q * d, *m2 = w.m2 + q * dd;
            w.s[q] += gi;
            for (int a = 0; a < d; a++) {
                double ga = gi * w.zc[a];
                m1[a] += ga;
                for (int b = 0; b <= a; b++)
                    m2[a * d + b] += ga * w.zc[b];
            }
        }
    }
    /* mixture parameters; a component with no mass gets a tiny floor, as in dagmm.gmm */
    int finite = 1;
    for (int q = 0; q < k; q++) {
        double sq = w.s[q] > DBL_MIN ? w.s[q] : DBL_MIN;
        double *c = w.c + q * d, *cov = w.cov + q * dd, *m2 = w.m2 + q * dd;
        for (int a = 0; a < d; a++)
            c[a] = w.m1[q * d + a] / sq;
        for (int a = 0; a < d; a++)
            for (int b = 0; b <= a; b++) {
                double v = m2[a * d + b] / sq - c[a] * c[b];
                cov[a * d + b] = v;
                cov[b * d + a] = v;
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
            w.bad[q] = cholesky(w.cov + q * dd, jitter, d, w.l + q * dd);
            failed |= w.bad[q];
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
        free(block);
        return 0;
    }
    const double half_log_2pi = 0.91893853320467274178; /* log(2 pi) / 2 */
    for (int q = 0; q < k; q++) {
        double *li = w.li + q * dd, *ainv = w.ainv + q * dd;
        lower_inverse(w.l + q * dd, d, li);
        /* (Sigma + eps I)^-1 = L^-T L^-1 */
        for (int a = 0; a < d; a++)
            for (int b = 0; b < d; b++) {
                double t = 0.0;
                for (int p2 = (a > b ? a : b); p2 < d; p2++)
                    t += li[p2 * d + a] * li[p2 * d + b];
                ainv[a * d + b] = t;
            }
        double phi = w.s[q] / (double)n;
        double lc = log(phi > DBL_MIN ? phi : DBL_MIN) - d * half_log_2pi;
        for (int a = 0; a < d; a++)
            lc += log(li[a * d + a]); /* log det of the precision factor */
        w.lconst[q] = lc;
    }

    /* pass 2: log-densities, log-sum-exp, responsibilities and their moments about each mean */
    double lse_sum = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        double *ri = w.r + i * k;
        double top = -INFINITY;
        for (int a = 0; a < d; a++)
            w.zc[a] = at(z, i, a) - w.mean[a];
        for (int q = 0; q < k; q++) {
            const double *c = w.c + q * d, *li = w.li + q * dd;
            double maha = 0.0;
            for (int a = 0; a < d; a++) {
                double t = 0.0;
                for (int b = 0; b <= a; b++)
                    t += li[a * d + b] * (w.zc[b] - c[b]);
                maha += t * t;
            }
            ri[q] = w.lconst[q] - 0.5 * maha;
            if (ri[q] > top)
                top = ri[q];
        }
        double shift = isfinite(top) ? top : 0.0;
        double acc = 0.0;
        for (int q = 0; q < k; q++)
            acc += exp(ri[q] - shift);
        double lse = log(acc) + shift;
        lse_sum += lse;
        for (int q = 0; q < k; q++) {
            double rq = exp(ri[q] - lse);
            const double *c = w.c + q * d;
            double *rd = w.rd + q * d, *rdd = w.rdd + q * dd;
            ri[q] = rq;
            w.big_r[q] += rq;
            for (int a = 0; a < d; a++) {
                double da = w.zc[a] - c[a];
                rd[a] += rq * da;
                for (int b = 0; b <= a; b++)
                    rdd[a * d + b] += rq * da * (w.zc[b] - c[b]);
            }
        }
    }
    double penalty = 0.0;
    for (int q = 0; q < k; q++)
        for (int a = 0; a < d; a++)
            penalty += 1.0 / (w.cov[q * dd + a * d + a] + jitter);
    res->value = w_energy * (-lse_sum / (double)n) + w_cov_diag * penalty;

    /* K-level gradient: dJ/dmu, dJ/dSigma (G) and the constant part of dJ/dgamma */
    const double wn = w_energy / (double)n;
    for (int q = 0; q < k; q++) {
        const double *ainv = w.ainv + q * dd, *rd = w.rd + q * d, *cov = w.cov + q * dd;
        double *rdd = w.rdd + q * dd, *g = w.g + q * dd, *gmu = w.gmu + q * d, *t1 = w.tmp;
        for (int a = 0; a < d; a++)
            for (int b = 0; b < a; b++)
                rdd[b * d + a] = rdd[a * d + b];
        for (int a = 0; a < d; a++) {
            double t = 0.0;
            for (int b = 0; b < d; b++)
                t += ainv[a * d + b] * rd[b];
            gmu[a] = -wn * t;
        }
        /* t1 = A^-1 S_r, then G = w/2 (R A^-1 - t1 A^-1) - lambda_2 diag(1 / Sigma_jj^2) */
        for (int a = 0; a < d; a++)
            for (int b = 0; b < d; b++) {
                double t = 0.0;
                for (int p2 = 0; p2 < d; p2++)
                    t += ainv[a * d + p2] * rdd[p2 * d + b];
                t1[a * d + b] = t;
            }
        for (int a = 0; a < d; a++)
            for (int b = 0; b < d; b++) {
                double t = 0.0;
                for (int p2 = 0; p2 < d; p2++)
                    t += t1[a * d + p2] * ainv[p2 * d + b];
                g[a * d + b] = 0.5 * wn * (w.big_r[q] * ainv[a * d + b] - t);
            }
        for (int a = 0; a < d; a++) {
            double sjj = cov[a * d + a] + jitter;
            g[a * d + a] -= w_cov_diag / (sjj * sjj);
        }
        /* symmetrise: the quadratic forms below assume it, and rounding breaks it slightly */
        for (int a = 0; a < d; a++)
            for (int b = 0; b < a; b++) {
                double v = 0.5 * (g[a * d + b] + g[b * d + a]);
                g[a * d + b] = v;
                g[b * d + a] = v;
            }
        double gphi = w.s[q] > DBL_MIN * (double)n ? -wn * w.big_r[q] : 0.0; /* S_k dJ/dphi_k / N */
        double gc = 0.0;
        for (int a = 0; a < dd; a++)
            gc += g[a] * cov[a];
        w.gconst[q] = gphi - gc;
    }

    /* pass 3: dJ/dz_i = w sum_k r_ik y_ik + sum_k gamma_ik / S_k (dJ/dmu_k + 2 G_k (zc_i - c_k)),
       dJ/dgamma_ik = (gconst_k + (zc_i - c_k).dJ/dmu_k + (zc_i - c_k)^T G_k (zc_i - c_k)) / S_k */
    const int zd = z->is_double, gd = gm->is_double;
    double *acc = w.u;
    for (Py_ssize_t i = 0; i < n; i++) {
        const double *ri = w.r + i * k;
        for (int a = 0; a < d; a++) {
            w.zc[a] = at(z, i, a) - w.mean[a];
            acc[a] = 0.0;
        }
        for (int q = 0; q < k; q++) {
            const double *c = w.c + q * d, *ainv = w.ainv + q * dd, *g = w.g + q * dd, *gmu = w.gmu + q * d;
            double sq = w.s[q] > DBL_MIN ? w.s[q] : DBL_MIN;
            double gi = at(gm, i, q) / sq, rq = wn * ri[q];
            for (int a = 0; a < d; a++)
                w.diff[a] = w.zc[a] - c[a];
            double lin = 0.0, quad = 0.0;
            for (int a = 0; a < d; a++) {
                double y = 0.0, gdiff = 0.0;
                for (int b = 0; b < d; b++) {
                    y += ainv[a * d + b] * w.diff[b];
                    gdiff += g[a * d + b] * w.diff[b];
                }
                acc[a] += rq * y + gi * (gmu[a] + 2.0 * gdiff);
                lin += w.diff[a] * gmu[a];
                quad += w.diff[a] * gdiff;
            }
            put(gg, gd, i * k + q, (w.gconst[q] + lin + quad) / sq);
        }
        for (int a = 0; a < d; a++)
            put(gz, zd, i * d + a, acc[a]);
    }
    free(block);
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

static PyMethodDef methods[] = {
    {"mixture_objective", py_mixture_objective, METH_VARARGS,
     "mixture_objective(z_ptr, z_s0, z_s1, z_f64, g_ptr, g_s0, g_s1, g_f64, gz_ptr, gg_ptr, n, d, k,\n"
     "                  w_energy, w_cov_diag, eps, max_tries) -> (value, jitter, bad, finite)\n\n"
     "Private to dagmm.objective: raw addresses, no checks. Writes dJ/dz (n, d) and dJ/dgamma (n, k),\n"
     "contiguous, in the inputs' dtypes; 'bad' lists the components whose Cholesky failed with every jitter."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "dagmm._native", "Optional C kernels of dagmm (private).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
