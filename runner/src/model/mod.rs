//! The GPT-2 model: its shape (`config`), its tensors (`tensors`, in
//! aligned `arena`s), the layers as forward/backward pairs (`layers`,
//! `attention`) run in an execution `context`, the one transformer
//! `block`, and here the passes that chain them: training forward, loss
//! and backward, and cached decoding.

mod arena;
mod attention;
mod block;
pub mod config;
pub mod context;
mod kv_cache;
pub mod layers;
mod packed;
pub mod tensors;

use kernels::Kernels;

pub use arena::Arena;
use attention::CachedLayer;
pub use attention::{attention_backward, attention_forward, Attention};
use block::{block_backward, block_forward, block_recompute, BlockScratch, Recomputed};
pub use config::{ModelConfig, Preset};
pub use context::{Context, Multiplier, Precision, Profile};
pub use kv_cache::KvCache;
pub use layers::LAYER_NORM_EPS;
use layers::{
    check_tokens, encoder_backward, encoder_forward, layer_norm_backward, layer_norm_forward,
};
use layers::{cross_entropy, lm_head_backward, lm_head_forward, Weight};
use packed::{weight_of, PackedWeights};
use tensors::{Activations, BlockActivations, Init, ParamTensor, Params, Scratch, INIT_STD};

use crate::error::Error;
use crate::rng::Rng;
use crate::threads::Threads;

/// A GPT-2-style model with its gradients and the buffers of one batch.
pub struct Gpt {
    pub config: ModelConfig,
    sizes: Params<usize>,
    /// All parameters, in the order of [`Params`].
    params: Arena,
    /// Gradients, laid out as `params`: empty until a first backward pass
    /// (or [`Gpt::zero_grad`]) needs them, so that a model that only
    /// evaluates or decodes holds none.
    grads: Arena,
    ctx: Context,
    batch: Option<Batch>,
    /// The weight matrices in bf16 for decoding in bf16: packed by the
    /// first cached pass, dropped whenever the parameters may change.
    packed: Option<PackedWeights>,
    /// Whether the backward pass recomputes the cheap activations rather
    /// than keeping every layer's ([`Gpt::set_recompute`]).
    recompute: bool,
}

/// Activations and scratch for one batch shape, with the batch's tokens.
struct Batch {
    b: usize,
    t: usize,
    recompute: bool,
    act_sizes: Activations<usize>,
    acts: Arena,
    scratch_sizes: Scratch<usize>,
    scratch: Arena,
    tokens: Vec<u32>,
}

impl Gpt {
    /// A model initialised as [`tensors::PARAM_SPECS`] says (GPT-2's
    /// initialisation), from `seed`.
    pub fn new(config: ModelConfig, kernels: Kernels, seed: u64) -> Result<Gpt, Error> {
        config.validate()?;
        let sizes = Params::sizes(&config);
        let mut params = Arena::zeros(sizes.total());
        let mut rng = Rng::new(seed);
        let residual_std = INIT_STD / ((2 * config.layers) as f32).sqrt();
        let tensors = ParamTensor::all(&config);
        for (tensor, values) in tensors
            .iter()
            .zip(sizes.split_mut(&mut params).into_array())
        {
            // A padded embedding's extra rows stay zero (the arena starts
            // zeroed): only the rows a checkpoint holds are drawn, so a
            // model is the same before and after a save.
            let values = &mut values[..tensor.shape.saved_floats() * tensor.copies];
            match tensor.spec.init {
                Init::Zeros => values.fill(0.0),
                Init::Ones => values.fill(1.0),
                Init::Normal => values
                    .iter_mut()
                    .for_each(|w| *w = rng.normal(0.0, INIT_STD)),
                Init::ResidualNormal => values
                    .iter_mut()
                    .for_each(|w| *w = rng.normal(0.0, residual_std)),
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
            grads: Arena::default(),
            params,
            ctx: Context::new(kernels),
            batch: None,
            packed: None,
            recompute: false,
        })
    }

    /// All parameters, in the order of [`Params`].
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The gradients, laid out as [`Gpt::params`]; empty before the first
    /// backward pass or [`Gpt::zero_grad`].
    pub fn grads(&self) -> &[f32] {
        &self.grads
    }

    /// The gradients, to change (zeros where no backward pass wrote them).
    pub fn grads_mut(&mut self) -> &mut [f32] {
        self.allocate_grads();
        &mut self.grads
    }

