// WKV7 forward with fp32 state in/out, for packed variable-length sequences (prefill) and single steps (decode).
//
// Compiled at run time by NVRTC through CuPy (cupy.py), once per storage dtype, selected by one of
// -DWKV_DTYPE_float32 | -DWKV_DTYPE_bfloat16 | -DWKV_DTYPE_float16. No CUDA headers are included, so NVRTC
// needs no include path: bf16 and fp16 are handled as 16-bit words.
//
// The RWKV-7 recurrence (arXiv 2503.14456), per head, value index i, key index j, state S[i][j] (layout
// [b][h][i][j], fp32), for every token:
//     sa_i    = sum_j a[j] * S[i][j]
//     S[i][j] = S[i][j] * exp(-exp(w[j])) + sa_i * b[j] + v[i] * k[j]
//     y[i]    = sum_j r[j] * S[i][j]                       (read after the update)
// Row i depends on row i alone, so thread i owns it in registers, as the reference kernels do
// (github.com/howard-hou/VisualRWKV, VisualRWKV-v7/v7.00/cuda/wkv7_cuda.cu; the `rwkv` pip package's
// cuda/rwkv7.cu). Each block is one (sequence, head): nothing depends on the batch size or on the other
// sequences of a packed launch, so batching never changes an answer.
//
// The decay is exp(-exp(w)) with the accurate expf, not the fast-math __expf of the reference build: it is
// computed once per element and step (64 of 64 * 200 operations), so accuracy costs nothing measurable, and the
// kernel then agrees with the PyTorch reference to fp32 rounding instead of __expf's few-ulp error.

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

// sum_j x[j] * s[j] in a fixed order: four interleaved partial sums (shorter dependency chains than one),
// combined as (p0 + p1) + (p2 + p3).
__device__ __forceinline__ float row_dot(const float* __restrict__ x, const float (&s)[N]) {
    const float4* x4 = reinterpret_cast<const float4*>(x);
    float p[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int q = 0; q < N / 4; ++q) {
        const float4 xq = x4[q];
        p[0] = fmaf(xq.x, s[4 * q + 0], p[0]);
        p[1] = fmaf(xq.y, s[4 * q + 1], p[1]);
        p[2] = fmaf(xq.z, s[4 * q + 2], p[2]);
        p[3] = fmaf(xq.w, s[4 * q + 3], p[3]);
    }
    return (p[0] + p[1]) + (p[2] + p[3]);
}

// Grid: B * H blocks of 64 threads. Sequence b spans rows [cu_seqlens[b], cu_seqlens[b + 1]) of the packed
// [T, H, N] inputs, or [b * seq_len, (b + 1) * seq_len) when cu_seqlens is null (decode: seq_len = 1).
extern "C" __global__ void __launch_bounds__(N)
    wkv7(const wkv_t* __restrict__ r, const wkv_t* __restrict__ w, const wkv_t* __restrict__ k,
         const wkv_t* __restrict__ v, const wkv_t* __restrict__ a, const wkv_t* __restrict__ b,
         float* __restrict__ state, wkv_t* __restrict__ y, const long long* __restrict__ cu_seqlens,
         long long seq_len, long long H) {
    __shared__ __align__(16) float sr[CHUNK][N];
    __shared__ __align__(16) float sd[CHUNK][N];  // the decay exp(-exp(w)), computed once per element
    __shared__ __align__(16) float sk[CHUNK][N];
    __shared__ __align__(16) float sa[CHUNK][N];
    __shared__ __align__(16) float sb[CHUNK][N];
    __shared__ float sv[CHUNK][N];

    const int i = threadIdx.x;  // this thread's value row; also the column it stages
    const long long bh = blockIdx.x, seq = bh / H, h = bh % H;
    const long long t0 = cu_seqlens ? cu_seqlens[seq] : seq * seq_len;
    const long long t1 = cu_seqlens ? cu_seqlens[seq + 1] : t0 + seq_len;
    const long long step = H * N;  // elements from one time step to the next

    float4* S = reinterpret_cast<float4*>(state + (bh * N + i) * N);  // row i: 16 float4, 16-byte aligned
    float s[N];
#pragma unroll
    for (int q = 0; q < N / 4; ++q) {
        const float4 x = S[q];
        s[4 * q + 0] = x.x;
        s[4 * q + 1] = x.y;
        s[4 * q + 2] = x.z;
        s[4 * q + 3] = x.w;
    }

    // The next chunk's inputs are loaded into registers while this chunk computes, hiding global latency.
    wkv_t nr[CHUNK], nw[CHUNK], nk[CHUNK], nv[CHUNK], na[CHUNK], nb[CHUNK];
    const auto fetch = [&](long long tc) {
#pragma unroll
        for (int c = 0; c < CHUNK; ++c) {
            if (tc + c < t1) {
                const long long o = (tc + c) * step + h * N + i;
                nr[c] = r[o];
                nw[c] = w[o];
                nk[c] = k[o];
                nv[c] = v[o];
                na[c] = a[o];
                nb[c] = b[o];
            }
        }
    };

    if (t0 < t1) fetch(t0);
    for (long long tc = t0; tc < t1; tc += CHUNK) {
        const int steps = (int)min((long long)CHUNK, t1 - tc);
        __syncthreads();  // every thread is done reading the previous chunk
#pragma unroll
        for (int c = 0; c < CHUNK; ++c) {
            if (c < steps) {
                sr[c][i] = to_float(nr[c]);
                sd[c][i] = expf(-expf(to_float(nw[c])));
                sk[c][i] = to_float(nk[c]);
                sv[c][i] = to_float(nv[c]);
                sa[c][i] = to_float(na[c]);
                sb[c][i] = to_float(nb[c]);
            }
        }
        __syncthreads();
        if (tc + CHUNK < t1) fetch(tc + CHUNK);

        for (int c = 0; c < steps; ++c) {
            const float sa_i = row_dot(sa[c], s);
            const float v_i = sv[c][i];
            const float4* d4 = reinterpret_cast<const float4*>(sd[c]);
            const float4* k4 = reinterpret_cast<const float4*>(sk[c]);
            const float4* b4 = reinterpret_cast<const float4*>(sb[c]);
#pragma unroll
            for (int q = 0; q < N / 4; ++q) {
                const float4 dq = d4[q], kq = k4[q], bq = b4[q];
                s[4 * q + 0] = fmaf(s[4 * q + 0], dq.x, fmaf(sa_i, bq.x, v_i * kq.x));
                s[4 * q + 1] = fmaf(s[4 * q + 1], dq.y, fmaf(sa_i, bq.y, v_i * kq.y));
                s[4 * q + 2] = fmaf(s[4 * q + 2], dq.z, fmaf(sa_i, bq.z, v_i * kq.z));
                s[4 * q + 3] = fmaf(s[4 * q + 3], dq.w, fmaf(sa_i, bq.w, v_i * kq.w));
            }
            y[(tc + c) * step + h * N + i] = from_float(row_dot(sr[c], s));
        }
    }

#pragma unroll
    for (int q = 0; q < N / 4; ++q) {
        float4 x;
        x.x = s[4 * q + 0];
        x.y = s[4 * q + 1];
        x.z = s[4 * q + 2];
        x.w = s[4 * q + 3];
        S[q] = x;
    }
}
