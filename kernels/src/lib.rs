//! Hand-written SIMD kernels for training and running small transformers on
//! a CPU, over caller-supplied slices: no allocation, no threads, `no_std`.
//!
//! Every routine is a method of [`Kernels`], a handle that proves its
//! [`Backend`] runs on this CPU: the portable scalar reference, AVX2 + FMA,
//! or AVX-512F. [`Kernels::best`] picks the fastest one found by CPU
//! detection (cpuid + xgetbv, done once); [`Kernels::new`] forces one and
//! refuses a backend the CPU lacks. Wrong lengths or shapes return a
//! [`KernelError`]; no routine panics on caller input.
//!
//! ```
//! use kernels::{Kernels, ValidLen};
//!
//! let k = Kernels::best();
//! let mut scores = vec![1.0, 2.0, 3.0, 4.0];
//! k.softmax_rows(&mut scores, 4, ValidLen::All)?;
//! assert!((k.sum(&scores) - 1.0).abs() < 1e-6);
//! # Ok::<(), kernels::KernelError>(())
//! ```
//!
//! # Families
//! - element-wise: [`Kernels::add`], [`Kernels::sub`], [`Kernels::mul`],
//!   [`Kernels::scale`], [`Kernels::axpy`], [`Kernels::add_bias`],
//!   [`Kernels::fill`], [`Kernels::copy`]
//! - reductions: [`Kernels::sum`], [`Kernels::max`], [`Kernels::dot`],
//!   [`Kernels::sum_squares`]
//! - [`Kernels::softmax_rows`] / [`Kernels::softmax_backward_rows`],
//!   [`Kernels::layer_norm_forward`] /
//!   [`Kernels::layer_norm_backward`], [`Kernels::gelu_forward`] /
//!   [`Kernels::gelu_backward`] (or [`Kernels::gelu_backward_into`], which
//!   overwrites), [`Kernels::cross_entropy`],
//!   [`Kernels::adamw_step`], [`Kernels::transpose`], [`Kernels::exp`],
//!   [`Kernels::tanh`]
//! - matrix multiply: [`Kernels::gemm`] (and [`Kernels::gemm_with`] to split
//!   it across the caller's threads through an [`Executor`]) over
//!   [`MatRef`] / [`MatMut`] views, with [`Kernels::gemm_workspace_len`];
//!   the cache blocking it derived is [`Kernels::gemm_blocking`], and
//!   [`Kernels::with_gemm_blocking`] overrides it; see the `gemm` module
//!   notes in the README for blocking and speed.
//! - bf16: [`Bf16`], [`Kernels::f32_to_bf16`] / [`Kernels::bf16_to_f32`]
//!   (round to nearest even), and [`Kernels::gemm_bf16`] (bf16 operands,
//!   f32 sums, an f32 or bf16 C ([`Bf16Output`]); [`Kernels::gemm_bf16_with`]
//!   to split it) with
//!   [`Kernels::gemm_bf16_workspace_len`]; a B packed once into bf16
//!   pairs ([`Kernels::pack_bf16`], [`PackedBf16`]) for
//!   [`Kernels::gemm_bf16_packed`] / [`Kernels::gemm_bf16_packed_with`]
//! - [`Kernels::fma_peak_loop`] and [`Kernels::bf16_peak_loop`]: the
//!   backend's FMA units, or its bf16 unit, flat out, to measure the
//!   machine's peak in the same run as a benchmark.
//!
//! # Accuracy of the vectorized `exp` and `tanh`
//! Measured against `libm` over all 2^32 f32 inputs (the ignored test
//! `math_accuracy_over_all_floats`; a sample of every 257th input runs in
//! the default suite) and guaranteed by those tests:
//! - `exp`: at most 2 ulp wherever the result is a normal float; subnormal
//!   results within one subnormal step (1.4e-45); underflow to 0 and
//!   overflow to +inf exactly where `libm` has them (so exp(x) = 0 for
//!   every x ≤ −104, including −inf and −1e30); exp(NaN) = NaN.
//! - `tanh`: at most 2 ulp for every input; odd, tanh(−0) = −0;
//!   tanh(±inf) = ±1; tanh(NaN) = NaN.
//!
//! SIMD reductions add in a different order from the scalar reference, so
//! results agree to rounding, not bit for bit.

#![no_std]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;
// The tests' freestanding part (`tests/freestanding.rs`) is shared with a
// program outside the crate, so it names the crate and `alloc` the way
// that program does.
#[cfg(test)]
extern crate alloc;
#[cfg(test)]
extern crate self as kernels;

mod activation;
mod backend;
mod bf16;
mod cpu;
mod dispatch;
mod elementwise;
mod error;
mod gemm;
mod loss;
mod math;
mod norm;
mod optimizer;
mod parallel;
mod peak;
mod reduce;
mod simd;
mod softmax;
mod transpose;

#[cfg(test)]
mod tests;

pub use backend::{Backend, Bf16Unit};
pub use bf16::Bf16;
pub use cpu::{Caches, Cpu};
pub use dispatch::Kernels;
pub use error::KernelError;
pub use gemm::{Bf16Input, Bf16Output, Blocking, MatMut, MatRef, PackedBf16};
pub use optimizer::AdamW;
pub use parallel::{Executor, Sequential};
pub use peak::PEAK_LOOP_MAX_ITERS;
pub use softmax::ValidLen;
