//! The machine's single-thread f32 FMA peak, measured rather than assumed:
//! a loop of independent fused multiply-add chains (enough of them to cover
//! the FMA latency on every pipe), timed in the same run as the GEMMs it
//! is compared with.

use std::hint::black_box;
use std::time::Instant;

use kernels::Backend;

/// Independent accumulator chains: FMA latency (4 cycles) × 2 pipes needs
/// 8; 12 leaves margin without spilling the 16 YMM registers.
const CHAINS: usize = 12;

/// Peak GFLOP/s of one core for `backend`'s vector width (the best of a
/// few timed runs), or `None` when the CPU lacks it. The scalar backend's
/// "peak" is that of AVX2, the hardware it runs on.
pub fn fma_peak_gflops(backend: Backend) -> Option<f64> {
    if !backend.is_supported() {
        return None;
    }
    let iters = 20_000_000;
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let flops = fma_loop(backend, iters)?;
        let secs = start.elapsed().as_secs_f64();
        best = best.max(flops as f64 / secs / 1e9);
    }
    Some(best)
}

/// Runs the loop and returns the FLOPs it did.
pub fn fma_loop(backend: Backend, iters: usize) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        let lanes = match backend {
            Backend::Avx512 if backend.is_supported() => {
                // SAFETY: detection confirmed AVX-512F.
                black_box(unsafe { x86::chains_avx512(black_box(iters)) });
                16
            }
            Backend::Scalar | Backend::Avx2 if Backend::Avx2.is_supported() => {
                // SAFETY: detection confirmed AVX2 + FMA.
                black_box(unsafe { x86::chains_avx2(black_box(iters)) });
                8
            }
            _ => return None,
        };
        Some((iters * CHAINS * lanes * 2) as u64)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (backend, iters);
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::CHAINS;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn chains_avx2(iters: usize) -> f32 {
        let (x, y) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for a in &mut acc {
                *a = _mm256_fmadd_ps(*a, x, y);
            }
        }
        let mut out = [0.0f32; 8];
        let sum = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
        // SAFETY: `out` holds 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
        out.iter().sum()
    }

    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn chains_avx512(iters: usize) -> f32 {
        let (x, y) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..iters {
            for a in &mut acc {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a));
        _mm512_reduce_add_ps(sum)
    }
}
