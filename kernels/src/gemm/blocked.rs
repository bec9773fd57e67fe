//! The BLIS loop nest around a microkernel, written once for every
//! instruction set: columns of C in blocks of `nc`, k in passes of at most
//! `kc`, and per pass two phases run through the caller's [`Executor`]:
//! pack A and B, then compute tiles of C block by block (rows in blocks of
//! `mc`). The sizes are the handle's [`Blocking`].

use core::ops::Range;

use super::microkernel::{add_tile_bias, APanel, BPanel, GemmKernel, Tile};
use super::packing::{pack_a, pack_b};
use super::{Blocking, Problem};
use crate::parallel::{run_pieces, threads_of, SharedMut};
use crate::simd::stream_fence;
use crate::Executor;

/// Floats of padding per packed region, to start it on a 64-byte line.
const ALIGN_SLACK: usize = 16;

/// The largest A (per pass over k) read in place rather than packed: 16
/// MiB. The register tile reads A's rows (or columns) where they are, and
/// a tile's 12 or 6 of them stay in L1 while it runs as well as a packed
/// panel would, unless they crowd one L1 set (`Blocking::a_lines_per_set`
/// decides that); packing costs a transposing copy per row block,
/// amortized over only `n / NR` panels. Measured on Zen 5: in place as
/// fast or faster on every benchmarked shape up to 2048 × 2048 (by 8–12 %
/// on the trainer's products with n = 256 or 384). Past 16 MiB (half the
/// L3) it is packed; no shape that large was measured either way.
pub(crate) const DIRECT_A_FLOATS: usize = 4 * 1024 * 1024;

/// The largest B (per pass over k) read in place rather than packed, when
/// its rows are contiguous: 128 KiB, well inside L2, so that rows read at
/// their own stride still come from cache on every reuse.
const DIRECT_B_FLOATS: usize = 32 * 1024;

/// Pieces per thread in the compute phase when running on several threads,
/// so that uneven pieces still balance.
const PIECES_PER_THREAD: usize = 8;

/// The depth of each pass over k: `k` split into equal passes of at most
/// `kc`, so that no pass is a sliver.
fn pass_depth(k: usize, bl: &Blocking) -> usize {
    let passes = k.div_ceil(bl.kc).max(1);
    k.div_ceil(passes)
}

/// Floats of workspace the blocked path needs: every panel of A for one
/// pass (packed A, so that any thread can compute any row block; whether
/// A is packed depends on its strides, which the length does not know)
/// and one block of B packed.
pub(crate) fn workspace_len<K: GemmKernel>(m: usize, n: usize, k: usize, bl: &Blocking) -> usize {
    let kc = pass_depth(k, bl);
    let a = m.div_ceil(K::MR).saturating_mul(K::MR).saturating_mul(kc);
    let b = (n.min(bl.nc).div_ceil(K::NR) * K::NR).saturating_mul(kc);
    a.saturating_add(b).saturating_add(2 * ALIGN_SLACK)
}

/// `workspace` from its first 64-byte boundary (skipping at most
/// `ALIGN_SLACK` floats), split at `len`.
fn aligned_region(workspace: &mut [f32], len: usize) -> (&mut [f32], &mut [f32]) {
    let skip = workspace.as_ptr().align_offset(64).min(ALIGN_SLACK);
    workspace[skip..].split_at_mut(len)
}

/// How one product runs, decided once per call from its shape, its
/// strides and the blocking.
struct Plan {
    /// Rows of A and C.
    m: usize,
    /// Depth of each pass over k.
    kc: usize,
    /// Rows per row block: whole tiles, the blocks of equal height (at
    /// most the blocking's `mc`), so that pieces split over threads are
    /// the same size.
    mc: usize,
    /// Row blocks (the last may be shorter).
    m_blocks: usize,
    /// Whether A is read in place (unless huge or the blocking's L1 rules
    /// pack it); then only a last, partial panel may be packed
    /// (zero-padded to MR rows), in slot 0.
    direct_a: bool,
    /// The panels of A that are packed.
    a_to_pack: Range<usize>,
    /// Whether B's whole panels are read in place: small, with contiguous
    /// rows. (A last, partial panel of a column block is packed.)
    direct_b: bool,
    /// The blocking's [`Blocking::b_sweep`] (at least 1): the order of a
    /// piece's tiles.
    b_sweep: usize,
    /// Whether C is stored past the caches ([`Blocking::streams_c`]).
    stream_c: bool,
}

