// CPU launcher for the unchanged kernels/wkv6.cu: built by tests/wkv6_emulator.py with
//     g++ -std=c++20 -DWKV_DTYPE_<dtype> -DWKV_SOURCE='"<path of wkv6.cu>"' -ffp-contract=off ...
// Blocks run one after another, each as 64 std::threads, with an optional write count (emul_launch.h).
#include "cuda_shim.h"

#include WKV_SOURCE

#include "emul_launch.h"

using Entry = void (*)(const wkv_t*, const wkv_t*, const wkv_t*, const wkv_t*, const wkv_t*, float*, wkv_t*,
                       const long long*, long long, long long);

static void run_block(Entry entry, unsigned int block_index, const void* const* p, long long seq_len, long long H) {
    emul::run_block(block_index, [&] {
        entry(static_cast<const wkv_t*>(p[0]), static_cast<const wkv_t*>(p[1]), static_cast<const wkv_t*>(p[2]),
              static_cast<const wkv_t*>(p[3]), static_cast<const wkv_t*>(p[4]), static_cast<float*>(const_cast<void*>(p[5])),
              static_cast<wkv_t*>(const_cast<void*>(p[6])), static_cast<const long long*>(p[7]), seq_len, H);
    });
}

extern "C" int wkv6_emul_element_size() { return sizeof(wkv_t); }

// Runs blocks [block_begin, block_end) of entry point wkv6_split<split> with 64 threads each. pointers: r, k, v,
// w, u, state, y, cu_seqlens (may be null). With write_counts (y_elems ints) the launch also counts the writes.
extern "C" int wkv6_emul_launch(int split, long long block_begin, long long block_end, const void* const* pointers,
                                long long seq_len, long long H, long long y_elems, int* write_counts) {
    Entry entry = split == 1 ? wkv6_split1 : split == 2 ? wkv6_split2 : split == 4 ? wkv6_split4 : nullptr;
    if (entry == nullptr) return -1;
    wkv_t* y = static_cast<wkv_t*>(const_cast<void*>(pointers[6]));
    return emul::run_blocks(block_begin, block_end, y, y_elems, write_counts,
                            [&](unsigned int b) { run_block(entry, b, pointers, seq_len, H); });
}

#ifdef WKV_EMUL_MAIN
// A stand-alone run for ThreadSanitizer (which cannot be loaded into Python by ctypes): a packed prefill of
// sequences of 0, 9 and 17 steps with every split, then a decode step, on pseudo-random inputs.
#include <random>

using emul::storage;

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
