//! How the f32 GEMM blocks a product on this CPU: every rule in one place,
//! each with the reason or measurement behind it (as matrixmultiply's
//! `archparam` keeps its constants), applied at run time to the caches
//! cpuid reports ([`crate::Cpu`]) when a [`Kernels`] handle is made.
//! [`Kernels::with_gemm_blocking`] overrides the result, so tests and
//! benchmarks exercise any blocking on any machine.
//!
//! The loop nest (`blocked.rs`, BLIS): a `kc × nr` panel of B is streamed
//! by every register tile of an `mc × kc` block of A, which stays in L2;
//! the `kc × nc` block of B is revisited by every row block, from L3.
//! Where the B panel is too large for L1, the tiles run the other way
//! round within a row block: each `mr × kc` panel of A stays in L1 while
//! it sweeps `b_sweep` panels of B, which stay in L2. A is read in place
//! unless the L1 rules below pack it (the tile's B panel stays in L1, or
//! A's lines would crowd an L1 set, in a product wide enough to repay the
//! copy) or it is huge. A C written once and larger than L2 is stored past
//! the caches, by this GEMM and by the bf16 one alike.

use crate::cpu::Caches;
use crate::{KernelError, Kernels};

/// How the f32 GEMM blocks a product on one handle: the register tile
/// (`mr × nr`), the rows of A per L2 block (`mc`), the depth of a pass
/// (`kc`), the columns of B per L3 block (`nc`), and when A is read where
/// it lies rather than packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    /// Rows of the register tile (of a packed A panel).
    pub mr: usize,
    /// Columns of the register tile (of a packed B panel).
    pub nr: usize,
    /// Rows of C per L2-resident block of A (a multiple of `mr`).
    pub mc: usize,
    /// Largest depth of one pass over k.
    pub kc: usize,
    /// Columns of C per L3-resident block of B (a multiple of `nr`).
    pub nc: usize,
    /// A is packed, rather than read in place, where the `mr` rows of a
    /// register tile put more than this many lines into one L1 set (0:
    /// wherever A is packed at all, as the tiles whose B panel stays in L1
    /// do) and the product is at least [`Blocking::pack_a_min_n`] wide.
    /// Rows a multiple of [`Blocking::l1_way`] apart (a row-major A of
    /// width 1024: 4 KiB) all fall into one set.
    pub a_lines_per_set: usize,
    /// The narrowest product (columns of C) that packs A: enough panels of
    /// B to repay the copy. Narrower products read A in place.
    pub pack_a_min_n: usize,
    /// As [`Blocking::pack_a_min_n`] for a transposed A (its rows adjacent,
    /// its steps of k a row of the stored matrix apart), which is cheaper
    /// to pack and costs more to read in place.
    pub pack_transposed_a_min_n: usize,
    /// Bytes of one way of the L1 data cache (its size over its ways):
    /// addresses this far apart fall into the same set.
    pub l1_way: usize,
    /// The order of the register tiles over a row block: each A panel
    /// stays in L1 while its tiles sweep this many B panels, which stay in
    /// L2 for the next A panel. 1 is BLIS's order: the B panel stays in L1
    /// while the row block's A panels stream past it.
    pub b_sweep: usize,
    /// The smallest C, in bytes, that a product writing it once (beta 0,
    /// one pass over k) stores past the caches (streaming stores): a C
    /// this large cannot stay in cache for its reader, and a streamed line
    /// is not read from memory before it is written. `usize::MAX`: never.
    pub stream_c_min_bytes: usize,
}

impl core::fmt::Display for Blocking {
    /// `12x32 tile, MC 168, KC 384, NC 4096, A packed past 6 lines per L1
    /// set from n 512 (transposed from n 128), A panel held in L1 over 5 B
    /// panels, C streamed from 1024 KiB` (or `A packed from n 256
    /// (transposed from n 64), B panel held in L1, ...`).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{}x{} tile, MC {}, KC {}, NC {}, ",
            self.mr, self.nr, self.mc, self.kc, self.nc
        )?;
        match self.a_lines_per_set {
            0 => f.write_str("A packed")?,
            lines => write!(f, "A packed past {lines} lines per L1 set")?,
        }
        write!(
            f,
            " from n {} (transposed from n {}), ",
            self.pack_a_min_n, self.pack_transposed_a_min_n
        )?;
        match self.b_sweep {
            0 | 1 => f.write_str("B panel held in L1"),
            panels => write!(f, "A panel held in L1 over {panels} B panels"),
        }?;
        match self.stream_c_min_bytes {
            usize::MAX => Ok(()),
            bytes => write!(f, ", C streamed from {} KiB", bytes / 1024),
        }
    }
}

