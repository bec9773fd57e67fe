"""Loads a runner checkpoint with Hugging Face transformers (no conversion)
and prints its loss on a text (byte tokens) or a token shard (.bin, llm.c's
format) by the same definition as `runner eval`, so the two can be
compared.

    pip install torch transformers
    python3 tools/hf_check.py CHECKPOINT_DIR TEXT_FILE|SHARD.bin
"""

import math
import struct
import sys

import torch
from transformers import GPT2LMHeadModel


def main(checkpoint: str, text_file: str) -> None:
    model = GPT2LMHeadModel.from_pretrained(checkpoint)
    model.eval()
    data = open(text_file, "rb").read()
    if text_file.endswith(".bin"):
        count = struct.unpack_from("<3i", data)[2]
        tokens = list(struct.unpack_from(f"<{count}H", data, 256 * 4))
    else:
        tokens = list(data)
    t = model.config.n_positions
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, t):
            window = tokens[start : start + t + 1]
            if len(window) < 2:
                break
            ids = torch.tensor([window[:-1]])
            targets = torch.tensor(window[1:])
            logits = model(ids).logits[0]
            loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
            total += loss.item()
            count += len(window) - 1
    loss = total / count
    print(f"loss {loss:.6f} perplexity {math.exp(loss):.4f} tokens {count}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
