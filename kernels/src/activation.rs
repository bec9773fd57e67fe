//! Element-wise transcendental functions: GELU (GPT-2's tanh approximation)
//! forward and backward, exp and tanh.

use crate::dispatch::dispatch;
use crate::error::expect_len;
use crate::gemm::{InputSlice, OutputSlice};
use crate::math::{self, EXP_BLOCK, GELU_CUBIC, GELU_SCALE, GELU_SLOPE_X_LIMIT};
use crate::simd::{map1, map1_blocks, map2_blocks, update3_blocks, Lane, Simd};
use crate::{Bf16Input, Bf16Output, KernelError, Kernels};

impl Kernels {
    /// `out = gelu(x)` with GPT-2's tanh approximation
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    ///
    /// The SIMD backends evaluate the identical form `x·σ(2u)`, which has no
    /// cancellation for large negative x. `out` is f32, or [`crate::Bf16`]
    /// ([`Bf16Output`]): each value rounded once from the f32 one, for an
    /// output only bf16 products read. `x` is f32 or bf16 ([`Bf16Input`]:
    /// a product's output kept in bf16), computed from in f32.
    ///
    /// ```
    /// let k = kernels::Kernels::best();
    /// let mut out = [0.0; 3];
    /// k.gelu_forward(&[0.0, 1.0, -20.0], &mut out)?;
    /// assert_eq!(out[0], 0.0);
    /// assert!((out[1] - 0.841_192).abs() < 1e-5);
    /// assert!(out[2].abs() < 1e-30);
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn gelu_forward<I: Bf16Input, O: Bf16Output>(
        &self,
        x: &[I],
        out: &mut [O],
    ) -> Result<(), KernelError> {
        expect_len("out", out.len(), x.len())?;
        match (I::input_slice(x), O::output_slice(out)) {
            (InputSlice::F32(x), OutputSlice::F32(out)) => self.gelu_into(x, out),
            (InputSlice::F32(x), OutputSlice::Bf16(out)) => self.gelu_into(x, out),
            (InputSlice::Bf16(x), OutputSlice::F32(out)) => self.gelu_into(x, out),
            (InputSlice::Bf16(x), OutputSlice::Bf16(out)) => self.gelu_into(x, out),
        }
        Ok(())
    }

    /// [`Kernels::gelu_forward`] for each pair of element types.
    fn gelu_into<I: Lane, T: Lane>(&self, x: &[I], out: &mut [T]) {
        dispatch!(self,
            scalar: out.iter_mut().zip(x).for_each(|(o, x)| *o = T::from_f32(gelu_scalar(x.to_f32()))),
            simd: |s| map1_blocks(s, x, out, 0.0, #[inline(always)] |x: [_; EXP_BLOCK]| {
                let (mut y, _) = math::gelu_gate_each(s, x);
                for j in 0..EXP_BLOCK {
                    y[j] = s.mul(x[j], y[j]);
                }
                y
            }),
        );
    }

    /// Backward of [`Kernels::gelu_forward`]: **adds** `gelu'(x) · dout` into `dx`.
    ///
    /// ```
    /// let k = kernels::Kernels::best();
    /// let x = [-1.5, 0.0, 0.7];
    /// let mut dx = [1.0; 3]; // gradients accumulate
    /// k.gelu_backward(&x, &[1.0; 3], &mut dx)?;
    /// assert!((dx[1] - 1.5).abs() < 1e-6); // gelu'(0) = 1/2
    /// // Against a central difference of the forward.
    /// let (h, mut up, mut down) = (1e-3, [0.0; 3], [0.0; 3]);
    /// k.gelu_forward(&x.map(|v| v + h), &mut up)?;
    /// k.gelu_forward(&x.map(|v| v - h), &mut down)?;
    /// for i in 0..3 {
    ///     assert!((dx[i] - 1.0 - (up[i] - down[i]) / (2.0 * h)).abs() < 1e-3);
    /// }
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn gelu_backward<X: Bf16Input, D: Bf16Input>(
        &self,
        x: &[X],
        dout: &[D],
        dx: &mut [f32],
    ) -> Result<(), KernelError> {
        self.gelu_gradient(x, dout, dx, Add)
    }

    /// GELU's input gradient into `dx` as `write` writes it, checked, for
    /// whichever element types `x` and `dout` have.
    fn gelu_gradient<X: Bf16Input, D: Bf16Input>(
        &self,
        x: &[X],
        dout: &[D],
        dx: &mut [f32],
        write: impl GradientWrite,
    ) -> Result<(), KernelError> {
        expect_len("dout", dout.len(), x.len())?;
        expect_len("dx", dx.len(), x.len())?;
        match (X::input_slice(x), D::input_slice(dout)) {
            (InputSlice::F32(x), InputSlice::F32(dout)) => write.gelu(self, x, dout, dx),
            (InputSlice::F32(x), InputSlice::Bf16(dout)) => write.gelu(self, x, dout, dx),
            (InputSlice::Bf16(x), InputSlice::F32(dout)) => write.gelu(self, x, dout, dx),
            (InputSlice::Bf16(x), InputSlice::Bf16(dout)) => write.gelu(self, x, dout, dx),
        }
        Ok(())
    }

    /// Backward of [`Kernels::gelu_forward`] into a fresh buffer:
    /// **overwrites** `dx` with `gelu'(x) · dout` (never reading it), where
    /// [`Kernels::gelu_backward`] adds. The same bits as `gelu_backward`
    /// into zeros, without the pass that zeroes.
    ///
    /// ```
    /// let k = kernels::Kernels::best();
    /// let (x, dout) = ([-1.5, 0.0, 0.7], [2.0; 3]);
    /// let mut fresh = [f32::NAN; 3];
    /// k.gelu_backward_into(&x, &dout, &mut fresh)?;
    /// let mut added = [0.0; 3];
    /// k.gelu_backward(&x, &dout, &mut added)?;
    /// assert_eq!(fresh, added);
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn gelu_backward_into<X: Bf16Input, D: Bf16Input>(
        &self,
        x: &[X],
        dout: &[D],
        dx: &mut [f32],
    ) -> Result<(), KernelError> {
        self.gelu_gradient(x, dout, dx, Overwrite)
    }

    /// `out[i] = e^x[i]`. See the crate documentation for the accuracy.
    pub fn exp(&self, x: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        expect_len("out", out.len(), x.len())?;
        dispatch!(self,
            scalar: out.iter_mut().zip(x).for_each(|(o, &x)| *o = libm::expf(x)),
            simd: |s| map1_blocks(s, x, out, 0.0, #[inline(always)] |v: [_; EXP_BLOCK]| math::exp_each(s, v)),
        );
        Ok(())
    }

    /// `out[i] = tanh(x[i])`. See the crate documentation for the accuracy.
    pub fn tanh(&self, x: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
        expect_len("out", out.len(), x.len())?;
        dispatch!(self,
            scalar: out.iter_mut().zip(x).for_each(|(o, &x)| *o = libm::tanhf(x)),
            simd: |s| map1(s, x, out, #[inline(always)] |v| math::tanh(s, v)),
        );
        Ok(())
    }
}

/// How GELU's input gradient is written into `dx`, for any pair of input
/// element types: a generic function [`Kernels::gelu_gradient`] can pass
/// on.
trait GradientWrite: Copy {
    fn gelu<X: Lane, D: Lane>(self, k: &Kernels, x: &[X], dout: &[D], dx: &mut [f32]);
}

/// `dx += gelu'(x) · dout` ([`Kernels::gelu_backward`]).
#[derive(Clone, Copy)]
struct Add;

impl GradientWrite for Add {
    fn gelu<X: Lane, D: Lane>(self, k: &Kernels, x: &[X], dout: &[D], dx: &mut [f32]) {
        dispatch!(k,
            scalar: for i in 0..x.len() {
                dx[i] += gelu_derivative_scalar(x[i].to_f32()) * dout[i].to_f32();
            },
            simd: |s| update3_blocks(s, x, dout, dx, 0.0, #[inline(always)] |x: [_; EXP_BLOCK], dout, mut dx| {
                let grad = gelu_grad_each(s, x, dout);
                for j in 0..EXP_BLOCK {
                    dx[j] = s.add(dx[j], grad[j]);
                }
                dx
            }),
        );
    }
}