/// L2 assumed where cpuid reports none (a hypervisor may hide it): 1 MiB,
/// the smallest per-core L2 of the server cores this crate meets (Zen 4
/// and Zen 5; Zen 3 has 512 KiB and reports it).
const FALLBACK_L2: usize = 1 << 20;

/// L3 assumed where cpuid reports none: 32 MiB (one Zen CCD).
const FALLBACK_L3: usize = 32 << 20;

/// L1 assumed where cpuid reports none: 32 KiB, the smallest of the cores
/// this crate meets (Zen 3 and Zen 4).
const FALLBACK_L1: usize = 32 << 10;

/// L1 ways assumed where cpuid reports none: 8, the fewest of the cores
/// this crate meets (Zen 3 and Zen 4; Zen 5 and the Intel Xeons have 12).
const FALLBACK_L1_WAYS: usize = 8;

/// The share of L1 a register tile's B panel (`kc × nr`) may take and
/// still stay there while the tiles of a row block stream A past it: three
/// quarters. Where it does (the AVX2 tile's 24 KiB, the scalar tile's 4
/// KiB), A is packed wherever the product is wide enough (below): a packed
/// panel is one contiguous stream through the ways B leaves free, where A
/// in place is one stream per row (a line per step of k when A is
/// transposed) and evicts B. Measured on
/// Zen 4 with the AVX2 tile (`KERNELS_GEMM_BLOCKING=168,384,4096,0,0`, which
/// packs, beside reading A in place; two runs): packing 1.08–1.25× faster
/// on square 512–2048 and the QKV and MLP products, 1.28–1.35× on the
/// weight gradient Aᵀ·B, within noise on the rest. The AVX-512 tile's
/// panel (48 KiB) streams from L2 on every core, so A stays in place there
/// unless its rows crowd a set (below).
const L1_SHARE_FOR_B: (usize, usize) = (3, 4);

/// Where the B panel streams from L2, the share of an L1 set's ways the
/// lines of an A read in place may take: three quarters, the rest left to
/// B's stream and to lines fetched ahead. A register tile reads its `mr`
/// rows of A in step, so rows whose addresses differ by a multiple of the
/// way size compete for one set; past its ways they evict each other on
/// every step of k. Measured on Zen 4 (32 KiB, 8-way L1, limit 6) with the
/// AVX-512 tile, one thread: with 12 rows in one set (square 1024 and
/// 2048, rows 4 and 8 KiB apart), packing ran 1.23× and 1.19× faster than
/// reading in place (`KERNELS_GEMM_BLOCKING=168,384,4096,99,0` beside the
/// rule); with 6 per set (square 512, the MLP projection's 6 KiB rows),
/// reading in place ran 1.04–1.11× and 1.06–1.08× faster than packing
/// (`...,0,0`, two runs), and with 1 or 2 per set (the trainer's other
/// products) 0.98–1.12×. On Zen 5's 12-way L1 (limit 9), 2048² ran the
/// same either way. Where the A panel is the one held in L1 (the sweep
/// rule below), all its lines count, not one column's: 24 per row of a
/// row-major A at kc 384, but a line or two per step of k of a transposed
/// one, which puts far more than the limit into a set and so is packed.
/// Measured on the Intel Xeon with the sweep: packing the transposed A of
/// Aᵀ·B 1.14× faster (384 × 2048 · 2048 × 1152) and 1.57× (2048³).
const L1_WAYS_FOR_A: (usize, usize) = (3, 4);

/// Where the B panel does not stay in L1 (the rule above), the share of
/// L2 the B panels an A panel sweeps take: a quarter, beside the A block's
/// quarter. The A panel (18 KiB for the AVX-512 tile at kc 384) then stays
/// in L1 over those tiles, and each tile streams only its B panel from L2,
/// where the other order streams both (48 + 18 KiB per tile, more than an
/// L2 serves at the tile's pace on the Intel Xeon); and consecutive tiles
/// write C along its rows, where the streaming prefetchers follow them.
/// Measured on the Intel Xeon (2 MiB L2, 10 panels; `cargo bench --bench
/// gemm` beside `KERNELS_GEMM_BLOCKING=336,384,4096,9,512,1`, the other
/// order): 1.10–1.14× on square 2048 and the QKV and MLP products, 1.21×
/// on the weight gradient Aᵀ·B (with the rule below that packs its
/// transposed A), 0.96–1.05× on the rest. On Zen 4 (1 MiB L2, 5 panels;
/// `168,384,4096,6,512,1` beside it, one run): 1.03–1.05× on square 1024
/// and 2048, the MLP fc product and both gradient products, 0.99–1.01× on
/// the rest.
/// This is BLIS's own rule with the operands' roles exchanged: its
/// AVX-512 tiles are 32 rows (vectors along m) by a few columns, so its
/// smaller micro-panel, the one kept in L1, is B's.
/// The bf16 product on AMX tiles follows the same rule in bytes
/// ([`Blocking::b_sweep_bytes`]).
const L2_SHARE_FOR_B_SWEEP: (usize, usize) = (1, 4);