    /// Gives the gradients their length (zeros), once.
    fn allocate_grads(&mut self) {
        self.grads.grow(self.params.len());
    }

    /// All parameters, to change (drops the bf16 decoding copy).
    pub fn params_mut(&mut self) -> &mut [f32] {
        self.packed = None;
        &mut self.params
    }

    /// Floats' worth (4-byte slots) of the bf16 weights that decoding in
    /// bf16 holds for a model of shape `cfg`.
    pub fn packed_floats(cfg: &ModelConfig) -> usize {
        PackedWeights::slots(cfg)
    }

    /// Bytes of the bf16 weights held for decoding (0 until a cached pass
    /// in bf16 packs them).
    pub fn packed_bytes(&self) -> usize {
        self.packed.as_ref().map_or(0, PackedWeights::bytes)
    }

    /// Floats of activations and backward scratch for a `b × t` batch of
    /// a model of shape `cfg` (saturating), with or without `recompute`:
    /// what [`Gpt::forward`] allocates.
    pub fn activation_floats(cfg: &ModelConfig, b: usize, t: usize, recompute: bool) -> usize {
        Activations::sizes(cfg, b, t, recompute)
            .total()
            .saturating_add(Scratch::sizes(cfg, b, t, recompute).total())
    }

    /// Floats of the buffers each thread running attention holds for
    /// sequences of `t` positions of a model of shape `cfg` with products
    /// in `mm`, with the `backward` pass or without (saturating).
    pub fn thread_floats(cfg: &ModelConfig, mm: Multiplier, t: usize, backward: bool) -> usize {
        attention::thread_floats(mm, (t, cfg.channels, cfg.heads), backward)
    }

    /// Floats of the workspace the products of a pass over `rows`
    /// positions of a model of shape `cfg` share in `mm` (the linear
    /// layers' and the LM head's), with the `backward` pass and its
    /// partial sums or without.
    pub fn workspace_floats(
        cfg: &ModelConfig,
        mm: Multiplier,
        rows: usize,
        backward: bool,
    ) -> usize {
        let (c, vp) = (cfg.channels, cfg.padded_vocab());
        let layers = block::block_products(rows, c, backward);
        let head = layers::lm_head_products(rows, c, vp, backward);
        let products = mm.workspace_floats(layers.chain(head));
        let partials = match backward {
            true => layers::partial_floats(rows, c),
            false => 0,
        };
        products.saturating_add(partials)
    }

    /// Floats of the products' workspace each thread grows decoding a
    /// model of shape `cfg` in `mm` (one token's heads in parallel).
    pub fn decoding_thread_floats(cfg: &ModelConfig, mm: Multiplier) -> usize {
        let hs = cfg.channels / cfg.heads.max(1);
        attention::decoding_thread_floats(mm, cfg.block_size, hs)
    }

    /// [`Gpt::workspace_floats`] for decoding up to a whole block: a
    /// prompt of the block's length, and its cached attention's products.
    pub fn decoding_workspace_floats(cfg: &ModelConfig, mm: Multiplier) -> usize {
        let (t, hs) = (cfg.block_size, cfg.channels / cfg.heads.max(1));
        let attention = mm.workspace_floats(attention::cached_products(t, hs));
        Gpt::workspace_floats(cfg, mm, t, false).max(attention)
    }

    /// With `true`, training keeps only the activations that are costly to
    /// recompute (a block's LayerNorm outputs and GELU output are
    /// recomputed by the backward pass, one layer at a time): less memory
    /// for one more LayerNorm and GELU forward per layer. The gradients are
    /// the same bits either way.
    pub fn set_recompute(&mut self, recompute: bool) {
        self.recompute = recompute;
    }

    /// The kernels handle the model computes with.
    pub fn kernels(&self) -> Kernels {
        self.ctx.kernels
    }

    /// What the optimizer works on: named views of the parameters and
    /// gradients, and the threads to spread the update over.
    pub fn optimizer_view(&mut self) -> (Params<&mut [f32]>, Params<&[f32]>, &Threads) {
        self.packed = None;
        self.allocate_grads();
        (
            self.sizes.split_mut(&mut self.params),
            self.sizes.split(&self.grads),
            &self.ctx.threads,
        )
    }

    /// Multiplies in `precision` from now on (the parameters stay f32).
    pub fn set_precision(&mut self, precision: Precision) {
        self.ctx.precision = precision;
        if precision == Precision::F32 {
            self.packed = None;
        }
    }

