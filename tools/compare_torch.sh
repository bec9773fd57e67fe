#!/usr/bin/env bash
# This runner beside PyTorch in one run on the same machine: full training
# steps (forward, backward, AdamW) of the `shakes` preset at B 8, T 256, in
# f32 and bf16 (ours: --precision bf16; PyTorch: bf16 autocast), and cached
# decoding, on 1 and 2 threads; then bf16 matrix products beside
# torch.matmul in bf16 on one core.
#
#   pip install torch transformers     # once
#   bash tools/compare_torch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p runner
./target/release/runner bench --preset shakes --seq-lens 256 --batch 8 --backends auto --threads 1,2 --precisions f32,bf16 -q
python3 tools/torch_bench.py 6 6 384 256 8 2>&1 | grep '^torch'
cargo bench -p benches --bench gemm_bf16 2>/dev/null | sed -n '/^CPU:/,$p'
python3 tools/torch_matmul.py
