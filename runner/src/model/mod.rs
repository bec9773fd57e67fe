//! The GPT-2 model: parameters, gradients and activations in arenas
//! (`tensors`), the layers as forward/backward pairs (`layers`), and the
//! passes that chain them (here).

mod decode;
pub mod layers;
mod tensors;

use kernels::Kernels;

use crate::config::ModelConfig;
use crate::error::Error;
use crate::rng::Rng;
use crate::threads::Threads;
pub use decode::KvCache;
pub use layers::check_tokens;
pub use layers::Profile;
use layers::{encoder_backward, encoder_forward, Compute};
pub use tensors::Arena;
pub use tensors::{decays, Activations, Params, Scratch};

/// LayerNorm epsilon, as GPT-2.
pub const LAYER_NORM_EPS: f32 = 1e-5;

/// A GPT-2-style model with its gradients and the buffers of one batch.
pub struct Gpt {
    pub config: ModelConfig,
    sizes: Params<usize>,
    /// All parameters, in the order of [`Params`].
    pub params: Arena,
    /// Gradients, laid out as `params`.
    pub grads: Arena,
    compute: Compute,
    batch: Option<Batch>,
}

/// Activations and scratch for one batch shape, with the batch's tokens.
struct Batch {
    b: usize,
    t: usize,
    act_sizes: Activations<usize>,
    acts: Arena,
    scratch_sizes: Scratch<usize>,
    scratch: Arena,
    tokens: Vec<u32>,
}

impl Gpt {
    /// A model initialised as GPT-2: weights ~ N(0, 0.02), the projections
    /// into the residual stream scaled by 1/√(2L), biases 0, LayerNorm
    /// gains 1.
    pub fn new(config: ModelConfig, kernels: Kernels, seed: u64) -> Result<Gpt, Error> {
        config.validate()?;
        let sizes = Params::sizes(&config);
        let mut params = Arena::zeros(sizes.total());
        let mut rng = Rng::new(seed);
        let residual_std = 0.02 / ((2 * config.layers) as f32).sqrt();
        for (name, tensor) in sizes.split_mut(&mut params).into_named() {
            match name {
                "ln1w" | "ln2w" | "lnfw" => tensor.fill(1.0),
                "attprojw" | "fcprojw" => tensor
                    .iter_mut()
                    .for_each(|w| *w = rng.normal(0.0, residual_std)),
                _ if decays(name) => tensor.iter_mut().for_each(|w| *w = rng.normal(0.0, 0.02)),
                _ => {}
            }
        }
        Gpt::from_params(config, kernels, params)
    }

    /// A model with the given parameters (in the order of [`Params`]).
    pub fn from_params(config: ModelConfig, kernels: Kernels, params: Arena) -> Result<Gpt, Error> {
        config.validate()?;
        let sizes = Params::sizes(&config);
        if params.len() != sizes.total() {
            return Err(Error::Config(format!(
                "{} parameters given, the model has {}",
                params.len(),
                sizes.total()
            )));
        }
        Ok(Gpt {
            config,
            sizes,
            grads: Arena::zeros(params.len()),
            params,
            compute: Compute::new(kernels),
            batch: None,
        })
    }

    /// The kernels handle the model computes with.
    pub fn kernels(&self) -> Kernels {
        self.compute.kernels
    }

    /// Named views of the parameters.
    pub fn param_tensors(&self) -> Params<&[f32]> {
        self.sizes.split(&self.params)
    }

    /// What the optimizer works on: named views of the parameters and
    /// gradients, and the threads to spread the update over.
    pub fn optimizer_view(&mut self) -> (Params<&mut [f32]>, Params<&[f32]>, &Threads) {
        (
            self.sizes.split_mut(&mut self.params),
            self.sizes.split(&self.grads),
            &self.compute.threads,
        )
    }

    /// Runs the model on `threads` from now on.
    pub fn set_threads(&mut self, threads: Threads) {
        self.compute.threads = threads;
    }

    /// The threads the model runs on.
    pub fn threads(&self) -> &Threads {
        &self.compute.threads
    }

    /// Parameter tensor sizes.
    pub fn sizes(&self) -> Params<usize> {
        self.sizes
    }

