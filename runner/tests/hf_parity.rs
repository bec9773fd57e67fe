//! Parity with Hugging Face, both ways: `tools/hf_parity.py` builds a small
//! random `GPT2LMHeadModel` of GPT-2's vocabulary, saves it with
//! `save_pretrained` and prints its loss on fixed tokens; `runner eval` on
//! the same directory and tokens must give it to 1e-4 relative. Then the
//! runner fine-tunes it a step and saves its own checkpoint, which
//! transformers loads unchanged (`tools/hf_check.py`) and scores as
//! `runner eval` does. Skipped, with a notice, where Python lacks torch or
//! transformers (`RUNNER_TEST_PYTHON` names another interpreter than
//! `python3`).

mod common;
use common::{runner, scratch};

use std::path::Path;
use std::process::Command;

fn python() -> String {
    std::env::var("RUNNER_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn loss_in(stdout: &[u8]) -> f64 {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("loss "))
        .expect("a loss line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn runner_eval_gives_hugging_faces_loss() {
    let python = python();
    let has_torch = Command::new(&python)
        .args(["-c", "import torch, transformers"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_torch {
        eprintln!(
            "notice: {python} lacks torch or transformers; skipping the Hugging Face parity test"
        );
        return;
    }
    let dir = scratch("hf-parity");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/hf_parity.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = loss_in(&out.stdout);
    let model = dir.join("model");
    let tokens = dir.join("tokens.bin");
    for backend in ["scalar", "auto"] {
        let out = runner(&[
            "eval",
            "--checkpoint",
            model.to_str().unwrap(),
            "--data",
            tokens.to_str().unwrap(),
            "--backend",
            backend,
            "-q",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = loss_in(&out.stdout);
        assert!(
            (ours - theirs).abs() <= 1e-4 * theirs,
            "{backend}: runner {ours}, Hugging Face {theirs}"
        );
        eprintln!("{backend}: runner {ours}, Hugging Face {theirs}");
        // Far from ln 50257 = 10.8: the weights matter.
        assert!((theirs - 10.8).abs() > 1.0, "{theirs}");
    }

    // The other way: our checkpoint of vocabulary 50257 in transformers.
    let ours = dir.join("ours");
    let out = runner(&[
        "train",
        "--init-from",
        model.to_str().unwrap(),
        "--data",
        tokens.to_str().unwrap(),
        "--steps",
        "1",
        "--batch",
        "2",
        "--save",
        ours.to_str().unwrap(),
        "-q",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/hf_check.py");
    let out = Command::new(&python)
        .arg(check)
        .arg(&ours)
        .arg(&tokens)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = loss_in(&out.stdout);
    let out = runner(&[
        "eval",
        "--checkpoint",
        ours.to_str().unwrap(),
        "--data",
        tokens.to_str().unwrap(),
        "-q",
    ]);
    let ours_loss = loss_in(&out.stdout);
    eprintln!("our checkpoint: runner {ours_loss}, Hugging Face {theirs}");
    assert!(
        (ours_loss - theirs).abs() <= 1e-4 * theirs,
        "runner {ours_loss}, Hugging Face {theirs}"
    );
}
