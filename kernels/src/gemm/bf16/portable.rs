//! The portable unit: a product of few rows sums each element of C down k
//! from B's pairs or bf16 rows (the other units leave their products of
//! fewest rows to this path too); a larger one rounds its operands into
//! f32 values for the f32 GEMM.

use super::packing::round_by;
use super::{Bf16Input, PackedBf16, NR};
use crate::bf16::pair_half;
use crate::dispatch::dispatch;
use crate::gemm::microkernel::{GemmKernel, ScalarKernel};
use crate::gemm::{scale_by_beta, small, MatRef, Output};
use crate::parallel::{run_pieces, threads_of};
use crate::{Bf16, Executor, Kernels};

/// A product of few rows: A rounded (`m × k`, contiguous), B packed or
/// bf16 rows.
pub(super) struct FewRows<'a> {
    pub(super) m: usize,
    pub(super) alpha: f32,
    pub(super) a: &'a [f32],
    pub(super) b: RowsOfB<'a>,
    pub(super) beta: f32,
    pub(super) c: Output,
}

/// The B (`k × n`) of a product of few rows.
#[derive(Clone, Copy)]
pub(super) enum RowsOfB<'a> {
    /// Packed into pairs ([`PackedBf16`]).
    Packed(PackedBf16<'a>),
    /// bf16 rows where they lie: row `l` from `data[l · row_stride]`. A
    /// row of A then reads B once, with no copy per product (decoding's
    /// attention over a bf16 key/value cache).
    InPlace {
        data: &'a [Bf16],
        row_stride: usize,
        k: usize,
        n: usize,
    },
}

impl RowsOfB<'_> {
    /// `(k, n)`.
    fn shape(&self) -> (usize, usize) {
        match *self {
            RowsOfB::Packed(b) => (b.k, b.n),
            RowsOfB::InPlace { k, n, .. } => (k, n),
        }
    }
}

/// Most rows of A the portable unit multiplies by streaming B's pairs (or
/// bf16 rows) once per row ([`few_rows`]) instead of unpacking B and
/// running the f32 GEMM.
/// Measured on AMD EPYC Zen 3, `shakes` in bf16, a 9-token prompt: 64–68
/// ms through unpacking, 45–46 ms streaming (most of either is the
/// weights' one packing; vectorized since, an 8-token prompt takes 22–23
/// ms); a decoded token streams them in about 1 ms.
pub(super) const FEW_ROWS: usize = 16;

/// Most rows of A the pair-dot and tile units leave to [`few_rows`]: at
/// most 3 multiply-adds per bf16 value of B (2 bytes) keep the product
/// bound by reading B on every CPU these units run on (a core reads at
/// most about 30 GB/s, 45 G multiply-adds a second, against 100 G and
/// more of AVX-512 FMA), so widening B into f32 multiply-adds costs
/// little against the pair dot products, and a B of bf16 rows is read
/// where it lies instead of packed per product (what decoding's bf16
/// key/value cache needs). Measured on an Intel Xeon (AMX), bf16 decoding
/// `shakes`: `runner generate`, 240 tokens, forward passes 270–278 ms on
/// this path against 268–270 on `vdpbf16ps` (six B panels at a time),
/// within 3 %.
pub(super) const PAIR_UNIT_FEW_ROWS: usize = 3;

