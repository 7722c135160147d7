// CPU launcher for the unchanged kernels/wkv7/wkv7.cu: built by tests/wkv7_emulator.py with
//     g++ -std=c++20 -DWKV_DTYPE_<dtype> -DWKV_SOURCE='"<path of wkv7.cu>"' -ffp-contract=off ...
// against cuda_shim.h and emul_launch.h (shared with the WKV6 emulation). Blocks run one after another, each as 64
// std::threads, with an optional write count.
#include "cuda_shim.h"

#include WKV_SOURCE

#include "emul_launch.h"

enum { R, W, K, V, A, B, STATE, Y, OFFSETS, POINTERS };

static void run_block(unsigned int block_index, const void* const* p, long long seq_len, long long H) {
    const auto in = [&](int i) { return static_cast<const wkv_t*>(p[i]); };
    emul::run_block(block_index, [&] {
        wkv7(in(R), in(W), in(K), in(V), in(A), in(B), static_cast<float*>(const_cast<void*>(p[STATE])),
             static_cast<wkv_t*>(const_cast<void*>(p[Y])), static_cast<const long long*>(p[OFFSETS]), seq_len, H);
    });
}

extern "C" int wkv7_emul_element_size() { return sizeof(wkv_t); }

// Runs blocks [block_begin, block_end) of the kernel with 64 threads each. pointers: r, w, k, v, a, b, state, y,
// cu_seqlens (may be null). With write_counts (y_elems ints) the launch also counts the writes.
extern "C" int wkv7_emul_launch(long long block_begin, long long block_end, const void* const* pointers,
                                long long seq_len, long long H, long long y_elems, int* write_counts) {
    wkv_t* y = static_cast<wkv_t*>(const_cast<void*>(pointers[Y]));
    return emul::run_blocks(block_begin, block_end, y, y_elems, write_counts,
                            [&](unsigned int b) { run_block(b, pointers, seq_len, H); });
}

#ifdef WKV_EMUL_MAIN
// A stand-alone run for ThreadSanitizer (which cannot be loaded into Python by ctypes): a packed prefill of
// sequences of 0, 9 and 17 steps, then a decode step, on pseudo-random inputs.
#include <random>

using emul::storage;

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
