// A small batch through the kernels from C++17: y = x · wᵀ on a
// std::thread executor, then softmax and layer norm of each row.
//
//   cargo build --release -p kernels-capi
//   c++ -std=c++17 -O2 -Icapi/include examples/cpp/main.cpp
//       target/release/libkernels_c.a -lpthread -ldl -o /tmp/kn-example-cpp
//   (one line)
//   /tmp/kn-example-cpp
#include <cstdio>
#include <stdexcept>
#include <thread>
#include <vector>

#include "kernels.h"

// The host's threads: one std::thread per extra core, pieces dealt round robin.
// Must not throw (the library calls it from Rust): where a thread cannot
// be started, this one runs the pieces it would have run.
static void parallel_for(void *ctx, size_t n, void (*piece)(void *, size_t), void *piece_ctx) noexcept {
    const size_t threads = *static_cast<size_t *>(ctx);
    std::vector<std::thread> pool;
    size_t started = 1;
    try {
        pool.reserve(threads - 1);
        for (; started < threads; started++) {
            const size_t t = started;
            pool.emplace_back([=] { for (size_t i = t; i < n; i += threads) piece(piece_ctx, i); });
        }
    } catch (...) {
    }
    for (size_t i = 0; i < n; i++)
        if (i % threads == 0 || i % threads >= started) piece(piece_ctx, i);
    for (auto &thread : pool) thread.join();
}

static void check(int status) {
    if (status != KN_OK) throw std::runtime_error(kn_status_message(status));
}

int main() {
    constexpr size_t rows = 4, in = 8, out = 6;
    std::vector<float> x(rows * in), w(out * in), y(rows * out), norm(rows * out);
    std::vector<float> gamma(out, 1.0f), beta(out, 0.0f), mean(rows), rstd(rows);
    for (size_t i = 0; i < x.size(); i++) x[i] = float(i % 7) / 7.0f;
    for (size_t i = 0; i < w.size(); i++) w[i] = float(i % 5) / 5.0f - 0.4f;

    const int backend = kn_detected_backend();
    std::printf("kernels ABI %u on %s\n", kn_abi_version(), kn_backend_name(backend));
    size_t threads = std::thread::hardware_concurrency() ? std::thread::hardware_concurrency() : 1;
    const kn_executor host{&threads, threads, parallel_for};

    size_t len = 0;
    check(kn_gemm_workspace_len(backend, rows, out, in, &len));
    std::vector<float> workspace(len);
    check(kn_gemm(backend, &host, 0, 1, rows, out, in, 1.0f, x.data(), in, w.data(), in, 0.0f,
                  y.data(), out, workspace.data(), workspace.size()));
    check(kn_layer_norm_forward(backend, y.data(), y.size(), gamma.data(), beta.data(), out, 1e-5f,
                                norm.data(), mean.data(), rstd.data()));
    check(kn_softmax_rows(backend, y.data(), y.size(), out, 0, 0));
    for (size_t r = 0; r < rows; r++) {
        std::printf("row %zu: softmax", r);
        for (size_t j = 0; j < out; j++) std::printf(" %.3f", y[r * out + j]);
        std::printf(" | mean %.3f rstd %.3f\n", mean[r], rstd[r]);
    }
}