/// The smallest C that a product writing it once stores past the caches:
/// the size of L2. A C that large leaves L2 before anything reads it, so
/// its lines go to L3 or memory anyway; an ordinary store first reads
/// each line it misses from there (a read for ownership: a single core
/// here writes cold memory at 9.7 GB/s with ordinary stores, 24.8 with
/// streaming ones), and AMX's tile stores wait on those reads. Measured on
/// the Intel Xeon (2 MiB L2), the 15 products of a `shakes` step (B 8, T
/// 256) timed one after another as the step runs them, so each C is
/// cold: in bf16 on AMX 211 ms streamed against 291 ms (the QKV product,
/// 9 MiB of C, 1.8× faster), in f32 the same within 1 %; whole training
/// steps (`runner bench --preset shakes --seq-lens 256`, three alternated
/// runs) bf16 1.06–1.10× faster on one thread and 1.09–1.11× on two, f32
/// 1.01–1.02× and 1.01–1.04×. The price: one product repeated on the same
/// C (a benchmark loop, where C stays in L3) runs 0.8–0.85× on AMX, which
/// is the case of a C that fits L2 and the reason for the threshold. On
/// the Zen 4 (1 MiB L2) whole steps ran 0.96–1.05× streamed against never
/// (seven alternated runs), on the Zen 3 (512 KiB L2) 0.94–1.04× (medians
/// 0.99× on one thread and on two, six runs): neither a gain nor a loss
/// there, though a product repeated on a warm C loses up to 2.5 % (the
/// MLP's first product, 12 MiB of C, on the Zen 3).
const L2_SHARE_FOR_STREAMED_C: (usize, usize) = (1, 1);

/// The fewest panels of B (`n / nr`) that must reuse a packed A for the
/// two rules above to pack it: 16. Packing copies every element of A once
/// per pass, and only the panels of B repay the copy. Measured on Zen 4
/// with the AVX2 tile, packing against reading in place: 0.74× at n = 32
/// (2 panels), 0.85× at 64, 0.95× at 128, 1.05× at 256 (16 panels).
const MIN_B_PANELS_TO_PACK_A: usize = 16;

/// As [`MIN_B_PANELS_TO_PACK_A`] for a transposed A (the weight gradient
/// `xᵀ · dy`): 4. Its packing copies runs of `mr` adjacent floats, one per
/// step of k, where a row-major A's transposes `mr` rows; and read in
/// place, its panel is a line or two per step of k (24–48 KiB at kc 384,
/// where packed it is 18 KiB), which crowds out B's stream whichever sets
/// it falls into. Measured on the Intel Xeon (model 207, AVX-512 tile, one
/// thread, medians of 60 calls) with steps of k 6 KiB apart (Aᵀ·B 1536 ×
/// 2048 · 2048 × n, the MLP projection's weight gradient): packed against
/// in place (two runs) 0.91–0.95× at n = 32, 0.99× at 64, 1.08–1.10× at
/// 128, 1.09× at 256, 1.15–1.21× at 384, and this rule against the former
/// 16 panels (three more) 1.07–1.12× at 128, 1.14–1.39× at 384; 1.5 KiB
/// apart (384 × 2048 · 2048 × n, both comparisons) 0.96–0.99× at 128 and
/// 0.98–1.06× at 384. Whole `shakes` training steps in f32 (B 8, T 256,
/// one thread, two alternated runs): 1.02–1.03× faster.
const MIN_B_PANELS_TO_PACK_TRANSPOSED_A: usize = 4;

