//! The register-blocked microkernels, one per instruction set, with the
//! depth of a pass over k that suits each.
//!
//! A microkernel computes one `MR × NR` tile of C from an `MR`-row panel of
//! A and an `NR`-column panel of B, `kc` deep, then writes `alpha · AB +
//! beta · C` to the part of the tile inside C. A panel is packed
//! (zero-padded to a whole tile) or read in place where the loop nest
//! decides packing would not pay (see `blocked.rs`).
//!
//! The cache blocking around them (`mc`, `nc`) is derived from the CPU's
//! caches in `blocking.rs`.

use super::bf16::{pair_bf16s_simd, pair_each, round_pairs_simd, NR as PAIR_PANEL};
use super::packing::{interleave_scalar, interleave_simd};
use crate::bf16::{narrow, pair_half};
#[cfg(test)]
use crate::simd::Emulated;
use crate::simd::{fold2, pieces, update2, Simd};
#[cfg(target_arch = "x86_64")]
use crate::simd::{V3, V4};
use crate::Bf16;

/// One instruction set's GEMM microkernel.
pub(crate) trait GemmKernel: Copy + Send + Sync {
    /// Rows of a register tile (rows of a packed A panel).
    const MR: usize;
    /// Columns of a register tile (columns of a packed B panel).
    const NR: usize;
    /// Whole panels [`GemmKernel::axpy_pair_rows`] runs at once (a caller
    /// that reuses B across rows of A passes it that many).
    const PAIR_PANELS: usize;
    /// Largest depth of one pass over k (the default of [`Blocking::kc`]).
    ///
    /// [`Blocking::kc`]: super::Blocking::kc
    const KC: usize;

    /// Rows of A the tile reads for an edge of `rows <= MR` rows of C (the
    /// height of the register tile that covers it).
    fn covering_rows(rows: usize) -> usize {
        let _ = rows;
        Self::MR
    }

    /// Runs `f` with this instruction set enabled, so that code it inlines
    /// compiles to it (pieces run by an executor start outside that context).
    fn enter<R>(self, f: impl FnOnce(Self) -> R) -> R;

    /// Writes `alpha · A·B + beta · C` for one tile, where `a` is `MR × kc`
    /// and `b` is `kc × NR`. With `beta == 0`, C is not read. Rows of a tile
    /// past `c.rows` are not computed where a shorter register tile covers
    /// the rest, so an edge of C costs about what its size says.
    ///
    /// # Safety
    /// `c.ptr` points to a `c.rows × c.cols` block with row stride `c.ldc`
    /// (`rows <= MR`, `cols <= NR`) that nothing else accesses meanwhile.
    unsafe fn tile(self, kc: usize, a: APanel, b: BPanel, alpha: f32, beta: f32, c: Tile);

    /// Packs a full panel whose lines are contiguous along k (a row-major
    /// A, a transposed B): `dst[p·W + x] = lines[x][p]`, `W = lines.len()`.
    fn interleave(self, lines: &[&[f32]], dst: &mut [f32]) {
        interleave_scalar(lines, lines.len(), 0, dst)
    }

    /// `dst[i] = bf16(src[i])`, rounded as [`Bf16::from_f32`] does, for
    /// equal lengths (the bf16 products' packing).
    fn round_to_bf16(self, src: &[f32], dst: &mut [Bf16]) {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = Bf16::from_f32(x);
        }
    }

    /// `slots[i]` = the pair of `lo[i]` and `hi[i]` (zero without `hi`),
    /// each rounded as [`Bf16::from_f32`] does, for `lo` and `hi` as long
    /// as `slots` (the bf16 products' packing of strips across k).
    fn round_pairs(self, lo: &[f32], hi: Option<&[f32]>, slots: &mut [f32]) {
        pair_each(lo, hi, slots)
    }

    /// `slots[i]` = the pair of `lo[i]` and `hi[i]` (zero without `hi`),
    /// bf16 values already, as [`GemmKernel::round_pairs`] pairs f32 ones.
    fn pair_bf16s(self, lo: &[Bf16], hi: Option<&[Bf16]>, slots: &mut [f32]) {
        pair_each(lo, hi, slots)
    }

    /// `y += alpha · x` (the small-m path).
    fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]);

    /// `y += Σ alphas[r] · xs[r]` over four rows of y's length (the
    /// small-m path: four streams of B in flight, one pass over y).
    fn axpy4(self, alphas: [f32; 4], xs: [&[f32]; 4], y: &mut [f32]);

    /// `Σ x·y` over equal-length slices (the small-m path).
    fn dot(self, x: &[f32], y: &[f32]) -> f32;

    /// `y += Σ (alpha · a[l]) · B[l]` over `l` in `0..a.len()`, in that
    /// order (a fused multiply-add each on SIMD), where B is packed in
    /// panels of [`PAIR_PANEL`] columns, `panel_stride` slots apart, each
    /// a run of pairs of rows: column `c` of row `l` is the low (even `l`)
    /// or high half of slot `(c / PAIR_PANEL) · panel_stride + (l / 2) ·
    /// PAIR_PANEL + c % PAIR_PANEL` of `pairs`. The portable bf16 product
    /// of few rows, reading a packed B without unpacking it.
    fn axpy_pair_rows(
        self,
        alpha: f32,
        a: &[f32],
        pairs: &[u32],
        panel_stride: usize,
        y: &mut [f32],
    );

    /// [`GemmKernel::axpy_pair_rows`] with B's rows of bf16 values read
    /// where they lie: row `l` is `b[l · row_stride..][..y.len()]`. The same
    /// operations in the same order, so the same bits as from B packed.
    fn axpy_bf16_rows(self, alpha: f32, a: &[f32], b: &[Bf16], row_stride: usize, y: &mut [f32]);
}

