#!/usr/bin/env bash
# This runner beside PyTorch on the same machine, each comparison made so
# that a shared machine's drift does not decide it: training steps of the
# `shakes` preset at B 8, T 256, f32 and bf16 (ours: --precision bf16;
# PyTorch: bf16 autocast), on 1 and 2 threads, alternated round by round
# (tools/compare_training.py); cached decoding, one run of each; then bf16
# matrix products beside torch.matmul on one core, alternated call by call
# (tools/torch_matmul.py).
#
#   pip install torch transformers     # once
#   bash tools/compare_torch.sh [ROUNDS]   # ROUNDS of training, default 3
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p runner -p kernels-capi
python3 tools/compare_training.py "${1:-3}"
echo
./target/release/runner bench --preset shakes --seq-lens 256 --batch 8 --backends auto \
    --threads 1,2 --precisions f32,bf16 --steps 1 -q | sed -n '/^Decoding/,/^$/p'
STEPS=1 PRECISIONS=f32 python3 tools/torch_bench.py 6 6 384 256 8 2>&1 | grep '^torch decode'
echo
python3 tools/torch_matmul.py target/release/libkernels_c.so
