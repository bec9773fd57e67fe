//! Products with at most [`SMALL_M`] rows of C (decoding one token, a
//! matrix-vector product): nothing is packed, since each element of B is
//! used at most `SMALL_M` times, and B is read once, straight from memory.
//!
//! Large products with contiguous rows of B (`x · W`, the decoding case)
//! are split along k: each piece streams its own contiguous block of rows
//! of B into a partial C in the workspace, and the partials are added in
//! order. Splitting columns instead would cut every row of B into short
//! runs that the prefetchers follow badly (measured: two threads decoded
//! no faster than one). The split depends only on the shape, so the result
//! is the same for any number of threads.

use core::ops::Range;

use super::microkernel::GemmKernel;
use super::{scale_by_beta, Problem};
use crate::parallel::{run_pieces, threads_of, SharedMut};
use crate::Executor;

/// The most rows of C this path takes.
pub(crate) const SMALL_M: usize = 4;

/// Floats of C per chunk of columns (all rows together): 16 KiB, which stay
/// in L1 while the rows of B stream past. Chunks are as wide as that allows,
/// so that B is read in long runs the prefetchers follow (512-column chunks
/// read 2 KiB per row and ran at a third of the memory bandwidth).
const CHUNK_FLOATS: usize = 4096;

/// Columns per chunk for `m` rows of C (about [`CHUNK_FLOATS`] in all).
fn chunk_columns(m: usize) -> usize {
    (CHUNK_FLOATS / m).next_multiple_of(64)
}

/// Multiply-adds below which splitting across threads costs more than it
/// saves.
const MIN_PARALLEL_WORK: usize = 1 << 16;

/// Rows of B per piece of a split along k, at least: longer blocks stream
/// better (decoding `shakes` on 2 threads: 64 rows 1.45×, 96 rows 1.6× one
/// thread), and the partials' extra traffic (m·n floats a piece) stays small.
const MIN_ROWS_PER_PIECE: usize = 96;

/// Most pieces of a split along k: enough to balance a few threads.
const MAX_K_PIECES: usize = 8;

/// Whether the product has enough multiply-adds to split at all.
fn worth_splitting(m: usize, n: usize, k: usize) -> bool {
    m.saturating_mul(n).saturating_mul(k) >= MIN_PARALLEL_WORK
}

/// Pieces of columns for an `m × k · k × n` product of few rows on
/// `threads` threads, at most `units`: twice as many as threads when the
/// product is worth splitting, else one.
pub(crate) fn column_pieces(
    threads: usize,
    (m, n, k): (usize, usize, usize),
    units: usize,
) -> usize {
    if threads > 1 && worth_splitting(m, n, k) {
        (2 * threads).min(units)
    } else {
        1
    }
}

/// Pieces of k for an `m × k · k × n` product (1: no split). A function of
/// the shape alone, so that results do not depend on the thread count.
fn k_pieces(m: usize, n: usize, k: usize) -> usize {
    if !worth_splitting(m, n, k) {
        return 1;
    }
    let pieces = (k / MIN_ROWS_PER_PIECE).clamp(1, MAX_K_PIECES);
    // As many as `k.div_ceil(rows per piece)` really gives.
    k.div_ceil(k.div_ceil(pieces))
}

/// Floats of workspace for the partial products of a split along k.
pub(crate) fn workspace_len(m: usize, n: usize, k: usize) -> usize {
    match k_pieces(m, n, k) {
        1 => 0,
        pieces => pieces.saturating_mul(m).saturating_mul(n),
    }
}

/// Runs the product; `m <= SMALL_M`, `m, n, k > 0`, `alpha != 0`, and
/// `ws` holds [`workspace_len`] floats.
pub(crate) fn run<K: GemmKernel, E: Executor + ?Sized>(
    kernel: K,
    exec: &E,
    p: &Problem,
    ws: &mut [f32],
) {
    let pieces = k_pieces(p.m, p.n, p.k);
    if p.b.cs == 1 && pieces > 1 {
        return run_split_k(kernel, exec, p, pieces, &mut ws[..pieces * p.m * p.n]);
    }
    let chunk = chunk_columns(p.m);
    // Several threads take column ranges of their own (each still read in
    // whole chunks); one thread takes everything in one piece.
    let pieces = column_pieces(threads_of(exec), (p.m, p.n, p.k), p.n.div_ceil(64));
    let per_piece = p.n.div_ceil(pieces).next_multiple_of(16);
    let pieces = p.n.div_ceil(per_piece);
    run_pieces(exec, pieces, &|piece| {
        kernel.enter(
            #[inline(always)]
            |kernel| {
                let first = piece * per_piece;
                let last = p.n.min(first + per_piece);
                for start in (first..last).step_by(chunk) {
                    columns(kernel, p, start, chunk.min(last - start));
                }
            },
        )
    });
}

