//! Text generation: the prompt in one cached pass, then one token at a time
//! through the key/value cache, sampled with temperature, top-k and nucleus
//! (top-p) filtering from a seeded generator.
//!
//! When the context reaches the block size, the cache slides: the last half
//! block of tokens is re-run as a new prompt (positions restart at 0) and
//! decoding goes on, so generation length is unlimited.

use std::ops::ControlFlow;
use std::time::Instant;

use crate::error::Error;
use crate::metrics::{mib, ms_since, peak_rss_bytes};
use crate::model::{Gpt, KvCache, ModelConfig};
use crate::rng::Rng;

/// How the next token is drawn from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Divides the logits; 0 means greedy (always the most likely token).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the most likely tokens whose probabilities add up to `p`.
    pub top_p: Option<f32>,
}

impl Sampling {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), Error> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Config(format!(
                "--temperature must be a finite number, 0 or more, not {}",
                self.temperature
            )));
        }
        if self.top_k == Some(0) {
            return Err(Error::Config("--top-k must be at least 1".into()));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::Config(format!("--top-p must be in (0, 1], not {p}")));
            }
        }
        Ok(())
    }
}

/// Reusable buffers for sampling, so that drawing a token never allocates.
pub struct Sampler {
    probs: Vec<f32>,
    order: Vec<u32>,
}

impl Sampler {
    pub fn new(vocab: usize) -> Sampler {
        Sampler {
            probs: vec![0.0; vocab],
            order: (0..vocab as u32).collect(),
        }
    }

    /// Draws a token from `logits`.
    pub fn sample(&mut self, logits: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
        // Greedy. (Top-k = 1 takes the general path, so that a test
        // comparing the two checks the ordering and filtering code.)
        if s.temperature == 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (p, &l) in self.probs.iter_mut().zip(logits) {
            *p = ((l - max) / s.temperature).exp();
        }
        if s.top_k.is_none() && s.top_p.is_none() {
            // Plain sampling needs no ordering.
            let total: f32 = self.probs.iter().sum();
            let mut target = rng.uniform() * total;
            for (i, &p) in self.probs.iter().enumerate() {
                target -= p;
                if target < 0.0 {
                    return i as u32;
                }
            }
            return argmax(logits);
        }
        let probs = &self.probs;
        let order = &mut self.order;
        for (i, o) in order.iter_mut().enumerate() {
            *o = i as u32;
        }
        // Most likely first; ties by token id, so the order is deterministic.
        order.sort_unstable_by(|&a, &b| {
            probs[b as usize]
                .total_cmp(&probs[a as usize])
                .then(a.cmp(&b))
        });
        let mut keep = s.top_k.unwrap_or(order.len()).min(order.len());
        let total: f32 = order[..keep].iter().map(|&i| probs[i as usize]).sum();
        if let Some(top_p) = s.top_p {
            let mut cumulative = 0.0;
            for (n, &i) in order[..keep].iter().enumerate() {
                cumulative += probs[i as usize] / total;
                if cumulative >= top_p {
                    keep = n + 1;
                    break;
                }
            }
        }
        let kept: f32 = order[..keep].iter().map(|&i| probs[i as usize]).sum();
        let mut target = rng.uniform() * kept;
        for &i in &order[..keep] {
            target -= probs[i as usize];
            if target < 0.0 {
                return i;
            }
        }
        order[keep - 1]
    }
}

/// The index of the largest logit (the first on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Where the time of one generation went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationStats {
    pub tokens: Vec<u32>,
    pub prompt_ms: f64,
    pub forward_ms: f64,
    pub sampling_ms: f64,
    pub total_ms: f64,
    /// Bytes of the key/value cache.
    pub cache_bytes: usize,
    /// Times the context reached the block size and the cache slid.
    pub slides: usize,
}

impl GenerationStats {
    /// Generated tokens per second, prompt included in the time.
    pub fn tokens_per_sec(&self) -> f64 {
        self.tokens.len() as f64 / (self.total_ms / 1e3)
    }

