//! Element-wise arithmetic: add, sub, mul, scale, axpy, row-broadcast bias,
//! fill and copy.

use crate::dispatch::dispatch;
use crate::error::{expect_len, rows_of};
use crate::simd::{map1, map2, update1, update2, Simd};
use crate::{KernelError, Kernels};

impl Kernels {
    /// `out[i] = a[i] + b[i]`.
    ///
    /// ```
    /// let k = kernels::Kernels::best();
    /// let mut out = [0.0; 2];
    /// k.add(&[1.0, 2.0], &[0.5, 0.25], &mut out)?;
    /// assert_eq!(out, [1.5, 2.25]);
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn add(&self, a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        check_binary(a, b, out)?;
        dispatch!(self,
            scalar: zip_scalar(a, b, out, |x, y| x + y),
            simd: |s| map2(s, a, b, out, |x, y| s.add(x, y)),
        );
        Ok(())
    }

    /// `out[i] = a[i] - b[i]`.
    pub fn sub(&self, a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        check_binary(a, b, out)?;
        dispatch!(self,
            scalar: zip_scalar(a, b, out, |x, y| x - y),
            simd: |s| map2(s, a, b, out, |x, y| s.sub(x, y)),
        );
        Ok(())
    }

    /// `out[i] = a[i] * b[i]`.
    pub fn mul(&self, a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        check_binary(a, b, out)?;
        dispatch!(self,
            scalar: zip_scalar(a, b, out, |x, y| x * y),
            simd: |s| map2(s, a, b, out, |x, y| s.mul(x, y)),
        );
        Ok(())
    }

    /// `x[i] *= alpha`, in place.
    pub fn scale(&self, alpha: f32, x: &mut [f32]) {
        dispatch!(self,
            scalar: x.iter_mut().for_each(|v| *v *= alpha),
            simd: |s| update1(s, x, |v| s.mul(v, s.splat(alpha))),
        )
    }

    /// `y[i] += alpha * x[i]`, in place on `y`.
    pub fn axpy(&self, alpha: f32, x: &[f32], y: &mut [f32]) -> Result<(), KernelError> {
        expect_len("y", y.len(), x.len())?;
        dispatch!(self,
            scalar: y.iter_mut().zip(x).for_each(|(y, &x)| *y += alpha * x),
            simd: |s| update2(s, x, y, |x, y| s.mul_add(s.splat(alpha), x, y)),
        );
        Ok(())
    }

    /// Adds `bias` to every row of the row-major matrix `x`, whose row length
    /// is `bias.len()`.
    pub fn add_bias(&self, bias: &[f32], x: &mut [f32]) -> Result<(), KernelError> {
        rows_of("x", x.len(), bias.len())?;
        if bias.is_empty() {
            return Ok(());
        }
        for row in x.chunks_exact_mut(bias.len()) {
            dispatch!(self,
                scalar: row.iter_mut().zip(bias).for_each(|(x, &b)| *x += b),
                simd: |s| update2(s, bias, row, |b, x| s.add(x, b)),
            );
        }
        Ok(())
    }

    /// `out[i] = value`.
    pub fn fill(&self, value: f32, out: &mut [f32]) {
        dispatch!(self,
            scalar: out.iter_mut().for_each(|o| *o = value),
            simd: |s| update1(s, out, |_| s.splat(value)),
        )
    }

    /// `dst[i] = src[i]`.
    pub fn copy(&self, src: &[f32], dst: &mut [f32]) -> Result<(), KernelError> {
        expect_len("dst", dst.len(), src.len())?;
        dispatch!(self,
            scalar: dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s),
            simd: |s| map1(s, src, dst, |v| v),
        );
        Ok(())
    }
}

fn check_binary(a: &[f32], b: &[f32], out: &[f32]) -> Result<(), KernelError> {
    expect_len("b", b.len(), a.len())?;
    expect_len("out", out.len(), a.len())
}

/// Scalar reference of the binary operations.
fn zip_scalar(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32) {
    for (o, (&x, &y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = f(x, y);
    }
}
