//! The BLIS loop nest around a microkernel, written once for every
//! instruction set: columns of C in blocks of `NC`, k in passes of at most
//! `KC`, and per pass two phases run through the caller's [`Executor`]:
//! pack A and B, then compute tiles of C block by block.

use super::microkernel::{GemmKernel, Tile};
use super::packing::{pack_a, pack_b};
use super::Problem;
use crate::parallel::SharedMut;
use crate::Executor;

/// Floats of padding per packed region, to start it on a 64-byte line.
const ALIGN_SLACK: usize = 16;

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

    for jc in (0..n).step_by(K::NC) {
        let nc = K::NC.min(n - jc);
        let b_panels = nc.div_ceil(K::NR);
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

        for (pass, pc) in (0..k).step_by(kc_max).enumerate() {
            let kc = kc_max.min(k - pc);
            let beta = if pass == 0 { p.beta } else { 1.0 };

            // Phase 1: pieces `0..threads` pack A's row panels, pieces
            // `threads..2·threads` pack B's column panels, each a disjoint
            // range of panels.
            let a_per_piece = a_panels.div_ceil(threads);
            let b_per_piece = b_panels.div_ceil(threads);
            exec.run(2 * threads, &|piece| {
                kernel.enter(
                    #[inline(always)]
                    |_| {
                        if piece < threads {
                            let first = (piece * a_per_piece).min(a_panels);
                            let last = (first + a_per_piece).min(a_panels);
                            let len = (last - first) * K::MR * kc;
                            // SAFETY: pieces write disjoint panel ranges of
                            // the A region, which holds `a_panels` panels of
                            // `MR · kc_max >= MR · kc` floats.
                            let dst = unsafe {
                                core::slice::from_raw_parts_mut(
                                    packed_a.ptr().add(first * K::MR * kc),
                                    len,
                                )
                            };
                            let rows = (first * K::MR).min(m)..(last * K::MR).min(m);
                            pack_a(&p.a, rows, pc..pc + kc, K::MR, dst);
                        } else {
                            let first = ((piece - threads) * b_per_piece).min(b_panels);
                            let last = (first + b_per_piece).min(b_panels);
                            let len = (last - first) * K::NR * kc;
                            // SAFETY: as for A, in the B region of
                            // `b_panels` panels of `NR · kc_max` floats.
                            let dst = unsafe {
                                core::slice::from_raw_parts_mut(
                                    packed_b.ptr().add(first * K::NR * kc),
                                    len,
                                )
                            };
                            let cols =
                                (jc + first * K::NR).min(jc + nc)..(jc + last * K::NR).min(jc + nc);
                            pack_b(&p.b, pc..pc + kc, cols, K::NR, dst);
                        }
                    },
                )
            });

            // Phase 2: piece (row block, panel group) computes its block of
            // C; the blocks partition C, and the packed data is read only.
            exec.run(m_blocks * n_groups, &|piece| {
                kernel.enter(
                    #[inline(always)]
                    |kernel| {
                        let (block, group) = (piece / n_groups, piece % n_groups);
                        // SAFETY: phase 1 has finished writing both regions,
                        // and no piece writes them during phase 2.
                        let (a, b) = unsafe {
                            (
                                core::slice::from_raw_parts(packed_a.ptr(), a_panels * K::MR * kc),
                                core::slice::from_raw_parts(packed_b.ptr(), b_panels * K::NR * kc),
                            )
                        };
                        let first_panel = group * panels_per_group;
                        let last_panel = (first_panel + panels_per_group).min(b_panels);
                        let rows = block * K::MC..m.min((block + 1) * K::MC);
                        for q in first_panel..last_panel {
                            let j = jc + q * K::NR;
                            let b_panel = &b[q * K::NR * kc..][..K::NR * kc];
                            for i in rows.clone().step_by(K::MR) {
                                let a_panel = &a[i * kc..][..K::MR * kc];
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
