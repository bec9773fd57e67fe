//! The loop nest of pair-packed products, written once over the
//! [`PairDot`] units (AVX512-BF16, and an emulated one for tests) and the
//! AMX tiles: packing in pieces, then blocks of C in pieces.

use core::ops::Range;

use super::amx;
#[cfg(test)]
use super::packing::unpair;
use super::packing::{from_line, pack_a_panels, pack_panels, PairLayout};
use super::{Bf16Input, TileIsa, NR};
use crate::bf16::pair;
use crate::dispatch::dispatch;
use crate::gemm::microkernel::{prefetch, ScalarKernel};
use crate::gemm::{MatMut, MatRef};
use crate::parallel::{run_pieces, SharedMut};
use crate::simd::stream_fence;
use crate::{Bf16, Executor, Kernels};

/// Independent accumulator chains of the peak loop: as many as a register
/// tile has rows, enough to cover the dot product's latency.
pub(super) const PEAK_CHAINS: usize = 12;

pub(super) fn pair_chains<P: PairDot>(unit: P, iters: usize) -> f32 {
    unit.enter(
        #[inline(always)]
        |u| {
            let b = [core::hint::black_box(pair(Bf16::from_f32(1e-3), Bf16::from_f32(1e-3))); 16];
            let (a, b) = (core::hint::black_box(b[0]), u.load_b(&b));
            let mut acc = [u.zero(); PEAK_CHAINS];
            for _ in 0..iters {
                for x in &mut acc {
                    *x = u.dot(*x, a, b);
                }
            }
            let mut out = [0.0f32; 16];
            let mut total = 0.0;
            for x in acc {
                u.update(x, 1.0, 0.0, &mut out);
                total += out[0];
            }
            total
        },
    )
}

/// Where a product's B panels come from: packed from B as the product
/// runs (into the workspace after packed A), or packed beforehand.
pub(super) enum PanelsOfB<'a, B> {
    Pack {
        b: &'a MatRef<'a, B>,
        into: &'a mut [f32],
    },
    /// Panel `j` starts at slot `j · stride`.
    Packed { panels: &'a [f32], stride: usize },
}

