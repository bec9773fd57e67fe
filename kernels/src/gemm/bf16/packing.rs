//! The pair-packed layout of a product (A in panels of `mr` rows, B in
//! panels of [`NR`] columns, one pair of consecutive k per 32-bit slot)
//! and the packing of A and B into it, rounding as it reads.

use core::ops::Range;

use super::amx;
use super::pairs::{BLOCK_PANELS, BLOCK_ROWS};
use super::{pair_each, Bf16Input, NR};
#[cfg(test)]
use crate::bf16::pair_half;
use crate::gemm::microkernel::{prefetch, GemmKernel};
use crate::gemm::MatRef;
use crate::simd::{pieces, Simd};
use crate::Bf16;

/// The shape of a pair-packed product: rows per A panel, pairs of k, and
/// the padded sizes of A and B.
#[derive(Clone, Copy)]
pub(super) struct PairLayout {
    pub(super) m: usize,
    pub(super) n: usize,
    /// Rows of an A panel. On tiles, [`amx::MR`]. Else those of a register
    /// tile: 12 (24 accumulators + 2 B vectors + 1 broadcast fit the 32
    /// ZMM registers), or 4 for products of fewer than 12 rows so that they
    /// do not compute mostly padding (products of at most
    /// `PAIR_UNIT_FEW_ROWS` rows never come here).
    pub(super) mr: usize,
    pub(super) k_pairs: usize,
    /// Pairs per B panel (and per packed row of A on tiles): `k_pairs`
    /// padded to whole tile steps with zeros, so no tile load leaves a
    /// panel.
    pub(super) b_pairs: usize,
    /// Whether the product runs on tiles (A packed tile-major).
    pub(super) tiles: bool,
    a_panels: usize,
    b_panels: usize,
    /// B panels per block of columns on tiles ([`PairLayout::sweeping`]).
    tile_panels: usize,
}

impl PairLayout {
    /// The layout of an `m × k` by `k × n` product; on tiles where they are
    /// `available` and A has at least a tile block of rows (fewer rows run
    /// on the pair dot products: a block would be mostly padding).
    pub(super) fn new(m: usize, n: usize, k: usize, available: bool) -> PairLayout {
        let tiles = available && m >= amx::MR;
        let mr = match m {
            _ if tiles => amx::MR,
            12.. => 12,
            _ => 4,
        };
        PairLayout {
            m,
            n,
            mr,
            k_pairs: k.div_ceil(2),
            b_pairs: padded_pairs(k),
            tiles,
            a_panels: m.div_ceil(mr),
            b_panels: n.div_ceil(NR),
            tile_panels: BLOCK_PANELS,
        }
    }
    /// The layout with the column blocks of tiles as wide as `bytes` of B
    /// panels (at least one): each row tile of A stays in L1 while it
    /// sweeps them, and they stay in L2 for the next row tile
    /// ([`crate::Blocking::b_sweep_bytes`]).
    pub(super) fn sweeping(self, bytes: usize) -> PairLayout {
        let panel_bytes = self.b_panel_len().saturating_mul(4).max(1);
        PairLayout {
            tile_panels: (bytes / panel_bytes).max(1),
            ..self
        }
    }
    pub(super) fn a_panel_len(&self) -> usize {
        let pairs = if self.tiles {
            self.b_pairs
        } else {
            self.k_pairs
        };
        self.mr.saturating_mul(pairs)
    }
    pub(super) fn a_len(&self) -> usize {
        self.a_panels.saturating_mul(self.a_panel_len())
    }
    pub(super) fn b_panel_len(&self) -> usize {
        NR.saturating_mul(self.b_pairs)
    }
    pub(super) fn b_len(&self) -> usize {
        self.b_panels.saturating_mul(self.b_panel_len())
    }
    /// Workspace for packed A, each region from a line boundary.
    pub(super) fn a_workspace_len(&self) -> usize {
        self.a_len().saturating_add(LINE_SLACK)
    }
    /// Workspace for packed A and B, each region from a line boundary.
    pub(super) fn workspace_len(&self) -> usize {
        self.a_workspace_len()
            .saturating_add(self.b_len())
            .saturating_add(LINE_SLACK)
    }
    /// B panels per block of columns: on tiles, those of
    /// [`PairLayout::sweeping`]; else [`BLOCK_PANELS`], or one where A is
    /// a single panel of pair dot products (a product of 4 or 12 rows): no
    /// packed A is then reused across a block's panels, and narrower
    /// pieces share the columns between threads evenly (measured on an
    /// Intel Xeon when decoding's single rows ran here, bf16 decoding at
    /// context 256 on 2 threads: 1442–1445 tokens/s against 861–865 with
    /// blocks of 4 panels).
    fn block_panels(&self) -> usize {
        if self.tiles {
            self.tile_panels
        } else if self.a_panels <= 1 {
            1
        } else {
            BLOCK_PANELS
        }
    }
    /// A panels per block of [`BLOCK_ROWS`] rows.
    fn row_tiles(&self) -> usize {
        BLOCK_ROWS / self.mr
    }
    pub(super) fn row_blocks(&self) -> usize {
        self.a_panels.div_ceil(self.row_tiles())
    }
    /// Column panels of B (of [`NR`] columns).
    pub(super) fn b_panels(&self) -> usize {
        self.b_panels
    }
    pub(super) fn col_blocks(&self) -> usize {
        self.b_panels.div_ceil(self.block_panels())
    }
    /// The A panels of row block `rb`.
    pub(super) fn row_block(&self, rb: usize) -> Range<usize> {
        let tiles = self.row_tiles();
        rb * tiles..self.a_panels.min((rb + 1) * tiles)
    }
    /// The B panels of column block `cb`.
    pub(super) fn col_block(&self, cb: usize) -> Range<usize> {
        let width = self.block_panels();
        cb * width..self.b_panels.min((cb + 1) * width)
    }
    /// B panels per piece of the packing round on `threads` threads: a
    /// column block, or less, so that every thread gets at least two
    /// pieces (a product of 12 panels packed 2 blocks on one thread and 1
    /// on the other).
    pub(super) fn pack_width(&self, threads: usize) -> usize {
        let per_piece = self.b_panels.div_ceil(2 * threads.max(1));
        self.block_panels().min(per_piece).max(1)
    }
}

