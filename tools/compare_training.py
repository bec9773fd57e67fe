"""Training speed beside PyTorch, in alternated rounds: for each precision
and thread count, each round runs this runner's bench (`shakes`, B 8, T
256, 5 timed steps) and `tools/torch_bench.py` on the same model, one
right after the other, the order swapped every round; it prints each
pair's tokens/s and ratio, then the median ratio per precision and
thread count. On a shared machine whose speed drifts from one minute to
the next, the ratios of adjacent runs compare like with like where one
run of each does not.

    cargo build --release -p runner
    pip install torch transformers
    python3 tools/compare_training.py [ROUNDS]

ROUNDS defaults to 5; PRECISIONS (environment, default f32,bf16) and
THREADS (default 1,2) choose the rows, as for `runner bench`.
"""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "target", "release", "runner")
TORCH_LINE = re.compile(r"train \((float32|bf16 autocast)\): (\d+) thread\(s\).* ([\d.]+) tokens/s")


def ours(precisions, threads):
    """{(precision, threads): tokens/s} from one `runner bench`."""
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
        subprocess.run(
            [RUNNER, "bench", "--preset", "shakes", "--seq-lens", "256", "--batch", "8",
             "--backends", "auto", "--threads", threads, "--precisions", precisions,
             "--steps", "5", "--no-decoding", "-q", "--json", out.name],
            check=True, stdout=subprocess.DEVNULL,
        )
        records = [json.loads(line) for line in open(out.name) if line.strip()]
    return {(r["precision"], r["threads"]): r["tokens_per_sec"]
            for r in records if r["kind"] == "bench" and "tokens_per_sec" in r}


def theirs(precisions, threads):
    """{(precision, threads): tokens/s} from one `tools/torch_bench.py`."""
    env = dict(os.environ, PRECISIONS=precisions, THREADS=threads)
    script = os.path.join(ROOT, "tools", "torch_bench.py")
    text = subprocess.run(
        [sys.executable, script, "6", "6", "384", "256", "8", "256", "0"],
        check=True, capture_output=True, text=True, env=env,
    ).stdout
    found = {}
    for mode, count, rate in TORCH_LINE.findall(text):
        found[("f32" if mode == "float32" else "bf16", int(count))] = float(rate)
    return found


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    precisions = os.environ.get("PRECISIONS", "f32,bf16")
    threads = os.environ.get("THREADS", "1,2")
    if not os.path.exists(RUNNER):
        sys.exit(f"error: {RUNNER} is missing: run `cargo build --release -p runner` first")
    ratios = {}
    print("| round | precision | threads | ours tokens/s | PyTorch tokens/s | ours / PyTorch |")
    print("|---|---|---|---|---|---|")
    for i in range(rounds):
        for precision in precisions.split(","):
            for count in threads.split(","):
                if i % 2 == 0:
                    mine, other = ours(precision, count), theirs(precision, count)
                else:
                    other, mine = theirs(precision, count), ours(precision, count)
                key = (precision, int(count))
                if key not in mine or key not in other:
                    sys.exit(f"error: no {precision} run on {count} thread(s) from one of the two")
                ratio = mine[key] / other[key]
                ratios.setdefault(key, []).append(ratio)
                print(f"| {i + 1} | {precision} | {count} | {mine[key]:.0f} | {other[key]:.0f} | {ratio:.2f}x |",
                      flush=True)
    print()
    for (precision, count), values in sorted(ratios.items()):
        print(f"{precision}, {count} thread(s): median ours / PyTorch {statistics.median(values):.2f}x "
              f"(range {min(values):.2f}-{max(values):.2f}, {len(values)} rounds)")


if __name__ == "__main__":
    main()