/// The pair-packed product on `unit`, in two rounds of pieces of `exec`:
/// the A panels are packed (a block of rows a piece), and the B panels
/// unless B came packed (a block of columns a piece); then each piece
/// computes one block of C: [`BLOCK_ROWS`] rows by [`BLOCK_PANELS`] column
/// panels, so its rows of packed A stay in L2 across its panels. Every
/// element of C is summed in the same order whatever the blocks, so the
/// result does not depend on the executor. Packing rounds with the
/// backend's vectors.
pub(super) fn run_pairs<P: PairDot, E: Executor + ?Sized, A: Bf16Input, B: Bf16Input>(
    unit: P,
    tiles: Option<TileIsa>,
    kernels: &Kernels,
    exec: &E,
    (alpha, a, b, beta, c): (f32, &MatRef<A>, PanelsOfB<B>, f32, MatMut),
    packed_a: &mut [f32],
) {
    let layout = PairLayout::new(c.rows, c.cols, a.cols(), tiles.is_some());
    let (a_panel, b_panel) = (layout.a_panel_len(), layout.b_panel_len());
    let packed_a = &mut from_line(packed_a)[..layout.a_len()];
    let a_in_place = rows_in_place(a, &layout);
    let first_packed = a_in_place.as_ref().map_or(0, |r| r.panels);
    let a_out = SharedMut(packed_a.as_mut_ptr());
    // B to pack (through its transpose: rows of Bᵀ are columns of B) into
    // the workspace after A, unless it came packed.
    let mut b = b;
    let pack_b = match &mut b {
        PanelsOfB::Pack { b, into } => {
            Some((b.t(), SharedMut(into[..layout.b_len()].as_mut_ptr())))
        }
        PanelsOfB::Packed { .. } => None,
    };
    // One round packs both, A a block of rows a piece and B a block of
    // columns a piece (whole runs of columns where the columns are
    // contiguous, see `pack_panels`): a thread that finishes its share of
    // one goes on to the other instead of waiting between two rounds.
    let a_blocks = layout.row_blocks();
    let b_blocks = pack_b.as_ref().map_or(0, |_| layout.col_blocks());
    run_pieces(exec, a_blocks + b_blocks, &|piece| {
        if piece < a_blocks {
            let panels = layout.row_block(piece);
            let panels = panels.start.max(first_packed)..panels.end;
            if panels.is_empty() {
                return;
            }
            // SAFETY: `panels` ends at most at `a_panels`, and A panel `p`
            // is its own `a_panel` floats of `packed_a` (a_panels · a_panel
            // = a_len); the row blocks do not overlap, so no other piece
            // touches them.
            let out = unsafe { a_out.slice(panels.start * a_panel, panels.len() * a_panel) };
            // (Pair units run on a SIMD backend; the scalar arm is for
            // completeness.)
            dispatch!(kernels,
                scalar: pack_a_panels(ScalarKernel, a, layout, panels.clone(), out),
                simd: |s| pack_a_panels(s, a, layout, panels.clone(), out),
            );
        } else if let Some((bt, b_out)) = &pack_b {
            let panels = layout.col_block(piece - a_blocks);
            // SAFETY: `panels` ends at most at `b_panels`, and B panel `j`
            // is its own `b_panel` floats of the `b_len` floats at `b_out`
            // (b_panels · b_panel = b_len); the column blocks do not
            // overlap, so no other piece touches them.
            let out = unsafe { b_out.slice(panels.start * b_panel, panels.len() * b_panel) };
            dispatch!(kernels,
                scalar: pack_panels(ScalarKernel, bt, NR, panels.clone(), out),
                simd: |s| pack_panels(s, bt, NR, panels.clone(), out),
            );
        }
    });
    let (packed_b, b_stride): (&[f32], usize) = match b {
        PanelsOfB::Pack { into, .. } => (&into[..layout.b_len()], b_panel),
        PanelsOfB::Packed { panels, stride } => (panels, stride),
    };
    // A C written once and too large to stay in cache for its reader is
    // stored past the caches (tiles run down the whole of k, the pair
    // path in passes).
    let passes = if layout.tiles {
        1
    } else {
        layout.k_pairs.div_ceil(KC_PAIRS)
    };
    let stream_c = kernels.blocking.streams_c(
        c.data.as_ptr(),
        (c.rows, c.cols, c.row_stride),
        beta,
        passes,
    );
    let run = Pairs {
        layout,
        stream_c,
        tiles: tiles.filter(|_| layout.tiles),
        alpha,
        beta,
        a: packed_a,
        a_in_place,
        b: packed_b,
        b_stride,
        c: SharedMut(c.data.as_mut_ptr()),
        c_stride: c.row_stride,
    };
    let col_blocks = layout.col_blocks();
    run_pieces(exec, layout.row_blocks() * col_blocks, &|p| {
        let (rows, panels) = (
            layout.row_block(p / col_blocks),
            layout.col_block(p % col_blocks),
        );
        unit.enter(
            #[inline(always)]
            |u| {
                run.block_dispatch(u, rows, panels);
                if run.stream_c {
                    stream_fence();
                }
            },
        )
    });
}

/// Rows of A that tiles read where they lie, as pair slots: `panels`
/// whole panels of [`amx::MR`] rows, row `r` at slot `r · stride`.
struct RowsInPlace<'a> {
    slots: &'a [f32],
    stride: usize,
    panels: usize,
}

/// A's rows to read in place, where the product runs on tiles and A
/// needs no packing: bf16 rows (not transposed) on 64-byte lines (the
/// first row from a line boundary, rows a whole number of lines apart: a
/// tile row straddling two lines loads at half the speed), and k whole
/// tile steps (a multiple of 32, so no pair is padded). Packing such rows
/// only copies them; on tiles that copy would cost most of what the
/// multiplying does. The whole panels of rows are read in place, a last
/// partial one is packed.
fn rows_in_place<'a, A: Bf16Input>(
    a: &MatRef<'a, A>,
    layout: &PairLayout,
) -> Option<RowsInPlace<'a>> {
    let (rs, cs) = a.strides();
    let k = a.cols();
    let panels = layout.m / amx::MR;
    if !layout.tiles
        || cs != 1
        || !rs.is_multiple_of(2 * amx::K_STEP)
        || k == 0
        || !k.is_multiple_of(2 * amx::K_STEP)
        || panels == 0
    {
        return None;
    }
    let slots = A::as_pair_slots(a.data)?;
    if slots.as_ptr().align_offset(64) != 0 {
        return None;
    }
    // The last in-place row's pairs end there; the view guarantees it.
    let end = (panels * amx::MR - 1) * (rs / 2) + k / 2;
    (slots.len() >= end).then_some(RowsInPlace {
        slots,
        stride: rs / 2,
        panels,
    })
}

