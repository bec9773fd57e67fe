//! `runner`: will train and run a small GPT on the CPU. For now it reports
//! which kernel backend this machine runs and which ones it supports.

use kernels::{Backend, Kernels};

fn main() {
    let kernels = Kernels::best();
    let supported: Vec<&str> = Backend::ALL
        .into_iter()
        .filter(|b| b.is_supported())
        .map(Backend::name)
        .collect();
    println!(
        "Kernel backend: {} ({} f32 lanes); supported here: {}",
        kernels.backend(),
        kernels.backend().lanes(),
        supported.join(", ")
    );
}
