/* A fully connected stack's forward pass in one call (inference), float32: dagmm.fused.
 *
 * Private: dagmm.fused calls it through dagmm.native with raw data addresses, after checking
 * device, dtype, shapes and contiguity, and keeps its torch code for everything else.
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
 * another order, so results agree to float32 rounding, not bit for bit (tests/test_fused.py).
 * The tanh is tanh_f of _native.h, as in the training kernels.
 */
#include "_native.h"

#include <stdlib.h>

/* 8 floats; aligned(4) and may_alias so any float address can be loaded and stored as one */
typedef float v8 __attribute__((vector_size(32), aligned(4), may_alias));

enum { MR = 6, ACT_NONE = 0, ACT_TANH = 1, ACT_RELU = 2 };

/* y[r, 0:8 nv] = b[0:8 nv] + sum_i x[r, i] wt[i, 0:8 nv] for r < mr: the register block.  mr and nv
   are constants at every call site (run_block), so the accumulators live in registers. */
static inline __attribute__((always_inline)) void block(const float *restrict x, Py_ssize_t ldx, Py_ssize_t k,
                                                          const float *restrict wt, Py_ssize_t ldw,
                                                          const float *restrict b, float *restrict y,
                                                          Py_ssize_t ldy, const int mr, const int nv)
{
    v8 acc[MR][2];
    const v8 b0 = *(const v8 *)b, b1 = nv > 1 ? *(const v8 *)(b + 8) : b0;
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) {
        acc[r][0] = b0;
        acc[r][1] = b1;
    }
    for (Py_ssize_t i = 0; i < k; i++) {
        const v8 w0 = *(const v8 *)(wt + i * ldw);
        const v8 w1 = nv > 1 ? *(const v8 *)(wt + i * ldw + 8) : w0;
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            const float xr = x[r * ldx + i];
            acc[r][0] += xr * w0;
            if (nv > 1)
                acc[r][1] += xr * w1;
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) {
        *(v8 *)(y + r * ldy) = acc[r][0];
        if (nv > 1)
            *(v8 *)(y + r * ldy + 8) = acc[r][1];
    }
}

#define BLOCK_CASE(m)                                                                                         \
    case m:                                                                                                   \
        if (nv > 1)                                                                                           \
            block(x, ldx, k, wt, ldw, b, y, ldy, m, 2);                                                       \
        else                                                                                                  \
            block(x, ldx, k, wt, ldw, b, y, ldy, m, 1);                                                       \
        break;

static inline __attribute__((always_inline)) void run_block(const float *restrict x, Py_ssize_t ldx, Py_ssize_t k,
                                                              const float *restrict wt, Py_ssize_t ldw,
                                                              const float *restrict b, float *restrict y,
                                                              Py_ssize_t ldy, int mr, int nv)
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

/* One layer over `rows` rows: y (rows, ow) = act(x (rows, k) wt (k, ow) + b), ow a multiple of 8,
   row strides ldx and ldy.  Outputs outer, rows inner: a 16-wide slice of wt stays in L1 while the
   tile's rows stream past it. */
static inline __attribute__((always_inline)) void layer(const float *restrict x, Py_ssize_t ldx, Py_ssize_t rows,
                                                          Py_ssize_t k, const float *restrict wt, Py_ssize_t ow,
                                                          const float *restrict b, int act, float *restrict y,
                                                          Py_ssize_t ldy)
{
    for (Py_ssize_t o = 0; o < ow; o += 16) {
        const int nv = ow - o >= 16 ? 2 : 1;
        Py_ssize_t r = 0;
        for (; r + MR <= rows; r += MR)
            run_block(x + r * ldx, ldx, k, wt + o, ow, b + o, y + r * ldy + o, ldy, MR, nv);
        if (r < rows)
            run_block(x + r * ldx, ldx, k, wt + o, ow, b + o, y + r * ldy + o, ldy, (int)(rows - r), nv);
    }
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

typedef struct {
    Py_ssize_t in, out, ow; /* ow: out rounded up to a multiple of 8 */
    const float *wt;        /* (in, ow): the weight transposed, zero past out */
    const float *b;         /* (ow,): the bias, zero past out (and where the layer has none) */
    int act;
} Layer;

/* x (n, L[0].in) -> y (n, L[nl-1].out), both row-major contiguous, `tile` rows at a time; `work`
   holds two (tile, widest ow) buffers the activations alternate between. */
KERNEL_FMA static void mlp_forward(const float *restrict x, Py_ssize_t n, const Layer *L, int nl, float *restrict y,
                                   Py_ssize_t tile, float *restrict work, Py_ssize_t wide)
{
    float *buf[2] = {work, work + tile * wide};
    const Layer *last = L + nl - 1;
    for (Py_ssize_t t0 = 0; t0 < n; t0 += tile) {
        const Py_ssize_t rows = n - t0 < tile ? n - t0 : tile;
        const float *h = x + t0 * L[0].in;
        Py_ssize_t ldh = L[0].in;
        for (int l = 0; l < nl; l++) {
            /* the last layer writes straight into y when its width needs no padding */
            const int direct = l == nl - 1 && last->out == last->ow;
            float *o = direct ? y + t0 * last->out : buf[l & 1];
            layer(h, ldh, rows, L[l].in, L[l].wt, L[l].ow, L[l].b, L[l].act, o, L[l].ow);
            h = o;
            ldh = L[l].ow;
        }
        if (last->out != last->ow) {
            for (Py_ssize_t r = 0; r < rows; r++)
                memcpy(y + (t0 + r) * last->out, h + r * ldh, (size_t)last->out * sizeof(float));
        }
    }
}

/* mlp_forward(x, n, y, spec, nl, tile): spec is the address of nl rows of five int64
   (in, out, weight address (out, in) row-major, bias address or 0, activation 0/1/2). */
PyObject *py_mlp_forward(PyObject *self, PyObject *args)
{
    unsigned long long xp, yp, sp;
    Py_ssize_t n, tile;
    int nl;
    (void)self;
    if (!PyArg_ParseTuple(args, "KnKKin", &xp, &n, &yp, &sp, &nl, &tile))
        return NULL;
    if (nl < 1 || nl > 64 || tile < 1) {
        PyErr_SetString(PyExc_ValueError, "mlp_forward: 1 to 64 layers and a positive tile are required");
        return NULL;
    }
    const int64_t *spec = (const int64_t *)(uintptr_t)sp;
    Layer L[64];
    Py_ssize_t packed = 0, wide = 8;
    for (int l = 0; l < nl; l++) {
        const int64_t *s = spec + 5 * l;
        L[l].in = (Py_ssize_t)s[0];
        L[l].out = (Py_ssize_t)s[1];
        L[l].ow = (L[l].out + 7) / 8 * 8;
        L[l].act = (int)s[4];
        packed += (L[l].in + 1) * L[l].ow;
        if (L[l].ow > wide)
            wide = L[l].ow;
    }
    float *mem = malloc(((size_t)packed + 2 * (size_t)tile * (size_t)wide) * sizeof(float));
    if (!mem)
        return PyErr_NoMemory();
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
    Py_BEGIN_ALLOW_THREADS
    mlp_forward((const float *)(uintptr_t)xp, n, L, nl, (float *)(uintptr_t)yp, tile, p, wide);
    Py_END_ALLOW_THREADS
    free(mem);
    Py_RETURN_NONE;
}
