//! The BLIS loop nest around a microkernel, written once for every
//! instruction set: columns of C in blocks of `NC`, k in passes of at most
//! `KC`, and per pass two phases run through the caller's [`Executor`]:
//! pack A and B, then compute tiles of C block by block.

use super::microkernel::{APanel, BPanel, GemmKernel, Tile};
use super::packing::{pack_a, pack_b};
use super::Problem;
use crate::parallel::SharedMut;
use crate::Executor;

/// Floats of padding per packed region, to start it on a 64-byte line.
const ALIGN_SLACK: usize = 16;

/// The largest A (per pass over k) read in place rather than packed: 16
/// MiB. The register tile reads A's rows (or columns) where they are, and
/// a tile's 12 or 6 of them stay in L1 while it runs as well as a packed
/// panel would; packing costs a transposing copy per row block, amortized
/// over only `n / NR` panels. Measured on Zen 5: in place as fast or faster
/// on every benchmarked shape up to 2048 × 2048 (by 8–12 % on the
/// trainer's products with n = 256 or 384; the same on 2048², whose rows
/// are 8 KiB apart). Past the L3 it is packed, untested either way.
pub(crate) const DIRECT_A_FLOATS: usize = 4 * 1024 * 1024;

/// The largest B (per pass over k) read in place rather than packed, when
/// its rows are contiguous: 128 KiB, well inside L2, so that rows read at
/// their own stride still come from cache on every reuse.
const DIRECT_B_FLOATS: usize = 32 * 1024;

/// Pieces per thread in the compute phase when running on several threads,
/// so that uneven pieces still balance.
const PIECES_PER_THREAD: usize = 8;

/// The depth of each pass over k: `k` split into equal passes of at most
/// `KC`, so that no pass is a sliver.
fn pass_depth<K: GemmKernel>(k: usize) -> usize {
    let passes = k.div_ceil(K::KC).max(1);
    k.div_ceil(passes)
}

/// Floats of workspace the blocked path needs: all of A packed for one pass
/// (so that any thread can compute any row block), one block of B packed.
pub(crate) fn workspace_len<K: GemmKernel>(m: usize, n: usize, k: usize) -> usize {
    let kc = pass_depth::<K>(k);
    let a = m.div_ceil(K::MR).saturating_mul(K::MR).saturating_mul(kc);
    let b = n.min(K::NC).div_ceil(K::NR) * K::NR * kc;
    a.saturating_add(b).saturating_add(2 * ALIGN_SLACK)
}

/// `workspace[offset..]` starting on a 64-byte boundary, split at `len`.
fn aligned_region(workspace: &mut [f32], len: usize) -> (&mut [f32], &mut [f32]) {
    let skip = workspace.as_ptr().align_offset(64).min(ALIGN_SLACK);
    workspace[skip..].split_at_mut(len)
}