/// Runs `p`: pieces of whole panels of C (as the f32 small path splits
/// its columns), each element summed by one piece, so the same bits for
/// any split.
pub(super) fn few_rows<K: GemmKernel, E: Executor + ?Sized>(kernel: K, exec: &E, p: &FewRows) {
    let (m, (k, n)) = (p.m, p.b.shape());
    let panels = n.div_ceil(NR);
    let pieces = small::column_pieces(threads_of(exec), (m, n, k), panels);
    let per_piece = panels.div_ceil(pieces);
    let pieces = panels.div_ceil(per_piece);
    run_pieces(exec, pieces, &|piece| {
        kernel.enter(
            #[inline(always)]
            |kernel| {
                let mine = piece * per_piece..panels.min((piece + 1) * per_piece);
                // Panels as many at a time as the kernel runs at once, every
                // row of A over them while they are in cache.
                let group = K::PAIR_PANELS;
                for j in mine.clone().step_by(group) {
                    let last = (j + group).min(mine.end);
                    let (first, width) = (j * NR, (last * NR).min(n) - j * NR);
                    for i in 0..m {
                        // SAFETY: `i < m` and `first + width ≤ n`, so these
                        // columns of row `i` lie inside C (whose rows do not
                        // overlap); they are in this piece's panels, which
                        // it alone computes.
                        let y = unsafe {
                            core::slice::from_raw_parts_mut(
                                p.c.ptr.ptr().add(i * p.c.rs + first),
                                width,
                            )
                        };
                        scale_by_beta(p.beta, y);
                        let a = &p.a[i * k..][..k];
                        match p.b {
                            RowsOfB::Packed(b) => {
                                let pairs = &b.slots[j * b.stride..];
                                kernel.axpy_pair_rows(p.alpha, a, pairs, b.stride, y)
                            }
                            RowsOfB::InPlace {
                                data, row_stride, ..
                            } => kernel.axpy_bf16_rows(p.alpha, a, &data[first..], row_stride, y),
                        }
                    }
                }
            },
        )
    });
}

/// `dst` (`k × n`, contiguous) = the packed operand `b` as f32 values.
#[inline(always)]
pub(super) fn unpack(b: &PackedBf16, dst: &mut [f32]) {
    let (k, n) = (b.k, b.n);
    for j in 0..n.div_ceil(NR) {
        let (first, width) = (j * NR, NR.min(n - j * NR));
        let panel = &b.slots[j * b.stride..][..NR * k.div_ceil(2)];
        for (l, row) in dst.chunks_exact_mut(n).enumerate() {
            // Row `l` is one half of pair `l / 2`: a straight loop over a
            // panel's columns, which vectorizes.
            let slots = &panel[(l / 2) * NR..][..width];
            for (d, &slot) in row[first..first + width].iter_mut().zip(slots) {
                *d = pair_half(slot, l % 2 == 1);
            }
        }
    }
}

/// `dst` = `src`'s stored matrix rounded to bf16 (as f32), contiguous,
/// viewed as `src` is (transposed or not): rounding runs along the stored
/// rows, where it vectorizes, and the f32 product reads the copy as it
/// would read `src`. `dst` holds at least `rows · cols` floats.
pub(super) fn round_into<'d, T: Bf16Input>(
    kernels: &Kernels,
    src: &MatRef<T>,
    dst: &'d mut [f32],
) -> MatRef<'d> {
    let (rows, cols) = (src.rows, src.cols);
    let dst = &mut dst[..rows * cols];
    dispatch!(kernels,
        scalar: round_rows(ScalarKernel, src, dst),
        simd: |s| round_rows(s, src, dst),
    );
    MatRef {
        data: dst,
        rows,
        cols,
        row_stride: cols,
        transposed: src.transposed,
    }
}

/// Elements rounded per call when rounding rows into f32.
const ROUND_CHUNK: usize = 256;

/// `dst` (`rows · cols`, contiguous) = the stored rows of `src`, each
/// rounded to bf16 (as f32) a chunk at a time.
#[inline(always)]
fn round_rows<K: GemmKernel, T: Bf16Input>(kernel: K, src: &MatRef<T>, dst: &mut [f32]) {
    let cols = src.cols;
    if cols == 0 {
        return;
    }
    let mut chunk = [Bf16::default(); ROUND_CHUNK];
    for (r, out) in dst.chunks_exact_mut(cols).enumerate() {
        let row = &src.data[r * src.row_stride..][..cols];
        for (part, out) in row.chunks(ROUND_CHUNK).zip(out.chunks_mut(ROUND_CHUNK)) {
            let chunk = &mut chunk[..part.len()];
            T::round_slice(part, chunk, round_by(kernel));
            for (o, h) in out.iter_mut().zip(&*chunk) {
                *o = h.to_f32();
            }
        }
    }
}
