/* One RWKV-6 block for a decode step on the CPU, every row (sequence) at once: the same computation as the PyTorch
   path (model/rwkv6.py: TimeMix and ChannelMix with one row per sequence, the reference this kernel is tested
   against), in one call instead of ~40 PyTorch ops and 13 products per layer, whose dispatch cost more than the
   arithmetic at batch 1. Products use the row kernel (../rowmm/rowmm.c) and the recurrence the CPU WKV6 kernel
   (../wkv6/wkv6_cpu.c), so a row's bits never depend on the other rows. Built at run time
   (kernels/cpu_common.py); launched by kernels/block6/cpu.py, which lists the weights in the order of `enum W`.

   x [B, C] (the residual stream, updated in place), att_shift and ffn_shift [B, C], wkv [B, H, N, N]: this layer's
   state, updated in place. scratch: B * SCRATCH floats (see cpu.py). */
#include "../rowmm/rowmm.c"
#include "../wkv6/wkv6_cpu.c"

enum W {
    LN1_W, LN1_B, MAA_X, MAA_W, MAA_K, MAA_V, MAA_R, MAA_G, MAA_W1, MAA_W2, DECAY, DECAY_W1, DECAY_W2, BONUS,
    WR, WK, WV, WG, WO, LNX_W, LNX_B, LN2_W, LN2_B, FFN_MAA_K, FFN_MAA_R, FFN_WK, FFN_WR, FFN_WV, N_WEIGHTS
};

/* out = x @ w for M rows (the row kernel). */
static void product(const float *x, long ldx, const float *w, long ldw, float *out, long ldo, long M, long K, long N,
                    int threads) {
    rowmm_f32(x, w, out, 1, M, K, N, 0, ldx, 0, ldw, 0, ldo, threads);
}

/* LayerNorm of one row (mean and variance in double, as a two-pass sum). */
static void layer_norm(const float *x, const float *weight, const float *bias, float *out, long n, float eps) {
    double mean = 0.0, var = 0.0;
    for (long i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (long i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    const float rstd = (float)(1.0 / sqrt(var / n + eps)), m = (float)mean;
    for (long i = 0; i < n; i++) out[i] = (x[i] - m) * rstd * weight[i] + bias[i];
}

static float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

void block6_decode(float *x, float *att_shift, float *wkv, float *ffn_shift, const float *const *wt, float *scratch,
                   long B, long C, long A, long F, long H, long N, long D, long Dd, float ln_eps, float gn_eps,
                   int threads) {
    /* per-row scratch, [B, width] each */
    float *h = scratch, *xx = h + B * C, *xxx = xx + B * C, *lerp = xxx + B * C; /* lerp: [5][B][C] */
    float *lora = lerp + 5 * B * C, *dd = lora + B * 5 * D;                          /* [B, 5D], [B, Dd] */
    float *r = dd + B * Dd, *k = r + B * A, *v = k + B * A, *g = v + B * A, *w = g + B * A, *y = w + B * A;
    float *kf = y + B * A, *rf = kf + B * F, *out = rf + B * C;                    /* [B, F], [B, C], [B, C] */

    /* time mix: ln1, token shift, the data-dependent lerps (ddlerp) */
    for (long b = 0; b < B; b++) {
        float *hb = h + b * C, *xxb = xx + b * C, *xxxb = xxx + b * C, *sb = att_shift + b * C;
        layer_norm(x + b * C, wt[LN1_W], wt[LN1_B], hb, C, ln_eps);
        for (long i = 0; i < C; i++) {
            xxb[i] = sb[i] - hb[i];
            sb[i] = hb[i];
            xxxb[i] = hb[i] + xxb[i] * wt[MAA_X][i];
        }
    }
    product(xxx, C, wt[MAA_W1], 5 * D, lora, 5 * D, B, C, 5 * D, threads);
    for (long i = 0; i < B * 5 * D; i++) lora[i] = tanhf(lora[i]);
    const float *maa[5] = {wt[MAA_W], wt[MAA_K], wt[MAA_V], wt[MAA_R], wt[MAA_G]};
    for (long j = 0; j < 5; j++) {
        float *lj = lerp + j * B * C;
        product(lora + j * D, 5 * D, wt[MAA_W2] + j * D * C, C, lj, C, B, D, C, threads);
        for (long b = 0; b < B; b++)
            for (long i = 0; i < C; i++)
                lj[b * C + i] = (lj[b * C + i] + maa[j][i]) * xx[b * C + i] + h[b * C + i];
    }
    const float *xw = lerp, *xk = lerp + B * C, *xv = xk + B * C, *xr = xv + B * C, *xg = xr + B * C;
    product(xr, C, wt[WR], A, r, A, B, C, A, threads);
    product(xk, C, wt[WK], A, k, A, B, C, A, threads);
    product(xv, C, wt[WV], A, v, A, B, C, A, threads);
    product(xg, C, wt[WG], A, g, A, B, C, A, threads);
    for (long i = 0; i < B * A; i++) g[i] = g[i] * sigmoidf(g[i]);
    product(xw, C, wt[DECAY_W1], Dd, dd, Dd, B, C, Dd, threads);
    for (long i = 0; i < B * Dd; i++) dd[i] = tanhf(dd[i]);
    product(dd, Dd, wt[DECAY_W2], A, w, A, B, Dd, A, threads);
    for (long b = 0; b < B; b++)
        for (long i = 0; i < A; i++) w[b * A + i] = expf(-expf(wt[DECAY][i] + w[b * A + i]));

    /* the recurrence: one step per row, each (row, head) with its own state */
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (long b = 0; b < B; b++)
        for (long hh = 0; hh < H; hh++)
            head(r, k, v, w, wt[BONUS] + hh * N, wkv + (b * H + hh) * N * N, y, b, b + 1, H, hh, N);

    /* GroupNorm per head, the gate, the output product, the residual */
    for (long b = 0; b < B; b++)
        for (long hh = 0; hh < H; hh++) {
            float *yh = y + b * A + hh * N;
            const float *gw = wt[LNX_W] + hh * N, *gb = wt[LNX_B] + hh * N, *gh = g + b * A + hh * N;
            layer_norm(yh, gw, gb, yh, N, gn_eps);
            for (long i = 0; i < N; i++) yh[i] *= gh[i];
        }
    product(y, A, wt[WO], C, out, C, B, A, C, threads);
    for (long i = 0; i < B * C; i++) x[i] += out[i];

    /* channel mix: ln2, token shift, relu(k)^2, sigmoid receptance */
    for (long b = 0; b < B; b++) {
        float *hb = h + b * C, *xxb = xx + b * C, *sb = ffn_shift + b * C;
        float *ak = xxx + b * C, *ar = lerp + b * C;
        layer_norm(x + b * C, wt[LN2_W], wt[LN2_B], hb, C, ln_eps);
        for (long i = 0; i < C; i++) {
            xxb[i] = sb[i] - hb[i];
            sb[i] = hb[i];
            ak[i] = hb[i] + xxb[i] * wt[FFN_MAA_K][i];
            ar[i] = hb[i] + xxb[i] * wt[FFN_MAA_R][i];
        }
    }
    product(xxx, C, wt[FFN_WK], F, kf, F, B, C, F, threads);
    for (long i = 0; i < B * F; i++) kf[i] = kf[i] > 0.0f ? kf[i] * kf[i] : 0.0f;
    product(lerp, C, wt[FFN_WR], C, rf, C, B, C, C, threads);
    product(kf, F, wt[FFN_WV], C, out, C, B, F, C, threads);
    for (long i = 0; i < B * C; i++) x[i] += sigmoidf(rf[i]) * out[i];
}
