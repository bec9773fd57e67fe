#!/usr/bin/env python3
"""Saves a freshly initialised Hugging Face GPT2LMHeadModel (GPT-2's
vocabulary, 50257) with save_pretrained: a stand-in for a downloaded `gpt2`
directory where the released weights cannot be fetched, to try
`runner train --init-from`, `eval` and `generate` on.

usage: make_hf_gpt2.py DIR [layers heads channels block]   (default 6 6 384 256)
"""

import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main():
    out = sys.argv[1]
    layers, heads, channels, block = (int(x) for x in (sys.argv[2:6] or [6, 6, 384, 256]))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50257, n_positions=block, n_embd=channels, n_layer=layers, n_head=heads)
    GPT2LMHeadModel(config).save_pretrained(out, safe_serialization=True)
    print(f"saved a random GPT-2 (L{layers} H{heads} C{channels} T{block}) to {out}")


if __name__ == "__main__":
    main()