/// The share of L2 the `mc × kc` block of A takes: a quarter. The rest
/// holds the B panel streaming through (48 KiB at kc 384 and nr 32), the C
/// tiles and the lines of the next block; and A is usually read in place,
/// where rows a power of two apart (a 1024-wide A: 4 KiB) fall into a
/// few sets of an 8-way L2, so the block must leave ways free. This gives
/// mc 168 with the AVX-512 tile on Zen 4 and Zen 5 (1 MiB), 336 on an Intel
/// core of 2 MiB, 84 with the AVX2 tile on Zen 3 (512 KiB). Measured on
/// Zen 4 with `KERNELS_GEMM_BLOCKING` beside it (`cargo bench --bench
/// gemm`): every benchmarked shape within 0.96–1.04× of the former
/// hand-tuned mc 192 but 1024³, which varies 68–94 GFLOP/s run to run
/// here (three runs: 0.93–1.05× of 192, 1.02–1.13× of mc 252, the 3/8
/// share). BLIS's analytic model (Low et al., 2016), which gives A every
/// way of L2 but the B panel's and one, would take mc 504 on Zen 4's 8-way
/// L2; beside it (`KERNELS_GEMM_BLOCKING=504,384,4096`), the quarter was
/// 1.00–1.20× on every shape but 1024³ (0.91×), so associativity does not
/// enter this rule.
const L2_SHARE_FOR_A: (usize, usize) = (1, 4);

/// The share of L3 the `kc × nc` block of B takes: a quarter, since the L3
/// is shared by every core (a VM reports the whole cache) and each core
/// that multiplies holds its own block of B there.
const L3_SHARE_FOR_B: (usize, usize) = (1, 4);

/// Largest `nc`: 4096 columns. A wider block of B never measured faster
/// (its panels are revisited by every row block either way), and the
/// trainer's widest product (the LM head, 50304 columns) still splits into
/// blocks that stay in L3.
const MAX_NC: usize = 4096;

/// Largest `mc`: bounds the block of A that a reported L2 can ask for (a
/// hypervisor may report any size). A quarter of a 2 MiB L2 holds 341 rows
/// at `kc` 384, so no core met so far reaches it.
const MAX_MC: usize = 1024;

/// Largest `mc`, `kc` or `nc` an override may ask for, so that a block's
/// workspace stays far from overflow on 64-bit targets (the lengths
/// saturate everywhere, where a 32-bit `usize` is not so far).
const MAX_OVERRIDE: usize = 1 << 20;

impl Blocking {
    /// The blocking of a register tile `mr × nr` whose passes are `kc` deep
    /// (the microkernel's, see `microkernel.rs`) on a core with `caches`.
    pub(crate) fn for_caches(mr: usize, nr: usize, kc: usize, caches: Caches) -> Blocking {
        let or = |bytes: usize, fallback: usize| if bytes == 0 { fallback } else { bytes };
        let (l2, l3) = (or(caches.l2, FALLBACK_L2), or(caches.l3, FALLBACK_L3));
        let (l1, ways) = (
            or(caches.l1d, FALLBACK_L1),
            or(caches.l1d_ways, FALLBACK_L1_WAYS),
        );
        // Whole lines, at least one. (4 KiB on every x86 core of the last
        // decade, and from the fallbacks: 64 sets of 64-byte lines, so that
        // the set is chosen by the page offset alone.)
        let l1_way = (l1 / ways / 64).max(1) * 64;
        let floats = |bytes: usize, (num, den): (usize, usize)| bytes / den * num / 4;
        // Whole tiles, at least one.
        let rows = floats(l2, L2_SHARE_FOR_A) / kc / mr;
        let cols = floats(l3, L3_SHARE_FOR_B) / kc / nr;
        let b_panel_stays_in_l1 = kc * nr <= floats(l1, L1_SHARE_FOR_B);
        Blocking {
            mr,
            nr,
            mc: rows.clamp(1, MAX_MC / mr) * mr,
            kc,
            nc: cols.clamp(1, MAX_NC / nr) * nr,
            a_lines_per_set: if b_panel_stays_in_l1 {
                0
            } else {
                (ways * L1_WAYS_FOR_A.0 / L1_WAYS_FOR_A.1).max(1)
            },
            pack_a_min_n: MIN_B_PANELS_TO_PACK_A * nr,
            pack_transposed_a_min_n: MIN_B_PANELS_TO_PACK_TRANSPOSED_A * nr,
            l1_way,
            b_sweep: if b_panel_stays_in_l1 {
                1
            } else {
                (floats(l2, L2_SHARE_FOR_B_SWEEP) / (kc * nr)).clamp(1, MAX_NC / nr)
            },
            stream_c_min_bytes: 4 * floats(l2, L2_SHARE_FOR_STREAMED_C),
        }
    }

