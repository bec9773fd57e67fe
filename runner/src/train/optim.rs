//! AdamW over the model's parameter tensors, with global gradient-norm
//! clipping and a warm-up + cosine learning-rate schedule.

use kernels::AdamW;

use crate::error::Error;
use crate::model::tensors::PARAM_SPECS;
use crate::model::Gpt;

/// Optimizer hyperparameters (GPT-2 / nanoGPT defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerSettings {
    /// Peak learning rate.
    pub lr: f32,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup: u32,
    /// Total steps; the cosine decay reaches `min_lr_ratio · lr` there.
    pub total_steps: u32,
    /// The floor of the decay, as a fraction of `lr`.
    pub min_lr_ratio: f32,
    /// Decoupled weight decay on matrices and embeddings.
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// The global gradient norm is clipped to this.
    pub grad_clip: f32,
}

impl OptimizerSettings {
    /// nanoGPT's settings with the given learning rate and schedule.
    pub fn new(lr: f32, warmup: u32, total_steps: u32) -> OptimizerSettings {
        OptimizerSettings {
            lr,
            warmup,
            total_steps,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
        }
    }

    /// The learning rate of step `step` (counting from 1): linear warm-up,
    /// then cosine decay to `min_lr_ratio · lr` at `total_steps`.
    pub fn lr_at(&self, step: u32) -> f32 {
        if step <= self.warmup {
            return self.lr * step as f32 / self.warmup.max(1) as f32;
        }
        let span = self.total_steps.saturating_sub(self.warmup).max(1) as f32;
        let progress = ((step - self.warmup) as f32 / span).min(1.0);
        let min_lr = self.min_lr_ratio * self.lr;
        min_lr + 0.5 * (self.lr - min_lr) * (1.0 + (std::f32::consts::PI * progress).cos())
    }
}

/// AdamW's moments, laid out as the parameters, and the step count.
pub struct Optimizer {
    /// One arena: the first moments, then the second moments.
    moments: Vec<f32>,
    /// Updates done so far.
    pub step: u32,
    /// Per-piece sums of squared gradients (reused every step).
    partial_norms: Vec<f32>,
}

/// Parameters per piece of the update: a fixed size, so the gradient norm
/// (summed piece by piece, in order) never depends on the thread count.
const PARAMS_PER_PIECE: usize = 1 << 16;

impl Optimizer {
    /// Zero moments for `params` parameters.
    pub fn new(params: usize) -> Optimizer {
        Optimizer {
            moments: vec![0.0; Optimizer::state_floats(params)],
            step: 0,
            partial_norms: Vec::new(),
        }
    }

    /// Floats of optimizer state for `params` parameters.
    pub fn state_floats(params: usize) -> usize {
        params.saturating_mul(2)
    }

    /// An optimizer resumed after `step` updates with these first and
    /// second moments.
    pub fn from_state(step: u32, (first, second): (Vec<f32>, Vec<f32>)) -> Optimizer {
        let mut moments = Vec::with_capacity(first.len() + second.len());
        moments.extend_from_slice(&first);
        moments.extend_from_slice(&second);
        Optimizer {
            moments,
            step,
            partial_norms: Vec::new(),
        }
    }

    /// The first and second moments, laid out as the parameters.
    pub fn moments(&self) -> (&[f32], &[f32]) {
        self.moments.split_at(self.moments.len() / 2)
    }

    /// The first and second moments, mutable.
    pub fn moments_mut(&mut self) -> (&mut [f32], &mut [f32]) {
        let half = self.moments.len() / 2;
        self.moments.split_at_mut(half)
    }

    /// One update of `model` from its gradients at learning rate `lr`.
    /// Returns the gradient norm before clipping; a non-finite norm (the
    /// run diverged) is an error rather than a silent NaN model.
    pub fn update(
        &mut self,
        model: &mut Gpt,
        settings: &OptimizerSettings,
        lr: f32,
    ) -> Result<f32, Error> {
        let k = model.kernels();
        let sizes = model.sizes();
        let (params, grads, threads) = model.optimizer_view();
        self.partial_norms.clear();
        let mut pieces = 0;
        for g in grads.into_array() {
            pieces += g.len().div_ceil(PARAMS_PER_PIECE);
        }
        self.partial_norms.resize(pieces, 0.0);
        // Sums of squares per piece of each tensor, then added in order.
        let mut offset = 0;
        for g in grads.into_array() {
            let n = g.len().div_ceil(PARAMS_PER_PIECE);
            threads.try_for_each_piece(
                (&mut self.partial_norms[offset..offset + n], 1),
                |i, out| {
                    out[0] = k.sum_squares(
                        &g[i * PARAMS_PER_PIECE..]
                            [..PARAMS_PER_PIECE.min(g.len() - i * PARAMS_PER_PIECE)],
                    );
                    Ok(())
                },
            )?;
            offset += n;
        }
        let norm = self
            .partial_norms
            .iter()
            .map(|&x| f64::from(x))
            .sum::<f64>()
            .sqrt() as f32;
        if !norm.is_finite() {
            return Err(Error::Diverged {
                step: self.step + 1,
                norm,
            });
        }
        let clip_scale = if norm > settings.grad_clip {
            settings.grad_clip / norm
        } else {
            1.0
        };
        self.step += 1;
        let step = self.step;
        let (m, v) = self.moments_mut();
        let (m, v) = (sizes.split_mut(m), sizes.split_mut(v));
        let tensors = PARAM_SPECS
            .into_array()
            .into_iter()
            .zip(params.into_array().into_iter().zip(grads.into_array()))
            .zip(m.into_array().into_iter().zip(v.into_array()));
        for ((spec, (p, g)), (m, v)) in tensors {
            let opt = AdamW {
                lr,
                beta1: settings.beta1,
                beta2: settings.beta2,
                eps: settings.eps,
                weight_decay: if spec.weight_decay {
                    settings.weight_decay
                } else {
                    0.0
                },
            };
            threads.try_for_each_piece(
                (
                    (p, PARAMS_PER_PIECE),
                    ((m, PARAMS_PER_PIECE), (v, PARAMS_PER_PIECE)),
                ),
                |i, (p, (m, v))| {
                    let g = &g[i * PARAMS_PER_PIECE..][..p.len()];
                    Ok(k.adamw_step(&opt, step, clip_scale, p, g, m, v)?)
                },
            )?;
        }
        Ok(norm)
    }
}
