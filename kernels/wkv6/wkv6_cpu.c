/* WKV6 on the CPU: the recurrence token by token, as RWKV-LM's CUDA kernel (RWKV-v5/cuda/wkv6_cuda.cu) and the
   official `rwkv` package's CPU path compute it. Per sequence b and head h, with an fp32 state S [N, N]:
       y_t[j] = sum_i r_t[i] * (u[i] * k_t[i] * v_t[j] + S[i, j])
       S[i, j] <- exp(-exp(w_t[i])) * S[i, j] + k_t[i] * v_t[j]
   Threads take (sequence, head) pairs, each with its own state, so a sequence's result never depends on the
   others or on the thread count. Built at run time (kernels/cpu_common.py); launched by kernels/wkv6/cpu.py.

   decay = exp(-exp(w)), formed by the caller in one vectorised op (a scalar expf per element would cost more
   than the recurrence). r, k, v, decay, y: [T, H, N] dense; u: [H, N]; state: [B, H, N, N] dense, updated in place; cu: [B + 1] offsets. */
#include <math.h>

#define MAX_N 256

/* One (sequence, head) over its tokens; inlined with N = 64 (every released RWKV-6 head) so that the row of
   partial outputs stays in registers. */
static inline void head(const float *r, const float *k, const float *v, const float *decay, const float *uh, float *S,
                        float *y, long t0, long t1, long H, long h, const long N) {
    float acc[MAX_N];
    for (long t = t0; t < t1; t++) {
        const long row = (t * H + h) * N;
        const float *rt = r + row, *kt = k + row, *vt = v + row, *dt = decay + row;
        for (long j = 0; j < N; j++) acc[j] = 0.0f;
        for (long i = 0; i < N; i++) {
            const float ri = rt[i], ki = kt[i], ui = uh[i], di = dt[i];
            float *Si = S + i * N;
#pragma omp simd
            for (long j = 0; j < N; j++) {
                const float kv = ki * vt[j];
                acc[j] = fmaf(ri, fmaf(ui, kv, Si[j]), acc[j]);
                Si[j] = fmaf(Si[j], di, kv);
            }
        }
        for (long j = 0; j < N; j++) y[row + j] = acc[j];
    }
}

void wkv6_f32(const float *r, const float *k, const float *v, const float *decay, const float *u, float *state,
              float *y, const long *cu, long B, long H, long N, int threads) {
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(threads)
    for (long b = 0; b < B; b++)
        for (long h = 0; h < H; h++) {
            float *S = state + (b * H + h) * N * N;
            if (N == 64)
                head(r, k, v, decay, u + h * N, S, y, cu[b], cu[b + 1], H, h, 64);
            else
                head(r, k, v, decay, u + h * N, S, y, cu[b], cu[b + 1], H, h, N);
        }
}