/// Rows of C per block (a multiple of every layout's `mr`: 1, 4, 12 and
/// the tiles' 32): on the pair-dot path, with a pass of 256 pairs, its
/// packed A is 192 KiB, in L2 on every CPU with AVX512-BF16 (Zen 4: 1
/// MiB).
pub(super) const BLOCK_ROWS: usize = 192;

/// Column panels per block: the B slices of a pass (4 × 32 KiB) stay in
/// L2 beside the A block.
pub(super) const BLOCK_PANELS: usize = 4;

/// One instruction set's pair dot product on 16 f32 lanes: lane `j` adds
/// `a.lo · b[j].lo + a.hi · b[j].hi`.
pub(super) trait PairDot: Copy + Send + Sync {
    type Acc: Copy;
    type B: Copy;
    /// Runs `f` with the instruction set enabled.
    fn enter<R>(self, f: impl FnOnce(Self) -> R) -> R;
    fn zero(self) -> Self::Acc;
    /// 16 pairs of B (16 slots).
    fn load_b(self, b: &[f32]) -> Self::B;
    /// `acc += a · b` for the broadcast pair `a` (one slot).
    fn dot(self, acc: Self::Acc, a: f32, b: Self::B) -> Self::Acc;
    /// 16 f32 sums as an accumulator.
    fn load_acc(self, sums: &[f32]) -> Self::Acc;
    /// `c = alpha · acc + beta · c` on the first `c.len() <= 16` lanes;
    /// `beta = 0` does not read `c`.
    fn update(self, acc: Self::Acc, alpha: f32, beta: f32, c: &mut [f32]);
    /// `c = alpha · acc`, stored past the caches where `c` is one whole
    /// 64-byte line (16 floats on a line boundary), else as
    /// [`PairDot::update`] with beta 0. Other threads see streamed stores
    /// in order only after [`stream_fence`].
    fn stream(self, acc: Self::Acc, alpha: f32, c: &mut [f32]);
}

/// A product to run: the layout, the tile unit if it runs on tiles, the
/// scalars, packed A and B, and C.
struct Pairs<'a> {
    layout: PairLayout,
    /// Whether C is stored past the caches ([`PairDot::stream`]; beta is
    /// then 0).
    stream_c: bool,
    tiles: Option<TileIsa>,
    alpha: f32,
    beta: f32,
    a: &'a [f32],
    /// The panels of A that tiles read where A lies (packed A holds the
    /// rest).
    a_in_place: Option<RowsInPlace<'a>>,
    b: &'a [f32],
    /// Slots from one B panel to the next.
    b_stride: usize,
    c: SharedMut,
    c_stride: usize,
}

