/* The C ABI from C99: matrix multiply against a triple loop on awkward
 * shapes (each transpose, strided operands, beta = 0 over NaN-filled C),
 * bit-identical on the calling thread and on a pthread executor; the other
 * routines against plain C (layer norm backward: the Rust test compares it
 * with the Rust call); error codes with the output untouched. Built by .ci/run with -std=c99 -Wall -Wextra -Werror
 * against the static and the shared library, and run under valgrind. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

static int failures = 0;
#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                  \
            fprintf(stderr, "\n");                         \
            failures++;                                    \
        }                                                  \
    } while (0)

/* Two threads, each taking every other piece. */
struct job {
    size_t n, first;
    void (*piece)(void *, size_t);
    void *piece_ctx;
};

static void *worker(void *arg) {
    struct job *job = (struct job *)arg;
    for (size_t i = job->first; i < job->n; i += 2) job->piece(job->piece_ctx, i);
    return NULL;
}

static void parallel_for(void *ctx, size_t n, void (*piece)(void *, size_t), void *piece_ctx) {
    (void)ctx;
    pthread_t thread;
    struct job jobs[2] = {{n, 0, piece, piece_ctx}, {n, 1, piece, piece_ctx}};
    /* No second thread: this one runs every piece. */
    if (pthread_create(&thread, NULL, worker, &jobs[1]) != 0) {
        worker(&jobs[1]);
        worker(&jobs[0]);
        return;
    }
    worker(&jobs[0]);
    pthread_join(thread, NULL);
}

static float value(size_t i, unsigned seed) {
    return (float)(((unsigned)i * 2654435761u + seed) >> 16) / 32768.0f - 1.0f;
}

static void test_gemm(int backend, const kn_executor *host) {
    const size_t shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {33, 17, 64}, {97, 31, 130}};
    for (size_t s = 0; s < 4; s++) {
        size_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        for (int t = 0; t < 4; t++) {
            int ta = t & 1, tb = t >> 1;
            size_t ac = ta ? m : k, ar = ta ? k : m, bc = tb ? k : n, br = tb ? n : k;
            size_t lda = ac + 3, ldb = bc + 1, ldc = n + 2, len = 0;
            float *a = (float *)malloc(ar * lda * sizeof(float)), *b = (float *)malloc(br * ldb * sizeof(float));
            float *c1 = (float *)malloc(m * ldc * sizeof(float)), *c2 = (float *)malloc(m * ldc * sizeof(float));
            for (size_t i = 0; i < ar * lda; i++) a[i] = value(i, 1);
            for (size_t i = 0; i < br * ldb; i++) b[i] = value(i, 2);
            /* beta = 0 over NaN-filled C for half the cases, beta = 2 over 0.25 for the rest. */
            float beta = (s + t) % 2 ? 2.0f : 0.0f, fill = beta == 0.0f ? NAN : 0.25f;
            for (size_t i = 0; i < m * ldc; i++) c1[i] = c2[i] = fill;
            CHECK(kn_gemm_workspace_len(backend, m, n, k, &len) == KN_OK, "workspace length");
            float *ws = (float *)calloc(len ? len : 1, sizeof(float));
            int s1 = kn_gemm(backend, NULL, ta, tb, m, n, k, 0.5f, a, lda, b, ldb, beta, c1, ldc, ws, len);
            int s2 = kn_gemm(backend, host, ta, tb, m, n, k, 0.5f, a, lda, b, ldb, beta, c2, ldc, ws, len);
            CHECK(s1 == KN_OK && s2 == KN_OK, "gemm status %d %d", s1, s2);
            for (size_t i = 0; i < m; i++) {
                for (size_t j = 0; j < n; j++) {
                    double sum = 0.0;
                    for (size_t l = 0; l < k; l++) {
                        double x = ta ? a[l * lda + i] : a[i * lda + l];
                        double y = tb ? b[j * ldb + l] : b[l * ldb + j];
                        sum += x * y;
                    }
                    double got = c1[i * ldc + j], want = 0.5 * sum + (beta == 0.0f ? 0.0 : beta * 0.25);
                    CHECK(fabs(got - want) <= 1e-4 * (1.0 + fabs(want)), "C[%zu][%zu] %g vs %g", i, j, got, want);
                }
                for (size_t j = n; j < ldc; j++)
                    CHECK(memcmp(&c1[i * ldc + j], &fill, sizeof fill) == 0, "C touched between rows");
            }
            CHECK(memcmp(c1, c2, m * ldc * sizeof(float)) == 0, "threads changed the bits (%zu %zu %zu)", m, n, k);
            free(a), free(b), free(c1), free(c2), free(ws);
        }
    }
}