/// The A operand of one tile: `A(i, p) = data[i·rs + p·cs]` for `i < MR`,
/// `p < kc`. A packed panel has `rs = 1, cs = MR`; A read in place has its
/// own strides.
#[derive(Clone, Copy)]
pub(crate) struct APanel<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<'a> APanel<'a> {
    /// A packed panel of `mr` rows.
    #[inline(always)]
    pub(crate) fn packed(data: &'a [f32], mr: usize) -> APanel<'a> {
        APanel {
            data,
            rs: 1,
            cs: mr,
        }
    }

    /// `data` cut to the elements of an `mr × kc` operand (`kc > 0`); the
    /// callers guarantee they exist, so running short is a bug here.
    #[inline(always)]
    fn extent(&self, mr: usize, kc: usize) -> &'a [f32] {
        &self.data[..(mr - 1) * self.rs + (kc - 1) * self.cs + 1]
    }
}

/// The B operand of one tile: `B(p, j) = data[p·rs + j]` for `p < kc`,
/// `j < NR`. A packed panel has `rs = NR`; a small B read in place has its
/// own row stride.
#[derive(Clone, Copy)]
pub(crate) struct BPanel<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rs: usize,
}

impl<'a> BPanel<'a> {
    /// `data` cut to the elements of a `kc × nr` operand (`kc > 0`), as
    /// [`APanel::extent`].
    #[inline(always)]
    fn extent(&self, nr: usize, kc: usize) -> &'a [f32] {
        &self.data[..(kc - 1) * self.rs + nr]
    }
}

/// Where a microkernel writes: `rows × cols` floats at `ptr`, row stride
/// `ldc`; with `stream` (and beta 0), whole vectors on their boundaries are
/// stored past the caches ([`Simd::stream`]).
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    pub(crate) ptr: *mut f32,
    pub(crate) ldc: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) stream: bool,
}

