//! `runner eval`'s loss, as its help defines it: the mean next-token
//! cross-entropy over consecutive non-overlapping windows of block-size + 1
//! tokens taken with stride block-size from the first token, a final
//! partial window included if it has at least 2 tokens. Checked against an
//! independent computation (one window per forward pass, log-softmax in
//! f64, each window weighted by the tokens it predicts), for every batch
//! size, with `max_windows`, and through the binary.
//!
//! Tolerances: the reference's per-token losses are f64 log-softmaxes of
//! the model's f32 logits; `evaluate` sums the same losses from its f32
//! cross-entropy and runs several windows per forward pass, whose matrix
//! products may round differently from one window's. Both differ by f32
//! rounding (~1e-7 relative per value), so losses are held to 1e-5
//! relative; batch sizes against each other to 1e-6 relative.

mod common;
use common::{printed_loss, runner, scratch};

use kernels::Kernels;
use runner::data::Tokenizer;
use runner::eval::evaluate;
use runner::model::{Gpt, ModelConfig, Preset};
use runner::rng::Rng;

/// The tiny preset's block size.
const T: usize = 32;

/// The tiny model (block size [`T`], byte vocabulary) with weights
/// perturbed so that its predictions are far from uniform.
fn model() -> Gpt {
    let cfg = ModelConfig {
        block_size: T,
        ..Preset::Tiny.config(Tokenizer::Byte)
    };
    let mut model = Gpt::new(cfg, Kernels::best(), 5).unwrap();
    let mut rng = Rng::new(9);
    for p in model.params_mut().iter_mut() {
        *p += rng.normal(0.0, 0.05);
    }
    model
}

/// `n` byte tokens drawn at random.
fn tokens(n: usize) -> Vec<u32> {
    let mut rng = Rng::new(n as u64 + 1);
    (0..n).map(|_| rng.below(256) as u32).collect()
}

/// The documented loss computed window by window: windows start at 0, T,
/// 2T, ... while at least 2 tokens remain, each holds up to T + 1 tokens
/// and predicts its tokens 1.. from the ones before; the loss is the sum
/// over every predicted token of -log softmax (in f64) divided by their
/// count. At most `max_windows` windows. Returns (loss, tokens predicted).
fn reference(model: &mut Gpt, tokens: &[u32], max_windows: Option<usize>) -> (f64, usize) {
    let (mut total, mut count) = (0.0f64, 0usize);
    let mut start = 0;
    let mut windows = 0;
    while start + 2 <= tokens.len() && max_windows.is_none_or(|m| windows < m) {
        let window = &tokens[start..(start + T + 1).min(tokens.len())];
        let len = window.len() - 1;
        model.forward(&window[..len], 1, len).unwrap();
        for (i, &target) in window[1..].iter().enumerate() {
            let logits = model.logits(i).unwrap();
            let max = logits.iter().fold(f64::MIN, |m, &x| m.max(f64::from(x)));
            let log_sum = max
                + logits
                    .iter()
                    .map(|&x| (f64::from(x) - max).exp())
                    .sum::<f64>()
                    .ln();
            total += log_sum - f64::from(logits[target as usize]);
            count += 1;
        }
        start += T;
        windows += 1;
    }
    (total / count as f64, count)
}

#[track_caller]
fn assert_close(got: f64, want: f64, rel: f64, what: &str) {
    assert!(
        (got - want).abs() <= rel * want.abs(),
        "{what}: {got} vs {want} (relative {:.2e})",
        (got - want).abs() / want.abs()
    );
}

#[test]
fn the_loss_is_the_mean_over_strided_windows_with_the_partial_one() {
    let mut model = model();
    // 2 tokens: one partial window of 1 prediction; T + 1: one full window
    // and nothing left; T + 2: a full window and a partial one of 2 tokens;
    // 10T + 13: ten full windows and a partial one of 12 predictions, so
    // batches of 3 and 8 leave short groups.
    for n in [2, T + 1, T + 2, 10 * T + 13] {
        let tokens = tokens(n);
        let (want, predicted) = reference(&mut model, &tokens, None);
        // Every token but the first is predicted exactly once.
        assert_eq!(predicted, n - 1);
        let mut losses = Vec::new();
        for batch in [1, 3, 8] {
            let eval = evaluate(&mut model, &tokens, T, batch, None).unwrap();
            let what = format!("{n} tokens, batch {batch}");
            assert_eq!(eval.tokens, n - 1, "{what}");
            assert_close(eval.loss, want, 1e-5, &what);
            assert_close(eval.perplexity(), want.exp(), 1e-5, &what);
            losses.push(eval.loss);
        }
        for (batch, loss) in [3, 8].into_iter().zip(&losses[1..]) {
            assert_close(
                *loss,
                losses[0],
                1e-6,
                &format!("{n} tokens, batch {batch} vs 1"),
            );
        }
    }
    // Fewer than 2 tokens predict nothing.
    for n in [0, 1] {
        assert!(evaluate(&mut model, &tokens(n), T, 8, None).is_err());
    }
}