impl Pairs<'_> {
    /// The block of C of row tiles `rows` and column panels `panels`, on
    /// tiles or with the register tile of the layout's height.
    #[inline(always)]
    fn block_dispatch<P: PairDot>(&self, unit: P, rows: Range<usize>, panels: Range<usize>) {
        match self.tiles {
            #[cfg(target_arch = "x86_64")]
            Some(TileIsa::Amx) => {
                // SAFETY: `TileIsa::Amx` comes from a handle whose bf16 unit
                // is AMX, granted only after detection and the OS's
                // permission.
                let tiles = unsafe { amx::AmxTiles::granted() };
                return self.tile_block(tiles, unit, rows, panels);
            }
            #[cfg(test)]
            Some(TileIsa::Emulated) => {
                return self.tile_block(amx::EmulatedTiles, unit, rows, panels)
            }
            None => {}
        }
        match self.layout.mr {
            12 => self.block::<P, 12>(unit, rows, panels),
            4 => self.block::<P, 4>(unit, rows, panels),
            _ => self.block::<P, 1>(unit, rows, panels),
        }
    }

    /// `C[rows of row tile i, columns of panel j] = alpha · sums + beta ·
    /// C` for the sums of one register or tile block (`sums[r]` holds row
    /// r's 32 columns as two halves).
    #[inline(always)]
    fn update<P: PairDot>(&self, unit: P, i: usize, j: usize, beta: f32, sums: &[[P::Acc; 2]]) {
        let (l, mr) = (&self.layout, self.layout.mr);
        let cols = NR.min(l.n - j * NR);
        for (r, row_sums) in sums.iter().enumerate().take(mr.min(l.m - i * mr)) {
            let at = (i * mr + r) * self.c_stride + j * NR;
            // SAFETY: row `i·mr + r` < m and columns `j·NR..j·NR + cols` ≤ n
            // lie inside C (`MatMut` checked its extent; its row stride is
            // at least n where m > 1, so rows do not overlap); only the
            // piece of this block writes them.
            let c = unsafe { core::slice::from_raw_parts_mut(self.c.ptr().add(at), cols) };
            let (c0, c1) = c.split_at_mut(cols.min(16));
            for (sums, c) in [(row_sums[0], c0), (row_sums[1], c1)] {
                match c.len() {
                    0 => {}
                    _ if self.stream_c => unit.stream(sums, self.alpha, c),
                    _ => unit.update(sums, self.alpha, beta, c),
                }
            }
        }
    }

    /// Starts fetching the C rows of row tile `i`, column panel `j`, so
    /// that they are in cache when its sums are ready.
    #[inline(always)]
    fn prefetch_c(&self, i: usize, j: usize) {
        let (l, mr) = (&self.layout, self.layout.mr);
        let cols = NR.min(l.n - j * NR);
        for r in 0..mr.min(l.m - i * mr) {
            let row = self
                .c
                .ptr()
                .wrapping_add((i * mr + r) * self.c_stride + j * NR);
            prefetch(row);
            prefetch(row.wrapping_add(cols - 1));
        }
    }

    /// A block on tiles: each `amx::MR × 32` block of sums runs down the
    /// whole of k, the tiles configured once for the whole block. Where C
    /// takes the sums as they are (alpha 1, beta 0 or 1) and the block
    /// lies whole inside C, the tiles start from C (or zero) and store
    /// into it; else (and where C is streamed) the sums go through a
    /// buffer and the pair unit's epilogue.
    #[inline(always)]
    fn tile_block<T: amx::TileProduct, P: PairDot>(
        &self,
        tiles: T,
        unit: P,
        rows: Range<usize>,
        panels: Range<usize>,
    ) {
        let l = &self.layout;
        let steps = l.b_pairs / amx::K_STEP;
        let in_c = self.alpha == 1.0 && (self.beta == 0.0 || self.beta == 1.0) && !self.stream_c;
        tiles.configured(
            #[inline(always)]
            |tiles| {
                let mut sums = amx::TileSums([0.0; amx::MR * NR]);
                let mut acc = [[unit.zero(); 2]; amx::MR];
                for j in panels {
                    let b = &self.b[j * self.b_stride..][..l.b_panel_len()];
                    for i in rows.clone() {
                        let a = match &self.a_in_place {
                            Some(r) if i < r.panels => {
                                amx::ATiles::rows(&r.slots[i * amx::MR * r.stride..], r.stride)
                            }
                            _ => amx::ATiles::packed(
                                &self.a[i * l.a_panel_len()..][..l.a_panel_len()],
                            ),
                        };
                        let whole = (i + 1) * amx::MR <= l.m && (j + 1) * NR <= l.n;
                        if in_c && whole {
                            let c = self
                                .c
                                .ptr()
                                .wrapping_add(i * amx::MR * self.c_stride + j * NR);
                            let start =
                                (self.beta != 0.0).then_some((c.cast_const(), self.c_stride));
                            // SAFETY: the block's 32 rows and 32 columns
                            // lie inside C (`whole`; rows `c_stride ≥ n`
                            // floats apart), and only this piece touches
                            // them; C is read before the block stores.
                            unsafe { T::block(tiles, a, b, steps, start, (c, self.c_stride)) };
                        } else {
                            amx::block_sums(tiles, a, b, steps, &mut sums);
                            for (acc, row) in acc.iter_mut().zip(sums.0.chunks_exact(NR)) {
                                *acc = [unit.load_acc(&row[..16]), unit.load_acc(&row[16..])];
                            }
                            self.update(unit, i, j, self.beta, &acc);
                        }
                    }
                }
            },
        )
    }

    /// A block with `MR`-row register tiles, in passes over slices of k:
    /// the slice of a B panel stays in L1 while the block's row tiles read
    /// it, and C takes each pass's sums (`beta` on the first).
    #[inline(always)]
    fn block<P: PairDot, const MR: usize>(
        &self,
        unit: P,
        rows: Range<usize>,
        panels: Range<usize>,
    ) {
        let l = &self.layout;
        let passes = l.k_pairs.div_ceil(KC_PAIRS);
        let per_pass = l.k_pairs.div_ceil(passes);
        for pass in 0..passes {
            let pairs = pass * per_pass..l.k_pairs.min((pass + 1) * per_pass);
            let beta = if pass == 0 { self.beta } else { 1.0 };
            for j in panels.clone() {
                let b = &self.b[j * self.b_stride..][pairs.start * NR..pairs.end * NR];
                for i in rows.clone() {
                    let a = &self.a[i * l.a_panel_len()..][pairs.start * MR..pairs.end * MR];
                    if !self.stream_c {
                        self.prefetch_c(i, j);
                    }
                    self.update(unit, i, j, beta, &tile::<P, MR>(unit, a, b));
                }
            }
        }
    }
}

