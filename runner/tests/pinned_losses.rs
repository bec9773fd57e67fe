//! Losses pinned bit for bit: a short run of the binary, on a text made
//! here, must give exactly the losses it gave when they were recorded, so
//! a refactor of the model, the optimizer or the training loop that
//! changes any arithmetic (an order of summation, a fused step) is caught.
//! The scalar backend is plain IEEE arithmetic in a fixed order, so its
//! losses are the same on every x86 CPU.

mod common;

use common::{assert_success, runner, scratch};

/// A deterministic text of letters, spaces and newlines (no corpus file).
fn text() -> Vec<u8> {
    let mut x: u32 = 12345;
    (0..4000)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            b"etaoin shrdlu\n"[(x >> 24) as usize % 14]
        })
        .collect()
}

/// The `loss` of every `train_step` record and the `val_loss` of every
/// `eval` record of a run with these arguments, in order.
fn losses(name: &str, extra: &[&str]) -> Vec<f64> {
    let dir = scratch(name);
    let data = dir.join("text.txt");
    std::fs::write(&data, text()).unwrap();
    let json = dir.join("train.jsonl");
    let mut args = vec![
        "train",
        "--preset",
        "tiny",
        "--steps",
        "6",
        "--batch",
        "3",
        "--grad-accum",
        "2",
        "--warmup",
        "2",
        "--lr",
        "3e-3",
        "--seed",
        "5",
        "--eval-every",
        "3",
        "-q",
        "--data",
        data.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = runner(&args);
    assert_success(&out);
    std::fs::read_to_string(&json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| match v["kind"].as_str() {
            Some("train_step") => v["loss"].as_f64().unwrap(),
            _ => v["val_loss"].as_f64().unwrap(),
        })
        .collect()
}

/// Runs on `backend` with 1 and 2 threads and checks both against
/// `pinned` (the `f64::to_bits` of each loss as recorded).
fn check(backend: &str, pinned: &[u64]) {
    let one = losses(
        &format!("pinned-{backend}-1"),
        &["--backend", backend, "--threads", "1"],
    );
    let bits: Vec<u64> = one.iter().map(|x| x.to_bits()).collect();
    let two = losses(
        &format!("pinned-{backend}-2"),
        &["--backend", backend, "--threads", "2"],
    );
    assert_eq!(one, two, "the thread count changes nothing");
    assert_eq!(
        bits, pinned,
        "{backend} losses differ from the recorded ones: {one:?}"
    );
}

#[test]
fn a_short_scalar_run_gives_the_recorded_losses() {
    check(
        "scalar",
        &[
            4617935282816155648,
            4617818031819587584,
            4617610530675228672,
            4617447293060159996,
            4617458457694437376,
            4617345480190328832,
            4617313160561426432,
            4617292969116879880,
        ],
    );
}

/// AVX2 + FMA runs the same instructions on every CPU that has them.
#[test]
fn a_short_avx2_run_gives_the_recorded_losses() {
    if !kernels::Backend::Avx2.is_supported() {
        println!("skipped: this CPU lacks AVX2 + FMA");
        return;
    }
    check(
        "avx2",
        &[
            4617935282816155648,
            4617818032356458496,
            4617610530675228672,
            4617447293060159996,
            4617458457694437376,
            4617345480190328832,
            4617313160561426432,
            4617292969116879880,
        ],
    );
}
