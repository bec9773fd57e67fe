//! Layer normalization over the last axis, forward and backward.

use crate::dispatch::dispatch;
use crate::error::{expect_len, rows_of};
use crate::gemm::OutputSlice;
use crate::simd::{fold1, pieces, Lane, Simd};
use crate::{Bf16Output, KernelError, Kernels};

impl Kernels {
    /// Layer norm of each row of `x` (rows of `gamma.len()` columns):
    /// `out = (x - mean) · rstd · gamma + beta`, with the (biased) variance
    /// and `rstd = 1 / sqrt(var + eps)`. Writes `out` and, per row, `mean`
    /// and `rstd` (kept for the backward pass). `out` is f32, or
    /// [`crate::Bf16`] ([`Bf16Output`]): each value rounded once from the
    /// f32 one, for an output only bf16 products read.
    ///
    /// `eps` must be finite and at least 0 ([`KernelError::InvalidArgument`]
    /// otherwise). A row holding a NaN or an infinity gets NaN in all of
    /// its `out` and its `rstd` (its mean is NaN or infinite); the other
    /// rows are unaffected. A constant row with `eps` 0 divides 0 by 0.
    ///
    /// ```
    /// let k = kernels::Kernels::best();
    /// let (gamma, beta) = ([1.0, 1.0], [0.0, 0.0]);
    /// let (mut out, mut mean, mut rstd) = ([0.0; 2], [0.0], [0.0]);
    /// k.layer_norm_forward(&[1.0, 3.0], &gamma, &beta, 0.0, &mut out, &mut mean, &mut rstd)?;
    /// assert_eq!((out, mean[0], rstd[0]), ([-1.0, 1.0], 2.0, 1.0));
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    #[allow(clippy::too_many_arguments)] // the math has this many operands
    pub fn layer_norm_forward<O: Bf16Output>(
        &self,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        out: &mut [O],
        mean: &mut [f32],
        rstd: &mut [f32],
    ) -> Result<(), KernelError> {
        let cols = gamma.len();
        let rows = rows_of("x", x.len(), cols)?;
        expect_len("beta", beta.len(), cols)?;
        expect_len("out", out.len(), x.len())?;
        expect_len("mean", mean.len(), rows)?;
        expect_len("rstd", rstd.len(), rows)?;
        // A negative eps takes the square root of a negative variance, a
        // non-finite one makes every row 0 or NaN.
        if !(eps >= 0.0 && eps.is_finite()) {
            return Err(KernelError::InvalidArgument(
                "layer norm needs a finite eps of at least 0",
            ));
        }
        if cols == 0 {
            return Ok(());
        }
        match O::output_slice(out) {
            OutputSlice::F32(out) => self.layer_norm_rows(x, gamma, beta, eps, out, mean, rstd),
            OutputSlice::Bf16(out) => self.layer_norm_rows(x, gamma, beta, eps, out, mean, rstd),
        }
        Ok(())
    }