/// Implements [`GemmKernel`] for a SIMD instruction set from its tile
/// (`mr` rows × `nv` vectors) and pass depth; everything else is the
/// generic code below.
macro_rules! simd_gemm_kernel {
    ($(#[$attr:meta])* $isa:ty, mr: $mr:literal, nv: $nv:literal, edge_mr: [$mr1:literal, $mr2:literal],
     kc: $kc:literal, enter: |$f:ident| $enter:expr) => {
        $(#[$attr])*
        impl GemmKernel for $isa {
            const MR: usize = $mr;
            const NR: usize = $nv * <$isa as Simd>::LANES;
            const KC: usize = $kc;
            const PAIR_PANELS: usize = pair_panels(<$isa as Simd>::LANES);

            #[inline(always)]
            fn covering_rows(rows: usize) -> usize {
                match rows {
                    ..=$mr1 => $mr1,
                    ..=$mr2 => $mr2,
                    _ => $mr,
                }
            }
            #[inline(always)]
            fn enter<R>(self, $f: impl FnOnce(Self) -> R) -> R {
                $enter
            }
            #[inline(always)]
            unsafe fn tile(self, kc: usize, a: APanel, b: BPanel, alpha: f32, beta: f32, c: Tile) {
                // Edge tiles take the shortest register tile that covers
                // them (`edge_mr` rows, one vector of columns), so that an
                // edge of C does not cost a whole tile. Those run out of
                // line: inlined beside the main tile, they made LLVM keep
                // its accumulators in memory.
                // The height comes from `covering_rows`, which also decides
                // whether a last panel of A may be read in place. A whole
                // tile streamed past the caches runs out of line too.
                let one_vector = c.cols <= <$isa as Simd>::LANES;
                let streamed = c.stream && beta == 0.0 && c.rows == $mr && c.cols == Self::NR;
                // SAFETY (all arms): forwarded contract; each register tile
                // has at most MR rows and NR columns, and covers the block.
                unsafe {
                    match (Self::covering_rows(c.rows), one_vector) {
                        ($mr1, false) => edge_tile::<$isa, $mr1, $nv>(self, kc, a, b, alpha, beta, c),
                        ($mr2, false) => edge_tile::<$isa, $mr2, $nv>(self, kc, a, b, alpha, beta, c),
                        (_, false) if streamed => streamed_tile::<$isa, $mr, $nv>(self, kc, a, b, alpha, c),
                        (_, false) => simd_tile::<$isa, $mr, $nv, false>(self, kc, a, b, alpha, beta, c),
                        ($mr1, true) => edge_tile::<$isa, $mr1, 1>(self, kc, a, b, alpha, beta, c),
                        ($mr2, true) => edge_tile::<$isa, $mr2, 1>(self, kc, a, b, alpha, beta, c),
                        (_, true) => edge_tile::<$isa, $mr, 1>(self, kc, a, b, alpha, beta, c),
                    }
                }
            }
            #[inline(always)]
            fn interleave(self, lines: &[&[f32]], dst: &mut [f32]) {
                interleave_simd(self, lines, dst)
            }
            #[inline(always)]
            fn round_to_bf16(self, src: &[f32], dst: &mut [Bf16]) {
                narrow(self, src, dst)
            }
            #[inline(always)]
            fn round_pairs(self, lo: &[f32], hi: Option<&[f32]>, slots: &mut [f32]) {
                round_pairs_simd(self, lo, hi, slots)
            }
            #[inline(always)]
            fn pair_bf16s(self, lo: &[Bf16], hi: Option<&[Bf16]>, slots: &mut [f32]) {
                pair_bf16s_simd(self, lo, hi, slots)
            }
            #[inline(always)]
            fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]) {
                simd_axpy(self, alpha, x, y)
            }
            #[inline(always)]
            fn axpy4(self, alphas: [f32; 4], xs: [&[f32]; 4], y: &mut [f32]) {
                simd_axpy4(self, alphas, xs, y)
            }
            #[inline(always)]
            fn dot(self, x: &[f32], y: &[f32]) -> f32 {
                simd_dot(self, x, y)
            }
            #[inline(always)]
            fn axpy_pair_rows(self, alpha: f32, a: &[f32], pairs: &[u32], panel_stride: usize, y: &mut [f32]) {
                simd_axpy_pair_rows(self, alpha, a, pairs, panel_stride, y)
            }
            #[inline(always)]
            fn axpy_bf16_rows(self, alpha: f32, a: &[f32], b: &[Bf16], row_stride: usize, y: &mut [f32]) {
                simd_axpy_bf16_rows(self, alpha, a, b, row_stride, y)
            }
        }
    };
}

simd_gemm_kernel!(
    /// AVX2 + FMA: 6 × 16 tile = 12 accumulators + 2 B vectors + 1 broadcast
    /// of the 16 YMM registers. KC = 384 puts the B panel at 24 KiB of the
    /// 32 KiB L1 (and runs the trainer's k = 384 in one pass; 256 measured
    /// 2–5 % slower).
    #[cfg(target_arch = "x86_64")]
    V3, mr: 6, nv: 2, edge_mr: [2, 4], kc: 384,
    // SAFETY: a `V3` value exists only after detection found AVX2 + FMA.
    enter: |f| unsafe { V3::vectorize(f) }
);

simd_gemm_kernel!(
    /// AVX-512: 12 × 32 tile = 24 accumulators + 2 B vectors + 1 broadcast
    /// of the 32 ZMM registers. KC = 384 makes the B panel 48 KiB, more than
    /// L1, yet measured fastest on Zen 4 (192 and 256 were 5–10 % slower: C
    /// traffic per pass outweighs L1 misses that L2 serves well).
    #[cfg(target_arch = "x86_64")]
    V4, mr: 12, nv: 2, edge_mr: [4, 8], kc: 384,
    // SAFETY: a `V4` value exists only after detection found AVX-512F.
    enter: |f| unsafe { V4::vectorize(f) }
);

// The emulated vectors use the tiles of the instruction set of their width,
// so tests exercise exactly the AVX2 and AVX-512 blocking and edge logic.
simd_gemm_kernel!(
    /// 8 emulated lanes, blocked as [`V3`].
    #[cfg(test)]
    Emulated<8>, mr: 6, nv: 2, edge_mr: [2, 4], kc: 384,
    enter: |f| f(Emulated::<8>)
);

simd_gemm_kernel!(
    /// 16 emulated lanes, blocked as [`V4`].
    #[cfg(test)]
    Emulated<16>, mr: 12, nv: 2, edge_mr: [4, 8], kc: 384,
    enter: |f| f(Emulated::<16>)
);

/// The portable reference: a 4 × 4 tile of plain multiply-adds (16
/// accumulators fit the 16 SSE registers of baseline x86-64).
#[derive(Clone, Copy)]
pub(crate) struct ScalarKernel;

impl GemmKernel for ScalarKernel {
    const MR: usize = 4;
    const NR: usize = 4;
    const KC: usize = 256;
    const PAIR_PANELS: usize = 1;

