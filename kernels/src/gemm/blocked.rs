//! The BLIS loop nest around a microkernel, written once for every
//! instruction set: columns of C in blocks of `nc`, k in passes of at most
//! `kc`, and per pass two phases run through the caller's [`Executor`]:
//! pack A and B, then compute tiles of C block by block (rows in blocks of
//! `mc`). The sizes are the handle's [`Blocking`].

use super::microkernel::{APanel, BPanel, GemmKernel, Tile};
use super::packing::{pack_a, pack_b};
use super::{Blocking, Problem};
use crate::parallel::{run_pieces, threads_of, SharedMut};
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
    let b = n.min(bl.nc).div_ceil(K::NR) * K::NR * kc;
    a.saturating_add(b).saturating_add(2 * ALIGN_SLACK)
}

/// `workspace[offset..]` starting on a 64-byte boundary, split at `len`.
fn aligned_region(workspace: &mut [f32], len: usize) -> (&mut [f32], &mut [f32]) {
    let skip = workspace.as_ptr().align_offset(64).min(ALIGN_SLACK);
    workspace[skip..].split_at_mut(len)
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
    let (m, n, k) = (p.m, p.n, p.k);
    let (mc, nc_max) = (bl.mc, bl.nc);
    let kc_max = pass_depth(k, bl);
    let threads = threads_of(exec);
    let a_panels = m.div_ceil(K::MR);
    let (packed_a, rest) = aligned_region(workspace, a_panels * K::MR * kc_max);
    let (packed_b, _) = aligned_region(rest, n.min(nc_max).div_ceil(K::NR) * K::NR * kc_max);
    let (packed_a, packed_b) = (
        SharedMut(packed_a.as_mut_ptr()),
        SharedMut(packed_b.as_mut_ptr()),
    );
    // Row blocks of equal height (whole tiles, at most mc), so that pieces
    // split over threads are the same size.
    let m_blocks = m.div_ceil(mc);
    let mc = m.div_ceil(m_blocks).next_multiple_of(K::MR).min(mc);
    let m_blocks = m.div_ceil(mc);
    // A is read in place unless huge or the blocking's L1 rules pack it.
    // Then only a last, partial panel may be packed (zero-padded to MR
    // rows).
    let direct_a = m.saturating_mul(kc_max) <= DIRECT_A_FLOATS && bl.reads_a_in_place(p.a.rs, n);
    // Where packed panel `q` of A lives in the workspace.
    let a_slot = |q: usize| if direct_a { 0 } else { q };
    // A direct A's last panel is read in place too where the register tile
    // that covers it reads no row past m.
    let a_in_place = |i: usize| direct_a && i + K::covering_rows(K::MR.min(m - i)) <= m;
    let a_to_pack = if !direct_a {
        0..a_panels
    } else if !a_in_place((a_panels - 1) * K::MR) {
        a_panels - 1..a_panels
    } else {
        0..0
    };
    // Likewise a small B with contiguous rows, but for a last, partial
    // panel of a column block.
    let direct_b = p.b.cs == 1 && n.saturating_mul(kc_max) <= DIRECT_B_FLOATS;

    for jc in (0..n).step_by(nc_max) {
        let nc = nc_max.min(n - jc);
        let b_panels = nc.div_ceil(K::NR);
        let b_to_pack = if !direct_b {
            0..b_panels
        } else if nc % K::NR != 0 {
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
                .div_ceil(m_blocks)
                .min(b_panels)
        };
        let panels_per_group = b_panels.div_ceil(n_groups);
        let n_groups = b_panels.div_ceil(panels_per_group);
        // Row blocks shared by several pieces are packed before phase 2;
        // otherwise each piece packs its own block just before use, so it is
        // still in L2 (as BLIS does).
        let pack_a_early = n_groups > 1 || direct_a;

        for (pass, pc) in (0..k).step_by(kc_max).enumerate() {
            let kc = kc_max.min(k - pc);
            let beta = if pass == 0 { p.beta } else { 1.0 };

            // Phase 1: pack B's column panels (and A's, if early), each piece
            // a disjoint range of panels.
            // (Pieces per thread rounded up, then only as many pieces as
            // that needs: none starts past its range.)
            let a_early = if pack_a_early { a_to_pack.len() } else { 0 };
            let a_per_piece = a_early.div_ceil(threads).max(1);
            let a_pieces = a_early.div_ceil(a_per_piece);
            let b_per_piece = b_to_pack.len().div_ceil(threads).max(1);
            let b_pieces = b_to_pack.len().div_ceil(b_per_piece);
            run_pieces(exec, a_pieces + b_pieces, &|piece| {
                kernel.enter(
                    #[inline(always)]
                    |kernel| {
                        if piece < a_pieces {
                            let first = a_to_pack.start + piece * a_per_piece;
                            let last = (first + a_per_piece).min(a_to_pack.end);
                            // SAFETY: pieces pack disjoint, non-empty panel
                            // ranges into their slots.
                            unsafe {
                                pack_a_panels(
                                    kernel,
                                    p,
                                    packed_a,
                                    first..last,
                                    a_slot(first),
                                    pc..pc + kc,
                                )
                            };
                        } else {
                            let first = b_to_pack.start + (piece - a_pieces) * b_per_piece;
                            let last = (first + b_per_piece).min(b_to_pack.end);
                            // SAFETY: pieces pack disjoint, non-empty panel
                            // ranges.
                            unsafe {
                                pack_b_panels(kernel, p, packed_b, first..last, jc, nc, pc..pc + kc)
                            };
                        }
                    },
                )
            });

            // Phase 2: piece (row block, panel group) computes its block of
            // C; the blocks partition C.
            run_pieces(exec, m_blocks * n_groups, &|piece| {
                kernel.enter(
                    #[inline(always)]
                    |kernel| {
                        let (block, group) = (piece / n_groups, piece % n_groups);
                        let rows = block * mc..m.min((block + 1) * mc);
                        let panels = rows.start / K::MR..rows.end.div_ceil(K::MR);
                        if !pack_a_early {
                            let first_slot = a_slot(panels.start);
                            // SAFETY: this piece alone uses its row block's
                            // panels (A is packed: each in its own slot).
                            unsafe {
                                pack_a_panels(kernel, p, packed_a, panels, first_slot, pc..pc + kc)
                            };
                        }
                        // SAFETY: packed B was written in phase 1 and no
                        // piece writes it while phase 2 runs. (Panels a
                        // direct B never packed hold stale floats, unread.)
                        let b = unsafe {
                            core::slice::from_raw_parts(packed_b.ptr(), b_panels * K::NR * kc)
                        };
                        let first_panel = group * panels_per_group;
                        let last_panel = (first_panel + panels_per_group).min(b_panels);
                        for q in first_panel..last_panel {
                            let j = jc + q * K::NR;
                            let b_panel = if direct_b && (q + 1) * K::NR <= nc {
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
                            for i in rows.clone().step_by(K::MR) {
                                let a_panel = if a_in_place(i) {
                                    APanel {
                                        data: &p.a.data[i * p.a.rs + pc * p.a.cs..],
                                        rs: p.a.rs,
                                        cs: p.a.cs,
                                    }
                                } else {
                                    // SAFETY: panel `i / MR` was packed into
                                    // its slot (in phase 1 or just above), a
                                    // slot of the A region, and no piece
                                    // writes it while phase 2 runs.
                                    let panel = unsafe {
                                        core::slice::from_raw_parts(
                                            packed_a.ptr().add(a_slot(i / K::MR) * K::MR * kc),
                                            K::MR * kc,
                                        )
                                    };
                                    APanel::packed(panel, K::MR)
                                };
                                let tile = Tile {
                                    // SAFETY: (i, j) is inside C.
                                    ptr: unsafe { p.c.ptr.ptr().add(i * p.c.rs + j) },
                                    ldc: p.c.rs,
                                    rows: K::MR.min(m - i),
                                    cols: K::NR.min(n - j),
                                };
                                // SAFETY: the tile lies in this piece's block
                                // of C, which no other piece touches.
                                unsafe { kernel.tile(kc, a_panel, b_panel, p.alpha, beta, tile) };
                            }
                        }
                    },
                )
            });
        }
    }
}

/// Packs panels `panels` (of `NR` columns each) of op(B), columns from
/// `jc` (of a block `nc` wide), rows `depth`, into the B region.
///
/// # Safety
/// The B region holds `ceil(nc / NR)` panels of `NR · kc` floats, and no
/// one else accesses panels `panels` during the call.
#[inline(always)]
unsafe fn pack_b_panels<K: GemmKernel>(
    kernel: K,
    p: &Problem,
    packed_b: SharedMut,
    panels: core::ops::Range<usize>,
    jc: usize,
    nc: usize,
    depth: core::ops::Range<usize>,
) {
    let kc = depth.len();
    let len = panels.len() * K::NR * kc;
    // SAFETY: per the contract, these panels are in bounds and ours alone.
    let dst = unsafe {
        core::slice::from_raw_parts_mut(packed_b.ptr().add(panels.start * K::NR * kc), len)
    };
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
    packed_a: SharedMut,
    panels: core::ops::Range<usize>,
    first_slot: usize,
    depth: core::ops::Range<usize>,
) {
    let panel_len = K::MR * depth.len();
    let len = panels.len() * panel_len;
    // SAFETY: per the contract, these slots are in bounds and ours alone.
    let dst =
        unsafe { core::slice::from_raw_parts_mut(packed_a.ptr().add(first_slot * panel_len), len) };
    let rows = (panels.start * K::MR).min(p.m)..(panels.end * K::MR).min(p.m);
    pack_a(kernel, &p.a, rows, depth, K::MR, dst);
}