    /// [`Kernels::layer_norm_forward`] into either element type, the
    /// lengths checked.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_rows<T: Lane>(
        &self,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        out: &mut [T],
        mean: &mut [f32],
        rstd: &mut [f32],
    ) {
        let cols = gamma.len();
        let rows_in = x.chunks_exact(cols).zip(out.chunks_exact_mut(cols));
        let row_stats = mean.iter_mut().zip(rstd.iter_mut());
        for ((x, out), (mean, rstd)) in rows_in.zip(row_stats) {
            (*mean, *rstd) = dispatch!(self,
                scalar: layer_norm_row_scalar(x, gamma, beta, eps, out),
                simd: |s| layer_norm_row(s, x, gamma, beta, eps, out),
            );
        }
    }

    /// Backward of [`Kernels::layer_norm_forward`], given the forward's input
    /// `x`, `gamma` and row statistics and the gradient `dout` of its output.
    /// **Adds** into `dx`, `dgamma` and `dbeta` (so gradients of a residual
    /// stream and of several micro-batches accumulate).
    ///
    /// ```
    /// let k = kernels::Kernels::best();
    /// let (x, gamma, beta) = ([1.0, 2.0, 4.0], [1.0; 3], [0.0; 3]);
    /// let (mut out, mut mean, mut rstd) = ([0.0; 3], [0.0], [0.0]);
    /// k.layer_norm_forward(&x, &gamma, &beta, 1e-5, &mut out, &mut mean, &mut rstd)?;
    /// let dout = [0.5, -1.0, 2.0];
    /// let (mut dx, mut dgamma, mut dbeta) = ([0.0; 3], [0.0; 3], [0.0; 3]);
    /// k.layer_norm_backward(&x, &gamma, &mean, &rstd, &dout, &mut dx, &mut dgamma, &mut dbeta)?;
    /// assert_eq!(dbeta, dout); // d/dbeta is dout itself
    /// // A normalised row does not move when the input shifts: Σ dx = 0.
    /// assert!(dx.iter().sum::<f32>().abs() < 1e-5);
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    #[allow(clippy::too_many_arguments)] // the math has this many operands
    pub fn layer_norm_backward(
        &self,
        x: &[f32],
        gamma: &[f32],
        mean: &[f32],
        rstd: &[f32],
        dout: &[f32],
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) -> Result<(), KernelError> {
        let cols = gamma.len();
        let rows = rows_of("x", x.len(), cols)?;
        expect_len("mean", mean.len(), rows)?;
        expect_len("rstd", rstd.len(), rows)?;
        expect_len("dout", dout.len(), x.len())?;
        expect_len("dx", dx.len(), x.len())?;
        expect_len("dgamma", dgamma.len(), cols)?;
        expect_len("dbeta", dbeta.len(), cols)?;
        if cols == 0 {
            return Ok(());
        }
        let rows_in = x.chunks_exact(cols).zip(dout.chunks_exact(cols));
        let rows_out = dx.chunks_exact_mut(cols).zip(mean.iter().zip(rstd));
        for ((x, dout), (dx, (&mean, &rstd))) in rows_in.zip(rows_out) {
            let row = NormRow { x, mean, rstd };
            dispatch!(self,
                scalar: layer_norm_backward_row_scalar(row, gamma, dout, dx, dgamma, dbeta),
                simd: |s| layer_norm_backward_row(s, row, gamma, dout, dx, dgamma, dbeta),
            );
        }
        Ok(())
    }
}

/// One input row of the forward pass with its saved statistics.
#[derive(Clone, Copy)]
struct NormRow<'a> {
    x: &'a [f32],
    mean: f32,
    rstd: f32,
}

fn layer_norm_row_scalar<T: Lane>(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [T],
) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let rstd = 1.0 / libm::sqrtf(var + eps);
    for (i, o) in out.iter_mut().enumerate() {
        *o = T::from_f32((x[i] - mean) * rstd * gamma[i] + beta[i]);
    }
    (mean, rstd)
}

#[inline(always)]
fn layer_norm_row<S: Simd, T: Lane>(
    s: S,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [T],
) -> (f32, f32) {
    let n = x.len() as f32;
    let add = |a, b| s.add(a, b);
    let mean = s.reduce_sum(fold1(s, x, 0.0, 0.0, add, add)) / n;
    let m = s.splat(mean);
    // Two passes for the variance: no cancellation when |mean| >> std.
    // Padding with the mean makes padded lanes contribute 0.
    let centered_sq = |acc, v| {
        let d = s.sub(v, m);
        s.mul_add(d, d, acc)
    };
    let var = s.reduce_sum(fold1(s, x, 0.0, mean, centered_sq, add)) / n;
    let rstd = 1.0 / sqrt_in_vector_unit(s, var + eps);
    let r = s.splat(rstd);
    for p in pieces(x.len(), S::LANES) {
        let norm = s.mul(s.sub(s.load_piece(&x[p.clone()], 0.0), m), r);
        let g = s.load_piece(&gamma[p.clone()], 0.0);
        let b = s.load_piece(&beta[p.clone()], 0.0);
        T::store_piece(s, &mut out[p], s.mul_add(norm, g, b));
    }
    (mean, rstd)
}

