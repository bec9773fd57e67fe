//! The binary runs and reports the backend that CPU detection chose.

use std::process::Command;

#[test]
fn reports_the_detected_backend() {
    let output = Command::new(env!("CARGO_BIN_EXE_runner"))
        .output()
        .expect("runner starts");
    assert!(output.status.success(), "runner failed: {output:?}");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let detected = kernels::Backend::detected();
    assert!(
        stdout.contains(&format!("Kernel backend: {detected}")),
        "unexpected output: {stdout}"
    );
}
