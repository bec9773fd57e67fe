//! bf16 products on AMX tiles (Intel Sapphire Rapids and later).
//!
//! A tile is 16 rows of 64 bytes. `tdpbf16ps` adds to a 16 × 16 tile of f32
//! sums the product of an A tile (16 rows × 16 pairs of k) and a B tile (16
//! pairs of k × 16 columns, each slot one pair: the pair-interleaved layout
//! B panels already have). A block of 32 × 32 sums takes the 4 C tiles, 2
//! A tiles and 2 B tiles of the 8 there are: each step loads 2 + 2 tiles
//! and runs 4 products, 16 pairs of k at a time, down the whole of k.
//! The loop nest keeps a row tile of A in L1 while its blocks sweep the B
//! panels, each read once per sweep: B tiles load with the `T1` hint
//! (`tileloaddt1`: not reused soon), so that the stream of B does not
//! evict A. With plain loads each block's 24 KiB of B (k 384) pushed A's
//! 24 KiB out of the Xeon's 48 KiB L1: the QKV product ran at 1.1–1.2
//! TFLOP/s on one core, 1.6–1.85 with the hint (model 207).
//!
//! The tile instructions are not in stable Rust's intrinsics, so `asm!`
//! blocks run them, one per step of k that loads and multiplies; the
//! first step of a block also stores the block before's sums and starts
//! its own, a tile at a time between its products, so that the stores
//! overlap the multiplying; the tiles hold the sums in between. Loading
//! the tile configuration and releasing the tiles cost about as much as a
//! short block, so a piece of work configures them once
//! ([`TileProduct::configured`]) and runs all its blocks inside; nothing
//! but these blocks touches tile state in between. Packed A panels are
//! tile-major: each step's 32 rows × 16 pairs lie together (2 KiB), so
//! the blocks read A and B as two sequential streams; an A already stored
//! as bf16 rows is read where it lies, with its own row stride
//! ([`ATiles`] says which). Sums that C cannot take as they are go
//! through a buffer and vector code (scaling, rounding to bf16); a block
//! runs step by step ([`TileProduct::block`]'s `between`) so that the block
//! before is stored into C while its tiles multiply. [`TileProduct`] is
//! what the loop nest in `pairs` sees; an emulated tile runs the same
//! blocking on any CPU in tests.

use core::ops::Range;

use super::packing::{prefetch_rows, prefetch_run, round_row_pairs};
use super::{Bf16Input, NR};
use crate::gemm::microkernel::GemmKernel;
use crate::gemm::MatRef;

/// Rows of a packed A panel and of a block of sums: two tiles' rows.
pub(super) const MR: usize = 32;

/// Pairs of k per tile step: a tile row of 64 bytes holds 16 pair slots.
pub(super) const K_STEP: usize = 16;

/// Multiply-adds of one tile product (16 × 16 sums, 32 values of k each).
const TILE_MACS: u64 = 16 * 16 * 32;

/// Where the rows of A lie for one block's tiles: row `r` (of
/// [`MR`]), pair `q` at slot `(q / K_STEP) · step + r · row + q % K_STEP`.
#[derive(Clone, Copy)]
pub(super) struct ATiles<'a> {
    pub(super) slots: &'a [f32],
    /// Slots from one row of a tile to the next.
    pub(super) row: usize,
    /// Slots from one step's tiles to the next step's.
    pub(super) step: usize,
}

