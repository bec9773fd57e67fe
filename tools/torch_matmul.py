"""torch.matmul in bf16 on one core, on the shapes of
`cargo bench -p benches --bench gemm_bf16` (square and the trainer's), for
the "ours / torch" ratio. The operands are bf16 tensors (as autocast feeds
them), laid out as the bench stores them, and so is the result: compare
with the bench's `-bf16c` columns. GFLOP/s is the median of 10 runs.

    pip install torch
    python3 tools/torch_matmul.py
"""

import statistics
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


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__} matmul, bf16, 1 thread")
    print("| shape | torch bf16 GFLOP/s |")
    print("|---|---|")
    for name, m, k, n, ta, tb in SHAPES:
        a = torch.randn(k, m) if ta else torch.randn(m, k)
        b = torch.randn(n, k) if tb else torch.randn(k, n)
        a, b = a.bfloat16(), b.bfloat16()
        a, b = (a.t() if ta else a), (b.t() if tb else b)
        for _ in range(3):
            torch.matmul(a, b)
        times = []
        for _ in range(10):
            start = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - start)
        print(f"| {name} | {2 * m * n * k / statistics.median(times) / 1e9:.1f} |")


if __name__ == "__main__":
    main()
