//! Softmax cross-entropy over rows of logits, fused with its gradient.

use crate::dispatch::dispatch;
use crate::error::{expect_len, rows_of};
use crate::math::{self, EXP_BLOCK};
use crate::reduce::row_max;
use crate::simd::{map1_blocks, update1, Simd};
use crate::softmax::{numerator_split, softmax_numerators};
use crate::{KernelError, Kernels};

impl Kernels {
    /// For each row `r` of `logits` (rows of `classes` entries) with target
    /// class `targets[r]`: `losses[r] = logsumexp(row) - row[target]`, and,
    /// if `dlogits` is given, `dlogits = (softmax(row) - onehot(target)) ·
    /// grad_scale` (e.g. `1 / rows` for the gradient of the mean loss).
    ///
    /// Every target is checked before anything is written. A row holding a
    /// NaN or a +inf logit gets a NaN loss and gradient; a −inf logit is a
    /// probability of 0 (a loss of +inf when it is the target's).
    ///
    /// ```
    /// let k = kernels::Kernels::best();
    /// let logits = [0.0, 0.0, 0.0, 0.0]; // one row, 4 classes, uniform
    /// let (mut loss, mut dlogits) = ([0.0], [0.0; 4]);
    /// k.cross_entropy(&logits, 4, &[2], &mut loss, Some(&mut dlogits), 1.0)?;
    /// assert!((loss[0] - 4f32.ln()).abs() < 1e-6);
    /// assert_eq!(dlogits, [0.25, 0.25, -0.75, 0.25]);
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn cross_entropy(
        &self,
        logits: &[f32],
        classes: usize,
        targets: &[u32],
        losses: &mut [f32],
        mut dlogits: Option<&mut [f32]>,
        grad_scale: f32,
    ) -> Result<(), KernelError> {
        let rows = rows_of("logits", logits.len(), classes)?;
        expect_len("targets", targets.len(), rows)?;
        expect_len("losses", losses.len(), rows)?;
        if let Some(d) = &dlogits {
            expect_len("dlogits", d.len(), logits.len())?;
        }
        if let Some((row, &t)) = targets
            .iter()
            .enumerate()
            .find(|&(_, &t)| t as usize >= classes)
        {
            return Err(KernelError::IndexOutOfRange {
                row,
                index: t as usize,
                classes,
            });
        }
        if classes == 0 {
            return Ok(()); // no rows (`rows_of` allows zero columns only when empty)
        }
        for (r, (row, &target)) in logits.chunks_exact(classes).zip(targets).enumerate() {
            let target = target as usize;
            let d = dlogits
                .as_deref_mut()
                .map(|d| &mut d[r * classes..(r + 1) * classes]);
            losses[r] = dispatch!(self,
                scalar: cross_entropy_row_scalar(row, target, d, grad_scale),
                simd: |s| cross_entropy_row(s, row, target, d, grad_scale),
            );
        }
        Ok(())
    }
}

fn cross_entropy_row_scalar(row: &[f32], target: usize, d: Option<&mut [f32]>, scale: f32) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f32 = row.iter().map(|&v| libm::expf(v - max)).sum();
    if let Some(d) = d {
        for (d, &v) in d.iter_mut().zip(row) {
            *d = libm::expf(v - max) / sum * scale;
        }
        d[target] -= scale;
    }
    row_loss(max, sum, row[target])
}

/// `logsumexp(row) - row[target]` from the row's `max` and `sum` of
/// `e^(x - max)`: the target's distance below the max is taken first, so
/// that large logits (1e10 and up) do not cancel the few units the loss
/// is made of, as `max + ln(sum) - target` would.
#[inline(always)]
fn row_loss(max: f32, sum: f32, target: f32) -> f32 {
    libm::logf(sum) - (target - max)
}

#[inline(always)]
fn cross_entropy_row<S: Simd>(
    s: S,
    row: &[f32],
    target: usize,
    d: Option<&mut [f32]>,
    scale: f32,
) -> f32 {
    let max = s.reduce_max(row_max(s, row));
    let m = s.splat(max);
    let sum = match d {
        Some(d) => {
            // Store e^(x - max) in dlogits, then rescale it in place.
            let mut sum = s.splat(0.0);
            // Padding with -inf adds e^-inf = 0.
            let split = numerator_split::<S>(row.len());
            let (row_blocks, row_rest) = row.split_at(split);
            let (d_blocks, d_rest) = d.split_at_mut(split);
            map1_blocks::<S, f32, f32, EXP_BLOCK>(
                s,
                row_blocks,
                d_blocks,
                f32::NEG_INFINITY,
                #[inline(always)]
                |x| softmax_numerators(s, x, m, &mut sum),
            );
            map1_blocks::<S, f32, f32, 1>(
                s,
                row_rest,
                d_rest,
                f32::NEG_INFINITY,
                #[inline(always)]
                |x| softmax_numerators(s, x, m, &mut sum),
            );
            let sum = s.reduce_sum(sum);
            let factor = s.splat(scale / sum);
            update1(s, d, |e| s.mul(e, factor));
            d[target] -= scale;
            sum
        }
        None => {
            // Padding with -inf adds e^-inf = 0.
            let sum = crate::simd::fold1(
                s,
                row,
                0.0,
                f32::NEG_INFINITY,
                #[inline(always)]
                |acc, v| s.add(acc, math::exp(s, s.sub(v, m))),
                |a, b| s.add(a, b),
            );
            s.reduce_sum(sum)
        }
    };
    row_loss(max, sum, row[target])
}
