//! Products with at most [`SMALL_M`] rows of C (decoding one token, a
//! matrix-vector product): nothing is packed, since each element of B is
//! used at most `SMALL_M` times, and B is read once, straight from memory.

use super::microkernel::GemmKernel;
use super::Problem;
use crate::Executor;

/// The most rows of C this path takes.
pub(crate) const SMALL_M: usize = 4;

/// Floats of C per chunk of columns (all rows together): 16 KiB, which stay
/// in L1 while the rows of B stream past. Chunks are as wide as that allows,
/// so that B is read in long runs the prefetchers follow (512-column chunks
/// read 2 KiB per row and ran at a third of the memory bandwidth).
const CHUNK_FLOATS: usize = 4096;

/// Multiply-adds below which splitting across threads costs more than it
/// saves.
const MIN_PARALLEL_WORK: usize = 1 << 16;

/// Runs the product; `m <= SMALL_M`, `m, n, k > 0`, `alpha != 0`.
pub(crate) fn run<K: GemmKernel, E: Executor + ?Sized>(kernel: K, exec: &E, p: &Problem) {
    let chunk = (CHUNK_FLOATS / p.m).next_multiple_of(64);
    let work = p.m.saturating_mul(p.n).saturating_mul(p.k);
    // Several threads take column ranges of their own (each still read in
    // whole chunks); one thread takes everything in one piece.
    let pieces = if exec.threads() > 1 && work >= MIN_PARALLEL_WORK {
        (2 * exec.threads()).min(p.n.div_ceil(64))
    } else {
        1
    };
    let per_piece = p.n.div_ceil(pieces).next_multiple_of(16);
    let pieces = p.n.div_ceil(per_piece);
    exec.run(pieces, &|piece| {
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
            let c = c_row(i);
            if p.beta == 0.0 {
                c.fill(0.0);
            } else if p.beta != 1.0 {
                c.iter_mut().for_each(|c| *c *= p.beta);
            }
        }
        // Four rows of B a quarter of k apart at a time: four independent
        // streams keep more memory requests in flight than one (measured
        // 1.4× on decoding), and y is read and written a quarter as often.
        let quarter = p.k / 4;
        let b_row = |l: usize| &b.data[l * b.rs + start..][..width];
        let a_at = |i: usize, l: usize| p.alpha * a.data[i * a.rs + l * a.cs];
        for l in 0..quarter {
            let rows = [l, l + quarter, l + 2 * quarter, l + 3 * quarter];
            for i in 0..p.m {
                kernel.axpy4(rows.map(|l| a_at(i, l)), rows.map(b_row), c_row(i));
            }
        }
        for l in 4 * quarter..p.k {
            for i in 0..p.m {
                kernel.axpy(a_at(i, l), b_row(l), c_row(i));
            }
        }
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
        // Both strided (op(A) and op(B) both transposed, m > 1): plain loop.
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
