//! The loop nest of pair-packed products, written once over the
//! [`PairDot`] units (AVX512-BF16, and an emulated one for tests) and the
//! AMX tiles: packing in pieces, then blocks of C in pieces.

use core::ops::Range;

use super::amx;
#[cfg(test)]
use super::packing::unpair;
use super::packing::{from_line, pack_a_panels, pack_panels, PairLayout};
use super::OutputMat;
use super::{Bf16Input, TileIsa, NR};
use crate::bf16::pair;
use crate::dispatch::dispatch;
use crate::gemm::microkernel::{prefetch, ScalarKernel};
use crate::gemm::MatRef;
use crate::parallel::{run_pieces, threads_of, SharedMut};
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

/// One product for [`run_pairs`]: `C = alpha · op(A) · op(B) + beta · C`,
/// plus `bias` in every row of C where given (alpha is then 1 and beta 0).
pub(super) struct Product<'a, A, B> {
    pub(super) alpha: f32,
    pub(super) a: &'a MatRef<'a, A>,
    pub(super) b: PanelsOfB<'a, B>,
    pub(super) beta: f32,
    pub(super) bias: Option<&'a [f32]>,
    pub(super) c: OutputMat<'a>,
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
/// panels (on tiles, the panels of a quarter of L2:
/// [`PairLayout::sweeping`]), so that what it reads again stays in L2. Every
/// element of C is summed in the same order whatever the blocks, so the
/// result does not depend on the executor. Packing rounds with the
/// backend's vectors. A bias (alpha 1 and beta 0 then) is added to every
/// row of C as its blocks are stored.
pub(super) fn run_pairs<P: PairDot, E: Executor + ?Sized, A: Bf16Input, B: Bf16Input>(
    unit: P,
    tiles: Option<TileIsa>,
    kernels: &Kernels,
    exec: &E,
    product: Product<A, B>,
    packed_a: &mut [f32],
) {
    let Product {
        alpha,
        a,
        b,
        beta,
        bias,
        c,
    } = product;
    let (m, n) = c.shape();
    let layout =
        PairLayout::new(m, n, a.cols(), tiles.is_some()).sweeping(kernels.blocking.b_sweep_bytes());
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
    // columns (or less, `pack_width`) a piece (whole runs of columns where
    // the columns are contiguous, see `pack_panels`): a thread that
    // finishes its share of one goes on to the other instead of waiting
    // between two rounds.
    let a_blocks = layout.row_blocks();
    let b_width = layout.pack_width(threads_of(exec));
    let b_blocks = pack_b
        .as_ref()
        .map_or(0, |_| layout.b_panels().div_ceil(b_width));
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
            let first = (piece - a_blocks) * b_width;
            let panels = first..layout.b_panels().min(first + b_width);
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
    let (c, c_stride, stream_c) = match c {
        OutputMat::F32(c) => (
            OutputPtr::F32(SharedMut(c.data.as_mut_ptr())),
            c.row_stride,
            (kernels.blocking).streams_c(c.data.as_ptr(), (m, n, c.row_stride), beta, passes),
        ),
        OutputMat::Bf16(c) => (
            OutputPtr::Bf16(SharedMut(c.data.as_mut_ptr())),
            c.row_stride,
            (kernels.blocking).streams_c(c.data.as_ptr(), (m, n, c.row_stride), beta, passes),
        ),
    };
    let run = Pairs {
        layout,
        stream_c,
        tiles: tiles.filter(|_| layout.tiles),
        alpha,
        beta,
        bias,
        a: packed_a,
        a_in_place,
        b: packed_b,
        b_stride,
        c,
        c_stride,
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

/// Rows of C per block (a multiple of every layout's `mr`: 4, 12 and
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
    /// `acc + other`, lane by lane.
    fn add(self, acc: Self::Acc, other: Self::Acc) -> Self::Acc;
    /// `c = alpha · acc + beta · c` on the first `c.len() <= 16` lanes;
    /// `beta = 0` does not read `c`.
    fn update(self, acc: Self::Acc, alpha: f32, beta: f32, c: &mut [f32]);
    /// `c = alpha · acc`, stored past the caches where `c` is one whole
    /// 64-byte line (16 floats on a line boundary), else as
    /// [`PairDot::update`] with beta 0. Other threads see streamed stores
    /// in order only after [`stream_fence`].
    fn stream(self, acc: Self::Acc, alpha: f32, c: &mut [f32]);
    /// `c = alpha · sums + beta · c` on the first `c.len() <= 32` columns
    /// of a bf16 row (`sums[0]` holds columns 0–15), each value computed
    /// in f32 as [`PairDot::update`] does and rounded as
    /// [`Bf16::from_f32`] does; `beta = 0` does not read `c`.
    fn update_bf16(self, sums: [Self::Acc; 2], alpha: f32, beta: f32, c: &mut [Bf16]);
    /// [`PairDot::update_bf16`] with beta 0, stored past the caches where
    /// `c` is one whole line (32 values on a 64-byte boundary).
    fn stream_bf16(self, sums: [Self::Acc; 2], alpha: f32, c: &mut [Bf16]);
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
    /// Added to every row of C (alpha is then 1 and beta 0): tiles start
    /// their sums from it, register tiles add it to theirs.
    bias: Option<&'a [f32]>,
    a: &'a [f32],
    /// The panels of A that tiles read where A lies (packed A holds the
    /// rest).
    a_in_place: Option<RowsInPlace<'a>>,
    b: &'a [f32],
    /// Slots from one B panel to the next.
    b_stride: usize,
    c: OutputPtr,
    /// Elements from one row of C to the next.
    c_stride: usize,
}

/// C as the blocks write it: f32 sums, or the sums rounded to bf16.
#[derive(Clone, Copy)]
enum OutputPtr {
    F32(SharedMut<f32>),
    Bf16(SharedMut<Bf16>),
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
            _ => self.block::<P, 4>(unit, rows, panels),
        }
    }

    /// `C[rows of row tile i, columns of panel j] = alpha · sums + beta ·
    /// C` for the sums of one register or tile block (`sums[r]` holds row
    /// r's 32 columns as two halves), rounded where C is bf16.
    #[inline(always)]
    fn update<P: PairDot>(&self, unit: P, i: usize, j: usize, beta: f32, sums: &[[P::Acc; 2]]) {
        let (l, mr) = (&self.layout, self.layout.mr);
        let cols = NR.min(l.n - j * NR);
        for (r, row_sums) in sums.iter().enumerate().take(mr.min(l.m - i * mr)) {
            // SAFETY: row `i·mr + r` < m (the `take`) and columns `j·NR..j·NR
            // + cols` ≤ n; only the piece of this block writes them.
            unsafe { self.store_row(unit, i * mr + r, j, cols, beta, *row_sums) };
        }
    }

    /// [`Pairs::update`] for rows `rows` of the sums of a whole tile block
    /// (32 rows and columns inside C), each row loaded from the buffer as
    /// it is stored (all 32 rows of accumulators at once would not stay in
    /// registers): storing the sums took a third of the time of a block at
    /// k = 384.
    #[inline(always)]
    fn update_whole<P: PairDot>(
        &self,
        unit: P,
        i: usize,
        j: usize,
        sums: &amx::TileSums,
        rows: Range<usize>,
    ) {
        for r in rows {
            let row = &sums.0[r * NR..][..NR];
            let acc = [unit.load_acc(&row[..16]), unit.load_acc(&row[16..])];
            // SAFETY: the block is whole, so its rows `i·32 + r` < m and
            // columns `j·32..j·32 + 32` ≤ n; only the piece of this block
            // writes them.
            unsafe { self.store_row(unit, i * amx::MR + r, j, NR, self.beta, acc) };
        }
    }

    /// `C[row, j·32..j·32 + cols] = alpha · sums + beta · C` (`sums` the
    /// row's 32 columns as two halves, `cols <= 32`), rounded where C is
    /// bf16, stored past the caches where C is streamed.
    ///
    /// # Safety
    /// `row` < m and `j·32 + cols` ≤ n, and nothing else accesses those
    /// elements of C during the call.
    #[inline(always)]
    unsafe fn store_row<P: PairDot>(
        &self,
        unit: P,
        row: usize,
        j: usize,
        cols: usize,
        beta: f32,
        sums: [P::Acc; 2],
    ) {
        let at = row * self.c_stride + j * NR;
        // SAFETY (both arms): per the contract, the elements lie inside C
        // (`MatMut` checked its extent; its row stride is at least n where
        // m > 1, so rows do not overlap) and are this call's alone.
        match self.c {
            OutputPtr::F32(c) => {
                let c = unsafe { c.slice(at, cols) };
                let (c0, c1) = c.split_at_mut(cols.min(16));
                for (sums, c) in [(sums[0], c0), (sums[1], c1)] {
                    match c.len() {
                        0 => {}
                        _ if self.stream_c => unit.stream(sums, self.alpha, c),
                        _ => unit.update(sums, self.alpha, beta, c),
                    }
                }
            }
            OutputPtr::Bf16(c) => {
                let c = unsafe { c.slice(at, cols) };
                if self.stream_c {
                    unit.stream_bf16(sums, self.alpha, c)
                } else {
                    unit.update_bf16(sums, self.alpha, beta, c)
                }
            }
        }
    }

    /// The bias of column panel `j` as two accumulators (zero past C).
    #[inline(always)]
    fn panel_bias<P: PairDot>(&self, unit: P, bias: &[f32], j: usize) -> [P::Acc; 2] {
        let line = amx::PanelBias::of(bias, j);
        [unit.load_acc(&line.0[..16]), unit.load_acc(&line.0[16..])]
    }

    /// Starts fetching the C rows of row tile `i`, column panel `j`, so
    /// that they are in cache when its sums are ready.
    #[inline(always)]
    fn prefetch_c(&self, i: usize, j: usize) {
        let (l, mr) = (&self.layout, self.layout.mr);
        let cols = NR.min(l.n - j * NR);
        let (c, size) = match self.c {
            OutputPtr::F32(c) => (c.ptr().cast::<u8>(), 4),
            OutputPtr::Bf16(c) => (c.ptr().cast::<u8>(), 2),
        };
        for r in 0..mr.min(l.m - i * mr) {
            let row = c.wrapping_add(((i * mr + r) * self.c_stride + j * NR) * size);
            prefetch(row);
            prefetch(row.wrapping_add((cols - 1) * size));
        }
    }

    /// Starts fetching lines `lines` (of 64) of the whole tile block `(i,
    /// j)` of an f32 C at `c`: line `l` is half `l % 2` of the block's row
    /// `l / 2`. (Prefetches never fault, so lines past 64 cost nothing.)
    #[inline(always)]
    fn prefetch_block(&self, c: *const f32, (i, j): (usize, usize), lines: Range<usize>) {
        let block = c.wrapping_add(i * amx::MR * self.c_stride + j * NR);
        for line in lines.start..lines.end.min(2 * amx::MR) {
            prefetch(block.wrapping_add(line / 2 * self.c_stride + line % 2 * 16));
        }
    }

    /// A block on tiles: each `amx::MR × 32` block of sums runs down the
    /// whole of k, the tiles configured once for the whole block. Each row
    /// tile of A sweeps the block's column panels (its rows stay in L1, the
    /// panels stream from L2 in memory order, where the other order streamed
    /// A's 32 rows from L2, a line from each: `Blocking::b_sweep_bytes`).
    /// Where C takes the sums as they are (an f32 C not streamed, alpha 1,
    /// beta 0 or 1) and the block lies whole inside C, the tiles start from
    /// C (or zero) and store into it; else the sums go through a buffer and
    /// the pair unit's epilogue. Each block's sums stay in the tiles until
    /// the next block's first step stores them ([`amx::TileProduct::block`]);
    /// a whole block's go to one buffer, from which the block after stores
    /// them into C a few rows at each of its steps, while its tiles
    /// multiply.
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
        // (A bf16 C rounds the sums, so it always takes them through the
        // buffer.)
        let in_c = match self.c {
            OutputPtr::F32(c) if self.alpha == 1.0 && (self.beta == 0.0 || self.beta == 1.0) => {
                (!self.stream_c).then_some(c)
            }
            _ => None,
        };
        tiles.configured(
            #[inline(always)]
            |tiles| {
                let mut sums = amx::TileSums([0.0; amx::MR * NR]);
                let mut acc = [[unit.zero(); 2]; amx::MR];
                // Whole blocks' sums, each block's stored there by the next
                // block's first step and into C by the steps after it. The
                // tile stores write it while `before` reads it, so both go
                // through this pointer.
                let mut whole_sums = amx::TileSums([0.0; amx::MR * NR]);
                let whole_sums: *mut amx::TileSums = &mut whole_sums;
                // The sums the last block left in the tiles.
                let mut held: Option<T::Held> = None;
                // The whole block whose sums go to `whole_sums`, still to
                // be stored into C.
                let mut before: Option<(usize, usize)> = None;
                let rows_per_step = amx::MR.div_ceil(steps.max(1));
                // Lines of a block in C (32 rows of two) fetched per step.
                let lines_per_step = (2 * amx::MR).div_ceil(steps.max(1));
                let last_row = rows.end;
                for i in rows {
                    for j in panels.clone() {
                        let b = &self.b[j * self.b_stride..][..l.b_panel_len()];
                        let bias = self.bias.map(|bias| amx::PanelBias::of(bias, j));
                        let bias = bias.as_ref();
                        let a = match &self.a_in_place {
                            Some(r) if i < r.panels => {
                                amx::ATiles::rows(&r.slots[i * amx::MR * r.stride..], r.stride)
                            }
                            _ => amx::ATiles::packed(
                                &self.a[i * l.a_panel_len()..][..l.a_panel_len()],
                            ),
                        };
                        let whole = (i + 1) * amx::MR <= l.m && (j + 1) * NR <= l.n;
                        if let (Some(c), true) = (in_c, whole) {
                            let next = if j + 1 < panels.end {
                                Some((i, j + 1))
                            } else {
                                (i + 1 < last_row).then_some((i + 1, panels.start))
                            };
                            let c_start = c.ptr().cast_const();
                            let c = c.ptr().wrapping_add(i * amx::MR * self.c_stride + j * NR);
                            let start = match bias {
                                Some(bias) => Some(bias.start()),
                                None => {
                                    (self.beta != 0.0).then_some((c.cast_const(), self.c_stride))
                                }
                            };
                            // SAFETY: the block's 32 rows and 32 columns
                            // lie inside C (`whole`; rows `c_stride ≥ n`
                            // floats apart), and only this piece touches
                            // them; C is read before the block stores; a
                            // bias is one row of 32 floats, borrowed; the
                            // held sums are the last block's, whose C (or
                            // buffer) waits for them.
                            held = Some(unsafe {
                                T::block(
                                    tiles,
                                    a,
                                    b,
                                    steps,
                                    start,
                                    (c, self.c_stride),
                                    held.take(),
                                    // The next block's lines of C, a few
                                    // each step, so that its tiles do not
                                    // wait for them (on the Intel Xeon,
                                    // 1.04–1.13× at k 384).
                                    #[inline(always)]
                                    |s| {
                                        if let Some(next) = next {
                                            let lines =
                                                s * lines_per_step..(s + 1) * lines_per_step;
                                            self.prefetch_block(c_start, next, lines);
                                        }
                                    },
                                )
                            });
                        } else if whole {
                            let earlier = before.take();
                            // SAFETY: `whole_sums` waits for these sums:
                            // the block before's are stored by this block's
                            // first step, and `between` reads them (through
                            // the pointer, as the tile stores write them)
                            // only after it; it is vector code, no tile
                            // instruction. The held sums are the last
                            // block's, whose buffer waits for them.
                            held = Some(unsafe {
                                amx::block_sums(
                                    tiles,
                                    a,
                                    b,
                                    steps,
                                    bias,
                                    whole_sums,
                                    held.take(),
                                    // (Inlined, as all the unit's `enter`
                                    // runs, so it is compiled for its ISA.)
                                    #[inline(always)]
                                    |s| {
                                        if let Some((i, j)) = earlier {
                                            let start = (s * rows_per_step).min(amx::MR);
                                            let end = (start + rows_per_step).min(amx::MR);
                                            let sums = &*whole_sums;
                                            self.update_whole(unit, i, j, sums, start..end);
                                        }
                                    },
                                )
                            });
                            before = Some((i, j));
                        } else {
                            // SAFETY: `sums` is this block's until stored,
                            // right after; nothing runs between the steps;
                            // the held sums are the last block's.
                            unsafe {
                                let block = amx::block_sums(
                                    tiles,
                                    a,
                                    b,
                                    steps,
                                    bias,
                                    &mut sums,
                                    held.take(),
                                    |_| {},
                                );
                                T::store(tiles, block);
                            }
                            for (acc, row) in acc.iter_mut().zip(sums.0.chunks_exact(NR)) {
                                *acc = [unit.load_acc(&row[..16]), unit.load_acc(&row[16..])];
                            }
                            self.update(unit, i, j, self.beta, &acc);
                        }
                    }
                }
                if let Some(last) = held {
                    // SAFETY: the last block's sums, whose C or buffer waits
                    // for them.
                    unsafe { T::store(tiles, last) };
                }
                if let Some((i, j)) = before {
                    // SAFETY: stored just above (or by a block since).
                    let earlier = unsafe { &*whole_sums };
                    self.update_whole(unit, i, j, earlier, 0..amx::MR);
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
        if let (OutputPtr::Bf16(c), true) = (self.c, passes > 1) {
            return self.block_rounded_once::<P, MR>(unit, c, rows, panels, per_pass);
        }
        for pass in 0..passes {
            let pairs = pass * per_pass..l.k_pairs.min((pass + 1) * per_pass);
            let beta = if pass == 0 { self.beta } else { 1.0 };
            for j in panels.clone() {
                let b = &self.b[j * self.b_stride..][pairs.start * NR..pairs.end * NR];
                let bias = self
                    .bias
                    .filter(|_| pass == 0)
                    .map(|b| self.panel_bias(unit, b, j));
                for i in rows.clone() {
                    let a = &self.a[i * l.a_panel_len()..][pairs.start * MR..pairs.end * MR];
                    if !self.stream_c {
                        self.prefetch_c(i, j);
                    }
                    let sums = with_bias(unit, tile::<P, MR>(unit, a, b), bias);
                    self.update(unit, i, j, beta, &sums);
                }
            }
        }
    }

    /// [`Pairs::block`] for a bf16 C over more than one pass of k (of
    /// `per_pass` pairs): each register tile runs all the passes before
    /// the next, its C held in f32 on the stack meanwhile, so that C is
    /// rounded once, from the values the passes give an f32 C. (Its B
    /// panel is then read down the whole of k rather than a pass's slice
    /// held in L1 across the block's rows: slower than an f32 C for k past
    /// 512, a case the trainer does not meet; not measured.)
    #[inline(always)]
    fn block_rounded_once<P: PairDot, const MR: usize>(
        &self,
        unit: P,
        c: SharedMut<Bf16>,
        rows: Range<usize>,
        panels: Range<usize>,
        per_pass: usize,
    ) {
        let l = &self.layout;
        for j in panels {
            let cols = NR.min(l.n - j * NR);
            for i in rows.clone() {
                let live = MR.min(l.m - i * MR);
                // SAFETY: row `i·MR + r` < m and columns `j·NR..j·NR +
                // cols` ≤ n lie inside C (`MatMut` checked its extent; its
                // row stride is at least n where m > 1, so rows do not
                // overlap); only the piece of this block touches them.
                let row =
                    |r: usize| unsafe { c.slice((i * MR + r) * self.c_stride + j * NR, cols) };
                let mut wide = [[0.0; NR]; MR];
                if self.beta != 0.0 {
                    for (r, wide) in wide.iter_mut().enumerate().take(live) {
                        for (w, x) in wide.iter_mut().zip(row(r).iter()) {
                            *w = x.to_f32();
                        }
                    }
                }
                let panel = &self.b[j * self.b_stride..];
                let a_panel = &self.a[i * l.a_panel_len()..];
                let bias = self.bias.map(|b| self.panel_bias(unit, b, j));
                for (pass, start) in (0..l.k_pairs).step_by(per_pass).enumerate() {
                    let pairs = start..l.k_pairs.min(start + per_pass);
                    let b = &panel[pairs.start * NR..pairs.end * NR];
                    let a = &a_panel[pairs.start * MR..pairs.end * MR];
                    let beta = if pass == 0 { self.beta } else { 1.0 };
                    let bias = bias.filter(|_| pass == 0);
                    let sums = with_bias(unit, tile::<P, MR>(unit, a, b), bias);
                    for (wide, sums) in wide.iter_mut().zip(&sums).take(live) {
                        let (w0, w1) = wide[..cols].split_at_mut(cols.min(16));
                        unit.update(sums[0], self.alpha, beta, w0);
                        if !w1.is_empty() {
                            unit.update(sums[1], self.alpha, beta, w1);
                        }
                    }
                }
                for (r, wide) in wide.iter().enumerate().take(live) {
                    let values = [unit.load_acc(&wide[..16]), unit.load_acc(&wide[16..])];
                    unit.update_bf16(values, 1.0, 0.0, row(r));
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

/// A register tile's sums with a column panel's bias (two accumulators)
/// added to every row, where there is one.
#[inline(always)]
fn with_bias<P: PairDot, const MR: usize>(
    unit: P,
    mut sums: [[P::Acc; 2]; MR],
    bias: Option<[P::Acc; 2]>,
) -> [[P::Acc; 2]; MR] {
    if let Some(bias) = bias {
        for row in &mut sums {
            *row = [unit.add(row[0], bias[0]), unit.add(row[1], bias[1])];
        }
    }
    sums
}

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
    fn add(self, acc: Self::Acc, other: Self::Acc) -> Self::Acc {
        // SAFETY: see the impl comment.
        unsafe { core::arch::x86_64::_mm512_add_ps(acc, other) }
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
    #[inline(always)]
    fn update_bf16(self, sums: [Self::Acc; 2], alpha: f32, beta: f32, c: &mut [Bf16]) {
        use core::arch::x86_64::*;
        let mask = if c.len() >= 32 {
            !0
        } else {
            (1u32 << c.len()) - 1
        };
        // SAFETY: see the impl comment; the masked load and store touch
        // exactly the first `c.len() <= 32` values of `c`.
        unsafe {
            let old = if beta == 0.0 {
                None
            } else {
                Some(_mm512_maskz_loadu_epi16(mask, c.as_ptr().cast()))
            };
            let row = self.bf16_row(sums, alpha, beta, old, mask);
            _mm512_mask_storeu_epi16(c.as_mut_ptr().cast(), mask, row);
        }
    }
    #[inline(always)]
    fn stream_bf16(self, sums: [Self::Acc; 2], alpha: f32, c: &mut [Bf16]) {
        use core::arch::x86_64::*;
        if c.len() != 32 || c.as_ptr().align_offset(64) != 0 {
            return self.update_bf16(sums, alpha, 0.0, c);
        }
        // SAFETY: see the impl comment; `c` is 32 bf16 values (64 bytes)
        // on a 64-byte boundary, the alignment the streaming store
        // requires.
        unsafe {
            let row = self.bf16_row(sums, alpha, 0.0, None, !0);
            _mm512_stream_si512(c.as_mut_ptr().cast(), row)
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl V4Bf16 {
    /// The 32 bf16 values of `alpha · sums + beta · old` (`old`, 32 bf16
    /// values, read only where beta is not 0), rounded as
    /// [`Bf16::from_f32`] does, in column order; only the columns of
    /// `live` are stored.
    #[inline(always)]
    fn bf16_row(
        self,
        sums: [core::arch::x86_64::__m512; 2],
        alpha: f32,
        beta: f32,
        old: Option<core::arch::x86_64::__m512i>,
        live: u32,
    ) -> core::arch::x86_64::__m512i {
        use core::arch::x86_64::*;
        // SAFETY: a `V4Bf16` is made only where AVX512F, BW and BF16 were
        // detected on an AVX-512 handle, which is `V4`'s contract too;
        // register arithmetic only.
        unsafe {
            let mut values = [_mm512_setzero_ps(); 2];
            let (zero, min) = (_mm512_setzero_ps(), _mm512_set1_ps(f32::MIN_POSITIVE));
            let mut subnormal = 0;
            for (h, value) in values.iter_mut().enumerate() {
                *value = _mm512_mul_ps(_mm512_set1_ps(alpha), sums[h]);
                if let Some(old) = old {
                    let old = if h == 0 {
                        _mm512_castsi512_si256(old)
                    } else {
                        _mm512_extracti64x4_epi64::<1>(old)
                    };
                    let old = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(old));
                    *value =
                        _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_castsi512_ps(old), *value);
                }
                let stored = (live >> (16 * h)) as __mmask16;
                let nonzero = _mm512_mask_cmp_ps_mask::<_CMP_NEQ_UQ>(stored, *value, zero);
                let abs = _mm512_abs_ps(*value);
                subnormal |= _mm512_mask_cmp_ps_mask::<_CMP_LT_OQ>(nonzero, abs, min);
            }
            // `vcvtne2ps2bf16` rounds as `Bf16::from_f32` does (to nearest
            // even, a NaN quieted, ±0 kept) but flushes subnormals to zero:
            // a row with one to store is rounded the long way.
            if subnormal == 0 {
                let row = _mm512_cvtne2ps_pbh(values[1], values[0]);
                return core::mem::transmute::<__m512bh, __m512i>(row);
            }
            let v4 = crate::simd::V4::detected();
            let [lo, hi] = [v4.bf16_lanes(values[0]), v4.bf16_lanes(values[1])];
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
        }
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
    fn add(self, acc: [f32; 16], other: [f32; 16]) -> [f32; 16] {
        core::array::from_fn(|j| acc[j] + other[j])
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
    fn update_bf16(self, sums: [[f32; 16]; 2], alpha: f32, beta: f32, c: &mut [Bf16]) {
        for (j, x) in c.iter_mut().enumerate().take(NR) {
            let sum = alpha * sums[j / 16][j % 16];
            let value = if beta == 0.0 {
                sum
            } else {
                beta.mul_add(x.to_f32(), sum)
            };
            *x = Bf16::from_f32(value);
        }
    }
    fn stream_bf16(self, sums: [[f32; 16]; 2], alpha: f32, c: &mut [Bf16]) {
        self.update_bf16(sums, alpha, 0.0, c)
    }
}