impl Plan {
    fn new<K: GemmKernel>(p: &Problem, bl: &Blocking) -> Plan {
        let (m, n) = (p.m, p.n);
        let kc = pass_depth(p.k, bl);
        let m_blocks = m.div_ceil(bl.mc);
        let mc = m.div_ceil(m_blocks).next_multiple_of(K::MR).min(bl.mc);
        let direct_a =
            m.saturating_mul(kc) <= DIRECT_A_FLOATS && bl.reads_a_in_place(p.a.rs, p.a.cs, kc, n);
        let a_panels = m.div_ceil(K::MR);
        let a_to_pack = if !direct_a {
            0..a_panels
        } else if !tile_in_bounds::<K>((a_panels - 1) * K::MR, m) {
            a_panels - 1..a_panels
        } else {
            0..0
        };
        Plan {
            m,
            kc,
            mc,
            m_blocks: m.div_ceil(mc),
            direct_a,
            a_to_pack,
            direct_b: p.b.cs == 1 && n.saturating_mul(kc) <= DIRECT_B_FLOATS,
            b_sweep: bl.b_sweep.max(1),
            stream_c: bl.streams_c(p.c.ptr.ptr(), (m, n, p.c.rs), p.beta, p.k.div_ceil(kc)),
        }
    }

    /// Where packed panel `q` of A lives in the A region.
    fn a_slot(&self, q: usize) -> usize {
        if self.direct_a {
            0
        } else {
            q
        }
    }

    /// Whether the tile at row `i` reads A in place.
    fn a_in_place<K: GemmKernel>(&self, i: usize) -> bool {
        self.direct_a && tile_in_bounds::<K>(i, self.m)
    }
}

/// Whether the register tile that covers rows `i..` of `m` reads no row
/// past m (else a last, partial panel is packed, zero-padded).
fn tile_in_bounds<K: GemmKernel>(i: usize, m: usize) -> bool {
    i + K::covering_rows(K::MR.min(m - i)) <= m
}

/// Columns `jc..jc + nc` of C, and how they are split into pieces.
struct ColumnBlock {
    jc: usize,
    nc: usize,
    b_panels: usize,
    /// The panels of B that are packed.
    b_to_pack: Range<usize>,
    /// Groups of panels per row block in phase 2 (each group with a row
    /// block is a piece).
    n_groups: usize,
    /// Panels per group (the last group may have fewer).
    panels_per_group: usize,
    /// Whether A's panels are packed in phase 1: row blocks shared by
    /// several pieces (or a direct A's last panel) are; otherwise each
    /// piece packs its own block just before use, so it is still in L2
    /// (as BLIS does).
    pack_a_early: bool,
}

impl ColumnBlock {
    fn new<K: GemmKernel>(plan: &Plan, n: usize, jc: usize, nc_max: usize, threads: usize) -> Self {
        let nc = nc_max.min(n - jc);
        let b_panels = nc.div_ceil(K::NR);
        let b_to_pack = if !plan.direct_b {
            0..b_panels
        } else if !nc.is_multiple_of(K::NR) {
            b_panels - 1..b_panels
        } else {
            0..0
        };
        // Split the panels so that a multi-threaded run has enough pieces;
        // a single thread computes whole row blocks, as BLIS does.
        let n_groups = if threads == 1 {
            1
        } else {
            (PIECES_PER_THREAD * threads)
                .div_ceil(plan.m_blocks)
                .min(b_panels)
        };
        let panels_per_group = b_panels.div_ceil(n_groups);
        let n_groups = b_panels.div_ceil(panels_per_group);
        ColumnBlock {
            jc,
            nc,
            b_panels,
            b_to_pack,
            n_groups,
            panels_per_group,
            pack_a_early: n_groups > 1 || plan.direct_a,
        }
    }
}

/// The workspace's packed regions, shared by the pieces.
#[derive(Clone, Copy)]
struct Regions {
    packed_a: SharedMut,
    packed_b: SharedMut,
}

