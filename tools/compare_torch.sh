#!/usr/bin/env bash
# This runner beside PyTorch in one run on the same machine: full training
# steps (forward, backward, AdamW) of the `shakes` preset at B 8, T 256, and
# cached decoding, on 1 and 2 threads.
#
#   pip install torch transformers     # once
#   bash tools/compare_torch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p runner
./target/release/runner bench --preset shakes --seq-lens 256 --batch 8 --backends auto --threads 1,2 -q
python3 tools/torch_bench.py 6 6 384 256 8 2>&1 | grep '^torch'
