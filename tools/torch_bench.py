"""PyTorch reference for `runner bench`: a GPT-2 of the same shape
(Hugging Face GPT2LMHeadModel, eager, float32, no dropout), timed for full
training steps (forward, backward, AdamW) in float32 and under
`torch.autocast("cpu", dtype=torch.bfloat16)` (the policy of our
`--precision bf16`), and for cached decoding, on 1 and 2 threads.

    pip install torch transformers
    python3 tools/torch_bench.py [layers heads channels block batch [vocab [decode]]]

vocab defaults to 256 (the byte tokenizer; 50257 for GPT-2's); decode 0
skips the decoding run; THREADS=2 (environment) runs one thread count,
PRECISIONS=f32 one precision (bf16 autocast on a CPU without a bf16 unit
took 40 s a step on Zen 3), STEPS=2 times fewer steps (default 5, after 2
warm-up steps).
"""

import os
import statistics
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def main() -> None:
    args = [int(x) for x in sys.argv[1:]] or [6, 6, 384, 256, 8]
    layers, heads, channels, block, batch = args[:5]
    vocab = args[5] if len(args) > 5 else 256
    decode = len(args) <= 6 or args[6] != 0
    config = GPT2Config(
        vocab_size=vocab, n_positions=block, n_embd=channels, n_layer=layers, n_head=heads,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new",
    )
    torch.manual_seed(0)
    for threads in [int(t) for t in os.environ.get("THREADS", "1,2").split(",")]:
        torch.set_num_threads(threads)
        model = GPT2LMHeadModel(config)
        model.train()
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
        x = torch.randint(0, vocab, (batch, block))
        for precision in os.environ.get("PRECISIONS", "f32,bf16").split(","):
            times = []
            for step in range(2 + int(os.environ.get("STEPS", "5"))):
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = model(x, labels=x).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if step >= 2:
                    times.append(time.perf_counter() - start)
            step_s = statistics.median(times)
            mode = "float32" if precision == "f32" else "bf16 autocast"
            print(f"torch {torch.__version__} train ({mode}): {threads} thread(s), {params / 1e6:.2f} M params, "
                  f"V{vocab} B{batch} T{block}: {step_s * 1e3:.1f} ms/step, {batch * block / step_s:.0f} tokens/s")

        if not decode:
            continue
        model.eval()
        with torch.no_grad():
            prompt = torch.randint(0, vocab, (1, 16))
            start = time.perf_counter()
            out = model(prompt, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1:].argmax(-1)
            new = block - 16
            for _ in range(new):
                out = model(token, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = out.logits[:, -1:].argmax(-1)
            elapsed = time.perf_counter() - start
        print(f"torch decode: {threads} thread(s): {new / elapsed:.0f} tokens/s (16-token prompt, {new} new)")


if __name__ == "__main__":
    main()
