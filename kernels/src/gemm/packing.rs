//! Copies blocks of op(A) and op(B) into the panel layout the microkernels
//! read: contiguous, in the order of use, zero-padded to whole panels so the
//! kernels never need a bounds test on k, m or n.
//!
//! A panel of A is `MR` rows of op(A) interleaved along k; a panel of B is
//! `NR` columns of op(B) interleaved along k. Both are the same operation
//! on a matrix `X(x, p)` (x across the panel, p along k), so one function
//! packs both.

use core::ops::Range;

use super::Operand;

/// A view `X(x, p) = data[x·across + p·along]`, one of the strides being 1.
struct Strided<'a> {
    data: &'a [f32],
    across: usize,
    along: usize,
}

/// Packs rows `rows` × columns `depth` of op(A) into panels of `mr` rows:
/// panel `q`, step `p` holds `op(A)[rows.start + q·mr + 0..mr][p]`.
#[inline(always)]
pub(crate) fn pack_a(
    a: &Operand,
    rows: Range<usize>,
    depth: Range<usize>,
    mr: usize,
    dst: &mut [f32],
) {
    let x = Strided {
        data: a.data,
        across: a.rs,
        along: a.cs,
    };
    pack_panels(&x, rows, depth, mr, dst)
}

/// Packs rows `depth` × columns `cols` of op(B) into panels of `nr`
/// columns: panel `q`, step `p` holds `op(B)[p][cols.start + q·nr + 0..nr]`.
#[inline(always)]
pub(crate) fn pack_b(
    b: &Operand,
    depth: Range<usize>,
    cols: Range<usize>,
    nr: usize,
    dst: &mut [f32],
) {
    let x = Strided {
        data: b.data,
        across: b.cs,
        along: b.rs,
    };
    pack_panels(&x, cols, depth, nr, dst)
}

/// Writes panels of `width` lines `x` of `src` (from `across`), each `kc =
/// depth.len()` steps deep; lines past `across.end` are zeros. `dst` holds
/// exactly the panels.
#[inline(always)]
fn pack_panels(
    src: &Strided,
    across: Range<usize>,
    depth: Range<usize>,
    width: usize,
    dst: &mut [f32],
) {
    let kc = depth.len();
    for (q, panel) in dst.chunks_exact_mut(width * kc).enumerate() {
        let x0 = across.start + q * width;
        let lines = width.min(across.end - x0);
        if src.across == 1 {
            // The lines are adjacent in memory: one short copy per step.
            for (p, dst) in depth.clone().zip(panel.chunks_exact_mut(width)) {
                let run = &src.data[x0 + p * src.along..][..lines];
                if lines == width {
                    dst.copy_from_slice(&run[..width]);
                } else {
                    dst[..lines].copy_from_slice(run);
                    dst[lines..].fill(0.0);
                }
            }
        } else {
            // Each line is contiguous along k: read the lines side by side,
            // writing the panel in order.
            let mut line: [&[f32]; MAX_WIDTH] = [&[]; MAX_WIDTH];
            for (x, line) in line.iter_mut().enumerate().take(lines) {
                *line = &src.data[(x0 + x) * src.across + depth.start * src.along..][..kc];
            }
            if lines < width {
                // Padding lines: zero the panel once rather than per step.
                panel.fill(0.0);
            }
            for (p, dst) in panel.chunks_exact_mut(width).enumerate() {
                // Every line holds `kc` floats and `p < kc` (the panel holds
                // `kc` steps of `width`): the indexing below is in bounds.
                if lines == width {
                    // The common case, a loop of known length LLVM unrolls.
                    for (d, line) in dst.iter_mut().zip(&line[..width]) {
                        // SAFETY: p < kc = line.len(), as stated above.
                        *d = unsafe { *line.get_unchecked(p) };
                    }
                } else {
                    for (d, line) in dst.iter_mut().zip(&line[..lines]) {
                        *d = line[p];
                    }
                }
            }
        }
    }
}

/// The widest panel of any kernel (`NR` of AVX-512).
const MAX_WIDTH: usize = 32;