static void test_rowwise(int backend) {
    enum { ROWS = 3, COLS = 5 };
    float x[ROWS * COLS] = {0}, p[ROWS * COLS] = {0}, gamma[COLS] = {0}, beta[COLS] = {0};
    float out[ROWS * COLS] = {0}, mean[ROWS] = {0}, rstd[ROWS] = {0};
    for (size_t i = 0; i < ROWS * COLS; i++) x[i] = p[i] = value(i, 3);
    for (size_t j = 0; j < COLS; j++) gamma[j] = value(j, 4), beta[j] = value(j, 5);
    CHECK(kn_softmax_rows(backend, p, ROWS * COLS, COLS, 0, 0) == KN_OK, "softmax");
    CHECK(kn_layer_norm_forward(backend, x, ROWS * COLS, gamma, beta, COLS, 1e-5f, out, mean, rstd) == KN_OK, "layer norm");
    for (size_t r = 0; r < ROWS; r++) {
        double max = x[r * COLS], total = 0.0, mu = 0.0, var = 0.0;
        for (size_t j = 0; j < COLS; j++) max = fmax(max, x[r * COLS + j]), mu += x[r * COLS + j] / (double)COLS;
        for (size_t j = 0; j < COLS; j++) total += exp(x[r * COLS + j] - max), var += pow(x[r * COLS + j] - mu, 2) / COLS;
        for (size_t j = 0; j < COLS; j++) {
            double want = exp(x[r * COLS + j] - max) / total;
            CHECK(fabs(p[r * COLS + j] - want) < 1e-6, "softmax [%zu][%zu]", r, j);
            double norm = (x[r * COLS + j] - mu) / sqrt(var + 1e-5) * gamma[j] + beta[j];
            CHECK(fabs(out[r * COLS + j] - norm) < 1e-4, "layer norm [%zu][%zu]", r, j);
        }
    }
    kn_bf16 half[ROWS * COLS] = {{0}};
    float back[ROWS * COLS] = {0};
    CHECK(kn_f32_to_bf16(backend, x, half, ROWS * COLS) == KN_OK, "to bf16");
    CHECK(kn_bf16_to_f32(backend, half, back, ROWS * COLS) == KN_OK, "from bf16");
    for (size_t i = 0; i < ROWS * COLS; i++) CHECK(fabsf(back[i] - x[i]) <= fabsf(x[i]) / 256.0f, "bf16 round trip");
}

static int close_to(double got, double want, double rel) { return fabs(got - want) <= rel * (1.0 + fabs(want)); }

