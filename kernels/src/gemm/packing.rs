//! Copies blocks of op(A) and op(B) into the panel layout the microkernels
//! read: contiguous, in the order of use, zero-padded to whole panels so the
//! kernels never need a bounds test on k, m or n.
//!
//! A panel of A is `MR` rows of op(A) interleaved along k; a panel of B is
//! `NR` columns of op(B) interleaved along k. Both are the same operation
//! on a matrix `X(x, p)` (x across the panel, p along k), so one function
//! packs both.

use core::ops::Range;

use super::microkernel::GemmKernel;
use super::Operand;
use crate::simd::Simd;

/// A view `X(x, p) = data[x·across + p·along]`, one of the strides being 1.
struct Strided<'a> {
    data: &'a [f32],
    across: usize,
    along: usize,
}

/// Packs rows `rows` × columns `depth` of op(A) into panels of `mr` rows:
/// panel `q`, step `p` holds `op(A)[rows.start + q·mr + 0..mr][p]`.
#[inline(always)]
pub(crate) fn pack_a<K: GemmKernel>(
    kernel: K,
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
    pack_panels(kernel, &x, rows, depth, mr, dst)
}

/// Packs rows `depth` × columns `cols` of op(B) into panels of `nr`
/// columns: panel `q`, step `p` holds `op(B)[p][cols.start + q·nr + 0..nr]`.
#[inline(always)]
pub(crate) fn pack_b<K: GemmKernel>(
    kernel: K,
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
    pack_panels(kernel, &x, cols, depth, nr, dst)
}

/// Writes panels of `width` lines `x` of `src` (from `across`), each `kc =
/// depth.len()` steps deep; lines past `across.end` are zeros. `dst` holds
/// exactly the panels.
#[inline(always)]
fn pack_panels<K: GemmKernel>(
    kernel: K,
    src: &Strided,
    across: Range<usize>,
    depth: Range<usize>,
    width: usize,
    dst: &mut [f32],
) {
    let kc = depth.len();
    if src.across == 1 {
        // The lines are adjacent in memory: one short copy per panel and
        // step, a step at a time across all the panels, so that the
        // source is read in order (panel by panel, each step would be a
        // stride apart, often on another page, where the hardware
        // prefetchers do not follow).
        for (p, step) in depth.enumerate() {
            for (q, panel) in dst.chunks_exact_mut(width * kc).enumerate() {
                let x0 = across.start + q * width;
                let lines = width.min(across.end - x0);
                let run = &src.data[x0 + step * src.along..][..lines];
                let dst = &mut panel[p * width..][..width];
                if lines == width {
                    dst.copy_from_slice(run);
                } else {
                    dst[..lines].copy_from_slice(run);
                    dst[lines..].fill(0.0);
                }
            }
        }
        return;
    }
    for (q, panel) in dst.chunks_exact_mut(width * kc).enumerate() {
        let x0 = across.start + q * width;
        let lines = width.min(across.end - x0);
        // Each line is contiguous along k: read the lines side by side,
        // writing the panel in order.
        let mut line: [&[f32]; MAX_WIDTH] = [&[]; MAX_WIDTH];
        for (x, line) in line.iter_mut().enumerate().take(lines) {
            *line = &src.data[(x0 + x) * src.across + depth.start * src.along..][..kc];
        }
        if lines == width {
            kernel.interleave(&line[..width], panel);
        } else {
            // Padding lines: zero the panel once rather than per step.
            panel.fill(0.0);
            interleave_scalar(&line[..lines], width, 0, panel);
        }
    }
}

/// Interleaves lines contiguous along k into a panel `width` wide, one
/// element at a time: `dst[p·width + x] = lines[x][p]` for `x <
/// lines.len() <= width` and every step `p` from `first_step` to
/// `dst.len() / width` (every line holds that many). The portable packing,
/// and the edges of the vector one.
#[inline(always)]
pub(crate) fn interleave_scalar(
    lines: &[&[f32]],
    width: usize,
    first_step: usize,
    dst: &mut [f32],
) {
    if width == 0 {
        return;
    }
    for (p, dst) in dst.chunks_exact_mut(width).enumerate().skip(first_step) {
        for (d, line) in dst.iter_mut().zip(lines) {
            *d = line[p];
        }
    }
}

/// [`interleave_scalar`] a `LANES × LANES` block at a time, transposed in
/// registers. A panel narrower than `LANES` (the tiles' `MR`) transposes
/// `LANES` lines, repeating its last, and stores whole vectors: each
/// step's spill into the next is overwritten by the next step. A wider
/// panel (the tiles' `NR`) is whole vectors of lines. The last steps, whose
/// stores would spill past `dst`, take the scalar loop.
#[inline(always)]
pub(crate) fn interleave_simd<S: Simd>(s: S, lines: &[&[f32]], dst: &mut [f32]) {
    let (width, lanes) = (lines.len(), S::LANES);
    if width == 0 || (width > lanes && width % lanes != 0) {
        // No tile has such a panel.
        return interleave_scalar(lines, width, 0, dst);
    }
    // The floats one block of `lanes` steps writes, its spill included
    // (so a block that fits also has all its steps in the lines).
    let reach = (lanes - 1) * width + width.max(lanes);
    let mut p = 0;
    while p * width + reach <= dst.len() {
        let out = &mut dst[p * width..][..reach];
        for first in (0..width).step_by(lanes) {
            let chunk = &lines[first..width.min(first + lanes)];
            let last = chunk.len() - 1;
            s.transpose(
                #[inline(always)]
                |r| s.load(&chunk[r.min(last)][p..]),
                #[inline(always)]
                |c, v| s.store(&mut out[c * width + first..], v),
            );
        }
        p += lanes;
    }
    interleave_scalar(lines, width, p, dst);
}

/// The widest panel of any kernel (`NR` of AVX-512).
const MAX_WIDTH: usize = 32;
