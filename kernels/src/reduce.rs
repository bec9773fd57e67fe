//! Reductions: sum, max, dot product and sum of squares.
//!
//! SIMD backends add in a different order from the scalar reference (several
//! partial sums), so results agree to rounding, not bit for bit.

use crate::dispatch::dispatch;
use crate::error::expect_len;
use crate::simd::{fold1, fold2, Simd};
use crate::{KernelError, Kernels};

impl Kernels {
    /// `Σ x[i]` (0 for an empty slice).
    ///
    /// ```
    /// let k = kernels::Kernels::best();
    /// assert_eq!(k.sum(&[1.0, 2.0, 3.5]), 6.5);
    /// ```
    pub fn sum(&self, x: &[f32]) -> f32 {
        dispatch!(self,
            scalar: x.iter().sum(),
            simd: |s| s.reduce_sum(fold1(s, x, 0.0, 0.0, |acc, v| s.add(acc, v), |a, b| s.add(a, b))),
        )
    }

    /// The largest element, ignoring NaN (as [`f32::max`] does); `-inf` for
    /// an empty or all-NaN slice.
    pub fn max(&self, x: &[f32]) -> f32 {
        dispatch!(self,
            scalar: x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
            simd: |s| s.reduce_max(row_max(s, x)),
        )
    }

    /// `Σ a[i]·b[i]`.
    pub fn dot(&self, a: &[f32], b: &[f32]) -> Result<f32, KernelError> {
        expect_len("b", b.len(), a.len())?;
        Ok(dispatch!(self,
            scalar: a.iter().zip(b).map(|(&x, &y)| x * y).sum(),
            simd: |s| {
                let acc = fold2(s, a, b, |acc, x, y| s.mul_add(x, y, acc), |p, q| s.add(p, q));
                s.reduce_sum(acc)
            },
        ))
    }

    /// `Σ x[i]²`, e.g. for gradient-norm clipping.
    pub fn sum_squares(&self, x: &[f32]) -> f32 {
        dispatch!(self,
            scalar: x.iter().map(|&v| v * v).sum(),
            simd: |s| s.reduce_sum(fold1(s, x, 0.0, 0.0, |acc, v| s.mul_add(v, v, acc), |a, b| s.add(a, b))),
        )
    }
}

/// Per-lane maximum of `x`, ignoring NaN: `max(v, acc)` returns `acc` when
/// `v` is NaN, and `acc` starts at `-inf`, so it never holds NaN.
#[inline(always)]
pub(crate) fn row_max<S: Simd>(s: S, x: &[f32]) -> S::V {
    fold1(
        s,
        x,
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
        |acc, v| s.max(v, acc),
        |a, b| s.max(a, b),
    )
}
