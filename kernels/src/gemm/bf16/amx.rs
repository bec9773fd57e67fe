//! bf16 products on AMX tiles (Intel Sapphire Rapids and later).
//!
//! A tile is 16 rows of 64 bytes. `tdpbf16ps` adds to a 16 × 16 tile of f32
//! sums the product of an A tile (16 rows × 16 pairs of k) and a B tile (16
//! pairs of k × 16 columns, each slot one pair: the pair-interleaved layout
//! B panels already have). A block of 32 × 32 sums takes the 4 C tiles, 2
//! A tiles and 2 B tiles of the 8 there are: each step loads 2 + 2 tiles
//! and runs 4 products, 16 pairs of k at a time, down the whole of k.
//!
//! The tile instructions are not in stable Rust's intrinsics, so one
//! `asm!` block runs a whole block product: it configures the tiles, runs
//! the loop, stores the sums and releases the tiles, so no tile state lives
//! across blocks of Rust code. A panels here are row-major (a row's pairs
//! contiguous, padded to whole steps with zeros), since a tile row is a row
//! of A; an A already stored as such rows is read where it lies, with its
//! own row stride. [`TileProduct`] is what the loop nest in `pairs` sees; an
//! emulated tile runs the same blocking on any CPU in tests.

use super::packing::round_row_pairs;
use super::{Bf16Input, NR};
use crate::gemm::microkernel::GemmKernel;
use crate::gemm::MatRef;

/// Rows of a packed A panel and of a block of sums: two tiles' rows.
pub(super) const MR: usize = 32;

/// Pairs of k per tile step: a tile row of 64 bytes holds 16 pair slots.
pub(super) const K_STEP: usize = 16;

/// Multiply-adds of one tile product (16 × 16 sums, 32 values of k each).
const TILE_MACS: u64 = 16 * 16 * 32;

/// One unit's block product.
pub(super) trait TileProduct: Copy {
    /// `c[r][j] = Σ_q a[r·a_stride + q] · b[q·32 + j]` (each term a pair
    /// dot product, the pairs in order of q) for `r, j < 32` and
    /// `q < steps · 16`. `a` holds 32 rows of `a_stride ≥ steps · 16`
    /// slots, `b` a B panel of at least `steps · 16` pairs.
    fn block(self, a: &[f32], a_stride: usize, b: &[f32], steps: usize, c: &mut [f32; MR * NR]);

    /// Runs `iters` rounds of 4 independent tile products and returns the
    /// floating-point operations done.
    fn peak_loop(self, iters: usize) -> u64;
}

/// Packs panel `p` of the rows of `src` (as used) for tiles: rows
/// `p·MR..` (at most [`MR`]), each as its pairs of consecutive columns,
/// `panel.len() / MR` slots per row; pairs past the columns and rows past
/// the matrix are zero.
#[inline(always)]
pub(super) fn pack_rows<K: GemmKernel, T: Bf16Input>(
    kernel: K,
    src: &MatRef<T>,
    p: usize,
    panel: &mut [f32],
) {
    let (rows, cols) = (src.rows(), src.cols());
    let (rs, cs) = src.strides();
    let pairs = panel.len() / MR;
    if pairs == 0 {
        return;
    }
    let (live, used) = (MR.min(rows - p * MR), cols.div_ceil(2));
    if cs == 1 {
        for (i, slots) in panel.chunks_exact_mut(pairs).take(live).enumerate() {
            let row = &src.data[(p * MR + i) * rs..][..cols];
            round_row_pairs(kernel, row, &mut slots[..used]);
        }
    } else {
        // Columns are contiguous (`rs == 1`): the panel's share of two
        // columns is rounded and paired in vectors, then stored down the
        // rows.
        let strip = |c: usize| &src.data[c * cs + p * MR..][..live];
        let mut across = [0.0; MR];
        for q in 0..used {
            let hi = (2 * q + 1 < cols).then(|| strip(2 * q + 1));
            T::pair_slices(
                strip(2 * q),
                hi,
                &mut across[..live],
                #[inline(always)]
                |lo, hi, slots| kernel.round_pairs(lo, hi, slots),
            );
            for (slots, &slot) in panel.chunks_exact_mut(pairs).zip(&across[..live]) {
                slots[q] = slot;
            }
        }
    }
    for (i, slots) in panel.chunks_exact_mut(pairs).enumerate() {
        let pad = if i < live { used } else { 0 };
        slots[pad..].fill(0.0);
    }
}

/// The tile configuration every block uses (palette 1): tiles 0–7 as 16
/// rows of 64 bytes, the others unused.
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

// `ldtilecfg` reads 64 bytes laid out by the SDM: the palette at byte 0,
// each tile's bytes per row from byte 16, its rows from byte 48. The
// assembler cannot check this, and no CPU this crate has run on can.
#[cfg(target_arch = "x86_64")]
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<TileConfig>() == 64 && align_of::<TileConfig>() == 64);
    assert!(offset_of!(TileConfig, palette) == 0);
    assert!(offset_of!(TileConfig, start_row) == 1);
    assert!(offset_of!(TileConfig, bytes_per_row) == 16);
    assert!(offset_of!(TileConfig, rows) == 48);
    // Tiles 0–7 are the 16 rows of 64 bytes the block loads and stores;
    // palette 1 has no others, and ldtilecfg faults unless they are zero.
    let mut t = 0;
    while t < 16 {
        let (bytes, rows) = if t < 8 { (16 * 4, 16) } else { (0, 0) };
        assert!(TILES.bytes_per_row[t] == bytes && TILES.rows[t] == rows);
        t += 1;
    }
};