    fn enter<R>(self, f: impl FnOnce(Self) -> R) -> R {
        f(self)
    }
    unsafe fn tile(self, kc: usize, a: APanel, b: BPanel, alpha: f32, beta: f32, c: Tile) {
        let mut acc = [0.0f32; 16];
        if kc == 0 {
            // SAFETY: forwarded contract.
            return unsafe { write_tile(&acc, 4, alpha, beta, c) };
        }
        let (a_data, b_data) = (a.extent(4, kc), b.extent(4, kc));
        for p in 0..kc {
            let bp = &b_data[p * b.rs..][..4];
            for (i, acc_row) in acc.chunks_exact_mut(4).enumerate() {
                let ai = a_data[i * a.rs + p * a.cs];
                for (acc, &bj) in acc_row.iter_mut().zip(bp) {
                    *acc += ai * bj;
                }
            }
        }
        // SAFETY: forwarded contract.
        unsafe { write_tile(&acc, 4, alpha, beta, c) }
    }
    fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]) {
        y.iter_mut().zip(x).for_each(|(y, &x)| *y += alpha * x);
    }
    fn axpy4(self, a: [f32; 4], xs: [&[f32]; 4], y: &mut [f32]) {
        let rows = xs[0].iter().zip(xs[1]).zip(xs[2].iter().zip(xs[3]));
        for (y, ((&x0, &x1), (&x2, &x3))) in y.iter_mut().zip(rows) {
            *y += a[0] * x0 + a[1] * x1 + a[2] * x2 + a[3] * x3;
        }
    }
    fn dot(self, x: &[f32], y: &[f32]) -> f32 {
        x.iter().zip(y).map(|(&x, &y)| x * y).sum()
    }
    fn axpy_pair_rows(
        self,
        alpha: f32,
        a: &[f32],
        pairs: &[u32],
        panel_stride: usize,
        y: &mut [f32],
    ) {
        for (q, y) in y.chunks_mut(PAIR_PANEL).enumerate() {
            let panel = &pairs[q * panel_stride..];
            for (l, &a) in a.iter().enumerate() {
                let (slots, high) = (&panel[(l / 2) * PAIR_PANEL..][..y.len()], l % 2 == 1);
                for (y, &slot) in y.iter_mut().zip(slots) {
                    *y += (alpha * a) * pair_half(slot, high);
                }
            }
        }
    }
    fn axpy_bf16_rows(self, alpha: f32, a: &[f32], b: &[Bf16], row_stride: usize, y: &mut [f32]) {
        let width = y.len();
        for (l, &a) in a.iter().enumerate() {
            for (y, x) in y.iter_mut().zip(&b[l * row_stride..][..width]) {
                *y += (alpha * a) * x.to_f32();
            }
        }
    }
}

/// [`simd_tile`] for an edge of C, in a function of its own (entering the
/// instruction set again).
///
/// # Safety
/// As [`simd_tile`].
#[inline(never)]
unsafe fn edge_tile<S: Simd + GemmKernel, const MR: usize, const NV: usize>(
    s: S,
    kc: usize,
    a: APanel,
    b: BPanel,
    alpha: f32,
    beta: f32,
    c: Tile,
) {
    // SAFETY: forwarded contract.
    s.enter(
        #[inline(always)]
        |s| unsafe { simd_tile::<S, MR, NV, false>(s, kc, a, b, alpha, beta, c) },
    )
}

/// [`simd_tile`] for a whole tile stored past the caches (beta 0), in a
/// function of its own (entering the instruction set again).
///
/// # Safety
/// As [`simd_tile`].
#[inline(never)]
unsafe fn streamed_tile<S: Simd + GemmKernel, const MR: usize, const NV: usize>(
    s: S,
    kc: usize,
    a: APanel,
    b: BPanel,
    alpha: f32,
    c: Tile,
) {
    // SAFETY: forwarded contract.
    s.enter(
        #[inline(always)]
        |s| unsafe { simd_tile::<S, MR, NV, true>(s, kc, a, b, alpha, 0.0, c) },
    )
}