/// Runs the blocked GEMM blocked by `bl` (whose tile is `K`'s).
/// `workspace` holds at least [`workspace_len`]`(m, n, k, bl)` floats;
/// `m, n, k > 0` and `alpha != 0`.
pub(crate) fn run<K: GemmKernel, E: Executor + ?Sized>(
    kernel: K,
    exec: &E,
    p: &Problem,
    bl: &Blocking,
    workspace: &mut [f32],
) {
    let plan = Plan::new::<K>(p, bl);
    let threads = threads_of(exec);
    let a_len = p.m.div_ceil(K::MR) * K::MR * plan.kc;
    let (packed_a, rest) = aligned_region(workspace, a_len);
    let (packed_b, _) = aligned_region(rest, p.n.min(bl.nc).div_ceil(K::NR) * K::NR * plan.kc);
    let regions = Regions {
        packed_a: SharedMut(packed_a.as_mut_ptr()),
        packed_b: SharedMut(packed_b.as_mut_ptr()),
    };

    for jc in (0..p.n).step_by(bl.nc) {
        let block = ColumnBlock::new::<K>(&plan, p.n, jc, bl.nc, threads);
        for (pass, pc) in (0..p.k).step_by(plan.kc).enumerate() {
            let depth = pc..pc + plan.kc.min(p.k - pc);
            let beta = if pass == 0 { p.beta } else { 1.0 };

            // Phase 1: pack B's column panels (and A's, if early), each piece
            // a disjoint range of panels.
            // (Pieces per thread rounded up, then only as many pieces as
            // that needs: none starts past its range.)
            let a_to_pack = &plan.a_to_pack;
            let a_early = if block.pack_a_early {
                a_to_pack.len()
            } else {
                0
            };
            let a_per_piece = a_early.div_ceil(threads).max(1);
            let a_pieces = a_early.div_ceil(a_per_piece);
            let b_to_pack = &block.b_to_pack;
            let b_per_piece = b_to_pack.len().div_ceil(threads).max(1);
            let b_pieces = b_to_pack.len().div_ceil(b_per_piece);
            run_pieces(exec, a_pieces + b_pieces, &|piece| {
                kernel.enter(
                    #[inline(always)]
                    |kernel| {
                        if piece < a_pieces {
                            let first = a_to_pack.start + piece * a_per_piece;
                            let last = (first + a_per_piece).min(a_to_pack.end);
                            let slot = plan.a_slot(first);
                            // SAFETY: pieces pack disjoint, non-empty panel
                            // ranges into their slots.
                            unsafe {
                                pack_a_panels(kernel, p, regions, first..last, slot, depth.clone())
                            };
                        } else {
                            let first = b_to_pack.start + (piece - a_pieces) * b_per_piece;
                            let last = (first + b_per_piece).min(b_to_pack.end);
                            // SAFETY: pieces pack disjoint, non-empty panel
                            // ranges.
                            unsafe {
                                pack_b_panels(
                                    kernel,
                                    p,
                                    regions,
                                    first..last,
                                    &block,
                                    depth.clone(),
                                )
                            };
                        }
                    },
                )
            });

            // Phase 2: piece (row block, panel group) computes its block of
            // C; the blocks partition C.
            run_pieces(exec, plan.m_blocks * block.n_groups, &|piece| {
                kernel.enter(
                    #[inline(always)]
                    |kernel| {
                        let (row_block, group) = (piece / block.n_groups, piece % block.n_groups);
                        // SAFETY: each piece is its own block of C, and the
                        // packed regions were written in phase 1 (or are
                        // this piece's own A panels).
                        unsafe {
                            compute_piece(
                                kernel,
                                p,
                                &plan,
                                &block,
                                regions,
                                (row_block, group),
                                (depth.clone(), beta),
                            )
                        }
                        if plan.stream_c {
                            stream_fence();
                        }
                    },
                )
            });
        }
    }
}