/// Floats skipped at most to start a workspace region on a 64-byte line.
const LINE_SLACK: usize = 15;

/// `region` from its first float on a 64-byte boundary: every panel is a
/// whole number of lines, so every panel then starts on one. A tile row
/// (64 bytes) that straddles two lines loads at half the speed; that
/// alone made the AMX products run at a third of their speed.
pub(super) fn from_line(region: &mut [f32]) -> &mut [f32] {
    let skip = region
        .as_ptr()
        .align_offset(64)
        .min(LINE_SLACK)
        .min(region.len());
    &mut region[skip..]
}

/// Slots of one packed B panel for depth `k`; saturating, since with no
/// columns ([`PackedBf16::len`](super::PackedBf16::len) 0) any `k` is a valid shape.
pub(super) fn panel_slots(k: usize) -> usize {
    NR.saturating_mul(padded_pairs(k))
}

/// Pairs of a packed B panel for depth `k`: `k / 2` rounded up to whole
/// tile steps.
pub(super) fn padded_pairs(k: usize) -> usize {
    k.div_ceil(2).div_ceil(amx::K_STEP) * amx::K_STEP
}

/// The two bf16 values of a pair slot, as f32: `(lo, hi)` (for the
/// emulated units).
#[cfg(test)]
pub(super) fn unpair(slot: f32) -> (f32, f32) {
    let bits = slot.to_bits();
    (pair_half(bits, false), pair_half(bits, true))
}

/// `K`'s vector rounding, for [`Bf16Input::round_slice`] (a closure in
/// SIMD code must inline, or each intrinsic goes out of line).
#[inline(always)]
pub(super) fn round_by<K: GemmKernel>(kernel: K) -> impl FnOnce(&[f32], &mut [Bf16]) {
    #[inline(always)]
    move |x, d| kernel.round_to_bf16(x, d)
}

/// Packs panels `panels` of A as `layout` has them into `out`: tile-major
/// for tiles ([`amx::pack_row_panels`]), else pairs interleaved across
/// `layout.mr` rows.
#[inline(always)]
pub(super) fn pack_a_panels<K: GemmKernel, T: Bf16Input>(
    kernel: K,
    a: &MatRef<T>,
    layout: PairLayout,
    panels: Range<usize>,
    out: &mut [f32],
) {
    if layout.tiles {
        amx::pack_row_panels(kernel, a, panels, out)
    } else {
        pack_panels(kernel, a, layout.mr, panels, out)
    }
}

