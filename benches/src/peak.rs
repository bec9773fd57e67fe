//! The machine's single-thread f32 FMA peak, measured rather than assumed,
//! with `kernels`' own FMA-throughput loop, in the same run as the GEMMs it
//! is compared with.

use kernels::{Backend, Kernels};

/// Runs the loop on `backend` and returns the FLOPs it did, or `None` when
/// the CPU lacks the backend.
pub fn fma_loop(backend: Backend, iters: usize) -> Option<u64> {
    Some(Kernels::new(backend).ok()?.fma_peak_loop(iters))
}