    /// The `Generation complete` log line.
    pub fn log(&self) {
        log::info!(
            "Generation complete - Generated {} tokens | Total time: {:.3} ms | Prompt: {:.3} ms | Forward passes: {:.3} ms | Sampling: {:.3} ms | Tokens/sec: {:.1} | KV cache: {:.2} MiB | Peak resident memory: {:.1} MiB | Context slides: {}",
            self.tokens.len(),
            self.total_ms,
            self.prompt_ms,
            self.forward_ms,
            self.sampling_ms,
            self.tokens_per_sec(),
            mib(self.cache_bytes as f64),
            mib(peak_rss_bytes() as f64),
            self.slides
        );
    }
}

/// Checks a prompt against a model of shape `cfg` before generating.
pub fn check_prompt(cfg: &ModelConfig, prompt: &[u32]) -> Result<(), Error> {
    let t = cfg.block_size;
    if prompt.is_empty() {
        return Err(Error::Input(
            "the prompt is empty; give at least one token".into(),
        ));
    }
    if prompt.len() > t {
        return Err(Error::Input(format!(
            "the prompt is {} tokens, longer than the model's block size of {t}",
            prompt.len()
        )));
    }
    Ok(())
}

/// Generates `max_new` tokens after `prompt`, calling `emit` with each as
/// soon as it is drawn; stops early where `emit` breaks (its reader gone).
pub fn generate(
    model: &mut Gpt,
    cache: &mut KvCache,
    prompt: &[u32],
    max_new: usize,
    sampling: &Sampling,
    seed: u64,
    mut emit: impl FnMut(u32) -> ControlFlow<()> + Send,
) -> Result<GenerationStats, Error> {
    // The whole loop runs inside the pool: entering it once per token would
    // put this thread to sleep and wake it again for every token.
    let pool = model.threads().handle();
    pool.install(|| {
        sampling.validate()?;
        check_prompt(&model.config, prompt)?;
        let t = model.config.block_size;
        let mut rng = Rng::new(seed);
        // Only tokens the tokenizer can write are drawn: a vocabulary
        // padded past the tokenizer's (nanoGPT's 50304) has rows no text
        // ends in.
        let cfg = model.config;
        let drawable = cfg
            .tokenizer
            .map_or(cfg.vocab_size, |tok| tok.vocab_size().min(cfg.vocab_size));
        let mut sampler = Sampler::new(drawable);
        // The context of the cache, for refilling it when it slides.
        let mut context: Vec<u32> = Vec::with_capacity(t);
        let mut stats = GenerationStats {
            // Not `max_new`: a huge count is the user's to stop, not an
            // allocation to fail up front.
            tokens: Vec::with_capacity(max_new.min(t)),
            cache_bytes: cache.cache_bytes(),
            ..GenerationStats::default()
        };
        let start = Instant::now();
        cache.clear();
        context.extend_from_slice(prompt);
        let t0 = Instant::now();
        model.forward_cached(cache, prompt)?;
        stats.prompt_ms = ms_since(t0);
        for n in 0..max_new {
            let t0 = Instant::now();
            // Overflowing weights would sample garbage without a word.
            if !cache.logits().iter().all(|x| x.is_finite()) {
                return Err(Error::NotFinite("logits"));
            }
            let token = sampler.sample(&cache.logits()[..drawable], sampling, &mut rng);
            stats.sampling_ms += ms_since(t0);
            stats.tokens.push(token);
            if emit(token).is_break() || n + 1 == max_new {
                // The reader left, or the last token's logits would go
                // unused.
                break;
            }
            let t1 = Instant::now();
            if cache.len() == t {
                // Slide: keep the last half block as a fresh prompt.
                let keep = (t / 2).max(1);
                let tail_start = context.len() - (keep - 1);
                context.drain(..tail_start);
                context.push(token);
                cache.clear();
                model.forward_cached(cache, &context)?;
                stats.slides += 1;
            } else {
                context.push(token);
                model.forward_cached(cache, &[token])?;
            }
            stats.forward_ms += ms_since(t1);
        }
        stats.total_ms = ms_since(start);
        Ok(stats)
    })
}