/// `slots[q] = pair(row[2q], row[2q + 1])` rounded to bf16, the last
/// padded with zero: `slots.len() == row.len().div_ceil(2)`.
#[inline(always)]
pub(super) fn round_row_pairs<K: GemmKernel, T: Bf16Input>(
    kernel: K,
    row: &[T],
    slots: &mut [f32],
) {
    // A row's pairs are its values two at a time, so the row rounds
    // straight into the slots' memory. `pair` puts the first value in the
    // low half, which comes first on a little-endian CPU; on a big-endian
    // one the halves are swapped back.
    let halves: &mut [Bf16] = bytemuck::cast_slice_mut(slots);
    let (values, pad) = halves.split_at_mut(row.len());
    T::round_slice(row, values, round_by(kernel));
    pad.fill(Bf16::default());
    if cfg!(target_endian = "big") {
        for slot in slots.iter_mut() {
            *slot = f32::from_bits(slot.to_bits().rotate_left(16));
        }
    }
}

/// Packs panels `panels` of the rows of `src` (as used) into `out`, one
/// after another, `out.len() / panels.len()` slots each. Panel `p` holds
/// rows `p·width..` (at most `width` of them): for each pair `q` of
/// columns, the pairs `(src[r][2q], src[r][2q + 1])` of its rows, `width`
/// slots per pair; rows and columns past the matrix (up to the panel's
/// end) are zero. (B is packed through its transpose: rows of Bᵀ are
/// columns of B.) Rounding runs along whichever direction the storage is
/// contiguous in.
#[inline(always)]
pub(super) fn pack_panels<K: GemmKernel, T: Bf16Input>(
    kernel: K,
    src: &MatRef<T>,
    width: usize,
    panels: Range<usize>,
    out: &mut [f32],
) {
    if panels.is_empty() {
        return;
    }
    let (rows, cols) = (src.rows(), src.cols());
    let (rs, cs) = src.strides();
    let panel_len = out.len() / panels.len();
    let live = |p: usize| width.min(rows - p * width);
    if cs == 1 {
        // Rows are contiguous, so a row's pairs are its own values two at
        // a time: round a stretch of each row into a line of slots, then
        // interleave the lines into the panel (a transpose, as the f32
        // packing does). Lines past the matrix stay zero.
        let pairs = cols.div_ceil(2);
        for (p, panel) in panels.zip(out.chunks_exact_mut(panel_len)) {
            prefetch_rows(
                src.data,
                (p + 1) * width..((p + 2) * width).min(rows),
                rs,
                cols,
            );
            let mut lines = [[0.0; LINE_PAIRS]; NR];
            for start in (0..pairs).step_by(LINE_PAIRS) {
                let count = LINE_PAIRS.min(pairs - start);
                let values = 2 * start..cols.min(2 * (start + count));
                for (i, line) in lines[..live(p)].iter_mut().enumerate() {
                    let row = &src.data[(p * width + i) * rs..][values.clone()];
                    round_row_pairs(kernel, row, &mut line[..count]);
                }
                let lines: [&[f32]; NR] = core::array::from_fn(|i| &lines[i][..count]);
                kernel.interleave(
                    &lines[..width],
                    &mut panel[start * width..][..count * width],
                );
            }
            // The pad pairs past the last column.
            panel[pairs * width..].fill(0.0);
        }
    } else {
        // Columns are contiguous (`rs == 1`): a group of steps (pairs of
        // columns) at a time, each panel's share of the group in turn, so
        // that the group's columns are read in runs across the panels
        // (a whole panel at a time would read a line or two per column
        // and wait on each) and each panel is written a run of lines at a
        // time ([`GROUP_STEPS`]).
        let first = panels.start * width;
        let span = (panels.end * width).min(rows) - first;
        let steps = panel_len / width;
        for group in (0..steps).step_by(GROUP_STEPS) {
            let group = group..steps.min(group + GROUP_STEPS);
            // Columns a page or more apart defeat the prefetchers: fetch
            // the next group's columns while packing this one.
            let ahead = 2 * group.end..(2 * (group.end + GROUP_STEPS)).min(cols);
            for c in ahead {
                prefetch_run(src.data, c * cs + first, span);
            }
            let strip = |c: usize, p: usize| &src.data[c * cs + p * width..][..live(p)];
            for (p, panel) in panels.clone().zip(out.chunks_exact_mut(panel_len)) {
                for q in group.clone() {
                    let (slots, pad) = panel[q * width..][..width].split_at_mut(live(p));
                    if 2 * q < cols {
                        let hi = (2 * q + 1 < cols).then(|| strip(2 * q + 1, p));
                        T::pair_slices(
                            strip(2 * q, p),
                            hi,
                            slots,
                            #[inline(always)]
                            |lo, hi, slots| kernel.round_pairs(lo, hi, slots),
                            #[inline(always)]
                            |lo, hi, slots| kernel.pair_bf16s(lo, hi, slots),
                        );
                    } else {
                        slots.fill(0.0);
                    }
                    pad.fill(0.0);
                }
            }
        }
    }
}