impl<'a> ATiles<'a> {
    /// A packed (tile-major) panel of [`pack_row_panels`].
    pub(super) fn packed(panel: &'a [f32]) -> ATiles<'a> {
        ATiles {
            slots: panel,
            row: K_STEP,
            step: MR * K_STEP,
        }
    }

    /// Rows stored `stride` slots apart, pairs contiguous.
    pub(super) fn rows(slots: &'a [f32], stride: usize) -> ATiles<'a> {
        ATiles {
            slots,
            row: stride,
            step: K_STEP,
        }
    }

    /// The slot of row `r`, pair `q`.
    #[cfg(test)]
    fn at(&self, r: usize, q: usize) -> usize {
        (q / K_STEP) * self.step + r * self.row + q % K_STEP
    }
}

/// A block's sums, on 64-byte lines as the tile stores write them.
#[repr(C, align(64))]
pub(super) struct TileSums(pub(super) [f32; MR * NR]);

/// The bias of one column panel (zero past C's columns), on a line: the
/// tiles start every row of a block's sums from it.
#[repr(C, align(64))]
pub(super) struct PanelBias(pub(super) [f32; NR]);

impl PanelBias {
    /// The bias of the columns `j·32..` of `bias` (at most 32 of them).
    pub(super) fn of(bias: &[f32], j: usize) -> PanelBias {
        let mut line = PanelBias([0.0; NR]);
        let part = &bias[(j * NR).min(bias.len())..];
        let live = part.len().min(NR);
        line.0[..live].copy_from_slice(&part[..live]);
        line
    }

    /// The tiles' start: this row for every row of the block.
    pub(super) fn start(&self) -> (*const f32, usize) {
        (self.0.as_ptr(), 0)
    }
}

/// Proof that a unit's tiles are configured for [`TileProduct::block`]:
/// made only by [`TileProduct::configured`], for the call it runs.
pub(super) struct Configured<T>(T);

/// One unit's block product.
pub(super) trait TileProduct: Copy {
    /// A block's sums not yet stored, and where they go: in the tiles, or
    /// in the value where the tiles are emulated.
    type Held;

    /// Runs `f` with the tiles configured, then releases them.
    fn configured<R>(self, f: impl FnOnce(&Configured<Self>) -> R) -> R;

    /// `out[r][j] = start[r][j] + Σ_q a(r, q) · b[q·32 + j]` (each term a
    /// pair dot product, added to the start in order of q) for `r, j <
    /// 32` and `q < steps · 16`; `b` is a B panel of at least `steps · 16`
    /// pairs. `start` (zero where `None`) and `out` are each a pointer to
    /// row 0 and the floats from one row to the next (0 for a start: the
    /// same row for every row, [`PanelBias::start`]).
    ///
    /// The sums stay held (the value returned) until the next block of
    /// the same [`TileProduct::configured`] call stores them, a tile at a
    /// time between its first products (`previous`), or
    /// [`TileProduct::store`] does: four tile stores in a row at the end of
    /// every block (4 KiB) left the tiles idle for a tenth of a block at k
    /// = 384. `between(s)` runs once step `s`'s tiles are loaded and
    /// before its products (on step 0 after them, as they store the
    /// `previous` sums), so that other work (the block before stored into
    /// C) runs while the tiles multiply. Its stores go before the products
    /// rather than after them because the next step's tile loads wait for
    /// the stores before them: a store whose line misses (a C not
    /// streamed) held them back for its line's way from memory, and the
    /// products give it that time (measured on the Intel Xeon: the MLP
    /// projection and A·Bᵀ, whose 1.5 MiB C is not streamed, 1.15–1.22×
    /// faster).
    ///
    /// # Safety
    /// `start` (where given) and `out` point to 32 rows of 32 floats (rows
    /// at least 32 floats apart, or a start's 0 apart: one row of 32),
    /// readable (`start`, during the call) and writable (`out`, until the
    /// sums are stored), which nothing else (`between` included) accesses
    /// meanwhile; `start` may be `out`. `previous` comes from a block of
    /// the same `configured` call, whose `out` the same holds for.
    /// `between` runs no tile instruction (no block, no
    /// [`TileProduct::configured`]): the tiles hold the sums across it.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        tiles: &Configured<Self>,
        a: ATiles,
        b: &[f32],
        steps: usize,
        start: Option<(*const f32, usize)>,
        out: (*mut f32, usize),
        previous: Option<Self::Held>,
        between: impl FnMut(usize),
    ) -> Self::Held;

    /// Stores held sums where their block said.
    ///
    /// # Safety
    /// `held` comes from a block of the same [`TileProduct::configured`]
    /// call, and that block's contract for `out` still holds.
    unsafe fn store(tiles: &Configured<Self>, held: Self::Held);

    /// Runs `iters` rounds of 4 independent tile products and returns the
    /// floating-point operations done.
    fn peak_loop(self, iters: usize) -> u64;
}

/// A block's sums, started from zero or from `bias` in every row, into
/// `*sums` once they are stored ([`TileProduct::block`], which stores
/// `previous` first).
///
/// # Safety
/// `sums` is valid for writes, and nothing else reads or writes it until
/// the returned sums are stored; `previous` as [`TileProduct::block`]
/// says; `between` runs no tile instruction: the tiles hold the sums
/// across it.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn block_sums<T: TileProduct>(
    tiles: &Configured<T>,
    a: ATiles,
    b: &[f32],
    steps: usize,
    bias: Option<&PanelBias>,
    sums: *mut TileSums,
    previous: Option<T::Held>,
    between: impl FnMut(usize),
) -> T::Held {
    let start = bias.map(PanelBias::start);
    // SAFETY: `sums` is 32 rows of 32 floats, rows NR apart, which the
    // caller keeps to this block until it is stored; a bias is one row of
    // 32 floats, borrowed for the call; the caller vouches for `previous`
    // and `between`.
    unsafe {
        T::block(
            tiles,
            a,
            b,
            steps,
            start,
            (sums.cast::<f32>(), NR),
            previous,
            between,
        )
    }
}

