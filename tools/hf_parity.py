#!/usr/bin/env python3
"""Builds a small random Hugging Face GPT2LMHeadModel with GPT-2's
vocabulary (50257), saves it with save_pretrained, writes fixed tokens as
an llm.c shard, and prints the model's loss on them by `runner eval`'s
definition, so that the runner's loss can be checked against Hugging
Face's (runner/tests/hf_parity.rs runs it).

usage: hf_parity.py OUT_DIR
writes OUT_DIR/model/ (config.json, model.safetensors),
       OUT_DIR/tokens.bin, and prints `loss X`.
"""

import struct
import sys
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

BLOCK = 64
WINDOWS = 3


def main():
    out = Path(sys.argv[1])
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=50257,
        n_positions=BLOCK,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config).eval()
    # Far from the initialisation (whose logits are nearly uniform), so
    # the loss depends on every tensor, LayerNorm and biases included.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(out / "model", safe_serialization=True)

    # `runner eval`: windows of BLOCK + 1 tokens with stride BLOCK; with
    # WINDOWS · BLOCK + 1 tokens every window is whole.
    tokens = torch.randint(0, config.vocab_size, (WINDOWS * BLOCK + 1,))
    header = [20240520, 1, len(tokens)] + [0] * 253
    with open(out / "tokens.bin", "wb") as f:
        f.write(struct.pack("<256i", *header))
        f.write(struct.pack(f"<{len(tokens)}H", *tokens.tolist()))

    total, count = 0.0, 0
    with torch.no_grad():
        for w in range(WINDOWS):
            window = tokens[w * BLOCK : w * BLOCK + BLOCK + 1]
            logits = model(window[:-1].unsqueeze(0)).logits[0].double()
            losses = torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum")
            total += losses.item()
            count += BLOCK
    print(f"loss {total / count:.9f}")


if __name__ == "__main__":
    main()