/// Columns `start..start + width` of C, for every row.
#[inline(always)]
fn columns<K: GemmKernel>(kernel: K, p: &Problem, start: usize, width: usize) {
    // SAFETY: each call of `c_row` makes the only live reference to that
    // segment of C; pieces own disjoint column ranges, and rows of C do not
    // overlap (their stride is at least n when m > 1).
    let c_row = |i: usize| unsafe {
        core::slice::from_raw_parts_mut(p.c.ptr.ptr().add(i * p.c.rs + start), width)
    };
    let (a, b) = (&p.a, &p.b);
    if b.cs == 1 {
        // Rows of op(B) are contiguous: C[i] += alpha·A[i][l]·B[l], row by row.
        for i in 0..p.m {
            scale_by_beta(p.beta, c_row(i));
        }
        accumulate_rows(kernel, p, 0..p.k, start, width, c_row);
    } else if a.cs == 1 {
        // Rows of op(A) and columns of op(B) are contiguous: dot products.
        for i in 0..p.m {
            let a_row = &a.data[i * a.rs..][..p.k];
            for (jj, c) in c_row(i).iter_mut().enumerate() {
                let b_col = &b.data[(start + jj) * b.cs..][..p.k];
                let ab = p.alpha * kernel.dot(a_row, b_col);
                *c = if p.beta == 0.0 { ab } else { ab + p.beta * *c };
            }
        }
    } else {
        // Both strided (op(A) and op(B) both transposed): plain loop.
        for i in 0..p.m {
            for (jj, c) in c_row(i).iter_mut().enumerate() {
                let j = start + jj;
                let ab: f32 = (0..p.k)
                    .map(|l| a.data[i * a.rs + l * a.cs] * b.data[l * b.rs + j * b.cs])
                    .sum();
                let ab = p.alpha * ab;
                *c = if p.beta == 0.0 { ab } else { ab + p.beta * *c };
            }
        }
    }
}

/// `out(i) += alpha · A[i][l] · B[l][start..start + width]` for `l` in
/// `rows`, every row `i` of C; rows of op(B) are contiguous.
#[inline(always)]
fn accumulate_rows<'o, K: GemmKernel>(
    kernel: K,
    p: &Problem,
    rows: Range<usize>,
    start: usize,
    width: usize,
    out: impl Fn(usize) -> &'o mut [f32],
) {
    let (a, b) = (&p.a, &p.b);
    // Four rows of B a quarter of the range apart at a time: four
    // independent streams keep more memory requests in flight than one
    // (measured 1.4× on decoding), and C is read and written a quarter as
    // often.
    let quarter = rows.len() / 4;
    let b_row = |l: usize| &b.data[l * b.rs + start..][..width];
    let a_at = |i: usize, l: usize| p.alpha * a.data[i * a.rs + l * a.cs];
    for l in rows.start..rows.start + quarter {
        let ls = [l, l + quarter, l + 2 * quarter, l + 3 * quarter];
        for i in 0..p.m {
            kernel.axpy4(ls.map(|l| a_at(i, l)), ls.map(b_row), out(i));
        }
    }
    for l in rows.start + 4 * quarter..rows.end {
        for i in 0..p.m {
            kernel.axpy(a_at(i, l), b_row(l), out(i));
        }
    }
}

/// The product split along k into `pieces` contiguous blocks of rows of B:
/// each piece writes `alpha · A[:, block] · B[block, :]` into its own
/// `m × n` partial in `ws`, then C = partial 0 + partial 1 + … (+ beta·C),
/// added in that order.
fn run_split_k<K: GemmKernel, E: Executor + ?Sized>(
    kernel: K,
    exec: &E,
    p: &Problem,
    pieces: usize,
    ws: &mut [f32],
) {
    let (m, n) = (p.m, p.n);
    let rows_per_piece = p.k.div_ceil(pieces);
    let chunk = chunk_columns(m);
    let partials = SharedMut(ws.as_mut_ptr());
    run_pieces(exec, pieces, &|piece| {
        kernel.enter(
            #[inline(always)]
            |kernel| {
                // SAFETY: piece `piece` alone uses floats
                // `piece·m·n .. (piece + 1)·m·n` of the workspace, which
                // holds `pieces·m·n` (checked by the caller's slice).
                let partial = unsafe {
                    core::slice::from_raw_parts_mut(partials.ptr().add(piece * m * n), m * n)
                };
                partial.fill(0.0);
                let first = piece * rows_per_piece;
                let rows = first..p.k.min(first + rows_per_piece);
                for start in (0..n).step_by(chunk) {
                    let width = chunk.min(n - start);
                    let out = |i: usize| {
                        // SAFETY: rows of the partial are disjoint, and each
                        // call's slice is the only live one (`axpy` and
                        // `axpy4` take one at a time).
                        unsafe {
                            core::slice::from_raw_parts_mut(
                                partials.ptr().add(piece * m * n + i * n + start),
                                width,
                            )
                        }
                    };
                    accumulate_rows(kernel, p, rows.clone(), start, width, out);
                }
            },
        )
    });
    kernel.enter(
        #[inline(always)]
        |kernel| {
            for i in 0..m {
                // SAFETY: row `i` of C is `n` floats at `i · rs` (validated
                // by the caller), and no piece is running any more.
                let c =
                    unsafe { core::slice::from_raw_parts_mut(p.c.ptr.ptr().add(i * p.c.rs), n) };
                let part = |piece: usize| &ws[piece * m * n + i * n..][..n];
                if p.beta == 0.0 {
                    c.copy_from_slice(part(0));
                } else {
                    scale_by_beta(p.beta, c);
                    kernel.axpy(1.0, part(0), c);
                }
                for piece in 1..pieces {
                    kernel.axpy(1.0, part(piece), c);
                }
            }
        },
    );
}
