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
use common::{assert_success, printed_loss, runner, scratch};

use std::path::Path;
use std::process::Command;

fn python() -> String {
    std::env::var("RUNNER_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `runner eval` of `checkpoint` on `tokens`, with extra `args`.
fn runner_loss(checkpoint: &Path, tokens: &Path, args: &[&str]) -> f64 {
    let (checkpoint, tokens) = (checkpoint.to_str().unwrap(), tokens.to_str().unwrap());
    let base = ["eval", "--checkpoint", checkpoint, "--data", tokens, "-q"];
    printed_loss(&runner(&[&base[..], args].concat()))
}

/// The loss a Python tool of `tools/` prints.
fn tool_loss(python: &str, tool: &str, args: &[&Path]) -> f64 {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tools")
        .join(tool);
    printed_loss(
        &Command::new(python)
            .arg(script)
            .args(args)
            .output()
            .unwrap(),
    )
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
    let theirs = tool_loss(&python, "hf_parity.py", &[&dir]);
    let (model, tokens) = (dir.join("model"), dir.join("tokens.bin"));
    for backend in ["scalar", "auto"] {
        let ours = runner_loss(&model, &tokens, &["--backend", backend]);
        eprintln!("{backend}: runner {ours}, Hugging Face {theirs}");
        assert!(
            (ours - theirs).abs() <= 1e-4 * theirs,
            "{backend}: runner {ours}, Hugging Face {theirs}"
        );
        // Far from ln 50257 = 10.8: the weights matter.
        assert!((theirs - 10.8).abs() > 1.0, "{theirs}");
    }

    // The other way: our checkpoint of vocabulary 50257 in transformers.
    let ours = dir.join("ours");
    let (model_s, tokens_s, ours_s) = (
        model.to_str().unwrap(),
        tokens.to_str().unwrap(),
        ours.to_str().unwrap(),
    );
    assert_success(&runner(&[
        "train",
        "--init-from",
        model_s,
        "--data",
        tokens_s,
        "--steps",
        "1",
        "--batch",
        "2",
        "--save",
        ours_s,
        "-q",
    ]));
    let theirs = tool_loss(&python, "hf_check.py", &[&ours, &tokens]);
    let ours_loss = runner_loss(&ours, &tokens, &[]);
    eprintln!("our checkpoint: runner {ours_loss}, Hugging Face {theirs}");
    assert!(
        (ours_loss - theirs).abs() <= 1e-4 * theirs,
        "runner {ours_loss}, Hugging Face {theirs}"
    );
}