/// Steps (pairs of columns) packed into one panel before the next, where
/// columns are contiguous: a panel then takes whole runs of lines (8
/// steps: 1 KiB) while the columns are read 16 at a time. A step at a time
/// across all the panels wrote a line pair into each of them in turn (32
/// panels of a 1024-wide B, their lines in one L1 set: panels are a whole
/// number of 4 KiB apart); measured on the Intel Xeon (`pack_bf16` of a
/// bf16 B, one thread, medians of 21 calls alternated with the order
/// before): 1024² 0.46 → 0.21 ms, 2048² 2.7 → 1.0 ms, 384 × 1152 0.106 →
/// 0.060 ms.
const GROUP_STEPS: usize = 8;

/// Asks for the first `len` elements of each of `rows` (rows `stride`
/// apart in `data`) to be fetched into the cache: the next panel's rows,
/// while packing this one.
#[inline(always)]
pub(super) fn prefetch_rows<T>(data: &[T], rows: Range<usize>, stride: usize, len: usize) {
    for r in rows {
        prefetch_run(data, r * stride, len);
    }
}

/// Asks for every line of `data[start..start + len]` (as far as it exists)
/// to be fetched into the cache.
#[inline(always)]
pub(super) fn prefetch_run<T>(data: &[T], start: usize, len: usize) {
    let end = data.len().min(start.saturating_add(len));
    let line = 64 / core::mem::size_of::<T>().max(1);
    for i in (start..end).step_by(line.max(1)) {
        prefetch(data[i..].as_ptr());
    }
    if start < end {
        prefetch(data[end - 1..].as_ptr());
    }
}

/// [`GemmKernel::round_pairs`] a vector of slots at a time.
#[inline(always)]
pub(in crate::gemm) fn round_pairs_simd<S: Simd>(
    s: S,
    lo: &[f32],
    hi: Option<&[f32]>,
    slots: &mut [f32],
) {
    let zero = s.splat(0.0);
    for piece in pieces(slots.len(), S::LANES) {
        let lo = s.load_piece(&lo[piece.clone()], 0.0);
        // (A `match`, not `map_or`: a closure passed to a generic function
        // compiles outside the vector context and calls every intrinsic.)
        let hi = match hi {
            Some(hi) => s.load_piece(&hi[piece.clone()], 0.0),
            None => zero,
        };
        s.store_piece(&mut slots[piece], s.bf16_pairs(lo, hi));
    }
}

/// [`GemmKernel::pair_bf16s`] a vector of slots at a time where `lo` and
/// `hi` cover whole vectors, the rest (and a missing `hi`: an odd last
/// column) one slot at a time.
#[inline(always)]
pub(in crate::gemm) fn pair_bf16s_simd<S: Simd>(
    s: S,
    lo: &[Bf16],
    hi: Option<&[Bf16]>,
    slots: &mut [f32],
) {
    let Some(hi) = hi else {
        return pair_each(lo, None, slots);
    };
    let whole = slots.len().min(lo.len()).min(hi.len());
    let whole = whole - whole % S::LANES;
    let (vectors, rest) = slots.split_at_mut(whole);
    for (i, out) in vectors.chunks_exact_mut(S::LANES).enumerate() {
        let at = i * S::LANES..(i + 1) * S::LANES;
        s.store(out, s.pair_bf16(&lo[at.clone()], &hi[at]));
    }
    pair_each(&lo[whole..], Some(&hi[whole..]), rest);
}

/// Pairs per line when packing rows (see [`pack_panels`]): [`NR`] lines of
/// them, 8 KiB on the stack, stay in L1 between rounding and interleaving.
const LINE_PAIRS: usize = 64;
