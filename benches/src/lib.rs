//! Benchmarks of `kernels` (see `benches/`); this library only holds shared
//! helpers for them.

pub mod peak;
pub mod report;
pub mod shapes;

use kernels::{Backend, Kernels};

/// Every backend this CPU runs, slowest first, so that reports show the
/// scalar reference beside the SIMD versions. `KERNELS_BACKENDS=scalar,avx2`
/// restricts the list.
pub fn backends() -> Vec<Kernels> {
    let wanted = std::env::var("KERNELS_BACKENDS").ok();
    Backend::ALL
        .into_iter()
        .filter(|b| {
            wanted
                .as_deref()
                .is_none_or(|w| w.split(',').any(|name| name.trim() == b.name()))
        })
        .filter_map(|b| match Kernels::new(b) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("notice: skipping {b}: {e}");
                None
            }
        })
        .collect()
}

/// `KERNELS_GEMM_BLOCKING=MC,KC,NC`: a blocking to time beside the one
/// derived from the caches (for example the former hand-tuned
/// `192,384,4096`), or `None`.
pub fn blocking_override() -> Option<(usize, usize, usize)> {
    let text = std::env::var("KERNELS_GEMM_BLOCKING").ok()?;
    let values: Vec<usize> = text
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    match values[..] {
        [mc, kc, nc] => Some((mc, kc, nc)),
        _ => {
            eprintln!("warning: KERNELS_GEMM_BLOCKING={text} is not MC,KC,NC; ignored");
            None
        }
    }
}

/// Deterministic pseudo-random data in `[-2, 2)`.
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 22) as f32 - 2.0
        })
        .collect()
}
