//! The key/value cache of incremental decoding: each layer keeps the keys
//! and values of every position seen, so a new token costs one pass over
//! the weights instead of a pass over the whole context.

use super::arena::Arena;
use super::config::ModelConfig;
use super::tensors::BlockActivations;

/// Keys and values of the positions decoded so far, plus the buffers of one
/// decoding pass (sized for a whole block, so that no pass allocates).
///
/// Keys are stored transposed, `[L, C, T]` (a head's keys are `hs` rows of
/// positions), values `[L, T, C]` (see `attention::CachedLayer`).
pub struct KvCache {
    pub(super) keys_t: Arena,
    pub(super) values: Arena,
    pub(super) len: usize,
    pub(super) block_size: usize,
    /// A block's input and output, `2 × [T, C]`, swapping roles layer by
    /// layer.
    pub(super) residuals: Vec<f32>,
    /// One block's activations for up to a block of positions.
    pub(super) acts: Vec<f32>,
    pub(super) scores: Vec<f32>,
    /// One row of scores per head, for decoding the heads of one token in
    /// parallel.
    pub(super) head_scores: Vec<f32>,
    /// The final LayerNorm of the last position: output, mean, rstd.
    pub(super) lnf: Vec<f32>,
    /// The last position's logits over the padded vocabulary.
    pub(super) logits: Vec<f32>,
    /// The real vocabulary: the logits a sampler sees.
    vocab: usize,
}

impl KvCache {
    /// An empty cache for a model of shape `cfg`.
    pub fn new(cfg: &ModelConfig) -> KvCache {
        let [keys_t, values, residuals, acts, scores, head_scores, lnf, logits] =
            KvCache::sizes(cfg);
        KvCache {
            keys_t: Arena::zeros(keys_t),
            values: Arena::zeros(values),
            len: 0,
            block_size: cfg.block_size,
            residuals: vec![0.0; residuals],
            acts: vec![0.0; acts],
            scores: vec![0.0; scores],
            head_scores: vec![0.0; head_scores],
            lnf: vec![0.0; lnf],
            logits: vec![0.0; logits],
            vocab: cfg.vocab_size,
        }
    }

    /// Floats of each buffer of a cache for `cfg`, in the order of the
    /// fields.
    fn sizes(cfg: &ModelConfig) -> [usize; 8] {
        let (l, t, c) = (cfg.layers, cfg.block_size, cfg.channels);
        [
            l * c * t,
            l * t * c,
            2 * t * c,
            BlockActivations::sizes(cfg, t, 0).total(),
            t * t,
            cfg.heads * t,
            c + 2,
            cfg.padded_vocab(),
        ]
    }

    /// Floats a cache for `cfg` holds, for sizing a run before it starts.
    pub fn floats(cfg: &ModelConfig) -> usize {
        KvCache::sizes(cfg).iter().sum()
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position (the buffers stay allocated).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The logits of the last position run.
    pub fn logits(&self) -> &[f32] {
        &self.logits[..self.vocab]
    }

    /// Bytes held by the keys and values.
    pub fn cache_bytes(&self) -> usize {
        4 * (self.keys_t.len() + self.values.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Tokenizer;
    use crate::model::Preset;

    #[test]
    fn the_size_a_run_is_checked_for_is_what_the_cache_allocates() {
        let cfg = Preset::Tiny.config(Tokenizer::Byte);
        let cache = KvCache::new(&cfg);
        let allocated = cache.keys_t.len()
            + cache.values.len()
            + [
                &cache.residuals,
                &cache.acts,
                &cache.scores,
                &cache.head_scores,
                &cache.lnf,
                &cache.logits,
            ]
            .iter()
            .map(|v| v.len())
            .sum::<usize>();
        assert_eq!(KvCache::floats(&cfg), allocated);
    }
}