static void test_others(int backend) {
    enum { N = 37, ROWS = 3, COLS = 5 };
    float a[N] = {0}, b[N] = {0}, out[N] = {0}, y[N] = {0};
    for (size_t i = 0; i < N; i++) a[i] = value(i, 6), b[i] = value(i, 7);
    CHECK(kn_add(backend, a, b, out, N) == KN_OK, "add");
    for (size_t i = 0; i < N; i++) CHECK(out[i] == a[i] + b[i], "add [%zu]", i);
    CHECK(kn_sub(backend, a, b, out, N) == KN_OK, "sub");
    for (size_t i = 0; i < N; i++) CHECK(out[i] == a[i] - b[i], "sub [%zu]", i);
    CHECK(kn_mul(backend, a, b, out, N) == KN_OK, "mul");
    for (size_t i = 0; i < N; i++) CHECK(out[i] == a[i] * b[i], "mul [%zu]", i);
    CHECK(kn_copy(backend, a, out, N) == KN_OK && memcmp(a, out, sizeof a) == 0, "copy");
    CHECK(kn_fill(backend, 1.5f, out, N) == KN_OK, "fill");
    for (size_t i = 0; i < N; i++) CHECK(out[i] == 1.5f, "fill [%zu]", i);
    memcpy(y, a, sizeof a);
    CHECK(kn_scale(backend, 2.0f, y, N) == KN_OK && kn_axpy(backend, 0.5f, b, y, N) == KN_OK, "scale, axpy");
    for (size_t i = 0; i < N; i++) CHECK(close_to(y[i], 2.0 * a[i] + 0.5 * b[i], 1e-6), "axpy [%zu]", i);
    memcpy(y, a, sizeof a);
    CHECK(kn_add_bias(backend, b, 1, y, N) == KN_OK, "add_bias");
    for (size_t i = 0; i < N; i++) CHECK(y[i] == a[i] + b[0], "add_bias [%zu]", i);
    for (size_t i = 0; i < N; i++) y[i] = 1.0f;
    CHECK(kn_gelu_backward(backend, a, b, y, N) == KN_OK, "gelu backward");
    for (size_t i = 0; i < N; i++) {
        double x = a[i], h = 1e-3, up = x + h, dn = x - h, k0 = sqrt(2.0 / 3.14159265358979);
        double gu = 0.5 * up * (1 + tanh(k0 * (up + 0.044715 * up * up * up)));
        double gd = 0.5 * dn * (1 + tanh(k0 * (dn + 0.044715 * dn * dn * dn)));
        CHECK(close_to(y[i], 1.0 + b[i] * (gu - gd) / (2 * h), 1e-4), "gelu backward [%zu]", i);
    }
    /* Written rather than added: what adding into zeros gives. */
    float added[N] = {0}, written[N];
    for (size_t i = 0; i < N; i++) written[i] = NAN;
    CHECK(kn_gelu_backward(backend, a, b, added, N) == KN_OK, "gelu backward");
    CHECK(kn_gelu_backward_into(backend, a, b, written, N) == KN_OK, "gelu backward into");
    for (size_t i = 0; i < N; i++) CHECK(written[i] == added[i], "gelu backward into [%zu]", i);
    CHECK(kn_exp(backend, a, out, N) == KN_OK, "exp");
    for (size_t i = 0; i < N; i++) CHECK(close_to(out[i], exp(a[i]), 1e-6), "exp [%zu]", i);
    CHECK(kn_tanh(backend, a, out, N) == KN_OK, "tanh");
    for (size_t i = 0; i < N; i++) CHECK(close_to(out[i], tanh(a[i]), 1e-6), "tanh [%zu]", i);
    CHECK(kn_gelu_forward(backend, a, out, N) == KN_OK, "gelu");
    for (size_t i = 0; i < N; i++) {
        double x = a[i], g = 0.5 * x * (1.0 + tanh(sqrt(2.0 / 3.14159265358979) * (x + 0.044715 * x * x * x)));
        CHECK(close_to(out[i], g, 1e-5), "gelu [%zu]", i);
    }
    double sum = 0, squares = 0, dot = 0, max = -INFINITY;
    for (size_t i = 0; i < N; i++) sum += a[i], squares += (double)a[i] * a[i], dot += (double)a[i] * b[i], max = fmax(max, a[i]);
    float r;
    CHECK(kn_sum(backend, a, N, &r) == KN_OK && close_to(r, sum, 1e-5), "sum");
    CHECK(kn_sum_squares(backend, a, N, &r) == KN_OK && close_to(r, squares, 1e-5), "sum of squares");
    CHECK(kn_dot(backend, a, b, N, &r) == KN_OK && close_to(r, dot, 1e-5), "dot");
    CHECK(kn_max(backend, a, N, &r) == KN_OK && r == max, "max");

    /* Cross-entropy: loss = logsumexp(row) - row[target]. */
    uint32_t targets[ROWS] = {1, 4, 0};
    float losses[ROWS] = {0};
    float dlogits[ROWS * COLS] = {0};
    CHECK(kn_cross_entropy(backend, a, ROWS, COLS, targets, losses, dlogits, 0.5f) == KN_OK, "cross-entropy");
    for (size_t row = 0; row < ROWS; row++) {
        double total = 0.0;
        for (size_t j = 0; j < COLS; j++) total += exp(a[row * COLS + j]);
        CHECK(close_to(losses[row], log(total) - a[row * COLS + targets[row]], 1e-5), "loss [%zu]", row);
        for (size_t j = 0; j < COLS; j++) {
            double want = 0.5 * (exp(a[row * COLS + j]) / total - (j == targets[row]));
            CHECK(close_to(dlogits[row * COLS + j], want, 1e-6), "dlogits [%zu][%zu]", row, j);
        }
    }
    /* Softmax backward: g = p · (g − Σ p·g). */
    float p[ROWS * COLS] = {0}, g[ROWS * COLS] = {0};
    memcpy(p, a, sizeof p), memcpy(g, b, sizeof g);
    CHECK(kn_softmax_rows(backend, p, ROWS * COLS, COLS, 0, 0) == KN_OK, "softmax");
    CHECK(kn_softmax_backward_rows(backend, p, g, ROWS * COLS, COLS, 0, 0) == KN_OK, "softmax backward");
    for (size_t row = 0; row < ROWS; row++) {
        double inner = 0.0;
        for (size_t j = 0; j < COLS; j++) inner += (double)p[row * COLS + j] * b[row * COLS + j];
        for (size_t j = 0; j < COLS; j++)
            CHECK(close_to(g[row * COLS + j], p[row * COLS + j] * (b[row * COLS + j] - inner), 1e-5), "softmax backward");
    }
    /* AdamW, first step. */
    kn_adamw opt = kn_adamw_default();
    float params[N] = {0}, m[N] = {0}, v[N] = {0};
    memcpy(params, a, sizeof params);
    CHECK(kn_adamw_step(backend, &opt, 1, 1.0f, params, b, m, v, N) == KN_OK, "adamw");
    for (size_t i = 0; i < N; i++) {
        double mh = b[i], vh = (double)b[i] * b[i];
        double want = a[i] - opt.lr * (mh / (sqrt(vh) + opt.eps) + opt.weight_decay * a[i]);
        CHECK(close_to(params[i], want, 1e-5), "adamw [%zu]", i);
    }
    /* Transpose into a padded destination. */
    float t[COLS * (ROWS + 1)] = {0};
    for (size_t i = 0; i < COLS * (ROWS + 1); i++) t[i] = -1.0f;
    CHECK(kn_transpose(backend, ROWS, COLS, a, COLS, t, ROWS + 1) == KN_OK, "transpose");
    for (size_t i = 0; i < ROWS; i++)
        for (size_t j = 0; j < COLS; j++) CHECK(t[j * (ROWS + 1) + i] == a[i * COLS + j], "transpose");
    for (size_t j = 0; j < COLS; j++) CHECK(t[j * (ROWS + 1) + ROWS] == -1.0f, "transpose padding");
    /* bf16 product of 3 × 37 by 37 × 2 against double over rounded values. */
    kn_bf16 ra[N] = {{0}}, rb[N] = {{0}};
    float fa[N] = {0}, fb[N] = {0}, c[6] = {0};
    kn_f32_to_bf16(backend, a, ra, N), kn_f32_to_bf16(backend, b, rb, N);
    kn_bf16_to_f32(backend, ra, fa, N), kn_bf16_to_f32(backend, rb, fb, N);
    size_t len = 0;
    CHECK(kn_gemm_bf16_workspace_len(backend, 3, 2, 12, &len) == KN_OK, "bf16 workspace");
    float *ws = (float *)calloc(len ? len : 1, sizeof(float));
    CHECK(kn_gemm_bf16(backend, NULL, 0, 0, 3, 2, 12, 1.0f, a, 12, b, 2, 0.0f, c, 2, ws, len) == KN_OK, "gemm bf16");
    for (size_t i = 0; i < 3; i++)
        for (size_t j = 0; j < 2; j++) {
            double want = 0.0;
            for (size_t l = 0; l < 12; l++) want += (double)fa[i * 12 + l] * fb[l * 2 + j];
            CHECK(close_to(c[i * 2 + j], want, 1e-5), "gemm bf16 [%zu][%zu]", i, j);
        }
    free(ws);
    CHECK(kn_bf16_unit(backend) >= KN_BF16_PORTABLE, "bf16 unit");

    /* B packed once multiplies as the unpacked product does, bit for bit. */
    size_t slots_len = 0, packed_ws_len = 0;
    CHECK(kn_packed_bf16_len(12, 2, &slots_len) == KN_OK, "packed length");
    uint32_t *slots = (uint32_t *)calloc(slots_len ? slots_len : 1, sizeof(uint32_t));
    CHECK(kn_pack_bf16(backend, 0, 12, 2, b, 2, slots, slots_len) == KN_OK, "pack");
    CHECK(kn_gemm_bf16_packed_workspace_len(backend, 3, 2, 12, &packed_ws_len) == KN_OK, "packed workspace");
    float *pws = (float *)calloc(packed_ws_len ? packed_ws_len : 1, sizeof(float)), pc[6] = {0};
    CHECK(kn_gemm_bf16_packed(backend, NULL, 0, 3, 2, 12, 1.0f, a, 12, slots, slots_len, 0.0f, pc, 2, pws, packed_ws_len) == KN_OK, "packed gemm");
    CHECK(memcmp(pc, c, sizeof pc) == 0, "packed B changed the bits");
    free(slots), free(pws);
    /* The bias-fused product: A·B plus a bias row, against double. */
    size_t f32_len = 0;
    CHECK(kn_gemm_workspace_len(backend, 3, 2, 12, &f32_len) == KN_OK, "f32 workspace");
    float *fws = (float *)calloc(f32_len ? f32_len : 1, sizeof(float)), bc[6] = {0}, bias[2] = {0.5f, -2.0f};
    CHECK(kn_gemm_bias(backend, NULL, 0, 0, 3, 2, 12, a, 12, b, 2, bias, bc, 2, fws, f32_len) == KN_OK, "gemm bias");
    for (size_t i = 0; i < 3; i++)
        for (size_t j = 0; j < 2; j++) {
            double want = bias[j];
            for (size_t l = 0; l < 12; l++) want += (double)a[i * 12 + l] * b[l * 2 + j];
            CHECK(close_to(bc[i * 2 + j], want, 1e-5), "gemm bias [%zu][%zu]", i, j);
        }
    free(fws);
    /* The bf16 bias products, unpacked and packed, bit for bit alike and
       within the bf16 bound of the f64 sum. */
    size_t bf16_len = 0;
    CHECK(kn_packed_bf16_len(12, 2, &slots_len) == KN_OK, "packed length");
    CHECK(kn_gemm_bf16_workspace_len(backend, 3, 2, 12, &bf16_len) == KN_OK, "bf16 workspace");
    CHECK(kn_gemm_bf16_packed_workspace_len(backend, 3, 2, 12, &packed_ws_len) == KN_OK, "packed workspace");
    slots = (uint32_t *)calloc(slots_len ? slots_len : 1, sizeof(uint32_t));
    float *bws = (float *)calloc(bf16_len ? bf16_len : 1, sizeof(float));
    pws = (float *)calloc(packed_ws_len ? packed_ws_len : 1, sizeof(float));
    float bbc[6] = {0}, pbc[6] = {0};
    CHECK(kn_pack_bf16(backend, 0, 12, 2, b, 2, slots, slots_len) == KN_OK, "pack");
    CHECK(kn_gemm_bf16_bias(backend, NULL, 0, 0, 3, 2, 12, a, 12, b, 2, bias, bbc, 2, bws, bf16_len) == KN_OK, "gemm bf16 bias");
    CHECK(kn_gemm_bf16_packed_bias(backend, NULL, 0, 3, 2, 12, a, 12, slots, slots_len, bias, pbc, 2, pws, packed_ws_len) == KN_OK, "packed gemm bias");
    CHECK(memcmp(bbc, pbc, sizeof bbc) == 0, "packed B changed the bias product's bits");
    for (size_t i = 0; i < 6; i++) CHECK(close_to(bbc[i], c[i] + bias[i % 2], 1e-5), "gemm bf16 bias [%zu]", i);
    free(slots), free(bws), free(pws);
    /* Operands and C held in bf16: the f32 product rounded once. */
    kn_bf16 sc[6] = {{0}}, rc[6] = {{0}};
    CHECK(kn_gemm_bf16_workspace_len(backend, 3, 2, 12, &bf16_len) == KN_OK, "bf16 workspace");
    bws = (float *)calloc(bf16_len ? bf16_len : 1, sizeof(float));
    CHECK(kn_gemm_bf16_stored(backend, NULL, 0, 0, 3, 2, 12, 1.0f, ra, 12, rb, 2, 0.0f, sc, 2, bws, bf16_len) == KN_OK, "gemm bf16 stored");
    CHECK(kn_f32_to_bf16(backend, c, rc, 6) == KN_OK, "round C");
    CHECK(memcmp(sc, rc, sizeof sc) == 0, "stored C is not the f32 product rounded once");
    free(bws);
    uint64_t flops = 0;
    CHECK(kn_fma_peak_loop(backend, 10, &flops) == KN_OK && flops > 0, "fma peak");
    CHECK(kn_bf16_peak_loop(backend, 10, &flops) == KN_OK && flops > 0, "bf16 peak");

    /* Layer norm backward, adding into zeroed gradients. */
    float gamma[COLS] = {0}, lnb[COLS] = {0}, norm[ROWS * COLS] = {0}, mean[ROWS] = {0}, rstd[ROWS] = {0};
    float dx[ROWS * COLS] = {0}, dgamma[COLS] = {0}, dbeta[COLS] = {0};
    for (size_t j = 0; j < COLS; j++) gamma[j] = value(j, 8), lnb[j] = value(j, 9);
    kn_layer_norm_forward(backend, a, ROWS * COLS, gamma, lnb, COLS, 1e-5f, norm, mean, rstd);
    CHECK(kn_layer_norm_backward(backend, a, ROWS * COLS, gamma, COLS, mean, rstd, b, dx, dgamma, dbeta) == KN_OK, "layer norm backward");
    double want_dgamma[COLS] = {0}, want_dbeta[COLS] = {0};
    for (size_t row = 0; row < ROWS; row++) {
        double mean_d = 0.0, mean_dx = 0.0;
        for (size_t j = 0; j < COLS; j++) {
            double xhat = (a[row * COLS + j] - mean[row]) * rstd[row], d = (double)b[row * COLS + j] * gamma[j];
            mean_d += d / COLS, mean_dx += d * xhat / COLS;
            want_dgamma[j] += b[row * COLS + j] * xhat, want_dbeta[j] += b[row * COLS + j];
        }
        for (size_t j = 0; j < COLS; j++) {
            double xhat = (a[row * COLS + j] - mean[row]) * rstd[row], d = (double)b[row * COLS + j] * gamma[j];
            CHECK(close_to(dx[row * COLS + j], rstd[row] * (d - mean_d - xhat * mean_dx), 1e-4), "dx [%zu][%zu]", row, j);
        }
    }
    for (size_t j = 0; j < COLS; j++)
        CHECK(close_to(dgamma[j], want_dgamma[j], 1e-4) && close_to(dbeta[j], want_dbeta[j], 1e-5), "dgamma, dbeta [%zu]", j);

    /* A target out of range: refused, nothing written. */
    uint32_t bad[ROWS] = {1, 5, 0};
    float kept[ROWS] = {7, 7, 7};
    CHECK(kn_cross_entropy(backend, a, ROWS, COLS, bad, kept, NULL, 1.0f) == KN_ERR_INDEX, "bad target");
    CHECK(kept[0] == 7 && kept[1] == 7 && kept[2] == 7, "a refused call wrote its output");
}