    /// The precision of the matrix products.
    pub fn precision(&self) -> Precision {
        self.ctx.precision
    }

    /// Runs the model on `threads` from now on.
    pub fn set_threads(&mut self, threads: Threads) {
        self.ctx.threads = threads;
    }

    /// The threads the model runs on.
    pub fn threads(&self) -> &Threads {
        &self.ctx.threads
    }

    /// Parameter tensor sizes.
    pub fn sizes(&self) -> Params<usize> {
        self.sizes
    }

    /// Time per kind of layer since the last call (and resets it).
    pub fn take_profile(&mut self) -> Profile {
        std::mem::take(&mut self.ctx.profile)
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self) {
        // Newly allocated gradients are zeros already.
        if self.grads.is_empty() {
            self.allocate_grads();
            return;
        }
        layers::zero(&self.ctx, &mut self.grads);
    }

    /// Runs the model on `b` sequences of `t` tokens (`tokens[b·t]`),
    /// keeping the logits and what the backward pass needs.
    pub fn forward(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<(), Error> {
        let cfg = self.config;
        if b == 0 || t == 0 || t > cfg.block_size {
            return Err(Error::Input(format!(
                "a batch of {b} × {t} tokens does not fit block size {}",
                cfg.block_size
            )));
        }
        if tokens.len() != b * t {
            return Err(Error::Input(format!(
                "{} tokens for a {b} × {t} batch",
                tokens.len()
            )));
        }
        check_tokens(tokens, cfg.vocab_size)?;
        let (c, nh, vp, layers) = (cfg.channels, cfg.heads, cfg.padded_vocab(), cfg.layers);
        let btc = b * t * c;
        let Gpt {
            sizes,
            params,
            ctx,
            batch,
            recompute,
            ..
        } = self;
        let p = sizes.split(params);
        let batch = batch_for(batch, &cfg, b, t, *recompute);
        batch.tokens.copy_from_slice(tokens);
        let mut a = batch.act_sizes.split_mut(&mut batch.acts);
        let s = batch.scratch_sizes.split_mut(&mut batch.scratch);
        let per_head = s.per_head;
        let residuals = std::mem::take(&mut a.residuals);

        encoder_forward(ctx, &mut residuals[..btc], tokens, p.wte, p.wpe, t, 0, c)?;
        for l in 0..layers {
            let (input, output) = residual_pair(residuals, l, btc);
            let attention = Attention::Causal {
                b,
                t,
                per_head: &mut *per_head,
            };
            let mut acts = a.layer_mut(l, layers);
            if *recompute {
                // One layer's buffers, overwritten layer after layer.
                acts.ln1 = &mut *s.recomputed_ln1;
                acts.ln2 = &mut *s.recomputed_ln2;
                acts.fch_gelu = &mut *s.recomputed_fch_gelu;
            }
            block_forward(
                ctx,
                &p.layer(l, layers),
                None,
                input,
                output,
                acts,
                attention,
                b * t,
                c,
                nh,
            )?;
        }
        let last = &residuals[layers * btc..][..btc];
        let head = (a.lnf, a.lnf_mean, a.lnf_rstd);
        head_forward(
            ctx,
            &p,
            Weight::F32(p.wte),
            last,
            head,
            a.logits,
            b * t,
            c,
            vp,
        )
    }

    /// The `V` logits at `position` (of the `b·t`) of the last
    /// [`Gpt::forward`], if it ran that many.
    pub fn logits(&self, position: usize) -> Option<&[f32]> {
        let batch = self.batch.as_ref()?;
        let vp = self.config.padded_vocab();
        let row = batch
            .act_sizes
            .split(&batch.acts)
            .logits
            .chunks_exact(vp)
            .nth(position)?;
        Some(&row[..self.config.vocab_size])
    }

    /// Mean cross-entropy of the last forward's logits against `targets`
    /// (`[b·t]`). With `grad_scale = Some(s)`, also writes the gradient of
    /// `s · Σ losses` into the logits' gradient for [`Gpt::backward`] (so
    /// `s = 1 / (b·t·micro_batches)` gives the gradient of the mean).
    pub fn loss(&mut self, targets: &[u32], grad_scale: Option<f32>) -> Result<f32, Error> {
        let (v, vp) = (self.config.vocab_size, self.config.padded_vocab());
        let Gpt { ctx, batch, .. } = self;
        let Some(batch) = batch.as_mut() else {
            return Err(Error::NoForwardPass("loss"));
        };
        if targets.len() != batch.b * batch.t {
            return Err(Error::Input(format!(
                "{} targets for {} positions",
                targets.len(),
                batch.b * batch.t
            )));
        }
        check_tokens(targets, v)?;
        let a = batch.act_sizes.split_mut(&mut batch.acts);
        let s = batch.scratch_sizes.split_mut(&mut batch.scratch);
        let dlogits = grad_scale.map(|_| s.dlogits);
        let scale = grad_scale.unwrap_or(1.0);
        cross_entropy(ctx, a.logits, v, vp, targets, a.losses, dlogits, scale)?;
        let total: f64 = a.losses.iter().map(|&x| f64::from(x)).sum();
        Ok((total / a.losses.len() as f64) as f32)
    }

    /// Adds the gradient of the last [`Gpt::loss`] (called with a
    /// `grad_scale`) to [`Gpt::grads`].
    pub fn backward(&mut self) -> Result<(), Error> {
        self.backward_streaming(|_, _| {})
    }

    /// [`Gpt::backward`], handing each span of [`Gpt::grads`] to
    /// `ready(start, span)` (`start`: where the span begins in the arena)
    /// as soon as the rest of the pass no longer writes it: the final
    /// LayerNorm's tensors, then each block's from the last block to the
    /// first, then the embeddings'. A data-parallel trainer sums them
    /// across processes while the pass goes on.
    pub fn backward_streaming<'a>(
        &'a mut self,
        mut ready: impl FnMut(usize, &'a mut [f32]),
    ) -> Result<(), Error> {
        let cfg = self.config;
        if self.batch.is_some() {
            self.allocate_grads();
        }
        let Gpt {
            sizes,
            params,
            grads,
            ctx,
            batch,
            ..
        } = self;
        let Some(batch) = batch.as_mut() else {
            return Err(Error::NoForwardPass("backward"));
        };
        let (b, t) = (batch.b, batch.t);
        let (c, nh, vp, layers) = (cfg.channels, cfg.heads, cfg.padded_vocab(), cfg.layers);
        let (bt, btc) = (b * t, b * t * c);
        let p = sizes.split(params);
        let starts = sizes.starts();
        // Where each span lies is computed apart from the views that cut
        // it: they must agree (cheap, once per span).
        let arena_start = grads.as_ptr() as usize;
        let mut ready = |start: usize, span: &'a mut [f32]| {
            let offset = (span.as_ptr() as usize - arena_start) / size_of::<f32>();
            assert_eq!(offset, start, "a gradient span's start");
            ready(start, span);
        };
        let (g, mut layer_grads) = sizes.split_mut(grads).split_layers_from_last(layers);
        let a = batch.act_sizes.split(&batch.acts);
        let s = batch.scratch_sizes.split_mut(&mut batch.scratch);

        lm_head_backward(ctx, s.dln, &mut *g.wte, s.dlogits, a.lnf, p.wte, bt, c, vp)?;
        let last = &a.residuals[layers * btc..][..btc];
        layers::zero(ctx, s.dresidual);
        layer_norm_backward(
            ctx,
            last,
            p.lnfw,
            a.lnf_mean,
            a.lnf_rstd,
            s.dln,
            s.dresidual,
            &mut *g.lnfw,
            &mut *g.lnfb,
        )?;
        ready(starts.lnfw, g.lnfw);
        ready(starts.lnfb, g.lnfb);
        let mut recomputed = Recomputed {
            ln1: s.recomputed_ln1,
            ln2: s.recomputed_ln2,
            mean: s.recomputed_mean,
            rstd: s.recomputed_rstd,
            fch_gelu: s.recomputed_fch_gelu,
        };
        for l in (0..layers).rev() {
            let input = &a.residuals[l * btc..][..btc];
            let pl = p.layer(l, layers);
            let mut al = a.layer(l, layers);
            if batch.recompute {
                block_recompute(ctx, &pl, input, &al, &mut recomputed)?;
                al.ln1 = &*recomputed.ln1;
                al.ln2 = &*recomputed.ln2;
                al.fch_gelu = &*recomputed.fch_gelu;
            }
            let scratch = BlockScratch {
                dresidual: &mut *s.dresidual,
                dln: &mut *s.dln,
                dqkv: &mut *s.dqkv,
                datty: &mut *s.datty,
                per_head: &mut *s.per_head,
                dfch: &mut *s.dfch,
                dfch_gelu: &mut *s.dfch_gelu,
            };
            let mut gl = layer_grads.next().expect("one view per layer");
            block_backward(ctx, &pl, gl.reborrow(), input, &al, scratch, (b, t, c, nh))?;
            let spans = sizes.layer_starts(l, layers).into_array();
            for (start, span) in spans.into_iter().zip(gl.into_array()) {
                ready(start, span);
            }
        }
        encoder_backward(
            ctx,
            &mut *g.wte,
            &mut *g.wpe,
            s.dresidual,
            &batch.tokens,
            t,
            c,
        )?;
        ready(starts.wte, g.wte);
        ready(starts.wpe, g.wpe);
        Ok(())
    }

