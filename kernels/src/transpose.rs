//! Out-of-place transpose of a strided matrix, in register tiles of
//! `LANES × LANES` (8×8 with AVX2, 16×16 with AVX-512).

use crate::dispatch::dispatch;
use crate::error::{strided_len, KernelError};
use crate::simd::Simd;
use crate::Kernels;

impl Kernels {
    /// Writes the transpose of the `rows × cols` matrix `src` (row `i` at
    /// `src[i * src_stride..][..cols]`) into the `cols × rows` matrix `dst`
    /// (row `j` at `dst[j * dst_stride..][..rows]`). Elements of `dst`
    /// between rows (the stride padding) are left untouched.
    ///
    /// ```
    /// let k = kernels::Kernels::best();
    /// let src = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2 × 3
    /// let mut dst = [0.0; 6]; // 3 × 2
    /// k.transpose(2, 3, &src, 3, &mut dst, 2)?;
    /// assert_eq!(dst, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn transpose(
        &self,
        rows: usize,
        cols: usize,
        src: &[f32],
        src_stride: usize,
        dst: &mut [f32],
        dst_stride: usize,
    ) -> Result<(), KernelError> {
        let src_needed = strided_len(rows, cols, src_stride)?;
        let dst_needed = strided_len(cols, rows, dst_stride)?;
        if src.len() < src_needed {
            return Err(KernelError::LengthMismatch {
                arg: "src",
                expected: src_needed,
                actual: src.len(),
            });
        }
        if dst.len() < dst_needed {
            return Err(KernelError::LengthMismatch {
                arg: "dst",
                expected: dst_needed,
                actual: dst.len(),
            });
        }
        if rows == 0 || cols == 0 {
            // Nothing to move, however many rows of nothing.
            return Ok(());
        }
        let shape = Strided {
            rows,
            cols,
            src_stride,
            dst_stride,
        };
        dispatch!(self,
            scalar: transpose_scalar(shape, 0..rows, 0..cols, src, dst),
            simd: |s| transpose_tiled(s, shape, src, dst),
        );
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct Strided {
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst_stride: usize,
}

/// Transposes the block `rows × cols` of `src` element by element.
fn transpose_scalar(
    shape: Strided,
    rows: core::ops::Range<usize>,
    cols: core::ops::Range<usize>,
    src: &[f32],
    dst: &mut [f32],
) {
    for i in rows {
        for j in cols.clone() {
            dst[j * shape.dst_stride + i] = src[i * shape.src_stride + j];
        }
    }
}

#[inline(always)]
fn transpose_tiled<S: Simd>(s: S, shape: Strided, src: &[f32], dst: &mut [f32]) {
    let l = S::LANES;
    let full_rows = shape.rows - shape.rows % l;
    let full_cols = shape.cols - shape.cols % l;
    for i in (0..full_rows).step_by(l) {
        for j in (0..full_cols).step_by(l) {
            s.transpose(
                #[inline(always)]
                |r| s.load(&src[(i + r) * shape.src_stride + j..]),
                #[inline(always)]
                |c, v| s.store(&mut dst[(j + c) * shape.dst_stride + i..], v),
            );
        }
    }
    // The right and bottom edges, narrower than a tile.
    transpose_scalar(shape, 0..full_rows, full_cols..shape.cols, src, dst);
    transpose_scalar(shape, full_rows..shape.rows, 0..shape.cols, src, dst);
}