    /// Whether a product stores its `m × n` C (from `c`, rows `row_stride`
    /// elements apart) past the caches: it writes C once (`beta` 0,
    /// `passes` over k 1), C is at least [`Blocking::stream_c_min_bytes`],
    /// and every row starts on a 64-byte line (a partly written line would
    /// be merged in memory, which costs more than it saves).
    pub(crate) fn streams_c<T>(
        &self,
        c: *const T,
        (m, n, row_stride): (usize, usize, usize),
        beta: f32,
        passes: usize,
    ) -> bool {
        let size = core::mem::size_of::<T>();
        beta == 0.0
            && passes == 1
            && m.saturating_mul(n).saturating_mul(size) >= self.stream_c_min_bytes
            && c.align_offset(64) == 0
            && (m == 1 || row_stride.saturating_mul(size).is_multiple_of(64))
    }

    /// Bytes of the B panels an A panel sweeps ([`Blocking::b_sweep`]
    /// panels of `kc × nr` floats). The bf16 product on AMX tiles sweeps as
    /// many bytes of its own B panels with each 32-row block of A, which
    /// stays in L1 meanwhile (24 KiB at k 384): a quarter of L2, 20 panels
    /// at k 384 on a 2 MiB L2. Measured on the Intel Xeon (model 207; one
    /// thread, bf16 A read in place, B packed beforehand; medians of four
    /// alternated runs) against blocks of 4 panels, each B panel held in L1
    /// over 6 blocks of A: the QKV product 1.10×, the attention projection
    /// 1.15×, k 1536 and 2048 (where a block of A outgrows L1) 0.99–1.00×.
    pub(crate) fn b_sweep_bytes(&self) -> usize {
        (self.b_sweep)
            .saturating_mul(self.kc)
            .saturating_mul(self.nr)
            .saturating_mul(4)
    }

    /// The most lines of one L1 set that a register tile's A holds while
    /// it runs, read in place with strides `rs` (rows) and `cs` (steps of
    /// k; one of the two is 1) in passes `kc` deep: one column of the tile
    /// where the B panel is the one held in L1 (`b_sweep` 1), the whole
    /// `mr × kc` panel where the A panel is. A is placed as if it started
    /// on a line. Stops counting past `limit` (the answer is then some
    /// count above it), so that a call costs at most a few hundred steps.
    pub(crate) fn a_lines_in_one_set(
        &self,
        rs: usize,
        cs: usize,
        kc: usize,
        limit: usize,
    ) -> usize {
        let depth = if self.b_sweep > 1 { kc.max(1) } else { 1 };
        // Runs of contiguous floats, in increasing address order.
        let (runs, run_len, stride) = if cs == 1 {
            (self.mr, depth, rs)
        } else {
            (depth, self.mr, cs)
        };
        const LINE: usize = 16;
        const MAX_SETS: usize = 256;
        let sets = (self.l1_way / 4 / LINE).clamp(1, MAX_SETS);
        let mut count = [0usize; MAX_SETS];
        let (mut most, mut last_line) = (0, None);
        // Saturating: the strides are the caller's, bounded here only by
        // the operand's length, which these counts need not rely on.
        for r in 0..runs {
            let start = r.saturating_mul(stride);
            let first = start / LINE;
            // A run that shares its first line with the run before it
            // (runs fewer than 16 floats apart) does not add that line.
            let first = if last_line == Some(first) {
                first + 1
            } else {
                first
            };
            let last = start.saturating_add(run_len - 1) / LINE;
            for line in first..=last {
                let set = &mut count[line % sets];
                *set += 1;
                most = most.max(*set);
                if most > limit {
                    return most;
                }
            }
            last_line = Some(last);
        }
        most
    }

    /// Whether an A with strides `rs` and `cs`, in passes `kc` deep, may be
    /// read in place in a product `n` wide, by the L1 rules (`blocked.rs`
    /// also packs an A too large for them).
    pub(crate) fn reads_a_in_place(&self, rs: usize, cs: usize, kc: usize, n: usize) -> bool {
        let limit = self.a_lines_per_set;
        let transposed = rs == 1 && cs != 1;
        let min_n = if transposed {
            self.pack_transposed_a_min_n
        } else {
            self.pack_a_min_n
        };
        n < min_n || self.a_lines_in_one_set(rs, cs, kc, limit) <= limit
    }
}

impl Kernels {
    /// The blocking of this handle's f32 GEMM (products of more than 4
    /// rows; fewer run unpacked): derived from this CPU's caches when the
    /// handle was made, unless [`Kernels::with_gemm_blocking`] set it.
    ///
    /// ```
    /// let b = kernels::Kernels::best().gemm_blocking();
    /// assert!(b.mr > 0 && b.nr > 0 && b.kc > 0);
    /// assert_eq!(b.mc % b.mr, 0);
    /// println!("{b}");
    /// ```
    pub fn gemm_blocking(&self) -> Blocking {
        self.blocking
    }