    /// An empty key/value cache for this model in its current precision.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(&self.config, self.ctx.precision)
    }

    /// Runs `tokens` at the positions after those in `cache`, appends their
    /// keys and values, and returns the logits of the last one. The cache
    /// must have room (`cache.len() + tokens.len() <= block_size`).
    pub fn forward_cached<'c>(
        &mut self,
        cache: &'c mut KvCache,
        tokens: &[u32],
    ) -> Result<&'c [f32], Error> {
        // One entry into the pool per pass, not one per matrix product.
        let pool = self.ctx.threads.handle();
        pool.install(|| {
            let cfg = self.config;
            let (c, nh, v, t_max) = (cfg.channels, cfg.heads, cfg.vocab_size, cfg.block_size);
            let vp = cfg.padded_vocab();
            let layers = cfg.layers;
            let (m, p0) = (tokens.len(), cache.len);
            if m == 0 || p0 + m > t_max {
                return Err(Error::Input(format!(
                    "{m} new tokens after {p0} do not fit the block size {t_max}"
                )));
            }
            check_tokens(tokens, v)?;
            if cache.config != cfg || cache.precision() != self.ctx.precision {
                return Err(Error::Input(format!(
                    "the key/value cache was made for model {} in {}, not this model {cfg} in {}: make a new cache",
                    cache.config,
                    cache.precision().name(),
                    self.ctx.precision.name()
                )));
            }
            let Gpt {
                sizes,
                params,
                ctx,
                packed,
                ..
            } = self;
            let p = sizes.split(params);
            if ctx.precision == Precision::Bf16 && packed.is_none() {
                *packed = Some(PackedWeights::pack(&ctx.kernels, &p, &cfg)?);
            }
            let packed = packed.as_ref();
            let KvCache {
                keys_values,
                residuals,
                acts,
                scores,
                head_scores,
                lnf,
                logits,
                ..
            } = cache;
            let mc = m * c;
            let (first, second) = residuals.split_at_mut(t_max * c);
            let mut pair = [&mut first[..mc], &mut second[..mc]];
            encoder_forward(ctx, pair[0], tokens, p.wte, p.wpe, t_max, p0, c)?;
            let act_sizes = BlockActivations::sizes(&cfg, m);
            for l in 0..layers {
                let [input, output] = &mut pair;
                let attention = Attention::Cached(CachedLayer {
                    keys_values: keys_values.layer(l),
                    t_max,
                    p0,
                    scores: &mut scores[..],
                    head_scores: &mut head_scores[..],
                });
                let a = act_sizes.split_mut(acts);
                block_forward(
                    ctx,
                    &p.layer(l, layers),
                    packed.map(|w| &w.layers[l]),
                    input,
                    output,
                    a,
                    attention,
                    m,
                    c,
                    nh,
                )?;
                pair.swap(0, 1);
            }
            // Only the last position's logits are needed.
            let last = &pair[0][(m - 1) * c..];
            let (ln_last, stats) = lnf.split_at_mut(c);
            let (mean, rstd) = stats.split_at_mut(1);
            let wte = weight_of(p.wte, packed.map(|w| &w.lm_head))?;
            head_forward(ctx, &p, wte, last, (ln_last, mean, rstd), logits, 1, c, vp)?;
            cache.len = p0 + m;
            Ok(cache.logits())
        })
    }
}

