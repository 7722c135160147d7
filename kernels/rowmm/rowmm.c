/* Row products for CPU decoding: out[m, :] = x[m, :] @ w for a row-major w [K, N], where each row's bits depend
   on that row alone. Every output element is summed in the order k = 0, 1, ..., K-1 with one fused multiply-add
   per term (built with -ffp-contract=off, so the compiler cannot reassociate or contract otherwise), whatever
   the number of rows M, the row's position, the thread count or the block width. Threads split the columns N,
   which never changes an element's sum.

   Speed: a pass reads 8 rows of w at once over a block of NB columns and applies them to every row of x, so
   the weights stream from memory once per call for any M (a 1-row call runs at the speed of MKL's GEMV; a
   row-by-row loop of GEMVs would read them M times). Built at run time for the host CPU (kernels/rowmm/cpu.py). */
#include <math.h>
#include <string.h>

#define U 8 /* rows of w per pass */

static void pass8(const float *x, long ldx, const float *w, long ldw, float *out, long ldo, long M, long k,
                  long n0, long n1) {
    const float *w0 = w + k * ldw, *w1 = w0 + ldw, *w2 = w1 + ldw, *w3 = w2 + ldw;
    const float *w4 = w3 + ldw, *w5 = w4 + ldw, *w6 = w5 + ldw, *w7 = w6 + ldw;
    for (long m = 0; m < M; m++) {
        const float *a = x + m * ldx + k;
        const float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3], a4 = a[4], a5 = a[5], a6 = a[6], a7 = a[7];
        float *o = out + m * ldo;
#pragma omp simd
        for (long n = n0; n < n1; n++) {
            float s = fmaf(a0, w0[n], o[n]);
            s = fmaf(a1, w1[n], s);
            s = fmaf(a2, w2[n], s);
            s = fmaf(a3, w3[n], s);
            s = fmaf(a4, w4[n], s);
            s = fmaf(a5, w5[n], s);
            s = fmaf(a6, w6[n], s);
            o[n] = fmaf(a7, w7[n], s);
        }
    }
}

static void pass1(const float *x, long ldx, const float *w, long ldw, float *out, long ldo, long M, long k,
                  long n0, long n1) {
    const float *wk = w + k * ldw;
    for (long m = 0; m < M; m++) {
        const float a = x[m * ldx + k];
        float *o = out + m * ldo;
#pragma omp simd
        for (long n = n0; n < n1; n++) o[n] = fmaf(a, wk[n], o[n]);
    }
}

/* Columns per block: a 1-row pass streams long runs of w (8192 columns: as fast as MKL's GEMV); with more rows the
   block narrows (to 1024 at 8 rows) so that the 8 rows of w a pass reads stay in L1 while every row of x takes
   them; each thread gets as many blocks. Below SERIAL_WORK multiply-adds one thread beats waking the others. None
   of this changes a bit of the result. */
#define BLOCK_ELEMENTS 8192
#define SERIAL_WORK (1L << 17)

static long block_width(long rows, long K, long N, int *threads) {
    if (rows * K * N < SERIAL_WORK) {
        *threads = 1;
        return N;
    }
    const long cap = BLOCK_ELEMENTS / rows < 1024 ? 1024 : BLOCK_ELEMENTS / rows;
    const long blocks = *threads * ((N + *threads * cap - 1) / (*threads * cap));
    const long nb = (N + blocks * 16 - 1) / (blocks * 16) * 16;
    return nb < 16 ? 16 : nb;
}

/* G products x[g] [M, K] @ w[g] [K, N] -> out[g] [M, N] (group strides gx, gw, go; row strides ldx, ldw, ldo), the
   (group, column block) pairs shared out among at most `threads` OpenMP threads. */
void rowmm_f32(const float *x, const float *w, float *out, long G, long M, long K, long N, long gx, long ldx, long gw,
               long ldw, long go, long ldo, int threads) {
    const long nb = block_width(G * M, K, N, &threads);
    const long blocks = (N + nb - 1) / nb;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (long g = 0; g < G; g++)
        for (long b = 0; b < blocks; b++) {
            const float *xg = x + g * gx, *wg = w + g * gw;
            float *og = out + g * go;
            const long n0 = b * nb, n1 = n0 + nb < N ? n0 + nb : N;
            for (long m = 0; m < M; m++) memset(og + m * ldo + n0, 0, (size_t)(n1 - n0) * sizeof(float));
            long k = 0;
            for (; k + U <= K; k += U) pass8(xg, ldx, wg, ldw, og, ldo, M, k, n0, n1);
            for (; k < K; k++) pass1(xg, ldx, wg, ldw, og, ldo, M, k, n0, n1);
        }
}