/// Pairs of k per pass of the pair-dot path: the B slice of a pass (32
/// columns × 256 pairs = 32 KiB) fits the smallest L1 of the CPUs this
/// runs on (Zen 4: 32 KiB; Sapphire Rapids: 48 KiB), and the trainer's
/// k = 384 runs in one pass.
const KC_PAIRS: usize = 256;

/// The `MR × 32` sums of one A panel and one B panel over the pairs of k
/// they hold (one pass).
#[inline(always)]
fn tile<P: PairDot, const MR: usize>(unit: P, a: &[f32], b: &[f32]) -> [[P::Acc; 2]; MR] {
    let mut acc = [[unit.zero(); 2]; MR];
    for (a, b) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        let (b0, b1) = (unit.load_b(&b[..16]), unit.load_b(&b[16..]));
        for (acc, &a) in acc.iter_mut().zip(a) {
            acc[0] = unit.dot(acc[0], a, b0);
            acc[1] = unit.dot(acc[1], a, b1);
        }
    }
    acc
}

/// Proof that the CPU runs AVX512-BF16 (with AVX512F and BW), i.e. that
/// [`Bf16Unit::Avx512Bf16`](crate::Bf16Unit::Avx512Bf16) was detected.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct V4Bf16(());

#[cfg(target_arch = "x86_64")]
impl V4Bf16 {
    /// The proof that the unit may run (made here and in `vectorize`, both
    /// under the same contract).
    ///
    /// # Safety
    /// [`Bf16Unit::Avx512Bf16`](crate::Bf16Unit::Avx512Bf16) or [`Bf16Unit::Amx`](crate::Bf16Unit::Amx) must have been
    /// detected on an AVX-512 handle (a [`PairIsa::V4Bf16`](super::PairIsa::V4Bf16) unit).
    pub(super) unsafe fn detected() -> V4Bf16 {
        V4Bf16(())
    }

    /// # Safety
    /// The CPU must support AVX512F, AVX512BW and AVX512-BF16 and the OS
    /// must save ZMM state ([`Bf16Unit::Avx512Bf16`](crate::Bf16Unit::Avx512Bf16) detected).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma")]
    #[inline]
    unsafe fn vectorize<R>(f: impl FnOnce(V4Bf16) -> R) -> R {
        f(V4Bf16(()))
    }
}

// Every `unsafe` below calls an AVX-512 intrinsic. SAFETY (for all of
// them): a `V4Bf16` value is made only by `V4Bf16::detected` and
// `V4Bf16::vectorize`, whose contracts are that the CPU supports them;
// loads read slices whose length was checked on the line before.
#[cfg(target_arch = "x86_64")]
impl PairDot for V4Bf16 {
    type Acc = core::arch::x86_64::__m512;
    type B = core::arch::x86_64::__m512bh;