static void test_errors(int backend) {
    float a[6] = {0}, b[6] = {0}, c[4], ws[1024] = {0};
    for (int i = 0; i < 4; i++) c[i] = NAN;
    CHECK(kn_gemm(backend, NULL, 0, 0, 2, 2, 3, 1.0f, NULL, 3, b, 2, 0.0f, c, 2, ws, 1024) == KN_ERR_NULL_POINTER, "null");
    CHECK(kn_gemm(backend, NULL, 0, 0, 2, 2, 3, 1.0f, a, 2, b, 2, 0.0f, c, 2, ws, 1024) == KN_ERR_SHAPE, "stride");
    CHECK(kn_gemm(99, NULL, 0, 0, 2, 2, 3, 1.0f, a, 3, b, 2, 0.0f, c, 2, ws, 1024) == KN_ERR_ARGUMENT, "backend");
    size_t need = 0;
    kn_gemm_workspace_len(KN_BACKEND_SCALAR, 2, 2, 3, &need);
    if (need > 0)
        CHECK(kn_gemm(KN_BACKEND_SCALAR, NULL, 0, 0, 2, 2, 3, 1.0f, a, 3, b, 2, 0.0f, c, 2, ws, need - 1) == KN_ERR_WORKSPACE, "workspace");
    for (int i = 0; i < 4; i++) CHECK(isnan(c[i]), "an error wrote C");
    float x[5] = {1, 1, 1, 1, 1};
    CHECK(kn_softmax_rows(backend, x, 5, 2, 0, 0) == KN_ERR_LENGTH, "length");
    for (int b_ = KN_BACKEND_SCALAR; b_ <= KN_BACKEND_AVX512; b_++)
        if (!kn_backend_supported(b_))
            CHECK(kn_gemm(b_, NULL, 0, 0, 2, 2, 3, 1.0f, a, 3, b, 2, 0.0f, c, 2, ws, 1024) == KN_ERR_UNSUPPORTED, "unsupported");
    CHECK(strlen(kn_status_message(KN_ERR_WORKSPACE)) > 0, "message");
    CHECK(kn_abi_version() == KN_ABI_VERSION, "version");
}

int main(void) {
    kn_executor host = {NULL, 2, parallel_for};
    for (int backend = KN_BACKEND_SCALAR; backend <= KN_BACKEND_AVX512; backend++) {
        if (!kn_backend_supported(backend)) {
            printf("notice: this CPU lacks %s; skipped\n", kn_backend_name(backend));
            continue;
        }
        test_gemm(backend, &host);
        test_rowwise(backend);
        test_others(backend);
        test_errors(backend);
    }
    printf("%s: %d failures\n", failures ? "FAILED" : "ok", failures);
    return failures ? 1 : 0;
}