/// `dx = gelu'(x) · dout` ([`Kernels::gelu_backward_into`]).
#[derive(Clone, Copy)]
struct Overwrite;

impl GradientWrite for Overwrite {
    fn gelu<X: Lane, D: Lane>(self, k: &Kernels, x: &[X], dout: &[D], dx: &mut [f32]) {
        // `0 + grad`, as `gelu_backward` into zeros sums: a -0 becomes +0.
        dispatch!(k,
            scalar: for i in 0..x.len() {
                dx[i] = 0.0 + gelu_derivative_scalar(x[i].to_f32()) * dout[i].to_f32();
            },
            simd: |s| map2_blocks(s, x, dout, dx, 0.0, #[inline(always)] |x: [_; EXP_BLOCK], dout| {
                let mut grad = gelu_grad_each(s, x, dout);
                for g in &mut grad {
                    *g = s.add(s.splat(0.0), *g);
                }
                grad
            }),
        );
    }
}

/// GPT-2's GELU, written as its definition.
pub(crate) fn gelu_scalar(x: f32) -> f32 {
    let u = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
    0.5 * x * (1.0 + libm::tanhf(u))
}

/// `gelu'(x) · dout` for `N` vectors, as `x·σ(2u)` differentiates:
/// `σ + x·σ·(1 − σ)·2u'`.
#[inline(always)]
fn gelu_grad_each<S: Simd, const N: usize>(s: S, x: [S::V; N], dout: [S::V; N]) -> [S::V; N] {
    let (gate, du) = math::gelu_gate_each(s, x);
    // (A loop, not `array::from_fn`: its closure would compile without the
    // instruction set.)
    let mut grad = dout;
    for j in 0..N {
        let one_minus = s.sub(s.splat(1.0), gate[j]);
        let slope = s.mul(s.mul(x[j], gate[j]), s.mul(one_minus, s.add(du[j], du[j])));
        grad[j] = s.mul(s.add(gate[j], slope), dout[j]);
    }
    grad
}

/// d/dx of [`gelu_scalar`].
pub(crate) fn gelu_derivative_scalar(x: f32) -> f32 {
    let u = GELU_SCALE * (x + GELU_CUBIC * x * x * x);
    let t = libm::tanhf(u);
    let x_slope = x.clamp(-GELU_SLOPE_X_LIMIT, GELU_SLOPE_X_LIMIT);
    let du = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x_slope * x_slope);
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
}