#[cfg(target_arch = "x86_64")]
static TILES: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Proof that this process may run AMX tile instructions: the CPU has
/// AMX-TILE and AMX-BF16, XCR0 enables the tile state and the OS granted
/// the tile data ([`crate::Bf16Unit::Amx`] detected).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct AmxTiles(());

#[cfg(target_arch = "x86_64")]
impl AmxTiles {
    /// # Safety
    /// [`crate::Bf16Unit::Amx`] must have been detected (which includes the
    /// OS's grant of the tile data).
    pub(super) unsafe fn granted() -> AmxTiles {
        AmxTiles(())
    }
}

#[cfg(target_arch = "x86_64")]
impl TileProduct for AmxTiles {
    #[inline]
    fn block(self, a: &[f32], a_stride: usize, b: &[f32], steps: usize, c: &mut [f32; MR * NR]) {
        if steps == 0 {
            c.fill(0.0);
            return;
        }
        // Every byte the tile loads read, checked here: A rows 0–31 from
        // `a_stride` slots apart, `steps · 16` slots each; B `steps · 16`
        // pairs of 32 slots.
        assert!(a_stride >= steps * K_STEP);
        let a = &a[..(MR - 1) * a_stride + steps * K_STEP];
        let b = &b[..steps * K_STEP * NR];
        let (a_top, a_bottom) = (a.as_ptr(), a[16 * a_stride..].as_ptr());
        // Both C pointers from one borrow, so that neither invalidates the
        // other.
        let c_top = c.as_mut_ptr();
        let c_bottom = c_top.wrapping_add(16 * NR);
        // SAFETY: holding `self` proves the tile unit was granted. The loads
        // read 16 rows of 64 bytes from `a_top`, `a_bottom` (rows `a_stride`
        // slots apart) and from `b`, `b + 64` (rows 128 bytes apart), moving
        // 64 bytes (A) or 16 rows of B per step: inside the slices checked
        // above. The stores write 16 rows of 64 bytes, 128 bytes apart, from
        // `c_top`, `c_top + 64`, `c_bottom`, `c_bottom + 64`: inside `c`.
        // The block configures, uses and releases the tiles itself.
        unsafe {
            core::arch::asm!(
                "ldtilecfg [{cfg}]",
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                "tileloadd tmm4, [{a_top} + {a_row}*1]",
                "tileloadd tmm5, [{a_bottom} + {a_row}*1]",
                "tileloadd tmm6, [{b} + {b_row}*1]",
                "tileloadd tmm7, [{b} + {b_row}*1 + 64]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a_top}, 64",
                "add {a_bottom}, 64",
                "add {b}, {b_step}",
                "dec {steps}",
                "jnz 2b",
                "tilestored [{c_top} + {c_row}*1], tmm0",
                "tilestored [{c_top} + {c_row}*1 + 64], tmm1",
                "tilestored [{c_bottom} + {c_row}*1], tmm2",
                "tilestored [{c_bottom} + {c_row}*1 + 64], tmm3",
                "tilerelease",
                cfg = in(reg) &TILES,
                a_top = inout(reg) a_top => _,
                a_bottom = inout(reg) a_bottom => _,
                b = inout(reg) b.as_ptr() => _,
                steps = inout(reg) steps => _,
                a_row = in(reg) a_stride * 4,
                b_row = in(reg) NR * 4,
                b_step = in(reg) K_STEP * NR * 4,
                c_top = in(reg) c_top,
                c_bottom = in(reg) c_bottom,
                c_row = in(reg) NR * 4,
                options(nostack),
            );
        }
    }

    fn peak_loop(self, iters: usize) -> u64 {
        if iters == 0 {
            return 0;
        }
        // SAFETY: holding `self` proves the tile unit was granted; the block
        // touches no memory but the configuration, and releases the tiles.
        unsafe {
            core::arch::asm!(
                "ldtilecfg [{cfg}]",
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "tilezero tmm4",
                "tilezero tmm5",
                "tilezero tmm6",
                "tilezero tmm7",
                "2:",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "dec {iters}",
                "jnz 2b",
                "tilerelease",
                cfg = in(reg) &TILES,
                iters = inout(reg) iters => _,
                options(nostack),
            );
        }
        (iters as u64).saturating_mul(4 * 2 * TILE_MACS)
    }
}

/// The tile products element by element in f32, each pair added in the
/// order `tdpbf16ps` defines (low product, then high), so the tile
/// packing and blocking run on any CPU in tests.
#[cfg(test)]
#[derive(Clone, Copy)]
pub(super) struct EmulatedTiles;

#[cfg(test)]
impl TileProduct for EmulatedTiles {
    fn block(self, a: &[f32], a_stride: usize, b: &[f32], steps: usize, c: &mut [f32; MR * NR]) {
        let pairs = steps * K_STEP;
        for (r, sums) in c.chunks_exact_mut(NR).enumerate() {
            let a = &a[r * a_stride..][..pairs];
            for (j, sum) in sums.iter_mut().enumerate() {
                let mut acc = 0.0f32;
                for (q, &a) in a.iter().enumerate() {
                    let ((a_lo, a_hi), (b_lo, b_hi)) = (
                        super::packing::unpair(a),
                        super::packing::unpair(b[q * NR + j]),
                    );
                    acc += a_lo * b_lo;
                    acc += a_hi * b_hi;
                }
                *sum = acc;
            }
        }
    }

    fn peak_loop(self, iters: usize) -> u64 {
        let (a, b) = ([0.0; MR * K_STEP], [0.0; K_STEP * NR]);
        let mut c = [0.0; MR * NR];
        for _ in 0..iters {
            // One step of a block is 4 tile products.
            self.block(&a, K_STEP, &b, 1, &mut c);
        }
        core::hint::black_box(&c);
        (iters as u64).saturating_mul(4 * 2 * TILE_MACS)
    }
}