/// The SIMD microkernel: `MR × NV` vector accumulators, one rank-1 update
/// per step of k. With `STREAM` (a whole tile, beta 0), C is stored past
/// the caches ([`Simd::stream`]) and not fetched ahead.
///
/// # Safety
/// As [`GemmKernel::tile`], with `c.rows <= MR` and `c.cols <= NV · LANES`.
#[inline(always)]
unsafe fn simd_tile<S: Simd, const MR: usize, const NV: usize, const STREAM: bool>(
    s: S,
    kc: usize,
    a: APanel,
    b: BPanel,
    alpha: f32,
    beta: f32,
    c: Tile,
) {
    let nr = NV * S::LANES;
    // Start fetching C now so that it is in cache when the loop ends.
    for i in (0..c.rows).filter(|_| !STREAM) {
        prefetch(c.ptr.wrapping_add(i * c.ldc));
        prefetch(c.ptr.wrapping_add(i * c.ldc + c.cols - 1));
    }
    let mut acc = [[s.splat(0.0); NV]; MR];
    if a.rs == 1 && a.cs == MR && b.rs == nr {
        // Both packed. Eight steps of k per iteration, so that loop control
        // is a small share of the instructions issued (4 made LLVM spill an
        // accumulator; 8 measured fastest).
        let a = &a.data[..kc * MR];
        let b = &b.data[..kc * nr];
        let mut a_blocks = a.chunks_exact(8 * MR);
        let mut b_blocks = b.chunks_exact(8 * nr);
        for (a8, b8) in (&mut a_blocks).zip(&mut b_blocks) {
            for u in 0..8 {
                let ap = &a8[u * MR..][..MR];
                // SAFETY: `ap` holds MR floats, one per row.
                unsafe { rank_one_update(s, &mut acc, ap, 1, &b8[u * nr..][..nr]) };
            }
        }
        let rest = a_blocks.remainder().chunks_exact(MR);
        for (ap, bp) in rest.zip(b_blocks.remainder().chunks_exact(nr)) {
            // SAFETY: `ap` holds MR floats, one per row.
            unsafe { rank_one_update(s, &mut acc, ap, 1, bp) };
        }
    } else if kc > 0 {
        // A or B in place (or a shorter tile over a packed panel), with
        // their own strides.
        let (a_data, b_data) = (a.extent(MR, kc), b.extent(nr, kc));
        for p in 0..kc {
            // SAFETY: p < kc, so A's column `p` starts inside `a_data` and
            // its row MR - 1 is at most (MR - 1)·rs + (kc - 1)·cs, the last
            // element; B's row `p` ends at most at (kc - 1)·rs + nr, the
            // length of `b_data`.
            unsafe {
                let ap = a_data.get_unchecked(p * a.cs..);
                let bp = b_data.get_unchecked(p * b.rs..p * b.rs + nr);
                rank_one_update(s, &mut acc, ap, a.rs, bp);
            }
        }
    }

    // Streamed rows must start on lines, and the vectors of a row be
    // whole lines or halves of them.
    let on_lines = c.ptr.align_offset(64) == 0 && (c.ldc * 4).is_multiple_of(64);
    if STREAM && c.rows == MR && c.cols == nr && on_lines && 16usize.is_multiple_of(S::LANES) {
        for (i, acc_row) in acc.iter().enumerate() {
            // SAFETY: as below.
            let row = unsafe { core::slice::from_raw_parts_mut(c.ptr.add(i * c.ldc), nr) };
            for (dst, &acc) in row.chunks_exact_mut(S::LANES).zip(acc_row) {
                // SAFETY: `dst` holds LANES floats; rows start on lines and
                // LANES divides a line's 16 floats, so each vector starts
                // on its boundary.
                unsafe { s.stream(dst, s.mul(acc, s.splat(alpha))) };
            }
        }
    } else if c.rows == MR && c.cols == nr {
        for (i, acc_row) in acc.iter().enumerate() {
            // SAFETY: row `i < rows` of the tile, `nr == cols` floats long,
            // lies in the block the caller handed over.
            let row = unsafe { core::slice::from_raw_parts_mut(c.ptr.add(i * c.ldc), nr) };
            for (dst, &acc) in row.chunks_exact_mut(S::LANES).zip(acc_row) {
                write_vector(s, dst, acc, alpha, beta);
            }
        }
    } else {
        // An edge tile: a copy of the accumulators to index at run time
        // (indexing them would keep them in memory during the loop above),
        // then the valid corner, the last vector of each row masked.
        let spilled = acc;
        for (i, acc_row) in spilled.iter().enumerate().take(c.rows) {
            // SAFETY: as above, for a row `cols` floats long.
            let row = unsafe { core::slice::from_raw_parts_mut(c.ptr.add(i * c.ldc), c.cols) };
            for (piece, &acc) in pieces(c.cols, S::LANES).zip(acc_row) {
                write_vector(s, &mut row[piece], acc, alpha, beta);
            }
        }
    }
}

/// `dst = alpha · acc + beta · dst` for one vector of C (`dst` at most
/// `LANES` long), not reading `dst` when `beta == 0`.
///
/// A function rather than a closure: called from several places, a closure
/// may stay out of line, compiled without the instruction set.
#[inline(always)]
fn write_vector<S: Simd>(s: S, dst: &mut [f32], acc: S::V, alpha: f32, beta: f32) {
    let out = if beta == 0.0 {
        s.mul(acc, s.splat(alpha))
    } else {
        let c = s.mul(s.load_piece(dst, 0.0), s.splat(beta));
        s.mul_add(acc, s.splat(alpha), c)
    };
    s.store_piece(dst, out);
}