/// Computes piece `(row block, panel group)` of the column block `block`
/// of C for the pass over k `depth` (`beta` its C scale): packs the row
/// block's panels of A first where phase 1 did not, then runs the
/// register tile over every tile of the piece.
///
/// # Safety
/// The regions are the workspace's, sized by [`workspace_len`] for this
/// product and plan; B's packed panels (and A's, if packed early) were
/// written in phase 1 and no piece writes them during phase 2; no other
/// piece touches this piece's block of C or (if it packs them here) its
/// panels of A.
#[inline(always)]
unsafe fn compute_piece<K: GemmKernel>(
    kernel: K,
    p: &Problem,
    plan: &Plan,
    block: &ColumnBlock,
    regions: Regions,
    (row_block, group): (usize, usize),
    (depth, beta): (Range<usize>, f32),
) {
    let (m, n, kc, pc) = (p.m, p.n, depth.len(), depth.start);
    let rows = row_block * plan.mc..m.min((row_block + 1) * plan.mc);
    let panels = rows.start / K::MR..rows.end.div_ceil(K::MR);
    if !block.pack_a_early {
        let first_slot = plan.a_slot(panels.start);
        // SAFETY: this piece alone uses its row block's panels (A is
        // packed: each in its own slot).
        unsafe { pack_a_panels(kernel, p, regions, panels, first_slot, depth.clone()) };
    }
    // SAFETY: packed B was written in phase 1 and no piece writes it while
    // phase 2 runs. (Panels a direct B never packed hold stale floats,
    // unread.)
    let b =
        unsafe { core::slice::from_raw_parts(regions.packed_b.ptr(), block.b_panels * K::NR * kc) };
    let first_panel = group * block.panels_per_group;
    let last_panel = (first_panel + block.panels_per_group).min(block.b_panels);
    // The tiles of a sweep share one A panel, which stays in L1; the
    // sweep's B panels stay in L2 for the next A panel (one B panel per
    // sweep: it stays in L1 while the row block's A panels stream past).
    let sweeps = (first_panel..last_panel).step_by(plan.b_sweep);
    let tiles = sweeps.flat_map(|first| {
        let panels = first..(first + plan.b_sweep).min(last_panel);
        let row_starts = rows.clone().step_by(K::MR);
        row_starts.flat_map(move |i| panels.clone().map(move |q| (i, q)))
    });
    for (i, q) in tiles {
        let j = block.jc + q * K::NR;
        let b_panel = if plan.direct_b && (q + 1) * K::NR <= block.nc {
            BPanel {
                data: &p.b.data[pc * p.b.rs + j..],
                rs: p.b.rs,
            }
        } else {
            BPanel {
                data: &b[q * K::NR * kc..][..K::NR * kc],
                rs: K::NR,
            }
        };
        let a_panel = if plan.a_in_place::<K>(i) {
            APanel {
                data: &p.a.data[i * p.a.rs + pc * p.a.cs..],
                rs: p.a.rs,
                cs: p.a.cs,
            }
        } else {
            // SAFETY: panel `i / MR` was packed into its slot (in phase
            // 1 or just above), a slot of the A region, and no piece
            // writes it while phase 2 runs.
            let panel = unsafe {
                core::slice::from_raw_parts(
                    regions
                        .packed_a
                        .ptr()
                        .add(plan.a_slot(i / K::MR) * K::MR * kc),
                    K::MR * kc,
                )
            };
            APanel::packed(panel, K::MR)
        };
        // The bias of the tile's columns, added on the last pass as the
        // tile is stored (such a tile is not streamed: it is read back).
        let bias = p.bias.filter(|_| depth.end == p.k).map(|bias| &bias[j..]);
        let tile = Tile {
            // SAFETY: (i, j) is inside C.
            ptr: unsafe { p.c.ptr.ptr().add(i * p.c.rs + j) },
            ldc: p.c.rs,
            rows: K::MR.min(m - i),
            cols: K::NR.min(n - j),
            stream: plan.stream_c && bias.is_none(),
        };
        // SAFETY: the tile lies in this piece's block of C, which no
        // other piece touches; the bias holds `n - j ≥ cols` floats.
        unsafe {
            kernel.tile(kc, a_panel, b_panel, p.alpha, beta, tile);
            if let Some(bias) = bias {
                add_tile_bias(kernel, bias, tile);
            }
        }
    }
}

/// Packs panels `panels` (of `NR` columns each) of op(B)'s column block
/// `block`, rows `depth`, into the B region.
///
/// # Safety
/// The B region holds `ceil(nc / NR)` panels of `NR · kc` floats, and no
/// one else accesses panels `panels` during the call.
#[inline(always)]
unsafe fn pack_b_panels<K: GemmKernel>(
    kernel: K,
    p: &Problem,
    regions: Regions,
    panels: Range<usize>,
    block: &ColumnBlock,
    depth: Range<usize>,
) {
    let (jc, nc, kc) = (block.jc, block.nc, depth.len());
    let len = panels.len() * K::NR * kc;
    // SAFETY: per the contract, these panels are in bounds and ours alone.
    let dst = unsafe { regions.packed_b.slice(panels.start * K::NR * kc, len) };
    let cols = jc + (panels.start * K::NR).min(nc)..jc + (panels.end * K::NR).min(nc);
    pack_b(kernel, &p.b, depth, cols, K::NR, dst);
}

/// Packs panels `panels` (of `MR` rows each) of op(A), columns `depth`,
/// into the A region's slots from `first_slot` on.
///
/// # Safety
/// The A region holds slots `first_slot..first_slot + panels.len()` of
/// `MR · kc` floats, and no one else accesses them during the call.
#[inline(always)]
unsafe fn pack_a_panels<K: GemmKernel>(
    kernel: K,
    p: &Problem,
    regions: Regions,
    panels: Range<usize>,
    first_slot: usize,
    depth: Range<usize>,
) {
    let panel_len = K::MR * depth.len();
    let len = panels.len() * panel_len;
    // SAFETY: per the contract, these slots are in bounds and ours alone.
    let dst = unsafe { regions.packed_a.slice(first_slot * panel_len, len) };
    let rows = (panels.start * K::MR).min(p.m)..(panels.end * K::MR).min(p.m);
    pack_a(kernel, &p.a, rows, depth, K::MR, dst);
}
