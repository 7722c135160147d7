// WKV6 forward with fp32 state in/out, for packed variable-length sequences (prefill) and single steps (decode).
//
// Compiled at run time by NVRTC through CuPy (wkv6_cupy.py), once per storage dtype, selected by one of
// -DWKV_DTYPE_float32 | -DWKV_DTYPE_bfloat16 | -DWKV_DTYPE_float16. No CUDA headers are included, so NVRTC
// needs no include path: bf16 and fp16 are handled as 16-bit words.
//
// Per head, key index i, value index j, state S[i][j] (layout [b][h][i][j], fp32):
//     y_t[j] = sum_i r_t[i] * (u[i] * k_t[i] * v_t[j] + S[i][j])
//     S[i][j] = exp(-exp(w_t[i])) * S[i][j] + k_t[i] * v_t[j]
// Value columns are independent, so a thread owns one column j and keeps its state in registers, as the
// official kernel does. With SPLIT > 1, a head is spread over SPLIT blocks of 64 / SPLIT columns, and inside a
// block SPLIT lane groups each own 64 / SPLIT rows of a column: more blocks and a shorter serial chain per
// step when B * H is small. y is always summed by the same tree ((a0 + a1) + (a2 + a3)) of four 16-row
// partial sums of r_i S[i][j], plus v_j times the step's bonus sum_i r_i u_i k_i (one scalar per head and step,
// summed by the block in a fixed order), so every SPLIT gives bit-identical results and the batch size never
// changes an answer.

constexpr int N = 64;
constexpr int CHUNK = 8;  // time steps staged in shared memory per block-wide barrier

#if defined(WKV_DTYPE_float32)
typedef float wkv_t;
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float from_float(float x) { return x; }
#elif defined(WKV_DTYPE_bfloat16)
typedef unsigned short wkv_t;
__device__ __forceinline__ float to_float(unsigned short x) { return __uint_as_float((unsigned int)x << 16); }
__device__ __forceinline__ unsigned short from_float(float x) {
    // Round to nearest even, as torch does; a NaN stays a quiet NaN instead of rounding into infinity.
    const unsigned int bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    return (unsigned short)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}
#elif defined(WKV_DTYPE_float16)
typedef unsigned short wkv_t;
__device__ __forceinline__ float to_float(unsigned short x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
}
__device__ __forceinline__ unsigned short from_float(float x) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
}
#else
#error "define one of WKV_DTYPE_float32, WKV_DTYPE_bfloat16, WKV_DTYPE_float16"
#endif

// One (row i, column j) cell of a step; explicit fmaf so that the rounding cannot depend on SPLIT. The bonus
// term r_i u_i k_i v_j is not here: summed over i it is v_j times one scalar per step, added once per column.
__device__ __forceinline__ void wkv_cell(float r, float k, float d, float v, float& s, float& acc) {
    acc = fmaf(r, s, acc);
    s = fmaf(s, d, k * v);
}