/// Runs the blocked GEMM. `workspace` holds at least
/// [`workspace_len`]`(m, n, k)` floats; `m, n, k > 0` and `alpha != 0`.
pub(crate) fn run<K: GemmKernel, E: Executor + ?Sized>(
    kernel: K,
    exec: &E,
    p: &Problem,
    workspace: &mut [f32],
) {
    let (m, n, k) = (p.m, p.n, p.k);
    let kc_max = pass_depth::<K>(k);
    let threads = exec.threads().max(1);
    let a_panels = m.div_ceil(K::MR);
    let (packed_a, rest) = aligned_region(workspace, a_panels * K::MR * kc_max);
    let (packed_b, _) = aligned_region(rest, n.min(K::NC).div_ceil(K::NR) * K::NR * kc_max);
    let (packed_a, packed_b) = (
        SharedMut(packed_a.as_mut_ptr()),
        SharedMut(packed_b.as_mut_ptr()),
    );
    let m_blocks = m.div_ceil(K::MC);
    // A is read in place unless huge (see `DIRECT_A_FLOATS`). Only a last,
    // partial panel may be packed (zero-padded to MR rows).
    let direct_a = m.saturating_mul(kc_max) <= DIRECT_A_FLOATS;
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

    for jc in (0..n).step_by(K::NC) {
        let nc = K::NC.min(n - jc);
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
            let a_pieces = if pack_a_early && !a_to_pack.is_empty() {
                threads.min(a_to_pack.len())
            } else {
                0
            };
            let a_per_piece = a_to_pack.len().div_ceil(a_pieces.max(1));
            let b_pieces = threads.min(b_to_pack.len());
            let b_per_piece = b_to_pack.len().div_ceil(b_pieces.max(1));
            exec.run(a_pieces + b_pieces, &|piece| {
                kernel.enter(
                    #[inline(always)]
                    |_| {
                        if piece < a_pieces {
                            let first = a_to_pack.start + piece * a_per_piece;
                            let last = (first + a_per_piece).min(a_to_pack.end);
                            // SAFETY: pieces pack disjoint panel ranges.
                            unsafe { pack_a_panels::<K>(p, packed_a, first..last, pc, kc) };
                        } else {
                            let first = b_to_pack.start + (piece - a_pieces) * b_per_piece;
                            let last = (first + b_per_piece).min(b_to_pack.end);
                            // SAFETY: pieces pack disjoint panel ranges.
                            unsafe { pack_b_panels::<K>(p, packed_b, first..last, jc, nc, pc, kc) };
                        }
                    },
                )
            });

            // Phase 2: piece (row block, panel group) computes its block of
            // C; the blocks partition C.
            exec.run(m_blocks * n_groups, &|piece| {
                kernel.enter(
                    #[inline(always)]
                    |kernel| {
                        let (block, group) = (piece / n_groups, piece % n_groups);
                        let rows = block * K::MC..m.min((block + 1) * K::MC);
                        let panels = rows.start / K::MR..rows.end.div_ceil(K::MR);
                        if !pack_a_early {
                            // SAFETY: this piece alone uses its row block.
                            unsafe { pack_a_panels::<K>(p, packed_a, panels.clone(), pc, kc) };
                        }
                        // SAFETY: the A panels of this row block and all of
                        // packed B were written (in phase 1 or just above) and
                        // no piece writes them while phase 2 runs. (Panels a
                        // direct A or B never packed hold stale floats,
                        // unread.)
                        let (a, b) = unsafe {
                            (
                                core::slice::from_raw_parts(
                                    packed_a.ptr().add(panels.start * K::MR * kc),
                                    panels.len() * K::MR * kc,
                                ),
                                core::slice::from_raw_parts(packed_b.ptr(), b_panels * K::NR * kc),
                            )
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
                                    let panel = &a[(i - rows.start) * kc..][..K::MR * kc];
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
/// `jc` (of a block `nc` wide), depth `pc..pc + kc`, into the B region.
///
/// # Safety
/// The B region holds `ceil(nc / NR)` panels of `NR · kc` floats, and no
/// one else accesses panels `panels` during the call.
#[inline(always)]
unsafe fn pack_b_panels<K: GemmKernel>(
    p: &Problem,
    packed_b: SharedMut,
    panels: core::ops::Range<usize>,
    jc: usize,
    nc: usize,
    pc: usize,
    kc: usize,
) {
    let len = panels.len() * K::NR * kc;
    // SAFETY: per the contract, these panels are in bounds and ours alone.
    let dst = unsafe {
        core::slice::from_raw_parts_mut(packed_b.ptr().add(panels.start * K::NR * kc), len)
    };
    let cols = jc + (panels.start * K::NR).min(nc)..jc + (panels.end * K::NR).min(nc);
    pack_b(&p.b, pc..pc + kc, cols, K::NR, dst);
}

/// Packs panels `panels` (of `MR` rows each) of op(A), depth `pc..pc + kc`,
/// into their place in the A region.
///
/// # Safety
/// The A region holds all `ceil(m / MR)` panels of `MR · kc` floats, and no
/// one else accesses panels `panels` during the call.
#[inline(always)]
unsafe fn pack_a_panels<K: GemmKernel>(
    p: &Problem,
    packed_a: SharedMut,
    panels: core::ops::Range<usize>,
    pc: usize,
    kc: usize,
) {
    let len = panels.len() * K::MR * kc;
    // SAFETY: per the contract, these panels are in bounds and ours alone.
    let dst = unsafe {
        core::slice::from_raw_parts_mut(packed_a.ptr().add(panels.start * K::MR * kc), len)
    };
    let rows = (panels.start * K::MR).min(p.m)..(panels.end * K::MR).min(p.m);
    pack_a(&p.a, rows, pc..pc + kc, K::MR, dst);
}
