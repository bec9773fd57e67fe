/* A small batch through the kernels from C99: y = x · wᵀ on a pthread
 * executor, then softmax and layer norm of each row.
 *
 *   cargo build --release -p kernels-capi
 *   cc -std=c99 -O2 -Icapi/include examples/c/main.c \
 *      target/release/libkernels_c.a -lpthread -ldl -lm -o /tmp/kn-example
 *   /tmp/kn-example */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels.h"

/* The host's threads: here one extra pthread takes every other piece. */
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
    /* No second thread: this one runs every piece. */
    if (pthread_create(&thread, NULL, worker, &jobs[1]) != 0) {
        worker(&jobs[1]);
        worker(&jobs[0]);
        return;
    }
    worker(&jobs[0]);
    pthread_join(thread, NULL);
}

#define CHECK(call)                                                      \
    do {                                                                 \
        int status_ = (call);                                            \
        if (status_ != KN_OK) {                                          \
            fprintf(stderr, "%s: %s\n", #call, kn_status_message(status_)); \
            return 1;                                                    \
        }                                                                \
    } while (0)

int main(void) {
    enum { ROWS = 4, IN = 8, OUT = 6 };
    /* Every buffer the library reads as a slice holds initialized values. */
    float x[ROWS * IN] = {0}, w[OUT * IN] = {0}, y[ROWS * OUT] = {0};
    float gamma[OUT] = {0}, beta[OUT] = {0}, norm[ROWS * OUT] = {0};
    float mean[ROWS] = {0}, rstd[ROWS] = {0};
    for (int i = 0; i < ROWS * IN; i++) x[i] = (float)(i % 7) / 7.0f;
    for (int i = 0; i < OUT * IN; i++) w[i] = (float)(i % 5) / 5.0f - 0.4f;
    for (int j = 0; j < OUT; j++) gamma[j] = 1.0f, beta[j] = 0.0f;

    int backend = kn_detected_backend();
    printf("kernels ABI %u on %s\n", kn_abi_version(), kn_backend_name(backend));
    kn_executor host = {NULL, 2, parallel_for};

    size_t len = 0;
    CHECK(kn_gemm_workspace_len(backend, ROWS, OUT, IN, &len));
    float *workspace = calloc(len ? len : 1, sizeof(float));
    /* y = x · wᵀ: w is stored OUT × IN, used transposed. */
    CHECK(kn_gemm(backend, &host, 0, 1, ROWS, OUT, IN, 1.0f, x, IN, w, IN, 0.0f, y, OUT, workspace, len));
    CHECK(kn_layer_norm_forward(backend, y, ROWS * OUT, gamma, beta, OUT, 1e-5f, norm, mean, rstd));
    CHECK(kn_softmax_rows(backend, y, ROWS * OUT, OUT, 0, 0));
    for (int r = 0; r < ROWS; r++) {
        printf("row %d: softmax", r);
        for (int j = 0; j < OUT; j++) printf(" %.3f", y[r * OUT + j]);
        printf(" | mean %.3f rstd %.3f\n", mean[r], rstd[r]);
    }
    free(workspace);
    return 0;
}