// Grid: B * H * SPLIT blocks of 64 threads. Sequence b spans rows [cu_seqlens[b], cu_seqlens[b + 1]) of the
// packed [T, H, N] inputs, or [b * seq_len, (b + 1) * seq_len) when cu_seqlens is null (decode: seq_len = 1).
template <int SPLIT>
__device__ __forceinline__ void wkv6(const wkv_t* __restrict__ r, const wkv_t* __restrict__ k,
                                     const wkv_t* __restrict__ v, const wkv_t* __restrict__ w,
                                     const wkv_t* __restrict__ u, float* __restrict__ state, wkv_t* __restrict__ y,
                                     const long long* __restrict__ cu_seqlens, long long seq_len, long long H) {
    constexpr int COLS = N / SPLIT;  // value columns of this block
    constexpr int ROWS = N / SPLIT;  // key rows of each thread
    constexpr int LANES = 32 / SPLIT;  // lanes of a warp that share a row group
    constexpr int ACC = 4 / SPLIT;  // 16-row partial sums of each thread
    constexpr int V_PER_THREAD = COLS * CHUNK / N;  // v values each thread stages per chunk

    __shared__ __align__(16) float sr[CHUNK][N];
    __shared__ __align__(16) float sk[CHUNK][N];
    __shared__ __align__(16) float sd[CHUNK][N];  // the decay exp(-exp(w)), computed once per element
    __shared__ float sv[CHUNK][COLS];
    // The bonus of step c is sum_i r_i u_i k_i, the same for every column: products staged per row, summed once
    // per step by the block in a fixed order (so it cannot depend on SPLIT). Keeping u out of the per-cell work
    // saves the ROWS registers per thread that held it (SPLIT = 1 used 251-255 registers with them).
    __shared__ float sp[CHUNK][N];
    __shared__ float sb[CHUNK];

    const int tid = threadIdx.x, lane = tid % 32;
    const int group = lane / LANES;  // the rows [group * ROWS, (group + 1) * ROWS)
    const int col_in_block = (tid / 32) * LANES + lane % LANES;
    const long long bh = blockIdx.x / SPLIT, b = bh / H, h = bh % H;
    const int col = (int)(blockIdx.x % SPLIT) * COLS + col_in_block;
    const long long t0 = cu_seqlens ? cu_seqlens[b] : b * seq_len;
    const long long t1 = cu_seqlens ? cu_seqlens[b + 1] : t0 + seq_len;
    const long long step = H * N;  // elements from one time step to the next

    float* S = state + bh * N * N + (long long)group * ROWS * N + col;
    float s[ROWS];
#pragma unroll
    for (int i = 0; i < ROWS; ++i) s[i] = S[i * N];
    const float u_row = to_float(u[h * N + tid]);  // this thread stages row tid

    // The next chunk's inputs are loaded into registers while this chunk computes, hiding global latency.
    wkv_t nr[CHUNK], nk[CHUNK], nw[CHUNK], nv[V_PER_THREAD];
    const auto fetch = [&](long long tc) {
#pragma unroll
        for (int c = 0; c < CHUNK; ++c) {
            if (tc + c < t1) {
                const long long o = (tc + c) * step + h * N + tid;
                nr[c] = r[o];
                nk[c] = k[o];
                nw[c] = w[o];
            }
        }
#pragma unroll
        for (int m = 0; m < V_PER_THREAD; ++m) {
            const int q = tid + m * N, c = q / COLS;
            if (tc + c < t1) nv[m] = v[(tc + c) * step + h * N + (blockIdx.x % SPLIT) * COLS + q % COLS];
        }
    };

    if (t0 < t1) fetch(t0);
    for (long long tc = t0; tc < t1; tc += CHUNK) {
        const int steps = (int)min((long long)CHUNK, t1 - tc);
        __syncthreads();  // every thread is done reading the previous chunk
#pragma unroll
        for (int c = 0; c < CHUNK; ++c) {
            if (c < steps) {
                const float rf = to_float(nr[c]), kf = to_float(nk[c]);
                sr[c][tid] = rf;
                sk[c][tid] = kf;
                sp[c][tid] = rf * u_row * kf;
                sd[c][tid] = expf(-expf(to_float(nw[c])));
            }
        }
#pragma unroll
        for (int m = 0; m < V_PER_THREAD; ++m) {
            const int q = tid + m * N;
            if (q / COLS < steps) sv[q / COLS][q % COLS] = to_float(nv[m]);
        }
        __syncthreads();
        if (tc + CHUNK < t1) fetch(tc + CHUNK);
        {
            // Bonus of step tid / 8: eight lanes add eight products each, then three shuffles combine them. All
            // lanes shuffle (full warps), lanes of unused steps with zeros.
            const int c = tid / 8, part = tid % 8;
            float sum = 0.f;
            if (c < steps) {
#pragma unroll
                for (int i = 0; i < 8; ++i) sum += sp[c][part * 8 + i];
            }
#pragma unroll
            for (int offset = 1; offset < 8; offset *= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
            if (part == 0) sb[c] = sum;
        }
        __syncthreads();

        for (int c = 0; c < steps; ++c) {
            const float4* r4 = reinterpret_cast<const float4*>(sr[c]) + group * ROWS / 4;
            const float4* k4 = reinterpret_cast<const float4*>(sk[c]) + group * ROWS / 4;
            const float4* d4 = reinterpret_cast<const float4*>(sd[c]) + group * ROWS / 4;
            const float vt = sv[c][col_in_block];
            float acc[ACC];
#pragma unroll
            for (int a = 0; a < ACC; ++a) acc[a] = 0.f;
#pragma unroll
            for (int q = 0; q < ROWS / 4; ++q) {
                const float4 rq = r4[q], kq = k4[q], dq = d4[q];
                float& a = acc[q / 4];  // rows [16 * n, 16 * n + 16) go to partial sum n
                wkv_cell(rq.x, kq.x, dq.x, vt, s[4 * q + 0], a);
                wkv_cell(rq.y, kq.y, dq.y, vt, s[4 * q + 1], a);
                wkv_cell(rq.z, kq.z, dq.z, vt, s[4 * q + 2], a);
                wkv_cell(rq.w, kq.w, dq.w, vt, s[4 * q + 3], a);
            }
            // The tree ((a0 + a1) + (a2 + a3)): first over this thread's partial sums, then over lane groups.
#pragma unroll
            for (int width = 1; width < ACC; width *= 2)
#pragma unroll
                for (int a = 0; a < ACC; a += 2 * width) acc[a] += acc[a + width];
            float total = acc[0];
#pragma unroll
            for (int offset = LANES; offset < 32; offset *= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);
            if (group == 0) y[(tc + c) * step + h * N + col] = from_float(fmaf(vt, sb[c], total));
        }
    }

#pragma unroll
    for (int i = 0; i < ROWS; ++i) S[i * N] = s[i];
}

#define WKV6_KERNEL(SPLIT)                                                                                       \
    extern "C" __global__ void __launch_bounds__(N) wkv6_split##SPLIT(                                          \
        const wkv_t* r, const wkv_t* k, const wkv_t* v, const wkv_t* w, const wkv_t* u, float* state, wkv_t* y, \
        const long long* cu_seqlens, long long seq_len, long long H) {                                            \
        wkv6<SPLIT>(r, k, v, w, u, state, y, cu_seqlens, seq_len, H);                                          \
    }

WKV6_KERNEL(1)
WKV6_KERNEL(2)
WKV6_KERNEL(4)
