/* The register-blocked float32 product shared by _native_mlp.c (inference) and _native_train.c
 * (training): 6 rows x 16 columns of accumulators in GCC vector registers, no intrinsics.
 * Everything here is static inline: each kernel file gets its own copy, compiled inside that
 * file's x86-64-v3 (AVX2 + FMA) clone (benchmarks/results/NOTES-speed.md, sixth pass). */
#ifndef DAGMM_NATIVE_BLOCK_H
#define DAGMM_NATIVE_BLOCK_H

#include "_native.h"

/* 8 floats; aligned(4) and may_alias so any float address can be loaded and stored as one */
typedef float v8 __attribute__((vector_size(32), aligned(4), may_alias));

enum { MR = 6 };

/* y[r, 0:8 nv] = start_r + sum_i a[r ars + i acs] bt[i ldb, 0:8 nv] for r < mr, where start_r is the row
   b (the same for every row: a bias, or zeros) or, with acc, y's own row r (a sum continued).  mr, nv
   and acc are constants at every call site (run_block), and so are the strides of a where the caller
   passes literals, so the accumulators live in registers. */
static inline __attribute__((always_inline)) void block(const float *restrict a, Py_ssize_t ars, Py_ssize_t acs,
                                                          Py_ssize_t k, const float *restrict bt, Py_ssize_t ldb,
                                                          const float *restrict b, float *restrict y, Py_ssize_t ldy,
                                                          const int mr, const int nv, const int acc)
{
    v8 s[MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) {
        const float *start = acc ? y + r * ldy : b;
        s[r][0] = *(const v8 *)start;
        s[r][1] = nv > 1 ? *(const v8 *)(start + 8) : s[r][0];
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        const v8 w0 = *(const v8 *)(bt + i * ldb);
        const v8 w1 = nv > 1 ? *(const v8 *)(bt + i * ldb + 8) : w0;
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            const float ar = a[r * ars + i * acs];
            s[r][0] += ar * w0;
            if (nv > 1)
                s[r][1] += ar * w1;
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) {
        *(v8 *)(y + r * ldy) = s[r][0];
        if (nv > 1)
            *(v8 *)(y + r * ldy + 8) = s[r][1];
    }
}

#define BLOCK_CASE(m)                                                                                         \
    case m:                                                                                                   \
        if (nv > 1)                                                                                           \
            block(a, ars, acs, k, bt, ldb, b, y, ldy, m, 2, acc);                                             \
        else                                                                                                  \
            block(a, ars, acs, k, bt, ldb, b, y, ldy, m, 1, acc);                                             \
        break;

/* block() for 1 <= mr <= MR rows and nv = 1 or 2 vectors, each case compiled with constant sizes */
static inline __attribute__((always_inline)) void run_block(const float *restrict a, Py_ssize_t ars, Py_ssize_t acs,
                                                              Py_ssize_t k, const float *restrict bt, Py_ssize_t ldb,
                                                              const float *restrict b, float *restrict y,
                                                              Py_ssize_t ldy, int mr, int nv, const int acc)
{
    switch (mr) {
        BLOCK_CASE(1)
        BLOCK_CASE(2)
        BLOCK_CASE(3)
        BLOCK_CASE(4)
        BLOCK_CASE(5)
        BLOCK_CASE(6)
    }
}
#undef BLOCK_CASE

/* y (rows, ow) = start + a (rows, k) bt (k, ow), ow a multiple of 8; a's element (r, i) at a[r ars + i acs].
   Columns outer, rows inner: a 16-wide slice of bt stays in L1 while the rows stream past it. */
static inline __attribute__((always_inline)) void product(const float *restrict a, Py_ssize_t ars, Py_ssize_t acs,
                                                            Py_ssize_t rows, Py_ssize_t k, const float *restrict bt,
                                                            Py_ssize_t ldb, Py_ssize_t ow, const float *restrict b,
                                                            float *restrict y, Py_ssize_t ldy, const int acc)
{
    for (Py_ssize_t o = 0; o < ow; o += 16) {
        const int nv = ow - o >= 16 ? 2 : 1;
        Py_ssize_t r = 0;
        for (; r + MR <= rows; r += MR)
            run_block(a + r * ars, ars, acs, k, bt + o, ldb, acc ? NULL : b + o, y + r * ldy + o, ldy, MR, nv, acc);
        if (r < rows)
            run_block(a + r * ars, ars, acs, k, bt + o, ldb, acc ? NULL : b + o, y + r * ldy + o, ldy, (int)(rows - r),
                      nv, acc);
    }
}

/* The activation of a layer applied in place to y (rows, ow) */
static inline __attribute__((always_inline)) void activate(float *restrict y, Py_ssize_t ldy, Py_ssize_t rows,
                                                             Py_ssize_t ow, int act)
{
    if (act == ACT_NONE)
        return;
    for (Py_ssize_t r = 0; r < rows; r++) {
        float *restrict row = y + r * ldy;
        if (act == ACT_TANH) {
#pragma omp simd
            for (Py_ssize_t j = 0; j < ow; j++)
                row[j] = tanh_f(row[j]);
        } else {
#pragma omp simd
            for (Py_ssize_t j = 0; j < ow; j++)
                row[j] = row[j] > 0.0f ? row[j] : (row[j] == row[j] ? 0.0f : row[j]); /* relu; NaN stays */
        }
    }
}

/* One layer over `rows` rows: y (rows, ow) = act(x (rows, k) wt (k, ow) + b), row strides ldx and ldy */
static inline __attribute__((always_inline)) void layer(const float *restrict x, Py_ssize_t ldx, Py_ssize_t rows,
                                                          Py_ssize_t k, const float *restrict wt, Py_ssize_t ow,
                                                          const float *restrict b, int act, float *restrict y,
                                                          Py_ssize_t ldy)
{
    product(x, ldx, 1, rows, k, wt, ow, ow, b, y, ldy, 0);
    activate(y, ldy, rows, ow, act);
}

typedef struct {
    Py_ssize_t in, out, ow; /* ow: out rounded up to a multiple of 8 */
    const float *wt;        /* (in, ow): the weight transposed, zero past out */
    const float *b;         /* (ow,): the bias, zero past out (and where the layer has none) */
    int act;
} Layer;

/* _native_mlp.c: a stack's layers from its spec (nl rows of five int64: in, out, weight address (out, in)
   row-major, bias address or 0, activation), returning the widest padded width; the weights transposed and
   padded into one allocation with `extra` floats of work space after them (*work), NULL with MemoryError
   set when out of memory; and the check of the layer count and tile (-1 with ValueError set) */
Py_ssize_t describe_layers(const int64_t *spec, int nl, Layer *L);
float *pack_layers(const int64_t *spec, int nl, Layer *L, size_t extra, float **work);
int check_layers(const char *kernel, int nl, Py_ssize_t tile);

#endif