#[test]
fn max_windows_keeps_only_the_first_windows() {
    let mut model = model();
    let tokens = tokens(10 * T + 13); // 11 windows, the last partial
    let (all, _) = reference(&mut model, &tokens, None);
    for (max, predicted) in [
        (1, T),
        (2, 2 * T),
        (7, 7 * T),
        (11, 10 * T + 12),
        (50, 10 * T + 12),
    ] {
        let (want, count) = reference(&mut model, &tokens, Some(max));
        assert_eq!(count, predicted, "reference with {max} windows");
        for batch in [1, 3, 8] {
            let what = format!("{max} windows, batch {batch}");
            let eval = evaluate(&mut model, &tokens, T, batch, Some(max)).unwrap();
            assert_eq!(eval.tokens, predicted, "{what}");
            assert_close(eval.loss, want, 1e-5, &what);
        }
    }
    // The first two windows alone are not the whole text's loss.
    let (first_two, _) = reference(&mut model, &tokens, Some(2));
    assert!((first_two - all).abs() > 1e-3, "{first_two} vs {all}");
}

/// `runner eval` on a saved checkpoint and a text prints the same loss
/// and token count, for any `--batch`.
#[test]
fn the_binary_prints_the_documented_loss() {
    let dir = scratch("eval-rule");
    let mut model = model();
    let ckpt = dir.join("ckpt");
    runner::checkpoint::save(&ckpt, &model, None).unwrap();
    // Bytes are the byte tokenizer's tokens: 10 full windows and a partial
    // one of 12 predictions.
    let text: Vec<u8> = b"It was the best of times, it was the worst of times. "
        .iter()
        .copied()
        .cycle()
        .take(10 * T + 13)
        .collect();
    let path = dir.join("text.txt");
    std::fs::write(&path, &text).unwrap();
    let tokens = Tokenizer::Byte.encode(&text);
    assert_eq!(tokens.len(), text.len());
    let (want, predicted) = reference(&mut model, &tokens, None);
    for batch in ["1", "3", "8"] {
        let out = runner(&[
            "eval",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--data",
            path.to_str().unwrap(),
            "--batch",
            batch,
            "-q",
        ]);
        let loss = printed_loss(&out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let what = format!("batch {batch}: {stdout}");
        // Printed to 6 decimals.
        assert!(
            (loss - want).abs() <= 1e-5 * want + 5e-7,
            "{what} vs {want}"
        );
        assert!(
            stdout.trim_end().ends_with(&format!(" tokens {predicted}")),
            "{what}"
        );
    }
}

/// A result that cannot be written (stdout on a full device) is an error,
/// not a silent success; a reader that left (a closed pipe) is not.
#[cfg(target_os = "linux")]
#[test]
fn a_loss_that_cannot_be_printed_is_an_error() {
    use std::process::{Command, Stdio};
    let dir = scratch("eval-full");
    let ckpt = dir.join("ckpt");
    runner::checkpoint::save(&ckpt, &model(), None).unwrap();
    let path = dir.join("text.txt");
    std::fs::write(
        &path,
        b"It was the best of times, it was the worst of times.",
    )
    .unwrap();
    let args = [
        "eval",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--data",
        path.to_str().unwrap(),
    ];
    let full = std::fs::File::create("/dev/full").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or("")
            .starts_with("error: stdout"),
        "{stderr}"
    );
    // Closed at once: the loss goes nowhere, and that is no failure.
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut child| {
            drop(child.stdout.take());
            child.wait()
        })
        .unwrap();
    assert!(out.success());
}
