// CPU launcher for the unchanged kernels/wkv7/wkv7.cu: built by tests/wkv7_emulator.py with
//     g++ -std=c++20 -DWKV_DTYPE_<dtype> -DWKV_SOURCE='"<path of wkv7.cu>"' -ffp-contract=off ...
// against cuda_shim.h (shared with the WKV6 emulation). Blocks run one after another; the 64 threads of a block run
// as std::threads. An optional write count records, per element of y, how many blocks wrote it: y is refilled
// with a sentinel before each block and compared after.
#include "cuda_shim.h"

#include WKV_SOURCE

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

enum { R, W, K, V, A, B, STATE, Y, OFFSETS, POINTERS };

static void run_block(unsigned int block_index, const void* const* p, long long seq_len, long long H) {
    emul::Block block(N);
    std::vector<std::thread> threads;
    threads.reserve(N);
    const auto in = [&](int i) { return static_cast<const wkv_t*>(p[i]); };
    for (unsigned int t = 0; t < N; ++t) {
        threads.emplace_back([&, t] {
            flush_denormals();
            threadIdx = {t, 0, 0};
            blockIdx = {block_index, 0, 0};
            emul::block = &block;
            wkv7(in(R), in(W), in(K), in(V), in(A), in(B), static_cast<float*>(const_cast<void*>(p[STATE])),
                 static_cast<wkv_t*>(const_cast<void*>(p[Y])), static_cast<const long long*>(p[OFFSETS]), seq_len, H);
        });
    }
    for (auto& thread : threads) thread.join();
}

extern "C" int wkv7_emul_element_size() { return sizeof(wkv_t); }

// Runs blocks [block_begin, block_end) of the kernel with 64 threads each. pointers: r, w, k, v, a, b, state, y,
// cu_seqlens (may be null). With write_counts (y_elems ints) the launch also counts the writes.
extern "C" int wkv7_emul_launch(long long block_begin, long long block_end, const void* const* pointers,
                                long long seq_len, long long H, long long y_elems, int* write_counts) {
    if (block_begin < 0 || block_end > 0x7fffffffLL) return -1;
    wkv_t* y = static_cast<wkv_t*>(const_cast<void*>(pointers[Y]));
    wkv_t sentinel;
    std::memset(&sentinel, 0xff, sizeof sentinel);  // a NaN pattern that from_float never produces
    std::vector<wkv_t> written(write_counts ? y_elems : 0, sentinel);
    for (long long b = block_begin; b < block_end; ++b) {
        if (write_counts)
            for (long long i = 0; i < y_elems; ++i) y[i] = sentinel;
        run_block(static_cast<unsigned int>(b), pointers, seq_len, H);
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

#ifdef WKV_EMUL_MAIN
// A stand-alone run for ThreadSanitizer (which cannot be loaded into Python by ctypes): a packed prefill of
// sequences of 0, 9 and 17 steps, then a decode step, on pseudo-random inputs.
#include <random>

static wkv_t storage(float x) {  // fp32, or a 16-bit word by truncation (any value will do)
    const unsigned int bits = std::bit_cast<unsigned int>(x) >> (32 - 8 * sizeof(wkv_t));
    wkv_t out;
    std::memcpy(&out, &bits, sizeof out);  // little-endian: the low bytes
    return out;
}

int main() {
    const long long H = 1, Bn = 3, T = 26;  // sequences of 0, 9 and 17 steps
    const long long cu[] = {0, 0, 9, 26};
    std::mt19937 gen(0);
    std::normal_distribution<float> normal;
    std::uniform_real_distribution<float> decay(-6.f, -0.5f);
    std::vector<wkv_t> x[6], y(T * H * N);
    for (int i = 0; i < 6; ++i) {
        x[i].resize(T * H * N);
        for (auto& e : x[i]) e = storage(i == W ? decay(gen) : 0.1f * normal(gen));
    }
    alignas(16) static float state[Bn * H * N * N];
    for (auto& e : state) e = normal(gen);
    const void* p[POINTERS] = {x[0].data(), x[1].data(), x[2].data(), x[3].data(), x[4].data(), x[5].data(),
                               state, y.data(), cu};
    if (wkv7_emul_launch(0, Bn * H, p, 0, H, 0, nullptr) != 0) return 1;
    p[OFFSETS] = nullptr;
    if (wkv7_emul_launch(0, Bn * H, p, 1, H, 0, nullptr) != 0) return 1;  // decode: Bn steps
    std::puts("ok");
    return 0;
}
#endif
