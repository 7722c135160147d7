// What the CPU launchers of the WKV kernels share (emulator.cpp for WKV6, wkv7_launch.cpp for WKV7). Included
// after the kernel source (WKV_SOURCE), which defines N (threads per block) and the storage type wkv_t.
// Blocks run one after another; the N threads of a block run as std::threads. An optional write count records,
// per element of y, how many blocks wrote it: y is refilled with a sentinel before each block and compared after.
#pragma once

#include "cuda_shim.h"

#include <bit>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
// -ftz=true: fp32 denormal results flush to zero (FTZ) and denormal inputs read as zero (DAZ), as on the GPU.
static void flush_denormals() { _mm_setcsr(_mm_getcsr() | 0x8040); }
#elif defined(__aarch64__)
static void flush_denormals() {
    unsigned long fpcr;
    asm volatile("mrs %0, fpcr" : "=r"(fpcr));
    asm volatile("msr fpcr, %0" : : "r"(fpcr | (1ul << 24)));  // FZ
}
#else
#error "flush-to-zero is only set up for x86-64 and AArch64"
#endif

namespace emul {

// One block of N threads, each running thread_body() with its threadIdx, blockIdx and the block's barrier set.
template <class Body>
void run_block(unsigned int block_index, Body thread_body) {
    Block block(N);
    std::vector<std::thread> threads;
    threads.reserve(N);
    for (unsigned int t = 0; t < N; ++t) {
        threads.emplace_back([&, t] {
            flush_denormals();
            threadIdx = {t, 0, 0};
            blockIdx = {block_index, 0, 0};
            emul::block = &block;
            thread_body();
        });
    }
    for (auto& thread : threads) thread.join();
}

// Blocks [block_begin, block_end) one after another, run_one(b) each; with write_counts (y_elems ints) also the
// number of blocks that wrote each element of y. -1 for a block range no CUDA grid has.
template <class RunOne>
int run_blocks(long long block_begin, long long block_end, wkv_t* y, long long y_elems, int* write_counts,
               RunOne run_one) {
    if (block_begin < 0 || block_end > 0x7fffffffLL) return -1;
    wkv_t sentinel;
    std::memset(&sentinel, 0xff, sizeof sentinel);  // a NaN pattern that from_float never produces
    std::vector<wkv_t> written(write_counts ? y_elems : 0, sentinel);
    for (long long b = block_begin; b < block_end; ++b) {
        if (write_counts)
            for (long long i = 0; i < y_elems; ++i) y[i] = sentinel;
        run_one(static_cast<unsigned int>(b));
        if (write_counts)
            for (long long i = 0; i < y_elems; ++i)
                if (std::memcmp(&y[i], &sentinel, sizeof sentinel) != 0) {
                    ++write_counts[i];
                    written[i] = y[i];
                }
    }
    if (write_counts) std::memcpy(y, written.data(), y_elems * sizeof(wkv_t));
    return 0;
}

// For the ThreadSanitizer mains: x in the storage type, fp32 or a 16-bit word by truncation (any value will do).
[[maybe_unused]] static wkv_t storage(float x) {
    const unsigned int bits = std::bit_cast<unsigned int>(x) >> (32 - 8 * sizeof(wkv_t));
    wkv_t out;
    std::memcpy(&out, &bits, sizeof out);  // little-endian: the low bytes
    return out;
}

}  // namespace emul
