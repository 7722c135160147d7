// CPU launcher for the unchanged kernels/wkv6.cu: built by tests/wkv6_emulator.py with
//     g++ -std=c++20 -DWKV_DTYPE_<dtype> -DWKV_SOURCE='"<path of wkv6.cu>"' -ffp-contract=off ...
// Blocks run one after another; the 64 threads of a block run as std::threads. An optional write count records,
// per element of y, how many blocks wrote it: y is refilled with a sentinel before each block and compared after.
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

using Entry = void (*)(const wkv_t*, const wkv_t*, const wkv_t*, const wkv_t*, const wkv_t*, float*, wkv_t*,
                       const long long*, long long, long long);

static void run_block(Entry entry, unsigned int block_index, const void* const* p, long long seq_len, long long H) {
    emul::Block block(N);
    std::vector<std::thread> threads;
    threads.reserve(N);
    for (unsigned int t = 0; t < N; ++t) {
        threads.emplace_back([&, t] {
            flush_denormals();
            threadIdx = {t, 0, 0};
            blockIdx = {block_index, 0, 0};
            emul::block = &block;
            entry(static_cast<const wkv_t*>(p[0]), static_cast<const wkv_t*>(p[1]), static_cast<const wkv_t*>(p[2]),
                  static_cast<const wkv_t*>(p[3]), static_cast<const wkv_t*>(p[4]), static_cast<float*>(const_cast<void*>(p[5])),
                  static_cast<wkv_t*>(const_cast<void*>(p[6])), static_cast<const long long*>(p[7]), seq_len, H);
        });
    }
    for (auto& thread : threads) thread.join();
}

extern "C" int wkv6_emul_element_size() { return sizeof(wkv_t); }

// Runs blocks [block_begin, block_end) of entry point wkv6_split<split> with 64 threads each. pointers: r, k, v,
// w, u, state, y, cu_seqlens (may be null). With write_counts (y_elems ints) the launch also counts the writes.
extern "C" int wkv6_emul_launch(int split, long long block_begin, long long block_end, const void* const* pointers,
                                long long seq_len, long long H, long long y_elems, int* write_counts) {
    Entry entry = split == 1 ? wkv6_split1 : split == 2 ? wkv6_split2 : split == 4 ? wkv6_split4 : nullptr;
    if (entry == nullptr || block_begin < 0 || block_end > 0x7fffffffLL) return -1;
    wkv_t* y = static_cast<wkv_t*>(const_cast<void*>(pointers[6]));
    wkv_t sentinel;
    std::memset(&sentinel, 0xff, sizeof sentinel);  // a NaN pattern that from_float never produces
    std::vector<wkv_t> written(write_counts ? y_elems : 0, sentinel);
    for (long long b = block_begin; b < block_end; ++b) {
        if (write_counts)
            for (long long i = 0; i < y_elems; ++i) y[i] = sentinel;
        run_block(entry, static_cast<unsigned int>(b), pointers, seq_len, H);
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
// sequences of 0, 9 and 17 steps with every split, then a decode step, on pseudo-random inputs.
#include <random>

static wkv_t storage(float x) {  // fp32, or bf16 by truncation (any value will do)
    const unsigned int bits = std::bit_cast<unsigned int>(x) >> (32 - 8 * sizeof(wkv_t));
    wkv_t out;
    std::memcpy(&out, &bits, sizeof out);  // little-endian: the low bytes
    return out;
}

int main() {
    const long long H = 1, B = 3, T = 26;  // sequences of 0, 9 and 17 steps
    const long long cu[] = {0, 0, 9, 26};
    std::mt19937 gen(0);
    std::normal_distribution<float> normal;
    std::uniform_real_distribution<float> decay(-6.f, 1.5f);
    std::vector<wkv_t> r(T * H * N), k(r.size()), v(r.size()), w(r.size()), u(H * N), y(r.size());
    for (size_t i = 0; i < r.size(); ++i) {
        r[i] = storage(normal(gen));
        k[i] = storage(normal(gen));
        v[i] = storage(normal(gen));
        w[i] = storage(decay(gen));
    }
    for (auto& x : u) x = storage(normal(gen));
    std::vector<float> state(B * H * N * N);
    for (auto& x : state) x = normal(gen);
    for (int split : {1, 2, 4}) {
        const void* p[] = {r.data(), k.data(), v.data(), w.data(), u.data(), state.data(), y.data(), cu};
        if (wkv6_emul_launch(split, 0, B * H * split, p, 0, H, 0, nullptr) != 0) return 1;
        const void* d[] = {r.data(), k.data(), v.data(), w.data(), u.data(), state.data(), y.data(), nullptr};
        if (wkv6_emul_launch(split, 0, B * H * split, d, 1, H, 0, nullptr) != 0) return 1;  // decode: B steps
    }
    std::puts("ok");
    return 0;
}
#endif