    /// This handle with its f32 GEMM blocked by `mc`, `kc` and `nc` (the
    /// register tile stays the backend's), to test or measure another
    /// blocking than the one derived from the caches; the product is the
    /// same to rounding (passes over k of another depth sum in another
    /// order). [`KernelError::InvalidArgument`] unless `mc` is a whole
    /// number of tile rows (`mr`), `nc` a whole number of tile columns
    /// (`nr`), `kc` at least 1, and each at most 2^20.
    ///
    /// ```
    /// use kernels::Kernels;
    ///
    /// let k = Kernels::best();
    /// let b = k.gemm_blocking();
    /// let small = k.with_gemm_blocking(b.mr, 16, b.nr)?;
    /// assert_eq!(small.gemm_blocking().kc, 16);
    /// assert!(k.with_gemm_blocking(b.mr + 1, 16, b.nr).is_err());
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn with_gemm_blocking(
        self,
        mc: usize,
        kc: usize,
        nc: usize,
    ) -> Result<Kernels, KernelError> {
        let Blocking { mr, nr, .. } = self.blocking;
        let whole =
            |x: usize, unit: usize| x >= unit && x.is_multiple_of(unit) && x <= MAX_OVERRIDE;
        if !whole(mc, mr) {
            return Err(KernelError::InvalidArgument(
                "mc must be a positive multiple of the tile's rows (mr), at most 2^20",
            ));
        }
        if !whole(nc, nr) {
            return Err(KernelError::InvalidArgument(
                "nc must be a positive multiple of the tile's columns (nr), at most 2^20",
            ));
        }
        if !whole(kc, 1) {
            return Err(KernelError::InvalidArgument(
                "kc must be between 1 and 2^20",
            ));
        }
        let blocking = Blocking {
            mc,
            kc,
            nc,
            ..self.blocking
        };
        Ok(Kernels { blocking, ..self })
    }

    /// This handle with its f32 GEMM packing A where a register tile's
    /// rows put more than `lines_per_set` lines into one L1 set and the
    /// product is at least `min_n` wide, transposed or not
    /// ([`Blocking::a_lines_per_set`], [`Blocking::pack_a_min_n`],
    /// [`Blocking::pack_transposed_a_min_n`]), reading it in place
    /// elsewhere (unless it is too large): `(0, 0)` packs A always,
    /// `(usize::MAX, 0)` never, to test or measure either on any machine.
    /// The product is the same either way.
    ///
    /// ```
    /// let k = kernels::Kernels::best();
    /// let packing = k.with_gemm_a_packing(0, 0).gemm_blocking();
    /// assert_eq!((packing.a_lines_per_set, packing.pack_a_min_n), (0, 0));
    /// assert_eq!(packing.pack_transposed_a_min_n, 0);
    /// ```
    pub fn with_gemm_a_packing(self, lines_per_set: usize, min_n: usize) -> Kernels {
        let blocking = Blocking {
            a_lines_per_set: lines_per_set,
            pack_a_min_n: min_n,
            pack_transposed_a_min_n: min_n,
            ..self.blocking
        };
        Kernels { blocking, ..self }
    }

    /// This handle with its f32 GEMM's register tiles run in the order
    /// `b_sweep` says ([`Blocking::b_sweep`]): 1 holds each B panel in L1
    /// over a row block's A panels, `n > 1` holds each A panel in L1 over
    /// `n` B panels (0 counts as 1), to test or measure either on any
    /// machine. The product is the same bits either way.
    ///
    /// ```
    /// let k = kernels::Kernels::best();
    /// assert_eq!(k.with_gemm_b_sweep(3).gemm_blocking().b_sweep, 3);
    /// ```
    pub fn with_gemm_b_sweep(self, b_sweep: usize) -> Kernels {
        let blocking = Blocking {
            b_sweep: b_sweep.clamp(1, MAX_OVERRIDE),
            ..self.blocking
        };
        Kernels { blocking, ..self }
    }

