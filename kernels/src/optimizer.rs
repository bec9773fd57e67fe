//! The AdamW update, fused over parameters, gradients and both moments.

use crate::dispatch::dispatch;
use crate::error::expect_len;
use crate::simd::{pieces, Simd};
use crate::{KernelError, Kernels};

/// AdamW hyper-parameters (Loshchilov & Hutter: weight decay decoupled from
/// the adaptive step). `Default` gives PyTorch's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f32,
    /// Decay of the first moment.
    pub beta1: f32,
    /// Decay of the second moment.
    pub beta2: f32,
    /// Added to the root of the second moment.
    pub eps: f32,
    /// Decoupled weight decay, applied as `p -= lr · weight_decay · p`.
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> AdamW {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl Kernels {
    /// One AdamW step (`step` counts from 1) over `params` with gradients
    /// `grads · grad_scale` (`grad_scale` fuses gradient-norm clipping or
    /// micro-batch averaging), updating the moments `m` and `v` in place:
    ///
    /// ```text
    /// g = grad · grad_scale
    /// m = β1·m + (1 − β1)·g        v = β2·v + (1 − β2)·g²
    /// p −= lr · (m / (1 − β1^step) / (√(v / (1 − β2^step)) + eps) + weight_decay · p)
    /// ```
    ///
    /// Refused (nothing written): `step` 0, β1 or β2 outside `[0, 1)`,
    /// `eps` not positive, a non-finite `lr`, `weight_decay` or
    /// `grad_scale`, and slices of other lengths than `params`.
    ///
    /// ```
    /// use kernels::{AdamW, Kernels};
    ///
    /// let k = Kernels::best();
    /// let opt = AdamW { lr: 0.1, weight_decay: 0.0, ..AdamW::default() };
    /// let (mut p, mut m, mut v) = ([1.0], [0.0], [0.0]);
    /// k.adamw_step(&opt, 1, 1.0, &mut p, &[0.5], &mut m, &mut v)?;
    /// // The first step moves each parameter by about lr against its gradient.
    /// assert!((p[0] - 0.9).abs() < 1e-6);
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    #[allow(clippy::too_many_arguments)] // the fused update has this many operands
    pub fn adamw_step(
        &self,
        opt: &AdamW,
        step: u32,
        grad_scale: f32,
        params: &mut [f32],
        grads: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) -> Result<(), KernelError> {
        if step == 0 {
            return Err(KernelError::InvalidArgument("the AdamW step counts from 1"));
        }
        // A β of 1 divides by a zero bias correction, an eps of 0 divides
        // zero by zero, a non-finite setting poisons every parameter.
        let beta = 0.0..1.0;
        let finite = [opt.lr, opt.weight_decay, grad_scale]
            .iter()
            .all(|x| x.is_finite());
        if !(beta.contains(&opt.beta1) && beta.contains(&opt.beta2) && opt.eps > 0.0 && finite) {
            return Err(KernelError::InvalidArgument(
                "AdamW needs beta1 and beta2 in [0, 1), eps > 0 and finite lr, weight decay and gradient scale",
            ));
        }
        expect_len("grads", grads.len(), params.len())?;
        expect_len("m", m.len(), params.len())?;
        expect_len("v", v.len(), params.len())?;
        let c = Coefficients::new(opt, step, grad_scale);
        dispatch!(self,
            scalar: for i in 0..params.len() {
                let g = grads[i] * c.grad_scale;
                m[i] = c.beta1 * m[i] + (1.0 - c.beta1) * g;
                v[i] = c.beta2 * v[i] + (1.0 - c.beta2) * g * g;
                let m_hat = m[i] * c.m_correction;
                let v_hat = v[i] * c.v_correction;
                params[i] -= c.lr * (m_hat / (libm::sqrtf(v_hat) + c.eps) + c.weight_decay * params[i]);
            },
            simd: |s| adamw(s, &c, params, grads, m, v),
        );
        Ok(())
    }
}

/// The per-call scalars of one step.
struct Coefficients {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    grad_scale: f32,
    /// `1 / (1 − β1^step)`
    m_correction: f32,
    /// `1 / (1 − β2^step)`
    v_correction: f32,
}

impl Coefficients {
    fn new(opt: &AdamW, step: u32, grad_scale: f32) -> Coefficients {
        let t = step as f32;
        Coefficients {
            lr: opt.lr,
            beta1: opt.beta1,
            beta2: opt.beta2,
            eps: opt.eps,
            weight_decay: opt.weight_decay,
            grad_scale,
            m_correction: 1.0 / (1.0 - libm::powf(opt.beta1, t)),
            v_correction: 1.0 / (1.0 - libm::powf(opt.beta2, t)),
        }
    }
}

#[inline(always)]
fn adamw<S: Simd>(
    s: S,
    c: &Coefficients,
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    let splat = |x| s.splat(x);
    let (b1, b2) = (splat(c.beta1), splat(c.beta2));
    let (one_minus_b1, one_minus_b2) = (splat(1.0 - c.beta1), splat(1.0 - c.beta2));
    let (m_corr, v_corr) = (splat(c.m_correction), splat(c.v_correction));
    let (lr, eps, wd, scale) = (
        splat(c.lr),
        splat(c.eps),
        splat(c.weight_decay),
        splat(c.grad_scale),
    );
    for p in pieces(params.len(), S::LANES) {
        let g = s.mul(s.load_piece(&grads[p.clone()], 0.0), scale);
        let mv = s.mul_add(b1, s.load_piece(&m[p.clone()], 0.0), s.mul(one_minus_b1, g));
        let vv = s.mul_add(
            b2,
            s.load_piece(&v[p.clone()], 0.0),
            s.mul(one_minus_b2, s.mul(g, g)),
        );
        s.store_piece(&mut m[p.clone()], mv);
        s.store_piece(&mut v[p.clone()], vv);
        let denom = s.add(s.sqrt(s.mul(vv, v_corr)), eps);
        let param = s.load_piece(&params[p.clone()], 0.0);
        let update = s.mul_add(wd, param, s.div(s.mul(mv, m_corr), denom));
        s.store_piece(&mut params[p], s.neg_mul_add(lr, update, param));
    }
}