/// Adds `bias` (`c.cols` floats) to each row of a tile just stored, while
/// it is in L1: the same bits as a pass over C after the product. (Inside
/// the microkernel the bias cost the f32 loop half its speed: its
/// accumulators no longer stayed in registers.)
///
/// Out of line (entering the instruction set again): inlined beside the
/// microkernel, it slowed products of several passes over k by half.
///
/// # Safety
/// As [`GemmKernel::tile`].
#[inline(never)]
pub(crate) unsafe fn add_tile_bias<K: GemmKernel>(kernel: K, bias: &[f32], c: Tile) {
    kernel.enter(
        #[inline(always)]
        |kernel| {
            for i in 0..c.rows {
                // SAFETY: row `i < rows` of the tile, `cols` floats long,
                // lies in the block the caller handed over.
                let row = unsafe { core::slice::from_raw_parts_mut(c.ptr.add(i * c.ldc), c.cols) };
                kernel.axpy(1.0, &bias[..c.cols], row);
            }
        },
    )
}

/// `acc += a ⊗ b` for one step of k, where row `i`'s value of A is
/// `a[i·rs]`: `NV` loads of B, `MR` broadcasts of A.
///
/// # Safety
/// `(MR - 1)·rs < a.len()`.
#[inline(always)]
unsafe fn rank_one_update<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    acc: &mut [[S::V; NV]; MR],
    a: &[f32],
    rs: usize,
    b: &[f32],
) {
    let mut bv = [s.splat(0.0); NV];
    for (v, bv) in bv.iter_mut().enumerate() {
        *bv = s.load(&b[v * S::LANES..]);
    }
    for (i, acc_row) in acc.iter_mut().enumerate() {
        // SAFETY: i < MR, and the caller guarantees the index is in bounds.
        let av = s.splat(unsafe { *a.get_unchecked(i * rs) });
        for (acc, &bv) in acc_row.iter_mut().zip(&bv) {
            *acc = s.mul_add(av, bv, *acc);
        }
    }
}