/// The model's head over `rows` positions of the residual stream `x`:
/// the final LayerNorm (into `ln`, with its mean and rstd kept), then the
/// LM head's logits (`wte`: the tied embedding, or its packed copy).
#[allow(clippy::too_many_arguments)]
fn head_forward(
    ctx: &mut Context,
    p: &Params<&[f32]>,
    wte: Weight,
    x: &[f32],
    (ln, mean, rstd): (&mut [f32], &mut [f32], &mut [f32]),
    logits: &mut [f32],
    rows: usize,
    c: usize,
    v: usize,
) -> Result<(), Error> {
    layer_norm_forward(ctx, x, p.lnfw, p.lnfb, LAYER_NORM_EPS, &mut *ln, mean, rstd)?;
    lm_head_forward(ctx, logits, ln, wte, rows, c, v)
}

/// Block `l`'s input (the residual stream after `l` blocks) and output
/// in the stacked residuals (`n` floats each).
fn residual_pair(residuals: &mut [f32], l: usize, n: usize) -> (&[f32], &mut [f32]) {
    let (before, after) = residuals.split_at_mut((l + 1) * n);
    (&before[l * n..], &mut after[..n])
}

/// The batch buffers for `b × t` (with or without `recompute`). Buffers
/// only ever grow, so a smaller shape (validation's last group, a partial
/// window) reuses the training batch's memory and the next training step
/// allocates nothing.
fn batch_for<'a>(
    batch: &'a mut Option<Batch>,
    cfg: &ModelConfig,
    b: usize,
    t: usize,
    recompute: bool,
) -> &'a mut Batch {
    let batch = batch.get_or_insert_with(|| Batch {
        b: 0,
        t: 0,
        recompute: false,
        acts: Arena::zeros(0),
        act_sizes: Activations::default(),
        scratch: Arena::zeros(0),
        scratch_sizes: Scratch::default(),
        tokens: Vec::new(),
    });
    if (batch.b, batch.t, batch.recompute) != (b, t, recompute) {
        batch.act_sizes = Activations::sizes(cfg, b, t, recompute);
        batch.scratch_sizes = Scratch::sizes(cfg, b, t, recompute);
        batch.acts.grow(batch.act_sizes.total());
        batch.scratch.grow(batch.scratch_sizes.total());
        batch.tokens.resize(b * t, 0);
        (batch.b, batch.t, batch.recompute) = (b, t, recompute);
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Tokenizer;

    #[test]
    fn a_new_model_is_drawn_as_its_table_says_with_zero_padding() {
        // 300 tokens, padded to 384 rows of the embedding in the arena.
        let cfg = ModelConfig {
            vocab_size: 300,
            tokenizer: None,
            ..Preset::Tiny.config(Tokenizer::Byte)
        };
        let model = Gpt::new(cfg, Kernels::best(), 3).unwrap();
        let residual_std = INIT_STD / ((2 * cfg.layers) as f32).sqrt();
        let tensors = ParamTensor::all(&cfg);
        let views = Params::sizes(&cfg).split(model.params()).into_array();
        for (tensor, values) in tensors.iter().zip(views) {
            let name = tensor.spec.hf_name;
            let live = tensor.shape.saved_floats();
            // Each layer's copy on its own: none may be left at zero.
            for copy in values[..live * tensor.copies].chunks(live) {
                let n = copy.len() as f64;
                let mean = copy.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
                let std = (copy
                    .iter()
                    .map(|&x| (f64::from(x) - mean).powi(2))
                    .sum::<f64>()
                    / n)
                    .sqrt();
                let want_std = match tensor.spec.init {
                    Init::Zeros => {
                        assert!(copy.iter().all(|&x| x == 0.0), "{name}");
                        continue;
                    }
                    Init::Ones => {
                        assert!(copy.iter().all(|&x| x == 1.0), "{name}");
                        continue;
                    }
                    Init::Normal => f64::from(INIT_STD),
                    Init::ResidualNormal => f64::from(residual_std),
                };
                assert!(copy.len() >= 1000, "{name}: too few values to judge");
                assert!((std / want_std - 1.0).abs() < 0.1, "{name}: std {std}");
                assert!(mean.abs() < 0.2 * want_std, "{name}: mean {mean}");
            }
            // The embedding's padded rows stay zero, as a loaded model's do.
            assert!(
                values[live * tensor.copies..].iter().all(|&x| x == 0.0),
                "{name}"
            );
        }
        assert_eq!(
            tensors[0].shape.floats() - tensors[0].shape.saved_floats(),
            (384 - 300) * cfg.channels,
            "the first tensor is the padded embedding"
        );
    }
}
