"""torch.matmul in bf16 on one core, on the shapes of
`cargo bench -p benches --bench gemm_bf16` (square and the trainer's), for
the "ours / torch" ratio. The operands are bf16 tensors (as autocast feeds
them), laid out as the bench stores them, and so is the result: compare
with the bench's `-bf16c` columns. GFLOP/s is the median of 10 runs.

Given the C library (`cargo build --release -p kernels-capi`, then
`tools/torch_matmul.py target/release/libkernels_c.so`), it times ours
(`kn_gemm_bf16_stored`, on the same tensors) and torch call by call in
alternation instead, and prints the median of the pairs' ratios beside
each side's median: on a core shared with a busy neighbour, whose speed
drifts from one second to the next, the pairs still compare like with
like. It also compares the two Cs, and stops with an error where they
differ by more than 2^-6 of the largest element (a few bf16 roundings:
the sums' order may differ, their bf16 results by a unit or two).

    pip install torch
    python3 tools/torch_matmul.py [path/to/libkernels_c.so [PAIRS]]
"""

import ctypes
import statistics
import sys
import time

import torch

# name, m, k, n, A transposed, B transposed (as benches/src/shapes.rs).
SHAPES = [
    ("square_32", 32, 32, 32, False, False),
    ("square_64", 64, 64, 64, False, False),
    ("square_128", 128, 128, 128, False, False),
    ("square_256", 256, 256, 256, False, False),
    ("square_512", 512, 512, 512, False, False),
    ("square_1024", 1024, 1024, 1024, False, False),
    ("square_2048", 2048, 2048, 2048, False, False),
    ("qkv_2048x384x1152", 2048, 384, 1152, False, False),
    ("attn_proj_2048x384x384", 2048, 384, 384, False, False),
    ("mlp_fc_2048x384x1536", 2048, 384, 1536, False, False),
    ("mlp_proj_2048x1536x384", 2048, 1536, 384, False, False),
    ("lm_head_2048x384x256", 2048, 384, 256, False, False),
    ("grad_w_AtB_384x2048x1152", 384, 2048, 1152, True, False),
    ("grad_x_ABt_2048x1152x384", 2048, 1152, 384, False, True),
]


def operands(m, k, n, ta, tb):
    """bf16 A and B as stored, and the views torch multiplies."""
    a = (torch.randn(k, m) if ta else torch.randn(m, k)).bfloat16()
    b = (torch.randn(n, k) if tb else torch.randn(k, n)).bfloat16()
    return a, b, (a.t() if ta else a), (b.t() if tb else b)


def timed(f):
    """Seconds one call of `f` takes."""
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def torch_only():
    print("| shape | torch bf16 GFLOP/s |")
    print("|---|---|")
    for name, m, k, n, ta, tb in SHAPES:
        _, _, a, b = operands(m, k, n, ta, tb)
        for _ in range(3):
            torch.matmul(a, b)
        times = [timed(lambda: torch.matmul(a, b)) for _ in range(10)]
        print(f"| {name} | {2 * m * n * k / statistics.median(times) / 1e9:.1f} |")


class Ours:
    """`kn_gemm_bf16_stored` on the detected backend, through ctypes."""

    def __init__(self, path):
        lib = ctypes.CDLL(path)
        size = ctypes.c_size_t
        lib.kn_detected_backend.restype = ctypes.c_int32
        lib.kn_gemm_bf16_workspace_len.argtypes = [ctypes.c_int32, size, size, size, ctypes.POINTER(size)]
        lib.kn_gemm_bf16_stored.argtypes = (
            [ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, size, size, size, ctypes.c_float]
            + [ctypes.c_void_p, size, ctypes.c_void_p, size, ctypes.c_float, ctypes.c_void_p, size]
            + [ctypes.c_void_p, size]
        )
        self.lib, self.backend = lib, lib.kn_detected_backend()

    def product(self, m, k, n, ta, tb, a, b, c):
        """C = A·B on the stored tensors; returns a function running it."""
        length = ctypes.c_size_t(0)
        if self.lib.kn_gemm_bf16_workspace_len(self.backend, m, n, k, ctypes.byref(length)) != 0:
            sys.exit(f"error: no workspace length for {m}x{k}x{n}")
        workspace = torch.zeros(max(length.value, 1), dtype=torch.float32)
        lda, ldb = (m if ta else k), (k if tb else n)
        args = (self.backend, None, int(ta), int(tb), m, n, k, 1.0, a.data_ptr(), lda, b.data_ptr(), ldb, 0.0)
        rest = (c.data_ptr(), n, workspace.data_ptr(), length.value)

        def run():
            status = self.lib.kn_gemm_bf16_stored(*args, *rest)
            if status != 0:
                sys.exit(f"error: kn_gemm_bf16_stored returned {status}")

        run.keep = (a, b, c, workspace)  # the memory `args` points into
        return run


def paired(path, pairs):
    ours = Ours(path)
    print(f"ours: {path} (backend {ours.backend}), call by call against torch, {pairs} pairs")
    print("| shape | ours GFLOP/s | torch GFLOP/s | ours / torch (median of pairs) | max difference / max |C| |")
    print("|---|---|---|---|---|")
    for name, m, k, n, ta, tb in SHAPES:
        a, b, av, bv = operands(m, k, n, ta, tb)
        c = torch.empty(m, n, dtype=torch.bfloat16)
        run = ours.product(m, k, n, ta, tb, a, b, c)
        for _ in range(3):
            run()
            want = torch.matmul(av, bv)
        scale = want.float().abs().max().item() or 1.0
        difference = (c.float() - want.float()).abs().max().item() / scale
        if difference > 2**-6:
            sys.exit(f"error: {name}: ours and torch differ by {difference:.1e} of the largest element")

        def theirs_call():
            torch.matmul(av, bv)

        mine, theirs, ratios = [], [], []
        for i in range(pairs):
            # Each side runs first in every other pair.
            if i % 2 == 0:
                t_ours = timed(run)
                t_torch = timed(theirs_call)
            else:
                t_torch = timed(theirs_call)
                t_ours = timed(run)
            mine.append(t_ours)
            theirs.append(t_torch)
            ratios.append(t_torch / t_ours)
        flops = 2 * m * n * k / 1e9
        print(
            f"| {name} | {flops / statistics.median(mine):.1f} | {flops / statistics.median(theirs):.1f} "
            f"| {statistics.median(ratios):.2f}x | {difference:.1e} |"
        )


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__} matmul, bf16, 1 thread")
    if len(sys.argv) > 1:
        paired(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 31)
    else:
        torch_only()


if __name__ == "__main__":
    main()