    /// Floats held by activations and backward scratch for a `b × t` batch.
    pub fn activation_floats(&self, b: usize, t: usize) -> usize {
        Activations::sizes(&self.config, b, t).total() + Scratch::sizes(&self.config, b, t).total()
    }

    /// Time per kind of layer since the last call (and resets it).
    pub fn take_profile(&mut self) -> Profile {
        std::mem::take(&mut self.compute.profile)
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self) {
        self.compute.kernels.fill(0.0, &mut self.grads);
    }

    /// Runs the model on `b` sequences of `t` tokens (`tokens[b·t]`),
    /// keeping the logits and what the backward pass needs.
    pub fn forward(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<(), Error> {
        let cfg = self.config;
        if b == 0 || t == 0 || t > cfg.block_size {
            return Err(Error::Config(format!(
                "a batch of {b} × {t} tokens does not fit block size {}",
                cfg.block_size
            )));
        }
        if tokens.len() != b * t {
            return Err(Error::Config(format!(
                "{} tokens for a {b} × {t} batch",
                tokens.len()
            )));
        }
        check_tokens(tokens, cfg.vocab_size)?;
        let (c, nh, v) = (cfg.channels, cfg.heads, cfg.vocab_size);
        let bt = b * t;
        let Gpt {
            sizes,
            params,
            compute,
            batch,
            ..
        } = self;
        let p = sizes.split(params);
        let k = compute.kernels;
        let batch = batch_for(batch, &cfg, b, t);
        batch.tokens.copy_from_slice(tokens);
        let a = batch.act_sizes.split_mut(&mut batch.acts);
        let per_head = batch.scratch_sizes.split_mut(&mut batch.scratch).per_head;

        encoder_forward(&k, a.encoded, tokens, p.wte, p.wpe, b, t, c)?;
        for l in 0..cfg.layers {
            // Layer `l`'s slice of a stacked tensor of `n` floats per layer.
            let at = |n: usize| l * n..(l + 1) * n;
            let residual: &[f32] = if l == 0 {
                a.encoded
            } else {
                &a.residual3[(l - 1) * bt * c..][..bt * c]
            };
            let ln1 = &mut a.ln1[at(bt * c)];
            let (mean, rstd) = (&mut a.ln1_mean[at(bt)], &mut a.ln1_rstd[at(bt)]);
            compute.layer_norm_forward(
                residual,
                &p.ln1w[at(c)],
                &p.ln1b[at(c)],
                LAYER_NORM_EPS,
                ln1,
                mean,
                rstd,
            )?;
            let qkv = &mut a.qkv[at(bt * 3 * c)];
            compute.matmul_forward(
                qkv,
                ln1,
                &p.qkvw[at(c * 3 * c)],
                Some(&p.qkvb[at(3 * c)]),
                bt,
                c,
                3 * c,
            )?;
            let atty = &mut a.atty[at(bt * c)];
            let att = &mut a.att[at(b * nh * t * t)];
            compute.attention_forward(atty, att, per_head, qkv, b, t, c, nh)?;
            let attproj = &mut a.attproj[at(bt * c)];
            compute.matmul_forward(
                attproj,
                atty,
                &p.attprojw[at(c * c)],
                Some(&p.attprojb[at(c)]),
                bt,
                c,
                c,
            )?;
            let residual2 = &mut a.residual2[at(bt * c)];
            k.add(residual, attproj, residual2)?;
            let ln2 = &mut a.ln2[at(bt * c)];
            let (mean, rstd) = (&mut a.ln2_mean[at(bt)], &mut a.ln2_rstd[at(bt)]);
            compute.layer_norm_forward(
                residual2,
                &p.ln2w[at(c)],
                &p.ln2b[at(c)],
                LAYER_NORM_EPS,
                ln2,
                mean,
                rstd,
            )?;
            let fch = &mut a.fch[at(bt * 4 * c)];
            compute.matmul_forward(
                fch,
                ln2,
                &p.fcw[at(c * 4 * c)],
                Some(&p.fcb[at(4 * c)]),
                bt,
                c,
                4 * c,
            )?;
            let fch_gelu = &mut a.fch_gelu[at(bt * 4 * c)];
            compute.gelu_forward(fch, fch_gelu)?;
            let fcproj = &mut a.fcproj[at(bt * c)];
            compute.matmul_forward(
                fcproj,
                fch_gelu,
                &p.fcprojw[at(4 * c * c)],
                Some(&p.fcprojb[at(c)]),
                bt,
                4 * c,
                c,
            )?;
            k.add(residual2, fcproj, &mut a.residual3[at(bt * c)])?;
        }
        let last = last_residual(&a.encoded[..], &a.residual3[..], cfg.layers, bt * c);
        compute.layer_norm_forward(
            last,
            p.lnfw,
            p.lnfb,
            LAYER_NORM_EPS,
            a.lnf,
            a.lnf_mean,
            a.lnf_rstd,
        )?;
        compute.lm_head_forward(a.logits, a.lnf, p.wte, bt, c, v)
    }

    /// The logits of the last [`Gpt::forward`], `[b, t, V]`.
    pub fn logits(&self) -> &[f32] {
        match &self.batch {
            Some(batch) => batch.act_sizes.split(&batch.acts).logits,
            None => &[],
        }
    }

    /// Mean cross-entropy of the last forward's logits against `targets`
    /// (`[b·t]`). With `grad_scale = Some(s)`, also writes the gradient of
    /// `s · Σ losses` into the logits' gradient for [`Gpt::backward`] (so
    /// `s = 1 / (b·t·micro_batches)` gives the gradient of the mean).
    pub fn loss(&mut self, targets: &[u32], grad_scale: Option<f32>) -> Result<f32, Error> {
        let v = self.config.vocab_size;
        let Gpt { compute, batch, .. } = self;
        let Some(batch) = batch.as_mut() else {
            return Err(Error::Config("loss before any forward pass".into()));
        };
        if targets.len() != batch.b * batch.t {
            return Err(Error::Config(format!(
                "{} targets for {} positions",
                targets.len(),
                batch.b * batch.t
            )));
        }
        check_tokens(targets, v)?;
        let a = batch.act_sizes.split_mut(&mut batch.acts);
        let s = batch.scratch_sizes.split_mut(&mut batch.scratch);
        let dlogits = grad_scale.map(|_| s.dlogits);
        compute.cross_entropy(
            a.logits,
            v,
            targets,
            a.losses,
            dlogits,
            grad_scale.unwrap_or(1.0),
        )?;
        let total: f64 = a.losses.iter().map(|&x| f64::from(x)).sum();
        Ok((total / a.losses.len() as f64) as f32)
    }

    /// Adds the gradient of the last [`Gpt::loss`] (called with a
    /// `grad_scale`) to [`Gpt::grads`].
    pub fn backward(&mut self) -> Result<(), Error> {
        let cfg = self.config;
        let Gpt {
            sizes,
            params,
            grads,
            compute,
            batch,
            ..
        } = self;
        let Some(batch) = batch.as_mut() else {
            return Err(Error::Config("backward before any forward pass".into()));
        };
        let (b, t) = (batch.b, batch.t);
        let (c, nh, v) = (cfg.channels, cfg.heads, cfg.vocab_size);
        let bt = b * t;
        let k = compute.kernels;
        let p = sizes.split(params);
        let g = sizes.split_mut(grads);
        let a = batch.act_sizes.split(&batch.acts);
        let s = batch.scratch_sizes.split_mut(&mut batch.scratch);

        compute.lm_head_backward(s.dln, g.wte, s.dlogits, a.lnf, p.wte, bt, c, v)?;
        let last = last_residual(a.encoded, a.residual3, cfg.layers, bt * c);
        k.fill(0.0, s.dresidual);
        compute.layer_norm_backward(
            last,
            p.lnfw,
            a.lnf_mean,
            a.lnf_rstd,
            s.dln,
            s.dresidual,
            g.lnfw,
            g.lnfb,
        )?;
        for l in (0..cfg.layers).rev() {
            let at = |n: usize| l * n..(l + 1) * n;
            let residual: &[f32] = if l == 0 {
                a.encoded
            } else {
                &a.residual3[(l - 1) * bt * c..][..bt * c]
            };
            // residual3 = residual2 + fcproj(gelu(fc(ln2(residual2)))).
            compute.matmul_backward(
                s.dfch_gelu,
                &mut g.fcprojw[at(4 * c * c)],
                Some(&mut g.fcprojb[at(c)]),
                s.dresidual,
                &a.fch_gelu[at(bt * 4 * c)],
                &p.fcprojw[at(4 * c * c)],
                bt,
                4 * c,
                c,
            )?;
            k.fill(0.0, s.dfch);
            compute.gelu_backward(&a.fch[at(bt * 4 * c)], s.dfch_gelu, s.dfch)?;
            compute.matmul_backward(
                s.dln,
                &mut g.fcw[at(c * 4 * c)],
                Some(&mut g.fcb[at(4 * c)]),
                s.dfch,
                &a.ln2[at(bt * c)],
                &p.fcw[at(c * 4 * c)],
                bt,
                c,
                4 * c,
            )?;
            let (mean, rstd) = (&a.ln2_mean[at(bt)], &a.ln2_rstd[at(bt)]);
            compute.layer_norm_backward(
                &a.residual2[at(bt * c)],
                &p.ln2w[at(c)],
                mean,
                rstd,
                s.dln,
                s.dresidual,
                &mut g.ln2w[at(c)],
                &mut g.ln2b[at(c)],
            )?;
            // residual2 = residual + attproj(attention(qkv(ln1(residual)))).
            compute.matmul_backward(
                s.datty,
                &mut g.attprojw[at(c * c)],
                Some(&mut g.attprojb[at(c)]),
                s.dresidual,
                &a.atty[at(bt * c)],
                &p.attprojw[at(c * c)],
                bt,
                c,
                c,
            )?;
            compute.attention_backward(
                s.dqkv,
                s.datt,
                s.per_head,
                s.datty,
                &a.qkv[at(bt * 3 * c)],
                &a.att[at(b * nh * t * t)],
                b,
                t,
                c,
                nh,
            )?;
            compute.matmul_backward(
                s.dln,
                &mut g.qkvw[at(c * 3 * c)],
                Some(&mut g.qkvb[at(3 * c)]),
                s.dqkv,
                &a.ln1[at(bt * c)],
                &p.qkvw[at(c * 3 * c)],
                bt,
                c,
                3 * c,
            )?;
            let (mean, rstd) = (&a.ln1_mean[at(bt)], &a.ln1_rstd[at(bt)]);
            compute.layer_norm_backward(
                residual,
                &p.ln1w[at(c)],
                mean,
                rstd,
                s.dln,
                s.dresidual,
                &mut g.ln1w[at(c)],
                &mut g.ln1b[at(c)],
            )?;
        }
        encoder_backward(&k, g.wte, g.wpe, s.dresidual, &batch.tokens, b, t, c)
    }
}

/// The residual stream entering the final LayerNorm: the last block's
/// output, or the embeddings when there are no blocks.
fn last_residual<'a>(
    encoded: &'a [f32],
    residual3: &'a [f32],
    layers: usize,
    btc: usize,
) -> &'a [f32] {
    if layers == 0 {
        encoded
    } else {
        &residual3[(layers - 1) * btc..][..btc]
    }
}

/// The batch buffers for `b × t`. Buffers only ever grow, so a smaller
/// shape (validation's last group, a partial window) reuses the training
/// batch's memory and the next training step allocates nothing.
fn batch_for<'a>(
    batch: &'a mut Option<Batch>,
    cfg: &ModelConfig,
    b: usize,
    t: usize,
) -> &'a mut Batch {
    let batch = batch.get_or_insert_with(|| Batch {
        b: 0,
        t: 0,
        acts: Arena::zeros(0),
        act_sizes: Activations::default(),
        scratch: Arena::zeros(0),
        scratch_sizes: Scratch::default(),
        tokens: Vec::new(),
    });
    if (batch.b, batch.t) != (b, t) {
        batch.act_sizes = Activations::sizes(cfg, b, t);
        batch.scratch_sizes = Scratch::sizes(cfg, b, t);
        batch.acts.grow(batch.act_sizes.total());
        batch.scratch.grow(batch.scratch_sizes.total());
        batch.tokens.resize(b * t, 0);
        (batch.b, batch.t) = (b, t);
    }
    batch
}
