//! A loop that runs the backend's fused multiply-add units flat out, so
//! benchmarks can measure the machine's peak in the same run as the code
//! they compare with it (rather than trusting a datasheet number).

use crate::dispatch::dispatch;
use crate::simd::Simd;
use crate::Kernels;

/// Independent accumulator chains: enough to cover the FMA latency on every
/// FMA pipe of current x86 cores (4 cycles × 2 pipes needs 8), without
/// spilling the 16 YMM registers.
const CHAINS: usize = 12;

/// The most rounds a peak loop runs, so that no count hangs the caller:
/// well under a second of FMA rounds (about 6 cycles each), some seconds
/// of AMX rounds (4 tile products, about 64 cycles).
pub const PEAK_LOOP_MAX_ITERS: usize = 1 << 28;

impl Kernels {
    /// Runs `iters` rounds (at most [`PEAK_LOOP_MAX_ITERS`]) of 12
    /// independent multiply-add chains on full vectors and returns the
    /// floating-point operations done (2 per lane per multiply-add). Time
    /// it to get this backend's peak FLOP/s on one core; run it on several
    /// threads for the peak of several.
    ///
    /// ```
    /// let k = kernels::Kernels::best();
    /// let iters = 1_000_000;
    /// let start = std::time::Instant::now();
    /// let flops = k.fma_peak_loop(iters);
    /// let gflops = flops as f64 / start.elapsed().as_secs_f64() / 1e9;
    /// println!("{gflops:.1} GFLOP/s on one core");
    /// // 12 chains, one multiply-add (2 operations) per lane per round.
    /// assert_eq!(flops, (iters * 12 * k.backend().lanes() * 2) as u64);
    /// ```
    pub fn fma_peak_loop(&self, iters: usize) -> u64 {
        let iters = iters.min(PEAK_LOOP_MAX_ITERS);
        let (result, lanes) = dispatch!(self,
            scalar: (scalar_chains(iters), 1),
            simd: |s| (simd_chains(s, iters), s.lanes()),
        );
        // The result depends on every chain, so none can be optimised away.
        core::hint::black_box(result);
        iters as u64 * (CHAINS * lanes * 2) as u64
    }
}

fn scalar_chains(iters: usize) -> f32 {
    let (x, y) = (
        core::hint::black_box(0.999_999f32),
        core::hint::black_box(1e-7f32),
    );
    let mut acc = [1.0f32; CHAINS];
    for _ in 0..iters {
        for a in &mut acc {
            *a = *a * x + y;
        }
    }
    acc.iter().sum()
}

#[inline(always)]
fn simd_chains<S: Simd>(s: S, iters: usize) -> f32 {
    let (x, y) = (
        s.splat(core::hint::black_box(0.999_999)),
        s.splat(core::hint::black_box(1e-7)),
    );
    let mut acc = [s.splat(1.0); CHAINS];
    for _ in 0..iters {
        for a in &mut acc {
            *a = s.mul_add(*a, x, y);
        }
    }
    let mut sum = s.splat(0.0);
    for a in acc {
        sum = s.add(sum, a);
    }
    s.reduce_sum(sum)
}
