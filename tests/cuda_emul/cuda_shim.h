// Just enough of CUDA's device-side language for g++ (C++20) to compile kernels/wkv6.cu unchanged and run it on
// the CPU: one std::thread per CUDA thread, one block at a time (so `__shared__` can be a function-local static),
// `__syncthreads` as a barrier over the block and `__shfl_xor_sync` through a per-warp exchange array.
//
// What it models of the CUDA programming guide: a block's threads run concurrently and meet at barriers; a warp
// exchanges registers only with all 32 lanes taking part (a partial mask is refused, since the kernel never
// needs one); -ftz=true flushes fp32 denormals to zero (set per thread, as the FP control register is). What it
// does not model: memory coalescing, register limits, and the GPU's expf (glibc's is used; both are within a
// few ulp of exact, so results are compared with a tolerance, never bitwise against the GPU).
#pragma once

#include <barrier>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <math.h>  // expf, fmaf in the global namespace, as CUDA has them
#include <memory>

#define __global__
#define __device__
#define __launch_bounds__(...)
#define __forceinline__ inline
#define __shared__ static  // one block at a time: the block's threads share function-local statics
#define __align__(n) __attribute__((aligned(n)))

struct dim3_emul {
    unsigned int x, y, z;
};
inline thread_local dim3_emul threadIdx{0, 0, 0};
inline thread_local dim3_emul blockIdx{0, 0, 0};

struct alignas(16) float4 {
    float x, y, z, w;
};

inline unsigned int __float_as_uint(float x) { return std::bit_cast<unsigned int>(x); }
inline float __uint_as_float(unsigned int x) { return std::bit_cast<float>(x); }
inline long long min(long long a, long long b) { return a < b ? a : b; }

namespace emul {
constexpr int WARP = 32;

struct Warp {
    std::barrier<> sync{WARP};
    float lanes[WARP];
};

struct Block {
    explicit Block(int threads) : sync(threads), warps(std::make_unique<Warp[]>((threads + WARP - 1) / WARP)) {}
    std::barrier<> sync;
    std::unique_ptr<Warp[]> warps;
};

inline thread_local Block* block = nullptr;

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "cuda emulation: %s\n", what);
    std::abort();
}
}  // namespace emul

inline void __syncthreads() { emul::block->sync.arrive_and_wait(); }

// Every lane writes its value, all meet, every lane reads its partner's, all meet again before the array can be
// overwritten by the next shuffle.
inline float __shfl_xor_sync(unsigned int mask, float value, int lane_mask, int width = emul::WARP) {
    if (mask != 0xffffffffu || width != emul::WARP) emul::fail("__shfl_xor_sync with a partial mask or width");
    emul::Warp& warp = emul::block->warps[threadIdx.x / emul::WARP];
    const int lane = threadIdx.x % emul::WARP;
    warp.lanes[lane] = value;
    warp.sync.arrive_and_wait();
    const float other = warp.lanes[lane ^ lane_mask];
    warp.sync.arrive_and_wait();
    return other;
}
