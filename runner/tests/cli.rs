//! The binary end to end: log lines, checkpoints through `eval`, and one
//! clear error line with a non-zero exit for each kind of bad input.

mod common;
use common::{assert_clear_error, assert_success, runner, scratch};

use std::fs;
use std::path::Path;

fn text_file(dir: &Path, name: &str, contents: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn train_logs_the_instrumented_lines() {
    let out = runner(&[
        "train",
        "--preset",
        "tiny",
        "--steps",
        "6",
        "--log-every",
        "2",
        "--eval-every",
        "3",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for needle in [
        "Kernel backend set to: ",
        "Parameters: ",
        "optimizer state",
        "activations",
        "Training step completed - Loss: ",
        "| Forward pass: ",
        "| Backward pass: ",
        "| Optimizer: ",
        "| Loss computation: ",
        "| Total: ",
        "| LR: ",
        "| Seq length: 32 | Batch: 8",
        "Throughput: ",
        "Loss computation breakdown - Forward: ",
        "Validation loss: ",
    ] {
        assert!(stderr.contains(needle), "missing `{needle}` in:\n{stderr}");
    }
    // Steps 1, 2, 4, 6 are logged.
    assert_eq!(
        stderr.matches("Training step completed").count(),
        4,
        "{stderr}"
    );
    let quiet = runner(&["train", "--preset", "tiny", "--steps", "3", "-q"]);
    assert!(quiet.status.success());
    assert!(
        quiet.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
}

#[test]
fn checkpoint_round_trip_through_eval() {
    let dir = scratch("roundtrip");
    let ckpt = dir.join("ckpt");
    let ckpt = ckpt.to_str().unwrap();
    let data = text_file(
        &dir,
        "data.txt",
        "To be, or not to be, that is the question.\n"
            .repeat(20)
            .as_bytes(),
    );
    let out = runner(&[
        "train", "--preset", "tiny", "--steps", "20", "--data", &data, "--save", ckpt, "-q",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in ["config.json", "model.safetensors", "training.safetensors"] {
        assert!(Path::new(ckpt).join(file).is_file(), "{file} missing");
    }
    let eval = |backend: &str| {
        let out = runner(&[
            "eval",
            "--checkpoint",
            ckpt,
            "--data",
            &data,
            "--backend",
            backend,
            "-q",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let loss: f64 = stdout.split_whitespace().nth(1).unwrap().parse().unwrap();
        loss
    };
    let (a, b) = (eval("auto"), eval("scalar"));
    // Untrained, the loss is about ln 256 ≈ 5.55 (uniform over the bytes);
    // 20 steps on this repetitive text bring it to about 4.8.
    assert!(a > 0.0 && a < 256f64.ln() - 0.5, "{a}");
    assert!((a - b).abs() < 1e-3, "backends disagree: {a} vs {b}");
    // No temporary directories are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_data_files_are_one_clear_error() {
    let dir = scratch("baddata");
    let missing = dir.join("missing.txt");
    let out = runner(&[
        "train",
        "--preset",
        "tiny",
        "--data",
        missing.to_str().unwrap(),
    ]);
    assert_clear_error(&out, "missing.txt");
    // A line break in a name does not break the error line.
    let odd = dir.join("mis\nsing.txt");
    let out = runner(&["train", "--preset", "tiny", "--data", odd.to_str().unwrap()]);
    assert_clear_error(&out, "mis\\nsing.txt: No such file");
    // Nor does it break a log line that names it.
    let odd = text_file(&dir, "new\nline.txt", &b"to be or not to be\n".repeat(200));
    let out = runner(&["train", "--preset", "tiny", "--steps", "1", "--data", &odd]);
    assert_success(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("new\\nline.txt"), "{log}");
    assert!(log.lines().all(|l| !l.starts_with("line.txt")), "{log}");
    let empty = text_file(&dir, "empty.txt", b"");
    assert_clear_error(
        &runner(&["train", "--preset", "tiny", "--data", &empty]),
        "empty",
    );
    // A file that says its size is 0 but is not empty (Linux's /proc) is
    // read as a pipe is.
    let untold = "/proc/self/status";
    if std::path::Path::new(untold).is_file() {
        let args = ["train", "--preset", "tiny", "--steps", "1", "-q"];
        assert_success(&runner(&[&args[..], &["--data", untold]].concat()));
    }
    let short = text_file(&dir, "short.txt", b"0123456789abcdef");
    assert_clear_error(
        &runner(&["train", "--preset", "tiny", "--data", &short]),
        "too short",
    );
    // A shard not named .bin would be read as text: refused.
    let mut shard = 20240520i32.to_le_bytes().to_vec();
    shard.resize(4096, 1);
    let shard = text_file(&dir, "shard.txt", &shard);
    assert_clear_error(
        &runner(&["train", "--preset", "tiny", "--data", &shard]),
        "this is a token shard",
    );
    // A pipe that never ends is read only as far as memory allows (here
    // 1 GiB of address space), then refused.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1048576 && yes | \"$0\" train -q --preset tiny --steps 1 --data /dev/stdin")
        .arg(env!("CARGO_BIN_EXE_runner"))
        .output()
        .unwrap();
    assert_clear_error(
        &out,
        "more than fits in memory read whole and tokenized (this process may still map (ulimit -v) ",
    );
}

/// Training a long block holds, on each thread, a head's `t × t`
/// probabilities and their gradient: 2 GiB at T 16384, past 1 GiB of
/// address space though the activations (about 150 MiB) fit. Refused
/// before the run, not ended by the allocator midway through its step.
#[test]
fn attentions_buffers_count_in_the_memory_check() {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1048576 && exec \"$0\" train -q --preset tiny --block-size 16384 --batch 1 --steps 1 --threads 1")
        .arg(env!("CARGO_BIN_EXE_runner"))
        .output()
        .unwrap();
    assert_clear_error(
        &out,
        "on 1 thread(s)); this process may still map (ulimit -v) ",
    );
}

#[test]
fn bad_configurations_are_one_clear_error() {
    let cases: [(&[&str], &str); 9] = [
        (&["--channels", "30", "--heads", "4"], "heads do not divide"),
        (&["--seq-len", "0"], "--seq-len must be at least 1"),
        (
            &["--seq-len", "33"],
            "longer than the model's block size 32",
        ),
        (&["--layers", "0"], "layers must be at least 1"),
        (&["--block-size", "0"], "block size must be at least 1"),
        (&["--batch", "0"], "at least 1"),
        (
            &["--channels", "1000000", "--layers", "1000", "--heads", "1"],
            "too large",
        ),
        // 4 × 2^62 channels wraps: the sizes saturate instead.
        (
            &["--channels", "4611686018427387904", "--heads", "1"],
            "too large",
        ),
        (&["--lr=-1"], "--lr"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["train", "--preset", "tiny"];
        args.extend_from_slice(extra);
        assert_clear_error(&runner(&args), needle);
    }
    let huge_batch = runner(&["train", "--preset", "shakes", "--batch", "100000"]);
    assert_clear_error(&huge_batch, "memory");
    // A size past u64 has no figure.
    let max = u64::MAX.to_string();
    let past_u64 = runner(&[
        "bench",
        "--preset",
        "tiny",
        "--seq-lens",
        "8",
        "--batch",
        &max,
    ]);
    assert_clear_error(&past_u64, "needs more than 16 EiB of memory");
    // A bad thread count anywhere in bench's list is refused before the
    // rows before it run (one line: nothing was logged first).
    let bench = runner(&[
        "bench",
        "--preset",
        "tiny",
        "--seq-lens",
        "8",
        "--steps",
        "1",
        "--backends",
        "scalar",
        "--threads",
        "1,0",
    ]);
    assert_clear_error(&bench, "--threads must be at least 1");
}

/// Windows shorter than the block size train, log their length, and
/// resume at it.
#[test]
fn train_at_a_sequence_length_below_the_block_size() {
    let dir = scratch("seq-len");
    let ckpt = dir.join("ckpt");
    let ckpt = ckpt.to_str().unwrap();
    let args = [
        "train",
        "--preset",
        "tiny",
        "--seq-len",
        "16",
        "--steps",
        "4",
        "--batch",
        "2",
    ];
    let out = runner(&[&args[..], &["--stop-at", "2", "--save", ckpt]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("| Seq length: 16 | Batch: 2"), "{stderr}");
    let resumed = runner(&[
        "train",
        "--resume",
        ckpt,
        "--seq-len",
        "16",
        "--steps",
        "4",
        "--batch",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(
        stderr.contains("| Seq length: 16 | Batch: 2 | Step: 3/4"),
        "{stderr}"
    );
}

#[test]
fn bad_checkpoints_are_one_clear_error() {
    let dir = scratch("badckpt");
    let missing = dir.join("nothing");
    assert_clear_error(
        &runner(&["eval", "--checkpoint", missing.to_str().unwrap()]),
        "no such directory",
    );

    let ckpt = dir.join("ckpt");
    let ckpt_s = ckpt.to_str().unwrap();
    let out = runner(&[
        "train", "--preset", "tiny", "--steps", "2", "--save", ckpt_s, "-q",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Another configuration than the checkpoint's.
    let out = runner(&[
        "train", "--preset", "small", "--steps", "4", "--resume", ckpt_s,
    ]);
    assert_clear_error(&out, "holds a L2 H2 C32 T32 V256 model");

    // A corrupt tensor file.
    let model = ckpt.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    assert_clear_error(
        &runner(&["eval", "--checkpoint", ckpt_s]),
        "model.safetensors",
    );
    std::fs::write(&model, b"not a safetensors file").unwrap();
    assert_clear_error(
        &runner(&["eval", "--checkpoint", ckpt_s]),
        "model.safetensors",
    );

    // A config that does not describe the tensors.
    std::fs::write(&model, &bytes).unwrap();
    let config = ckpt.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"n_embd\": 32", "\"n_embd\": 64")).unwrap();
    assert_clear_error(
        &runner(&["eval", "--checkpoint", ckpt_s]),
        "tensor wte.weight is F32 [256, 32], expected F32, BF16 or F16 [256, 64]",
    );
    std::fs::write(&config, "{").unwrap();
    assert_clear_error(&runner(&["eval", "--checkpoint", ckpt_s]), "config.json");
}

#[test]
fn help_describes_every_subcommand() {
    let out = runner(&["--help"]);
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("train") && help.contains("eval"), "{help}");
    let out = runner(&["eval", "--help"]);
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("stride block-size"), "{help}");
    let out = runner(&["train", "--help"]);
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--preset",
        "--layers",
        "--heads",
        "--channels",
        "--block-size",
        "--data",
        "--steps",
        "--batch",
        "--grad-accum",
        "--lr",
        "--warmup",
        "--seed",
        "--eval-every",
        "--save",
        "--resume",
        "--log-every",
        "--quiet",
        "--backend",
    ] {
        assert!(help.contains(flag), "train --help lacks {flag}");
    }
}

#[test]
fn generate_streams_text_and_logs_the_generation_line() {
    let dir = scratch("generate");
    let ckpt = dir.join("ckpt");
    let ckpt = ckpt.to_str().unwrap();
    let out = runner(&[
        "train", "--preset", "tiny", "--steps", "3", "--save", ckpt, "-q",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generate = |extra: &[&str]| {
        let args = ["generate", "--checkpoint", ckpt, "--prompt", "12+"];
        runner(&[&args[..], extra].concat())
    };
    let out = generate(&["--max-new-tokens", "20", "--seed", "3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout.starts_with(b"12+"));
    assert_eq!(out.stdout.len(), 3 + 20 + 1, "prompt, 20 bytes, newline");
    for needle in [
        "Generation complete - Generated 20 tokens | Total time: ",
        "| Prompt: ",
        "| Forward passes: ",
        "| Sampling: ",
        "| Tokens/sec: ",
        "| KV cache: ",
        "| Peak resident memory: ",
        "| Context slides: 0",
    ] {
        assert!(stderr.contains(needle), "missing `{needle}` in {stderr}");
    }
    // Past the block size of 32 the context slides, keeping 16 tokens:
    // after 3 prompt tokens, the cache is full at the 30th and the 47th
    // new token.
    let long = generate(&["--max-new-tokens", "60"]);
    assert_success(&long);
    let stderr = String::from_utf8_lossy(&long.stderr);
    assert!(stderr.contains("| Context slides: 2"), "{stderr}");
    let again = generate(&["--max-new-tokens", "20", "--seed", "3", "-q"]);
    assert_eq!(again.stdout, out.stdout, "same seed, same text");
    assert!(again.stderr.is_empty());
    // Past the block size (32) the window slides; JSON tells the context.
    let json = dir.join("generate.jsonl");
    let json_s = json.to_str().unwrap();
    let out = generate(&["--max-new-tokens", "40", "--json", json_s, "-q"]);
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 3 + 40 + 1);
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&json).unwrap().trim()).unwrap();
    assert_eq!(line["kind"], "generate");
    assert_eq!(line["tokens"], 40);
    let context = line["seq_len"].as_u64().unwrap();
    assert!((1..=32).contains(&context), "context {context}");
    assert!(line["tokens_per_sec"].as_f64().unwrap() > 0.0);
    assert_clear_error(
        &runner(&["generate", "--checkpoint", ckpt, "--prompt", ""]),
        "prompt is empty",
    );
    let long = "x".repeat(33);
    assert_clear_error(
        &runner(&["generate", "--checkpoint", ckpt, "--prompt", &long]),
        "longer than the model's block size",
    );
    assert_clear_error(
        &runner(&[
            "generate",
            "--checkpoint",
            ckpt,
            "--prompt",
            "a",
            "--top-p",
            "2",
        ]),
        "--top-p",
    );
    // A negative value is refused for its value, and a prompt may start
    // with a dash.
    let generate = ["generate", "--checkpoint", ckpt, "--prompt"];
    let out = runner(&[&generate[..], &["a", "--temperature", "-1"]].concat());
    assert_clear_error(
        &out,
        "--temperature must be a finite number, 0 or more, not -1",
    );
    // Values clap would not take for numbers, and one beyond f32.
    for (value, shown) in [("-inf", "not -inf"), ("-.5", "not -0.5")] {
        let out = runner(&[&generate[..], &["a", "--temperature", value]].concat());
        assert_clear_error(&out, shown);
    }
    let out = runner(&[&generate[..], &["a", "--temperature", "1e39"]].concat());
    assert_clear_error(&out, "1e39 is beyond the range of f32");
    let out = runner(&[&generate[..], &["a", "--top-p", "1e-46"]].concat());
    assert_clear_error(&out, "1e-46 is below the smallest f32");
    // A missing value is said to be missing; the next option is not
    // taken for it.
    let out = runner(&[
        "generate",
        "--checkpoint",
        ckpt,
        "--temperature",
        "--prompt",
        "a",
    ]);
    assert_clear_error(&out, "a value is required for '--temperature");
    let out = runner(&[&generate[..], &["a", "--max-new-tokens", "0"]].concat());
    assert_clear_error(&out, "--max-new-tokens must be at least 1");
    // --json /dev/stdout with stdout sent to a file: the text and the
    // JSON line both land there.
    let captured = dir.join("stdout.txt");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(generate)
        .args([
            "Abc",
            "--max-new-tokens",
            "3",
            "--json",
            "/dev/stdout",
            "-q",
        ])
        .stdout(std::fs::File::create(&captured).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read(&captured).unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(text.starts_with("Abc"), "{text}");
    assert!(text.contains("{\"kind\":\"generate\""), "{text}");
    let out = runner(&[&generate[..], &["-5+3=", "--max-new-tokens", "2", "-q"]].concat());
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("-5+3="));
}

/// Without `--seq-lens`, a preset whose block is shorter than the default
/// lengths is timed at lengths cut to its block, not refused.
#[test]
fn bench_cuts_its_default_lengths_to_the_block() {
    let dir = scratch("bench-defaults");
    let json = dir.join("bench.jsonl");
    let out = runner(&[
        "bench",
        "--preset",
        "tiny",
        "--steps",
        "1",
        "--batch",
        "1",
        "--threads",
        "1",
        "--backends",
        "scalar",
        "--no-decoding",
        "-q",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_success(&out);
    let lengths: Vec<u64> = std::fs::read_to_string(&json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "bench")
        .map(|v| v["seq_len"].as_u64().unwrap())
        .collect();
    assert_eq!(lengths, [16, 32]);
}

#[test]
fn bench_prints_consistent_tables_and_json_lines() {
    let dir = scratch("bench");
    let json = dir.join("bench.jsonl");
    let out = runner(&[
        "bench",
        "--preset",
        "tiny",
        "--seq-lens",
        "8,32,8", // a repeat is timed once
        "--steps",
        "2",
        "--batch",
        "4",
        "--threads",
        "1,1",
        "-q",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| 8 |") || l.starts_with("| 32 |"))
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|cells| cells.len() == 12) // the training table, not the breakdown
        .collect();
    let backends = kernels::Backend::ALL
        .into_iter()
        .filter(|b| b.is_supported())
        .count();
    assert_eq!(rows.len(), 2 * backends, "{stdout}");
    for row in &rows {
        let num = |i: usize| -> f64 { row[i].trim_end_matches('%').parse().unwrap() };
        let (t, b, total_ms, tokens_per_sec) = (num(0), num(1), num(7), num(8));
        assert!(
            total_ms > 0.0 && tokens_per_sec > 0.0 && num(10) > 0.0 && num(11) > 0.0,
            "{row:?}"
        );
        // tokens/s = B·T / step time (to the table's rounding).
        let want = b * t / (total_ms / 1e3);
        assert!(
            (tokens_per_sec - want).abs() <= 0.06 * want + 1.0,
            "{row:?}: {tokens_per_sec} vs {want}"
        );
    }
    assert!(stdout.contains("| cached tokens/s |"), "{stdout}");
    // Decoding rows (tiny: block size 32, so context 32 only): positive.
    let decode_rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|cells| cells.len() == 6 && cells[2] == "32")
        .collect();
    assert_eq!(decode_rows.len(), backends, "{stdout}");
    for row in &decode_rows {
        let cached: f64 = row[3].parse().unwrap();
        let uncached: f64 = row[4].parse().unwrap();
        assert!(cached > 0.0 && uncached > 0.0, "{row:?}");
    }

    // The speed-up over scalar does not depend on the order of --backends.
    let out = runner(&[
        "bench",
        "--preset",
        "tiny",
        "--seq-lens",
        "8",
        "--steps",
        "1",
        "--batch",
        "2",
        "--threads",
        "1",
        "--backends",
        "auto,scalar",
        "-q",
    ]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let cells = |l: &str| -> Vec<String> {
        l.split('|')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect()
    };
    let first = stdout
        .lines()
        .find(|l| l.starts_with("| 8 | 2 |"))
        .expect("a row");
    let speedup = first.split('|').map(str::trim).nth(10).unwrap();
    assert!(speedup.ends_with('x'), "no speed-up in {first}");
    // One breakdown row per training row, same backends in the same
    // order, and each row's shares add up to the whole step.
    let trained: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("| 8 | 2 |"))
        .map(|l| cells(l)[2].clone())
        .collect();
    let breakdown: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("| 1 |") && l.matches('%').count() == 7)
        .collect();
    assert!(!breakdown.is_empty(), "no breakdown rows in:\n{stdout}");
    let broken_down: Vec<String> = breakdown.iter().map(|l| cells(l)[1].clone()).collect();
    assert_eq!(broken_down, trained, "{stdout}");
    for line in breakdown {
        let total: f64 = line
            .split('|')
            .filter_map(|c| c.trim().strip_suffix('%'))
            .map(|c| c.parse::<f64>().unwrap())
            .sum();
        assert!((total - 100.0).abs() < 0.5, "{line}");
    }
    let lines = std::fs::read_to_string(&json).unwrap();
    let kinds: Vec<String> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("each line is JSON")["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "bench").count(), 2 * backends);
    assert!(kinds.iter().any(|k| k == "generate"));
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    for field in [
        "seq_len",
        "batch",
        "backend",
        "threads",
        "forward_ms",
        "backward_ms",
        "optimizer_ms",
        "total_ms",
        "tokens_per_sec",
        "gflops",
        "mfu",
        "peak_rss_bytes",
    ] {
        assert!(!first[field].is_null(), "missing {field} in {first}");
    }
}

#[test]
fn train_writes_json_lines() {
    let dir = scratch("trainjson");
    let json = dir.join("train.jsonl");
    let out = runner(&[
        "train",
        "--preset",
        "tiny",
        "--steps",
        "4",
        "--eval-every",
        "2",
        "-q",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values: Vec<serde_json::Value> = std::fs::read_to_string(&json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<_> = values
        .iter()
        .filter(|v| v["kind"] == "train_step")
        .collect();
    assert_eq!(steps.len(), 4);
    assert_eq!(steps[3]["step"], 4);
    assert!(steps[0]["loss"].as_f64().unwrap() > 0.0);
    let evals: Vec<_> = values.iter().filter(|v| v["kind"] == "eval").collect();
    assert_eq!(evals.len(), 2);
    assert!(evals[0]["val_loss"].as_f64().unwrap() > 0.0);
}

#[test]
fn train_plots_the_loss_curves() {
    let dir = scratch("plot");
    let svg = dir.join("loss.svg");
    let out = runner(&[
        "train",
        "--preset",
        "tiny",
        "--steps",
        "20",
        "--eval-every",
        "5",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Not a terminal: no progress bar in the log.
    assert!(!stderr.contains("ETA"), "{stderr}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg") && text.trim_end().ends_with("</svg>"),
        "not an SVG document"
    );
    // One line per curve, in their colours, with one point per step / validation.
    let curve = |colour: &str| {
        text.lines()
            .find(|l| l.starts_with("<polyline") && l.contains(colour))
            .map(|l| {
                l.split("points=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .split_whitespace()
                    .count()
            })
    };
    assert_eq!(curve("#0000FF"), Some(20), "training curve");
    assert_eq!(curve("#FF0000"), Some(4), "validation curve");
    // Outputs that cannot be written are refused before training (one
    // line: no step was logged).
    let missing = dir.join("missing");
    for option in ["--plot", "--json"] {
        let path = missing.join("out");
        let args = [
            "train",
            "--preset",
            "tiny",
            "--steps",
            "20",
            option,
            path.to_str().unwrap(),
        ];
        assert_clear_error(&runner(&args), "missing");
    }
    let folder = [
        "train",
        "--preset",
        "tiny",
        "--steps",
        "20",
        "--plot",
        dir.to_str().unwrap(),
    ];
    assert_clear_error(&runner(&folder), "names a folder, not a file");
    let png = dir.join("loss.png");
    let mut args = folder;
    args[6] = png.to_str().unwrap();
    assert_clear_error(
        &runner(&args),
        "--plot draws SVG: give a file name ending in .svg",
    );
    assert!(!png.exists());
    // A file named only `.svg` has no stem (and no extension to Rust).
    let bare = dir.join(".svg");
    args[6] = bare.to_str().unwrap();
    assert_clear_error(&runner(&args), "(such as loss.svg), not ");
    assert!(
        text.contains(">\nLoss\n</text>") || text.contains(">Loss<"),
        "caption"
    );
}

/// The default job (no command) must show a model that has learned its
/// task: nearly every sampled line well-formed, and most held-out sums,
/// which were never in its corpus, answered right.
#[test]
fn the_default_run_masters_its_task() {
    let out = runner(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let numbers_after = |prefix: &str| -> Vec<usize> {
        let line = stderr
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stderr}"));
        line.split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect()
    };
    let sample = numbers_after("Sample check: ");
    let (well_formed, lines, right) = (sample[0], sample[1], sample[2]);
    assert!(lines >= 10, "{stderr}");
    assert!(10 * well_formed >= 9 * lines, "{stderr}");
    assert!(2 * right > lines, "{stderr}");
    let held_out = numbers_after("Held-out check: ");
    assert_eq!(held_out[1], 100);
    assert!(held_out[0] >= 60, "{stderr}");
}

#[test]
fn a_bad_option_is_one_clear_error() {
    let out = runner(&["train", "--precision", "fp8"]);
    assert_clear_error(&out, "invalid value 'fp8' for '--precision");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("f32") && stderr.contains("bf16"),
        "{stderr}"
    );
    assert_clear_error(&runner(&["train", "--no-such-flag"]), "--no-such-flag");
    let help = runner(&["train", "--help"]);
    assert!(help.status.success() && !help.stdout.is_empty());
}

/// Settings that run but are unlikely to be meant get one warning each;
/// a `--threads` past the cores is said once, not once per bench row.
#[test]
fn settings_that_run_but_mislead_are_warned_of_once() {
    let train = |extra: &[&str]| {
        let args = ["train", "--preset", "tiny", "--steps", "2", "-q"];
        runner(&[&args[..], extra].concat())
    };
    let cases: [(&[&str], &str); 3] = [
        (&["--warmup", "8"], "[warn] --warmup 8 is longer than --steps 2: the learning rate never reaches --lr (it ends at 25 % of it)"),
        (&["--stop-at", "1"], "[warn] --stop-at 1 without --save"),
        (&["--no-overlap"], "[warn] --no-overlap is for MPI runs"),
    ];
    for (extra, warning) in cases {
        let out = train(extra);
        assert_success(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.matches(warning).count(), 1, "{stderr}");
    }
    let cores = runner::threads::available_cores();
    let many = (cores + 1).to_string();
    let bench = [
        "bench",
        "--preset",
        "tiny",
        "--seq-lens",
        "8,16",
        "--steps",
        "1",
        "--backends",
        "scalar",
        "--threads",
        &many,
        "--no-decoding",
        "-q",
    ];
    let out = runner(&bench);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("is more than the").count(), 1, "{stderr}");
}

#[test]
fn bf16_precision_names_its_unit_and_warns_when_emulated() {
    let run_with = |backend: &str, extra: &[&str]| {
        let args = [
            "train",
            "--preset",
            "tiny",
            "--steps",
            "2",
            "--precision",
            "bf16",
            "--threads",
            "1",
            "--backend",
            backend,
        ];
        runner(&[&args[..], extra].concat())
    };
    let run = |backend: &str| run_with(backend, &[]);
    // Scalar has no bf16 unit: the portable path, with one warning, which
    // -q keeps.
    let out = run("scalar");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("| Precision: bf16 emulated"), "{stderr}");
    let warning = "[warn] this CPU or backend has no bf16 unit";
    assert_eq!(stderr.matches(warning).count(), 1, "{stderr}");
    let quiet = run_with("scalar", &["-q"]);
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert_eq!(stderr.matches(warning).count(), 1, "{stderr}");
    // Forced, it says so.
    let forced = run_with("scalar", &["--bf16-unit", "portable"]);
    let stderr = String::from_utf8_lossy(&forced.stderr);
    assert!(
        stderr.contains("[warn] --bf16-unit portable: bf16 runs emulated"),
        "{stderr}"
    );
    if kernels::Bf16Unit::detected() == kernels::Bf16Unit::Avx512Bf16 {
        let out = run("avx512");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("| Precision: bf16 on AVX512-BF16"),
            "{stderr}"
        );
        assert!(!stderr.contains("[warn]"), "{stderr}");
    } else {
        println!("notice: this CPU lacks AVX512-BF16; its log line is not checked");
    }
    if kernels::Bf16Unit::detected() == kernels::Bf16Unit::Amx {
        let out = run("avx512");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("| Precision: bf16 on AMX"), "{stderr}");
    } else {
        println!("notice: this CPU (or OS) gives no AMX; its log line is not checked");
    }
}

#[test]
fn forcing_a_bf16_unit_the_cpu_lacks_is_one_clear_error() {
    let force = |unit: &str, backend: &str| {
        let args = [
            "train",
            "--preset",
            "tiny",
            "--steps",
            "1",
            "--precision",
            "bf16",
        ];
        runner(&[&args[..], &["--bf16-unit", unit, "--backend", backend]].concat())
    };
    // No backend but AVX-512 reaches a bf16 unit: the forced backend is
    // named as the cause.
    for unit in ["avx512-bf16", "amx"] {
        assert_clear_error(
            &force(unit, "scalar"),
            &format!("--bf16-unit {unit} runs on the AVX-512 backend, not on --backend scalar"),
        );
    }
    match kernels::Bf16Unit::amx_refused() {
        Some(_) => assert_clear_error(&force("amx", "auto"), "refused the tile data permission"),
        None if !kernels::Bf16Unit::Amx.is_supported() => {
            assert_clear_error(&force("amx", "auto"), "bf16 unit `amx` is not supported")
        }
        None => println!("notice: AMX is granted here; forcing it is not an error"),
    }
    assert_clear_error(
        &force("tiles", "auto"),
        "invalid value 'tiles' for '--bf16-unit",
    );
    let out = force("portable", "auto");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // In f32 a forced unit runs nothing: said once.
    let args = ["train", "--preset", "tiny", "--steps", "1", "-q"];
    let out = runner(&[&args[..], &["--bf16-unit", "portable"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warning = "[warn] --bf16-unit has no effect in f32";
    assert_eq!(stderr.matches(warning).count(), 1, "{stderr}");
}

#[test]
fn a_new_model_takes_the_tokenizer_its_shards_were_prepared_with() {
    let dir = scratch("shard-tokenizer");
    let input = text_file(
        &dir,
        "t.txt",
        "To be, or not to be.\n".repeat(100).as_bytes(),
    );
    let shards = dir.join("shards").to_string_lossy().into_owned();
    let prepare = ["prepare", "--input", &input, "--output", &shards, "-q"];
    assert_success(&runner(&[&prepare[..], &["--val-tokens", "200"]].concat()));
    let train = [
        "train", "--preset", "tiny", "--steps", "1", "--data", &shards,
    ];
    let out = runner(&train);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("V256 | Tokenizer: byte"), "{stderr}");
    // Asked for the other one, the run is refused from the headers.
    let out = runner(&[&train[..], &["--tokenizer", "gpt2"]].concat());
    assert_clear_error(
        &out,
        "use a model of the byte tokenizer, or shards prepared with --tokenizer gpt2",
    );
}

#[test]
fn prepare_writes_llm_c_shards_and_refuses_bad_input() {
    use runner::data::shards::{read_shard, shard_path};
    use runner::data::tokenizer::Tokenizer;
    let dir = scratch("prepare");
    let text =
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
            .repeat(40);
    let input = text_file(&dir, "play.txt", text.as_bytes());
    let out_dir = dir.join("shards");
    let out_arg = out_dir.to_string_lossy().into_owned();
    let prepare = |extra: &[&str]| {
        let args = [
            "prepare",
            "--tokenizer",
            "gpt2",
            "--input",
            &input,
            "--output",
            &out_arg,
        ];
        runner(&[&args[..], extra].concat())
    };
    let out = prepare(&["--val-tokens", "100", "--shard-tokens", "300"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Prepared ") && stderr.contains("tokens/s"),
        "{stderr}"
    );
    // The end-of-text token, then the text's tokens, across the shards.
    let mut tokens = Vec::new();
    for index in 0.. {
        let path = shard_path(&out_dir, "play", index);
        if !path.exists() {
            break;
        }
        tokens.extend(read_shard(&path).unwrap().into_iter().map(u32::from));
    }
    let mut want = vec![50256];
    want.extend(Tokenizer::Gpt2.encode(text.as_bytes()));
    assert_eq!(tokens, want);
    assert_eq!(
        read_shard(&shard_path(&out_dir, "play", 0)).unwrap().len(),
        100
    );
    // Shards that are there already are never replaced.
    assert_clear_error(
        &prepare(&["--val-tokens", "100"]),
        "already holds shards named play_*.bin",
    );
    let empty = text_file(&dir, "empty.txt", b"");
    let out = runner(&[
        "prepare", "--input", &empty, "--output", &out_arg, "--name", "x",
    ]);
    assert_clear_error(&out, "the file is empty");
    let missing = dir.join("missing.txt").to_string_lossy().into_owned();
    let out = runner(&[
        "prepare", "--input", &missing, "--output", &out_arg, "--name", "y",
    ]);
    assert_clear_error(&out, "missing.txt");
    // A shard is not text to tokenize again.
    let shard = shard_path(&out_dir, "play", 1)
        .to_string_lossy()
        .into_owned();
    let out = runner(&[
        "prepare", "--input", &shard, "--output", &out_arg, "--name", "z",
    ]);
    assert_clear_error(&out, "it is tokenized already");
    // A shard left under its temporary name (a run that stopped) means
    // the folder's data set is not whole.
    let unfinished = shard_path(&out_dir, "play", 9).with_extension("bin.tmp");
    fs::copy(shard_path(&out_dir, "play", 1), &unfinished).unwrap();
    let train = [
        "train", "--preset", "tiny", "--steps", "1", "--data", &out_arg,
    ];
    assert_clear_error(&runner(&train), "an unfinished shard");
    fs::remove_file(&unfinished).unwrap();
    let out = runner(&train);
    assert_success(&out);
    let several = "holds the shards of";
    assert!(!String::from_utf8_lossy(&out.stderr).contains(several));
    // Another data set prepared into the same folder: both are read, and
    // the run says so.
    assert_success(&prepare(&["--name", "other", "--val-tokens", "100"]));
    let out = runner(&train);
    assert_success(&out);
    let both = "holds the shards of 2 data sets (other, play): all of them are read, as one";
    assert!(String::from_utf8_lossy(&out.stderr).contains(both));
    for index in 0..2 {
        fs::remove_file(shard_path(&out_dir, "other", index)).unwrap();
    }
    // More shards than the soft limit on open files (every training shard
    // stays open): the run raises it toward the hard limit.
    let many = dir.join("many").to_string_lossy().into_owned();
    let out = runner(&[
        "prepare",
        "--input",
        &input,
        "--output",
        &many,
        "--val-tokens",
        "100",
        "--shard-tokens",
        "40",
        "-q",
    ]);
    assert_success(&out);
    assert!(fs::read_dir(&many).unwrap().count() > 64);
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -S -n 32 && exec \"$0\" train -q --preset tiny --steps 1 --data \"$1\"")
        .arg(env!("CARGO_BIN_EXE_runner"))
        .arg(&many)
        .output()
        .unwrap();
    assert_success(&out);
}

/// A bench whose `--json` cannot be written (a full disk) still prints
/// its tables, then fails; a `--stop-at` at the last step earns no
/// warning that the run stops early.
#[test]
fn a_failed_json_loses_no_bench_tables_and_stop_at_the_end_is_no_early_stop() {
    if !std::path::Path::new("/dev/full").exists() {
        println!("notice: /dev/full is absent; the full-disk check is skipped");
    } else {
        let out = runner(&[
            "bench",
            "--preset",
            "tiny",
            "--seq-lens",
            "8",
            "--batch",
            "1",
            "--steps",
            "1",
            "--backends",
            "scalar",
            "--threads",
            "1",
            "--no-decoding",
            "--json",
            "/dev/full",
            "-q",
        ]);
        assert_clear_error(&out, "/dev/full: No space left on device");
        assert!(String::from_utf8_lossy(&out.stdout).contains("| seq len |"));
    }
    let out = runner(&[
        "train",
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--stop-at",
        "2",
    ]);
    assert_success(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("[warn]"));
}