/// `√x`, correctly rounded as `libm::sqrtf` is, but by the vector unit:
/// `libm::sqrtf` is an `asm!` block of the legacy SSE `sqrtss`, which the
/// compiler cannot re-encode, and inside AVX code with live upper halves
/// that legacy instruction cost about 300 ns a row on the Intel Xeon
/// (model 207).
#[inline(always)]
fn sqrt_in_vector_unit<S: Simd>(s: S, x: f32) -> f32 {
    let mut lane = [0.0];
    s.store_partial(&mut lane, s.sqrt(s.splat(x)));
    lane[0]
}

fn layer_norm_backward_row_scalar(
    row: NormRow<'_>,
    gamma: &[f32],
    dout: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let n = row.x.len() as f32;
    let norm = |i: usize| (row.x[i] - row.mean) * row.rstd;
    let mut dnorm_mean = 0.0;
    let mut dnorm_norm_mean = 0.0;
    for i in 0..row.x.len() {
        let dnorm = gamma[i] * dout[i];
        dnorm_mean += dnorm;
        dnorm_norm_mean += dnorm * norm(i);
    }
    dnorm_mean /= n;
    dnorm_norm_mean /= n;
    for i in 0..row.x.len() {
        let dnorm = gamma[i] * dout[i];
        dbeta[i] += dout[i];
        dgamma[i] += norm(i) * dout[i];
        dx[i] += (dnorm - dnorm_mean - norm(i) * dnorm_norm_mean) * row.rstd;
    }
}

#[inline(always)]
fn layer_norm_backward_row<S: Simd>(
    s: S,
    row: NormRow<'_>,
    gamma: &[f32],
    dout: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let n = row.x.len() as f32;
    let (m, r) = (s.splat(row.mean), s.splat(row.rstd));
    // Padded lanes load 0 for gamma and dout, so they add nothing, and the
    // mean for x, so that their `norm` is 0 rather than −mean·rstd (which
    // can overflow, and 0·inf would make the whole row NaN).
    let (mut sum_dnorm, mut sum_dnorm_norm) = (s.splat(0.0), s.splat(0.0));
    for p in pieces(row.x.len(), S::LANES) {
        let norm = s.mul(s.sub(s.load_piece(&row.x[p.clone()], row.mean), m), r);
        let dnorm = s.mul(
            s.load_piece(&gamma[p.clone()], 0.0),
            s.load_piece(&dout[p], 0.0),
        );
        sum_dnorm = s.add(sum_dnorm, dnorm);
        sum_dnorm_norm = s.mul_add(dnorm, norm, sum_dnorm_norm);
    }
    let dnorm_mean = s.splat(s.reduce_sum(sum_dnorm) / n);
    let dnorm_norm_mean = s.splat(s.reduce_sum(sum_dnorm_norm) / n);
    for p in pieces(row.x.len(), S::LANES) {
        let norm = s.mul(s.sub(s.load_piece(&row.x[p.clone()], row.mean), m), r);
        let dy = s.load_piece(&dout[p.clone()], 0.0);
        let dnorm = s.mul(s.load_piece(&gamma[p.clone()], 0.0), dy);
        let db = s.add(s.load_piece(&dbeta[p.clone()], 0.0), dy);
        s.store_piece(&mut dbeta[p.clone()], db);
        let dg = s.mul_add(norm, dy, s.load_piece(&dgamma[p.clone()], 0.0));
        s.store_piece(&mut dgamma[p.clone()], dg);
        let g = s.neg_mul_add(norm, dnorm_norm_mean, s.sub(dnorm, dnorm_mean));
        let d = s.mul_add(g, r, s.load_piece(&dx[p.clone()], 0.0));
        s.store_piece(&mut dx[p], d);
    }
}
