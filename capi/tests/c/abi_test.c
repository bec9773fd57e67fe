/* The C ABI from C99: matrix multiply against a triple loop on awkward
 * shapes (each transpose, strided operands, beta = 0 over NaN-filled C),
 * bit-identical on the calling thread and on a pthread executor; softmax,
 * layer norm and bf16 conversions against plain C; error codes with the
 * output untouched. Built by .ci/run with -std=c99 -Wall -Wextra -Werror
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
    struct job *job = arg;
    for (size_t i = job->first; i < job->n; i += 2) job->piece(job->piece_ctx, i);
    return NULL;
}

static void parallel_for(void *ctx, size_t n, void (*piece)(void *, size_t), void *piece_ctx) {
    (void)ctx;
    pthread_t thread;
    struct job jobs[2] = {{n, 0, piece, piece_ctx}, {n, 1, piece, piece_ctx}};
    pthread_create(&thread, NULL, worker, &jobs[1]);
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
            float *a = malloc(ar * lda * sizeof(float)), *b = malloc(br * ldb * sizeof(float));
            float *c1 = malloc(m * ldc * sizeof(float)), *c2 = malloc(m * ldc * sizeof(float));
            for (size_t i = 0; i < ar * lda; i++) a[i] = value(i, 1);
            for (size_t i = 0; i < br * ldb; i++) b[i] = value(i, 2);
            for (size_t i = 0; i < m * ldc; i++) c1[i] = c2[i] = NAN;
            CHECK(kn_gemm_workspace_len(backend, m, n, k, &len) == KN_OK, "workspace length");
            float *ws = malloc((len ? len : 1) * sizeof(float));
            int s1 = kn_gemm(backend, NULL, ta, tb, m, n, k, 0.5f, a, lda, b, ldb, 0.0f, c1, ldc, ws, len);
            int s2 = kn_gemm(backend, host, ta, tb, m, n, k, 0.5f, a, lda, b, ldb, 0.0f, c2, ldc, ws, len);
            CHECK(s1 == KN_OK && s2 == KN_OK, "gemm status %d %d", s1, s2);
            for (size_t i = 0; i < m; i++) {
                for (size_t j = 0; j < n; j++) {
                    double sum = 0.0;
                    for (size_t l = 0; l < k; l++) {
                        double x = ta ? a[l * lda + i] : a[i * lda + l];
                        double y = tb ? b[j * ldb + l] : b[l * ldb + j];
                        sum += x * y;
                    }
                    double got = c1[i * ldc + j];
                    CHECK(fabs(got - 0.5 * sum) <= 1e-4 * (1.0 + fabs(sum)), "C[%zu][%zu] %g vs %g", i, j, got, 0.5 * sum);
                }
                for (size_t j = n; j < ldc; j++) CHECK(isnan(c1[i * ldc + j]), "C touched between rows");
            }
            CHECK(memcmp(c1, c2, m * ldc * sizeof(float)) == 0, "threads changed the bits (%zu %zu %zu)", m, n, k);
            free(a), free(b), free(c1), free(c2), free(ws);
        }
    }
}

static void test_rowwise(int backend) {
    enum { ROWS = 3, COLS = 5 };
    float x[ROWS * COLS], p[ROWS * COLS], gamma[COLS], beta[COLS], out[ROWS * COLS], mean[ROWS], rstd[ROWS];
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
    kn_bf16 half[ROWS * COLS];
    float back[ROWS * COLS];
    CHECK(kn_f32_to_bf16(backend, x, half, ROWS * COLS) == KN_OK, "to bf16");
    CHECK(kn_bf16_to_f32(backend, half, back, ROWS * COLS) == KN_OK, "from bf16");
    for (size_t i = 0; i < ROWS * COLS; i++) CHECK(fabsf(back[i] - x[i]) <= fabsf(x[i]) / 256.0f, "bf16 round trip");
}

static void test_errors(int backend) {
    float a[6] = {0}, b[6] = {0}, c[4], ws[1024];
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
        test_errors(backend);
    }
    printf("%s: %d failures\n", failures ? "FAILED" : "ok", failures);
    return failures ? 1 : 0;
}