/// Packs panels `panels` of the rows of `src` (as used) for tiles, one
/// after another in `out`, tile-major ([`ATiles::packed`]): panel `p`
/// holds rows `p·MR..` (at most [`MR`]), pair `q` of row `r` at slot
/// `(q / 16)·512 + r·16 + q % 16`, `out.len() / panels.len() / MR` pairs
/// per row; pairs past the columns and rows past the matrix are zero.
#[inline(always)]
pub(super) fn pack_row_panels<K: GemmKernel, T: Bf16Input>(
    kernel: K,
    src: &MatRef<T>,
    panels: Range<usize>,
    out: &mut [f32],
) {
    let (rows, cols) = (src.rows(), src.cols());
    let (rs, cs) = src.strides();
    let used = cols.div_ceil(2);
    let Some(panel_len) = out.len().checked_div(panels.len()) else {
        return;
    };
    let live = |p: usize| MR.min(rows - p * MR);
    if cs != 1 {
        // Columns are contiguous (`rs == 1`, a transposed A): each pair's
        // share of two columns is rounded and paired in vectors down the
        // rows, then a step's pairs are transposed into the rows' lines.
        // A step runs across all the panels before the next, so that each
        // column is read in one run of the panels' rows, not a line or two
        // per panel (the columns are a page or more apart). Rows past the
        // matrix stay zero; so do pairs past the columns.
        let strip = |c: usize, p: usize| &src.data[c * cs + p * MR..][..live(p)];
        let (first, span) = (
            panels.start * MR,
            (panels.end * MR).min(rows) - panels.start * MR,
        );
        let mut across = [[0.0; MR]; K_STEP];
        for s in 0..panel_len / (MR * K_STEP) {
            let pairs = s * K_STEP..used.min((s + 1) * K_STEP);
            // The next step's columns, fetched ahead (see `pack_panels`).
            for c in 2 * pairs.end..(2 * pairs.end + 2 * K_STEP).min(cols) {
                prefetch_run(src.data, c * cs + first, span);
            }
            for (p, panel) in panels.clone().zip(out.chunks_exact_mut(panel_len)) {
                if pairs.len() < K_STEP || live(p) < MR {
                    across = [[0.0; MR]; K_STEP];
                }
                for (q, across) in pairs.clone().zip(&mut across) {
                    let hi = (2 * q + 1 < cols).then(|| strip(2 * q + 1, p));
                    T::pair_slices(
                        strip(2 * q, p),
                        hi,
                        &mut across[..live(p)],
                        #[inline(always)]
                        |lo, hi, slots| kernel.round_pairs(lo, hi, slots),
                        #[inline(always)]
                        |lo, hi, slots| kernel.pair_bf16s(lo, hi, slots),
                    );
                }
                let lines: [&[f32]; K_STEP] = core::array::from_fn(|q| &across[q][..]);
                kernel.interleave(&lines, &mut panel[s * MR * K_STEP..][..MR * K_STEP]);
            }
        }
        return;
    }
    for (p, panel) in panels.zip(out.chunks_exact_mut(panel_len)) {
        prefetch_rows(src.data, (p + 1) * MR..((p + 2) * MR).min(rows), rs, cols);
        for (s, step) in panel.chunks_exact_mut(MR * K_STEP).enumerate() {
            let pairs = s * K_STEP..used.min((s + 1) * K_STEP);
            for (r, line) in step.chunks_exact_mut(K_STEP).enumerate() {
                let count = if r < live(p) { pairs.len() } else { 0 };
                let (slots, pad) = line.split_at_mut(count);
                if count > 0 {
                    let row = &src.data[(p * MR + r) * rs..][..cols];
                    let values = 2 * pairs.start..cols.min(2 * pairs.end);
                    round_row_pairs(kernel, &row[values], slots);
                }
                pad.fill(0.0);
            }
        }
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

/// A block's sums in tiles 0–3, and where they go.
#[cfg(target_arch = "x86_64")]
pub(super) struct HeldInTiles {
    out: *mut f32,
    stride: usize,
}

#[cfg(target_arch = "x86_64")]
impl TileProduct for AmxTiles {
    type Held = HeldInTiles;

    #[inline(always)]
    fn configured<R>(self, f: impl FnOnce(&Configured<Self>) -> R) -> R {
        // SAFETY: holding `self` proves the tile unit was granted;
        // `ldtilecfg` reads the 64 bytes of `TILES`, checked against the
        // SDM's layout above.
        unsafe {
            core::arch::asm!("ldtilecfg [{cfg}]", cfg = in(reg) &TILES, options(nostack));
        }
        let out = f(&Configured(self));
        // SAFETY: as above; releasing returns the tiles to their initial
        // state, which nothing after this relies on.
        unsafe {
            core::arch::asm!("tilerelease", options(nostack, nomem));
        }
        out
    }

    #[inline(always)]
    unsafe fn block(
        _tiles: &Configured<Self>,
        a: ATiles,
        b: &[f32],
        steps: usize,
        start: Option<(*const f32, usize)>,
        out: (*mut f32, usize),
        previous: Option<HeldInTiles>,
        mut between: impl FnMut(usize),
    ) -> HeldInTiles {
        // Every byte the tile loads read from A and B, checked here: A rows
        // 0–31 `a.row` slots apart, 16 slots each, `a.step` slots from one
        // step to the next; B `steps · 16` pairs of 32 slots.
        let a_end = (steps.max(1) - 1) * a.step + (MR - 1) * a.row + K_STEP;
        let a_slots = &a.slots[..a_end];
        let b = &b[..steps * K_STEP * NR];
        // The tiles hold the sums from one `asm!` block to the next:
        // nothing else in this crate touches tile state, and `Configured`
        // proves the tile unit was granted and the tiles configured (tiles
        // 0–7 as 16 rows of 64 bytes). Tile `t` of the sums (0–3) holds
        // rows `16·(t / 2)..`, columns `16·(t % 2)..` of the block.
        //
        // Step 0 loads its A and B tiles, then takes the sum tiles one at a
        // time: the previous block's stored, this block's started (zero or
        // `start`), its product issued, so the stores of one tile overlap
        // the products of the others.
        let previous_at = previous.map(|HeldInTiles { out, stride }| (out, stride));
        macro_rules! first_sums {
            ($tile:literal, $half:literal, $col:literal) => {
                if let Some((out, stride)) = previous_at {
                    let at = out.wrapping_add($half * 16 * stride + $col * 16);
                    // SAFETY: as above; the store writes 16 rows of 64 bytes
                    // (rows `stride` floats apart) inside the 32 × 32 floats
                    // the previous block's caller vouches for until now.
                    unsafe {
                        core::arch::asm!(
                            concat!("tilestored [{at} + {row}*1], ", $tile),
                            at = in(reg) at,
                            row = in(reg) stride * 4,
                            options(nostack),
                        );
                    }
                }
                match start {
                    // SAFETY: as above; zeroing touches no memory.
                    None => unsafe {
                        core::arch::asm!(concat!("tilezero ", $tile), options(nostack, nomem));
                    },
                    // SAFETY: as above; the load reads 16 rows of 64 bytes
                    // (rows `stride` floats apart, 0 for one row read 16
                    // times) inside the 32 × 32 floats (or one row of 32)
                    // the caller vouches for.
                    Some((start, stride)) => unsafe {
                        core::arch::asm!(
                            concat!("tileloadd ", $tile, ", [{at} + {row}*1]"),
                            at = in(reg) start.wrapping_add($half * 16 * stride + $col * 16),
                            row = in(reg) stride * 4,
                            options(nostack, readonly),
                        );
                    },
                }
            };
        }
        macro_rules! first_product {
            ($tile:literal, $a:literal, $b:literal, $half:literal, $col:literal) => {
                first_sums!($tile, $half, $col);
                // SAFETY: as above; the product touches no memory.
                unsafe {
                    core::arch::asm!(
                        concat!("tdpbf16ps ", $tile, ", ", $a, ", ", $b),
                        options(nostack, nomem),
                    );
                }
            };
        }
        if steps == 0 {
            // The sums are the start.
            first_sums!("tmm0", 0, 0);
            first_sums!("tmm2", 1, 0);
            first_sums!("tmm1", 0, 1);
            first_sums!("tmm3", 1, 1);
        }
        for s in 0..steps {
            let (a_here, b_here) = (&a_slots[s * a.step..], &b[s * K_STEP * NR..]);
            // SAFETY: as above; step `s` loads 16 rows of 64 bytes from
            // `a_here` and from 16 rows on (rows `a.row` slots apart: inside
            // `a_slots`, checked above) and from `b_here`, `b_here` + 64
            // bytes (rows 128 bytes apart, 16 of them: inside `b`).
            // `between` runs no tile instruction (the caller's contract),
            // so the tiles keep the sums across it.
            unsafe {
                core::arch::asm!(
                    "tileloadd tmm4, [{a_top} + {a_row}*1]",
                    "tileloaddt1 tmm6, [{b} + {b_row}*1]",
                    "tileloadd tmm5, [{a_bottom} + {a_row}*1]",
                    "tileloaddt1 tmm7, [{b} + {b_row}*1 + 64]",
                    a_top = in(reg) a_here.as_ptr(),
                    a_bottom = in(reg) a_here[16 * a.row..].as_ptr(),
                    b = in(reg) b_here.as_ptr(),
                    a_row = in(reg) a.row * 4,
                    b_row = in(reg) NR * 4,
                    options(nostack, readonly),
                );
            }
            if s == 0 {
                first_product!("tmm0", "tmm4", "tmm6", 0, 0);
                first_product!("tmm2", "tmm5", "tmm6", 1, 0);
                first_product!("tmm1", "tmm4", "tmm7", 0, 1);
                first_product!("tmm3", "tmm5", "tmm7", 1, 1);
                between(s);
            } else {
                // (Before the products, so that its stores have them to
                // land before the next step's loads: see the docs.)
                between(s);
                // SAFETY: as above; the products touch no memory.
                unsafe {
                    core::arch::asm!(
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        options(nostack, nomem),
                    );
                }
            }
        }
        HeldInTiles {
            out: out.0,
            stride: out.1,
        }
    }

    #[inline(always)]
    unsafe fn store(_tiles: &Configured<Self>, held: HeldInTiles) {
        let HeldInTiles { out, stride } = held;
        // SAFETY: the tiles hold the block's sums (nothing in this crate
        // touches tile state in between); the stores write 16 rows of 64
        // bytes (rows `stride` floats apart) at `out`, `out` + 64 bytes, 16
        // rows on and 16 rows + 64 bytes on: the 32 × 32 floats the block's
        // caller vouches for until now.
        unsafe {
            core::arch::asm!(
                "tilestored [{top} + {row}*1], tmm0",
                "tilestored [{top} + {row}*1 + 64], tmm1",
                "tilestored [{bottom} + {row}*1], tmm2",
                "tilestored [{bottom} + {row}*1 + 64], tmm3",
                top = in(reg) out,
                bottom = in(reg) out.wrapping_add(16 * stride),
                row = in(reg) stride * 4,
                options(nostack),
            );
        }
    }

    fn peak_loop(self, iters: usize) -> u64 {
        if iters == 0 {
            return 0;
        }
        self.configured(|_| {
            // SAFETY: the tiles are configured (`configured`); the loop
            // touches no memory.
            unsafe {
                core::arch::asm!(
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
                    iters = inout(reg) iters => _,
                    options(nostack, nomem),
                );
            }
        });
        (iters as u64).saturating_mul(4 * 2 * TILE_MACS)
    }
}

/// The tile products element by element in f32, each pair added in the
/// order `tdpbf16ps` defines (low product, then high), so the tile
/// packing and blocking run on any CPU in tests.
#[cfg(test)]
#[derive(Clone, Copy)]
pub(super) struct EmulatedTiles;

/// An emulated block's sums, held until stored as the tiles' are.
#[cfg(test)]
pub(super) struct HeldInValue {
    sums: TileSums,
    out: *mut f32,
    stride: usize,
}

#[cfg(test)]
impl TileProduct for EmulatedTiles {
    type Held = HeldInValue;

    fn configured<R>(self, f: impl FnOnce(&Configured<Self>) -> R) -> R {
        f(&Configured(self))
    }

    unsafe fn block(
        tiles: &Configured<Self>,
        a: ATiles,
        b: &[f32],
        steps: usize,
        start: Option<(*const f32, usize)>,
        (out, stride): (*mut f32, usize),
        previous: Option<HeldInValue>,
        between: impl FnMut(usize),
    ) -> HeldInValue {
        if let Some(previous) = previous {
            // SAFETY: the caller vouches for the previous block's `out`.
            unsafe { Self::store(tiles, previous) };
        }
        let mut held = HeldInValue {
            sums: TileSums([0.0; MR * NR]),
            out,
            stride,
        };
        let pairs = steps * K_STEP;
        for r in 0..MR {
            for j in 0..NR {
                // SAFETY: `r, j < 32`: inside the rows the caller vouches for.
                let mut acc =
                    start.map_or(0.0, |(start, stride)| unsafe { *start.add(r * stride + j) });
                for q in 0..pairs {
                    let ((a_lo, a_hi), (b_lo, b_hi)) = (
                        super::packing::unpair(a.slots[a.at(r, q)]),
                        super::packing::unpair(b[q * NR + j]),
                    );
                    acc += a_lo * b_lo;
                    acc += a_hi * b_hi;
                }
                held.sums.0[r * NR + j] = acc;
            }
        }
        // (`between` touches neither `start` nor `out`, so running it
        // after the sums changes nothing.)
        (0..steps).for_each(between);
        held
    }

    unsafe fn store(_tiles: &Configured<Self>, held: HeldInValue) {
        for (r, row) in held.sums.0.chunks_exact(NR).enumerate() {
            // SAFETY: row `r` < 32 of the 32 × 32 floats the block's caller
            // vouches for until now.
            let out = unsafe { core::slice::from_raw_parts_mut(held.out.add(r * held.stride), NR) };
            out.copy_from_slice(row);
        }
    }

    fn peak_loop(self, iters: usize) -> u64 {
        let (a, b) = ([0.0; MR * K_STEP], [0.0; K_STEP * NR]);
        let mut sums = TileSums([0.0; MR * NR]);
        self.configured(|tiles| {
            for _ in 0..iters {
                // One step of a block is 4 tile products.
                // SAFETY: `sums` is this loop's alone; nothing runs between
                // the steps.
                unsafe {
                    let held = block_sums(
                        tiles,
                        ATiles::packed(&a),
                        &b,
                        1,
                        None,
                        &mut sums,
                        None,
                        |_| {},
                    );
                    Self::store(tiles, held);
                }
            }
        });
        core::hint::black_box(&sums);
        (iters as u64).saturating_mul(4 * 2 * TILE_MACS)
    }
}