/// Hints the cache to load the line holding `ptr` (never faults, so any
/// address is fine).
#[inline(always)]
pub(super) fn prefetch<T>(ptr: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint with no architectural effect; it does
    // not fault on any address. SSE is part of baseline x86-64.
    #[allow(unused_unsafe)]
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(ptr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// Writes `alpha · acc + beta · C` for the `rows × cols` corner of a tile
/// whose accumulators are in `acc` (row stride `nr`); C is not read when
/// `beta == 0`.
///
/// # Safety
/// As [`GemmKernel::tile`].
#[inline(always)]
unsafe fn write_tile(acc: &[f32], nr: usize, alpha: f32, beta: f32, c: Tile) {
    for (i, acc_row) in acc.chunks_exact(nr).take(c.rows).enumerate() {
        // SAFETY: row `i < rows` of the tile, `cols` floats long, lies in the
        // block the caller handed over.
        let row = unsafe { core::slice::from_raw_parts_mut(c.ptr.add(i * c.ldc), c.cols) };
        for (dst, &acc) in row.iter_mut().zip(acc_row) {
            *dst = if beta == 0.0 {
                alpha * acc
            } else {
                alpha * acc + beta * *dst
            };
        }
    }
}

#[inline(always)]
fn simd_axpy<S: Simd>(s: S, alpha: f32, x: &[f32], y: &mut [f32]) {
    let alpha = s.splat(alpha);
    update2(s, x, y, |x, y| s.mul_add(alpha, x, y));
}

/// The widest vector of any [`Simd`] (AVX-512's 16 lanes).
const MAX_LANES: usize = 16;

/// Accumulator vectors of the bf16 product of few rows
/// ([`GemmKernel::axpy_pair_rows`], [`GemmKernel::axpy_bf16_rows`]): 12,
/// as in AVX2's f32 tile, leaving AVX2's other 4 registers for a broadcast
/// and the loads. Each is one
/// chain of multiply-adds: one chain's multiply-adds wait on each other,
/// several overlap; and its panels are that many streams of B in flight.
/// On AMD EPYC Zen 3, decoding `shakes` in bf16 (`runner generate
/// --threads 1`, alternated): one panel at a time (4 chains) 568–581
/// tokens/s, two 635–768, three (12 chains) 751–827.
const PAIR_CHAINS: usize = 12;

/// Whole panels [`GemmKernel::axpy_pair_rows`] runs at once on vectors of
/// `lanes` lanes: 3 on AVX2, 6 on AVX-512.
pub(crate) const fn pair_panels(lanes: usize) -> usize {
    let per_panel = PAIR_PANEL / lanes;
    if per_panel == 0 || per_panel > PAIR_CHAINS {
        1
    } else {
        PAIR_CHAINS / per_panel
    }
}

/// [`GemmKernel::axpy_pair_rows`] for a SIMD instruction set: whole
/// panels [`pair_panels`] at a time, one chain per vector ([`PAIR_CHAINS`]
/// in all), then half as many, the rest one at a time; a last, partial
/// panel one chain per whole vector, then its last part through a padded
/// copy.
#[inline(always)]
fn simd_axpy_pair_rows<S: Simd>(
    s: S,
    alpha: f32,
    a: &[f32],
    pairs: &[u32],
    panel_stride: usize,
    y: &mut [f32],
) {
    let whole = y.len() / PAIR_PANEL;
    let group = pair_panels(S::LANES);
    let mut q = 0;
    while q < whole {
        // Whole groups, then half a group where one is left (two threads
        // share a 384-wide product as pieces of 3 panels), then single
        // panels.
        let take = match whole - q {
            left if left >= group => group,
            left if left >= group / 2 && group / 2 > 1 => group / 2,
            _ => 1,
        };
        let (ys, panels) = (
            &mut y[q * PAIR_PANEL..][..take * PAIR_PANEL],
            &pairs[q * panel_stride..],
        );
        q += match (PAIR_PANEL / S::LANES, take) {
            (4, 3) => panels_in_chains::<S, 4, 3>(s, alpha, a, panels, panel_stride, ys),
            (4, 1) => panels_in_chains::<S, 4, 1>(s, alpha, a, panels, panel_stride, ys),
            (2, 6) => panels_in_chains::<S, 2, 6>(s, alpha, a, panels, panel_stride, ys),
            (2, 3) => panels_in_chains::<S, 2, 3>(s, alpha, a, panels, panel_stride, ys),
            (2, 1) => panels_in_chains::<S, 2, 1>(s, alpha, a, panels, panel_stride, ys),
            // No tile for this width: a panel at a time, as a partial one.
            _ => {
                partial_panel(s, alpha, a, panels, &mut ys[..PAIR_PANEL]);
                1
            }
        };
    }
    let part = &mut y[whole * PAIR_PANEL..];
    if !part.is_empty() {
        partial_panel(s, alpha, a, &pairs[whole * panel_stride..], part);
    }
}

/// [`simd_axpy_pair_rows`] for `P` whole panels of `NV` vectors each;
/// returns `P`.
#[inline(always)]
fn panels_in_chains<S: Simd, const NV: usize, const P: usize>(
    s: S,
    alpha: f32,
    a: &[f32],
    pairs: &[u32],
    panel_stride: usize,
    y: &mut [f32],
) -> usize {
    let depth = a.len().div_ceil(2) * PAIR_PANEL;
    let panels: [&[u32]; P] = core::array::from_fn(|q| &pairs[q * panel_stride..][..depth]);
    let mut acc = [[s.splat(0.0); NV]; P];
    for (q, acc) in acc.iter_mut().enumerate() {
        for (v, acc) in acc.iter_mut().enumerate() {
            *acc = s.load(&y[q * PAIR_PANEL + v * S::LANES..]);
        }
    }
    for (l, &a) in a.iter().enumerate() {
        let (a, high) = (s.splat(alpha * a), l % 2 == 1);
        for (acc, panel) in acc.iter_mut().zip(&panels) {
            let slots = &panel[(l / 2) * PAIR_PANEL..][..PAIR_PANEL];
            for (v, acc) in acc.iter_mut().enumerate() {
                *acc = s.mul_add(a, s.load_pair_halves(&slots[v * S::LANES..], high), *acc);
            }
        }
    }
    for (q, acc) in acc.iter().enumerate() {
        for (v, acc) in acc.iter().enumerate() {
            s.store(&mut y[q * PAIR_PANEL + v * S::LANES..], *acc);
        }
    }
    P
}

/// [`simd_axpy_pair_rows`] for one panel of `y.len() <= PAIR_PANEL`
/// columns: whole vectors one chain each, then the part of one.
#[inline(always)]
fn partial_panel<S: Simd>(s: S, alpha: f32, a: &[f32], pairs: &[u32], y: &mut [f32]) {
    let whole = y.len() - y.len() % S::LANES;
    let (vectors, part) = y.split_at_mut(whole);
    for (v, y) in vectors.chunks_exact_mut(S::LANES).enumerate() {
        vector_in_chain(s, alpha, a, &pairs[v * S::LANES..], y);
    }
    if part.is_empty() {
        return;
    }
    debug_assert!(S::LANES <= MAX_LANES);
    let mut acc = s.load_partial(part, 0.0);
    for (l, &a) in a.iter().enumerate() {
        // The part's slots, padded (its extra lanes are never stored).
        let mut padded = [0u32; MAX_LANES];
        padded[..part.len()].copy_from_slice(&pairs[(l / 2) * PAIR_PANEL + whole..][..part.len()]);
        let b = s.load_pair_halves(&padded, l % 2 == 1);
        acc = s.mul_add(s.splat(alpha * a), b, acc);
    }
    s.store_partial(part, acc);
}

/// [`GemmKernel::axpy_bf16_rows`] for a SIMD instruction set: the columns
/// [`PAIR_CHAINS`] vectors at a time (one chain each, as
/// [`simd_axpy_pair_rows`] runs them), then 6, 4, 2 or 1 at a time, then
/// the part of one through a padded copy of each row's values.
#[inline(always)]
fn simd_axpy_bf16_rows<S: Simd>(
    s: S,
    alpha: f32,
    a: &[f32],
    b: &[Bf16],
    row_stride: usize,
    y: &mut [f32],
) {
    let vectors = y.len() / S::LANES;
    let mut v = 0;
    while v < vectors {
        let (b, y) = (&b[v * S::LANES..], &mut y[v * S::LANES..]);
        v += match vectors - v {
            PAIR_CHAINS.. => rows_in_chains::<S, PAIR_CHAINS>(s, alpha, a, b, row_stride, y),
            6.. => rows_in_chains::<S, 6>(s, alpha, a, b, row_stride, y),
            4.. => rows_in_chains::<S, 4>(s, alpha, a, b, row_stride, y),
            2.. => rows_in_chains::<S, 2>(s, alpha, a, b, row_stride, y),
            _ => rows_in_chains::<S, 1>(s, alpha, a, b, row_stride, y),
        };
    }
    let part = &mut y[vectors * S::LANES..];
    if part.is_empty() {
        return;
    }
    debug_assert!(S::LANES <= MAX_LANES);
    let mut acc = s.load_partial(part, 0.0);
    for (l, &a) in a.iter().enumerate() {
        // The part's values, padded (its extra lanes are never stored).
        let mut padded = [Bf16::default(); MAX_LANES];
        padded[..part.len()]
            .copy_from_slice(&b[l * row_stride + vectors * S::LANES..][..part.len()]);
        acc = s.mul_add(s.splat(alpha * a), s.load_bf16(&padded), acc);
    }
    s.store_partial(part, acc);
}

/// [`simd_axpy_bf16_rows`] for the first `NV` whole vectors of `y`, one
/// chain each; returns `NV`.
#[inline(always)]
fn rows_in_chains<S: Simd, const NV: usize>(
    s: S,
    alpha: f32,
    a: &[f32],
    b: &[Bf16],
    row_stride: usize,
    y: &mut [f32],
) -> usize {
    let mut acc = [s.splat(0.0); NV];
    for (v, acc) in acc.iter_mut().enumerate() {
        *acc = s.load(&y[v * S::LANES..]);
    }
    for (l, &a) in a.iter().enumerate() {
        let (a, row) = (s.splat(alpha * a), &b[l * row_stride..][..NV * S::LANES]);
        for (v, acc) in acc.iter_mut().enumerate() {
            *acc = s.mul_add(a, s.load_bf16(&row[v * S::LANES..]), *acc);
        }
    }
    for (v, acc) in acc.iter().enumerate() {
        s.store(&mut y[v * S::LANES..], *acc);
    }
    NV
}

/// One vector of a panel (`y.len() == LANES`) in one chain.
#[inline(always)]
fn vector_in_chain<S: Simd>(s: S, alpha: f32, a: &[f32], pairs: &[u32], y: &mut [f32]) {
    let mut acc = s.load(y);
    for (l, &a) in a.iter().enumerate() {
        let b = s.load_pair_halves(&pairs[(l / 2) * PAIR_PANEL..], l % 2 == 1);
        acc = s.mul_add(s.splat(alpha * a), b, acc);
    }
    s.store(y, acc);
}

#[inline(always)]
fn simd_axpy4<S: Simd>(s: S, alphas: [f32; 4], xs: [&[f32]; 4], y: &mut [f32]) {
    let (a0, a1, a2, a3) = (
        s.splat(alphas[0]),
        s.splat(alphas[1]),
        s.splat(alphas[2]),
        s.splat(alphas[3]),
    );
    let n = y.len();
    let [x0, x1, x2, x3] = xs.map(|x| &x[..n]);
    let mut ys = y.chunks_exact_mut(S::LANES);
    let (mut c0, mut c1) = (x0.chunks_exact(S::LANES), x1.chunks_exact(S::LANES));
    let (mut c2, mut c3) = (x2.chunks_exact(S::LANES), x3.chunks_exact(S::LANES));
    let rows = (&mut c0).zip(&mut c1).zip((&mut c2).zip(&mut c3));
    for (y, ((x0, x1), (x2, x3))) in (&mut ys).zip(rows) {
        let mut v = s.mul_add(a0, s.load(x0), s.load(y));
        v = s.mul_add(a1, s.load(x1), v);
        v = s.mul_add(a2, s.load(x2), v);
        v = s.mul_add(a3, s.load(x3), v);
        s.store(y, v);
    }
    let y = ys.into_remainder();
    if !y.is_empty() {
        let load = |c: &core::slice::ChunksExact<f32>| s.load_partial(c.remainder(), 0.0);
        let mut v = s.mul_add(a0, load(&c0), s.load_partial(y, 0.0));
        v = s.mul_add(a1, load(&c1), v);
        v = s.mul_add(a2, load(&c2), v);
        v = s.mul_add(a3, load(&c3), v);
        s.store_partial(y, v);
    }
}

#[inline(always)]
fn simd_dot<S: Simd>(s: S, x: &[f32], y: &[f32]) -> f32 {
    let acc = fold2(
        s,
        x,
        y,
        #[inline(always)]
        |acc, x, y| s.mul_add(x, y, acc),
        |p, q| s.add(p, q),
    );
    s.reduce_sum(acc)
}