    #[inline(always)]
    fn enter<R>(self, f: impl FnOnce(Self) -> R) -> R {
        // SAFETY: holding `self` proves the unit was detected
        // (`V4Bf16::detected`).
        unsafe { V4Bf16::vectorize(f) }
    }
    #[inline(always)]
    fn zero(self) -> Self::Acc {
        // SAFETY: see the impl comment.
        unsafe { core::arch::x86_64::_mm512_setzero_ps() }
    }
    #[inline(always)]
    fn load_b(self, b: &[f32]) -> Self::B {
        use core::arch::x86_64::*;
        let b = &b[..16];
        // SAFETY: see the impl comment; `b` holds 16 slots (64 bytes), and
        // a 512-bit integer vector and 32 bf16 lanes are the same bits.
        unsafe { core::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.as_ptr().cast())) }
    }
    #[inline(always)]
    fn dot(self, acc: Self::Acc, a: f32, b: Self::B) -> Self::Acc {
        use core::arch::x86_64::*;
        // SAFETY: see the impl comment; the broadcast slot holds one pair,
        // repeated into every lane's pair.
        unsafe {
            let a = _mm512_set1_epi32(a.to_bits() as i32);
            _mm512_dpbf16_ps(acc, core::mem::transmute::<__m512i, __m512bh>(a), b)
        }
    }
    #[inline(always)]
    fn load_acc(self, sums: &[f32]) -> Self::Acc {
        let sums = &sums[..16];
        // SAFETY: see the impl comment; `sums` holds 16 floats.
        unsafe { core::arch::x86_64::_mm512_loadu_ps(sums.as_ptr()) }
    }
    #[inline(always)]
    fn update(self, acc: Self::Acc, alpha: f32, beta: f32, c: &mut [f32]) {
        use core::arch::x86_64::*;
        let mask = ((1u32 << c.len().min(16)) - 1) as __mmask16;
        // SAFETY: see the impl comment; the masked load and store touch
        // exactly the first `c.len() <= 16` floats of `c`.
        unsafe {
            let scaled = _mm512_mul_ps(_mm512_set1_ps(alpha), acc);
            let out = if beta == 0.0 {
                scaled
            } else {
                let old = _mm512_maskz_loadu_ps(mask, c.as_ptr());
                _mm512_fmadd_ps(_mm512_set1_ps(beta), old, scaled)
            };
            _mm512_mask_storeu_ps(c.as_mut_ptr(), mask, out);
        }
    }
    #[inline(always)]
    fn stream(self, acc: Self::Acc, alpha: f32, c: &mut [f32]) {
        use core::arch::x86_64::*;
        if c.len() != 16 || c.as_ptr().align_offset(64) != 0 {
            return self.update(acc, alpha, 0.0, c);
        }
        // SAFETY: see the impl comment; `c` is 16 floats on a 64-byte
        // boundary, the alignment the streaming store requires.
        unsafe { _mm512_stream_ps(c.as_mut_ptr(), _mm512_mul_ps(_mm512_set1_ps(alpha), acc)) }
    }
}

/// The pair dot product lane by lane in f32, so the packing and blocking
/// of the AVX512-BF16 path run on any CPU in tests.
#[cfg(test)]
#[derive(Clone, Copy)]
pub(super) struct EmulatedPairs;

#[cfg(test)]
impl PairDot for EmulatedPairs {
    type Acc = [f32; 16];
    type B = [f32; 16];

    fn enter<R>(self, f: impl FnOnce(Self) -> R) -> R {
        f(self)
    }
    fn zero(self) -> [f32; 16] {
        [0.0; 16]
    }
    fn load_b(self, b: &[f32]) -> [f32; 16] {
        core::array::from_fn(|j| b[j])
    }
    fn dot(self, acc: [f32; 16], a: f32, b: [f32; 16]) -> [f32; 16] {
        let (a_lo, a_hi) = unpair(a);
        core::array::from_fn(|j| {
            let (b_lo, b_hi) = unpair(b[j]);
            acc[j] + a_lo * b_lo + a_hi * b_hi
        })
    }
    fn load_acc(self, sums: &[f32]) -> [f32; 16] {
        core::array::from_fn(|j| sums[j])
    }
    fn update(self, acc: [f32; 16], alpha: f32, beta: f32, c: &mut [f32]) {
        for (x, &sum) in c.iter_mut().zip(&acc) {
            *x = if beta == 0.0 {
                alpha * sum
            } else {
                beta.mul_add(*x, alpha * sum)
            };
        }
    }
    fn stream(self, acc: [f32; 16], alpha: f32, c: &mut [f32]) {
        self.update(acc, alpha, 0.0, c)
    }
}
