//! Tests of every routine on every backend this CPU has, plus the emulated
//! 8- and 16-lane vectors (so the AVX-512 blocking and tails are exercised on
//! any CPU), against the scalar reference and against independent
//! definitions in f64.

use std::vec::Vec;
use std::{eprintln, format};

use crate::dispatch::Isa;
use crate::{Backend, Kernels, MatMut, MatRef};

mod accuracy;
mod against_scalar;
mod bf16;
mod errors;
mod freestanding;
mod gemm;
mod gemm_bf16;
mod independent;

pub(super) use freestanding::assert_close;
use freestanding::Rng;

/// The scalar reference.
pub(super) fn scalar() -> Kernels {
    emulated(Isa::Scalar, crate::Bf16Unit::Portable)
}

/// A handle on the scalar or an emulated instruction set, with its bf16
/// products on `bf16` (emulated too, on these): runs on any CPU.
pub(super) fn emulated(isa: Isa, bf16: crate::Bf16Unit) -> Kernels {
    assert!(matches!(
        isa,
        Isa::Scalar | Isa::Emulated8 | Isa::Emulated16
    ));
    // SAFETY: scalar and emulated code runs on any CPU (checked above).
    unsafe { Kernels::on(isa, bf16) }
}

/// Every SIMD implementation testable here: the real ones this CPU supports
/// (with a notice for those it lacks) and the emulated 8- and 16-lane ones.
pub(super) fn simd_kernels() -> Vec<(&'static str, Kernels)> {
    let mut all = Vec::new();
    for backend in [Backend::Avx2, Backend::Avx512] {
        match Kernels::new(backend) {
            Ok(k) => all.push((backend.name(), k)),
            Err(_) => {
                eprintln!("notice: this CPU lacks {backend}; skipping its real-hardware tests")
            }
        }
    }
    all.push((
        "emulated8",
        emulated(Isa::Emulated8, crate::Bf16Unit::Portable),
    ));
    all.push((
        "emulated16",
        emulated(Isa::Emulated16, crate::Bf16Unit::Portable),
    ));
    all
}

/// Lengths 0..=67 (every tail of both vector widths, primes) and a few
/// larger ones around block boundaries.
pub(super) fn lengths() -> impl Iterator<Item = usize> {
    (0..=67).chain([127, 128, 129, 1000, 4099])
}

/// A buffer holding `len` floats at an odd offset (so SIMD loads are
/// unaligned) between guard zones, to prove a routine writes exactly its
/// slice: the slice starts as NaN, the guards as a sentinel.
pub(super) struct Guarded {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

const GUARD: usize = 19;
const SENTINEL: f32 = -12345.5;

impl Guarded {
    pub(super) fn new(len: usize, offset: usize) -> Guarded {
        Guarded::from(&std::vec![f32::NAN; len], offset)
    }
    pub(super) fn from(data: &[f32], offset: usize) -> Guarded {
        let start = GUARD + offset % 7;
        let mut buf = std::vec![SENTINEL; start + data.len() + GUARD];
        buf[start..start + data.len()].copy_from_slice(data);
        Guarded {
            buf,
            start,
            len: data.len(),
        }
    }
    pub(super) fn get(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
    pub(super) fn get_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
    /// The slice's contents, after checking that the guards are intact.
    pub(super) fn checked(&self, what: &str) -> Vec<f32> {
        let guards_ok = self.buf[..self.start]
            .iter()
            .chain(&self.buf[self.start + self.len..])
            .all(|&v| v == SENTINEL);
        assert!(guards_ok, "{what}: wrote outside its slice");
        self.get().to_vec()
    }
}

/// Runs `product` (an `m × k` by `k × n` product with alpha 0.5 and beta
/// 0 into the view it is given) on `kernels` with every C written once
/// streamed past the caches and with none, each into a NaN-filled C from
/// a 64-byte line with rows `row_stride` apart, and asserts that both give
/// the same bits and write every element.
pub(super) fn assert_streaming_changes_nothing(
    what: &str,
    kernels: Kernels,
    (m, n, k, row_stride): (usize, usize, usize, usize),
    product: impl Fn(Kernels, MatRef, MatRef, MatMut),
) {
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7 % 19) as f32 - 9.0) / 8.0)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 5 % 17) as f32 - 8.0) / 4.0)
        .collect();
    let (a, b) = (
        MatRef::new(&a, m, k).unwrap(),
        MatRef::new(&b, k, n).unwrap(),
    );
    let run = |kernels: Kernels| {
        let len = (m - 1) * row_stride + n;
        let mut buf = std::vec![f32::NAN; len + 16];
        let at = buf.as_ptr().align_offset(64);
        let c = &mut buf[at..at + len];
        product(kernels, a, b, MatMut::strided(c, m, n, row_stride).unwrap());
        c.chunks(row_stride)
            .map(|row| row[..n].to_vec())
            .collect::<Vec<_>>()
    };
    let streamed = run(kernels.with_gemm_stream_c(0));
    let cached = run(kernels.with_gemm_stream_c(usize::MAX));
    let what = format!("{what} {m}x{n}x{k}");
    assert!(streamed.iter().flatten().all(|x| !x.is_nan()), "{what}");
    assert_same(&what, &streamed.concat(), &cached.concat());
}

/// Asserts bit-for-bit equality (NaN meets any NaN).
#[track_caller]
pub(super) fn assert_same(what: &str, got: &[f32], want: &[f32]) {
    assert_close(what, got, want, 0.0, 0.0);
}

/// `what` with the implementation and length, for failure messages.
pub(super) fn ctx(what: &str, name: &str, n: usize) -> std::string::String {
    format!("{what} [{name}, n={n}]")
}
