//! Helpers shared by the tests: running the `runner` binary, the kernel
//! backends to test on, random tensors.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kernels::{Backend, Kernels};
use runner::rng::Rng;

/// Every kernel backend this CPU runs, the scalar reference first.
pub fn backends() -> Vec<Kernels> {
    Backend::ALL
        .into_iter()
        .filter(|b| b.is_supported())
        .map(|b| Kernels::new(b).unwrap())
        .collect()
}

/// `n` draws of a normal distribution of mean 0.
pub fn normal(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal(0.0, std)).collect()
}

/// Runs the binary with `args`.
pub fn runner(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .output()
        .expect("runner starts")
}

/// A fresh scratch directory for one test, removed when the test passes
/// and kept (its path printed) when it fails, for a look at what was left.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh scratch directory for one test (see [`Scratch`]).
pub fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("runner-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// Asserts a failure with exactly one line on stderr, `error: ...`
/// containing `needle`, exit code 1 and no panic.
#[track_caller]
pub fn assert_clear_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains(needle),
        "expected `{needle}` in: {stderr}"
    );
}

/// Asserts success, showing stderr otherwise.
#[track_caller]
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The training losses a `--json` file holds, step by step.
pub fn json_losses(path: &Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train_step")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

/// The X of the `loss X ...` line `runner eval` (or a tool) printed.
pub fn printed_loss(out: &Output) -> f64 {
    assert_success(out);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("loss "))
        .expect("a loss line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