    /// This handle with its products storing a C of at least `min_bytes`
    /// past the caches where they write it once
    /// ([`Blocking::stream_c_min_bytes`]): 0 streams every such C,
    /// `usize::MAX` none, to test or measure either on any machine. The
    /// product is the same bits either way.
    ///
    /// ```
    /// let k = kernels::Kernels::best().with_gemm_stream_c(usize::MAX);
    /// assert_eq!(k.gemm_blocking().stream_c_min_bytes, usize::MAX);
    /// ```
    pub fn with_gemm_stream_c(self, min_bytes: usize) -> Kernels {
        let blocking = Blocking {
            stream_c_min_bytes: min_bytes,
            ..self.blocking
        };
        Kernels { blocking, ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;

    fn caches(l1d: usize, l2: usize, l3: usize) -> Caches {
        let l1d_ways = if l1d >= 48 * KIB { 12 } else { 8 };
        Caches {
            l1d,
            l1d_ways,
            l2,
            l3,
        }
    }

    #[test]
    fn the_rules_give_whole_tiles_within_their_cache_shares() {
        // Zen 3, Zen 4 / Zen 5, the Intel Xeon with AMX, a VM hiding L3, a
        // tiny and an absurd cache.
        let machines = [
            caches(32 * KIB, 512 * KIB, 32 * MIB),
            caches(32 * KIB, MIB, 32 * MIB),
            caches(48 * KIB, MIB, 32 * MIB),
            caches(48 * KIB, 2 * MIB, 105 * MIB),
            caches(32 * KIB, MIB, 0),
            caches(0, 0, 0),
            caches(4 * KIB, 16 * KIB, 64 * KIB),
            caches(MIB, 1 << 40, 1 << 42),
        ];
        for c in machines {
            for (mr, nr, kc) in [(12, 32, 384), (6, 16, 384), (4, 4, 256)] {
                let b = Blocking::for_caches(mr, nr, kc, c);
                assert_eq!((b.mr, b.nr, b.kc), (mr, nr, kc));
                assert!(
                    b.mc >= mr && b.mc.is_multiple_of(mr) && b.mc <= MAX_MC,
                    "{c}: {b}"
                );
                assert!(
                    b.nc >= nr && b.nc.is_multiple_of(nr) && b.nc <= MAX_NC,
                    "{c}: {b}"
                );
                let l2 = if c.l2 == 0 { FALLBACK_L2 } else { c.l2 };
                // The A block fits its share of L2 unless one tile row
                // block alone is larger; so do the B panels of a sweep.
                assert!(b.mc == mr || 4 * b.mc * kc <= l2 / 4, "{c}: {b}");
                assert!(b.b_sweep >= 1, "{c}: {b}");
                assert!(
                    b.b_sweep == 1 || 4 * b.b_sweep * nr * kc <= l2 / 4,
                    "{c}: {b}"
                );
                // A C larger than L2 is streamed past the caches.
                assert_eq!(b.stream_c_min_bytes, l2, "{c}: {b}");
            }
        }
        let zen4 = Blocking::for_caches(12, 32, 384, machines[1]);
        assert_eq!((zen4.mc, zen4.nc), (168, 4096));
        let xeon = Blocking::for_caches(12, 32, 384, machines[3]);
        assert_eq!((xeon.mc, xeon.nc), (336, 4096));
        let zen3 = Blocking::for_caches(6, 16, 384, machines[0]);
        assert_eq!((zen3.mc, zen3.nc), (84, 4096));
        // A small L3 narrows the block of B: a quarter of 64 KiB.
        let tiny = Blocking::for_caches(4, 4, 256, machines[6]);
        assert_eq!(tiny.nc, 16);
        // Three quarters of L1's ways for A's rows; sets of 4 KiB ways.
        assert_eq!((zen4.a_lines_per_set, zen4.l1_way), (6, 4 * KIB));
        assert_eq!((zen4.pack_a_min_n, zen3.pack_a_min_n), (16 * 32, 16 * 16));
        assert_eq!(
            (zen4.pack_transposed_a_min_n, zen3.pack_transposed_a_min_n),
            (4 * 32, 4 * 16)
        );
        // A B panel that stays in L1 (AVX2's 24 KiB, scalar's 4 KiB)
        // packs A always.
        assert_eq!(zen3.a_lines_per_set, 0);
        assert_eq!(
            Blocking::for_caches(6, 16, 384, machines[2]).a_lines_per_set,
            0
        );
        assert_eq!(
            Blocking::for_caches(4, 4, 256, machines[1]).a_lines_per_set,
            0
        );
        assert_eq!((xeon.a_lines_per_set, xeon.l1_way), (9, 4 * KIB));
        // The AVX-512 tile's B panel (48 KiB) does not stay in L1: its A
        // panel does, over a quarter of L2's worth of B panels.
        assert_eq!((xeon.b_sweep, zen4.b_sweep, zen3.b_sweep), (10, 5, 1));
        let unknown = Blocking::for_caches(12, 32, 384, machines[5]);
        assert_eq!((unknown.a_lines_per_set, unknown.l1_way), (6, 4 * KIB));
    }

    #[test]
    fn rows_a_power_of_two_apart_crowd_one_l1_set() {
        let zen4 = Blocking::for_caches(12, 32, 384, caches(32 * KIB, MIB, 32 * MIB));
        // Where the B panel stays in L1, one column of the tile counts.
        let column = Blocking { b_sweep: 1, ..zen4 };
        // (strides in floats, most lines of the tile's 12 rows in one set)
        for ((rs, cs), lines) in [
            ((1024, 1), 12), // 4 KiB apart: every row in one set
            ((2048, 1), 12),
            ((1025, 1), 12), // 4 KiB + 4 bytes: still the same set
            ((512, 1), 6),   // 2 KiB: two sets
            ((1536, 1), 6),  // 6 KiB: two sets
            ((1152, 1), 2),  // 4.5 KiB: eight sets
            ((384, 1), 2),
            ((100, 1), 1),
            ((8, 1), 1),   // two rows per line, six lines in six sets
            ((1, 384), 1), // a transposed A: the tile's rows share one line
        ] {
            assert_eq!(column.a_lines_in_one_set(rs, cs, 384, 99), lines, "rs {rs}");
        }
        // Where the A panel stays in L1, all of it counts: 24 lines per row
        // of a row-major A at kc 384, a line or two per step of k of a
        // transposed one.
        assert!(zen4.b_sweep > 1);
        for ((rs, cs), lines) in [
            ((1024, 1), 12), // every row on the same 24 sets
            ((1536, 1), 6),  // rows on two groups of 24 sets
            ((1, 384), 48),  // steps 1.5 KiB apart: 8 sets
            ((1, 1024), 384),
            ((1, 16), 6), // steps on consecutive lines: every set
        ] {
            assert_eq!(
                zen4.a_lines_in_one_set(rs, cs, 384, 999),
                lines,
                "rs {rs} cs {cs}"
            );
        }
        // Counting stops past the limit.
        assert_eq!(zen4.a_lines_in_one_set(1, 1024, 384, 9), 10);
        let wide = 16 * zen4.nr;
        for b in [column, zen4] {
            assert!(!b.reads_a_in_place(1024, 1, 384, wide));
            assert!(b.reads_a_in_place(1536, 1, 384, wide));
            assert!(b.reads_a_in_place(384, 1, 384, wide));
            // Too few panels of B to repay packing.
            assert!(b.reads_a_in_place(1024, 1, 384, wide - 1));
        }
        // A transposed A is read in place while only a column of it is
        // held, packed where the whole panel is, from 4 panels of B.
        assert!(column.reads_a_in_place(1, 384, 384, wide));
        assert!(!zen4.reads_a_in_place(1, 384, 384, wide));
        let narrow = 4 * zen4.nr;
        assert!(!zen4.reads_a_in_place(1, 1536, 384, narrow));
        assert!(zen4.reads_a_in_place(1, 1536, 384, narrow - 1));
        // A row-major A as narrow stays in place, however crowded.
        assert!(zen4.reads_a_in_place(1024, 1, 384, narrow));
        // The Xeon's 12 ways take up to 9 lines: still not all 12.
        let xeon = Blocking::for_caches(12, 32, 384, caches(48 * KIB, 2 * MIB, 105 * MIB));
        assert!(!xeon.reads_a_in_place(2048, 1, 384, wide));
        assert!(xeon.reads_a_in_place(512, 1, 384, wide));
        // The override decides either way.
        let k = crate::tests::scalar();
        let never = k.with_gemm_a_packing(0, 0).gemm_blocking();
        assert!(!never.reads_a_in_place(1, 1, 1, 1));
        let always = k.with_gemm_a_packing(usize::MAX, 0).gemm_blocking();
        assert!(always.reads_a_in_place(1 << 20, 1, 1 << 20, 1 << 20));
        assert!(always.reads_a_in_place(1, 1 << 20, 1 << 20, 1 << 20));
    }

    #[test]
    fn overrides_keep_the_tile_and_refuse_partial_tiles() {
        let k = crate::tests::scalar();
        let b = k.gemm_blocking();
        let o = k.with_gemm_blocking(2 * b.mr, 5, 3 * b.nr).unwrap();
        assert_eq!(
            o.gemm_blocking(),
            Blocking {
                mc: 2 * b.mr,
                kc: 5,
                nc: 3 * b.nr,
                ..b
            }
        );
        for (mc, kc, nc) in [
            (0, 5, b.nr),
            (b.mr + 1, 5, b.nr),
            (b.mr, 0, b.nr),
            (b.mr, 5, b.nr - 1),
            (b.mr, MAX_OVERRIDE + 1, b.nr),
        ] {
            assert!(k.with_gemm_blocking(mc, kc, nc).is_err(), "{mc} {kc} {nc}");
        }
    }
}
