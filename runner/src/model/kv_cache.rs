//! The key/value cache of incremental decoding: each layer keeps the keys
//! and values of every position seen, so a new token costs one pass over
//! the weights instead of a pass over the whole context.

use kernels::Bf16;

use super::arena::Arena;
use super::config::ModelConfig;
use super::context::Precision;
use super::layers::Activation;
use super::tensors::BlockActivations;

/// Keys and values of the positions decoded so far, plus the buffers of one
/// decoding pass (sized for a whole block, so that no pass allocates).
///
/// Keys are stored transposed, `[L, C, T]` (a head's keys are `hs` rows of
/// positions), values `[L, T, C]` (see `attention::CachedLayer`), in f32,
/// or in bf16 for bf16 products (which round them to bf16 anyway): a new
/// token reads every cached key and value once, so half the bytes make
/// attention over a long context that much cheaper.
pub struct KvCache {
    pub(super) keys_values: KeysValues,
    pub(super) len: usize,
    /// The model it was made for.
    pub(super) config: ModelConfig,
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
    /// An empty cache for a model of shape `cfg` whose products run in
    /// `precision`.
    pub fn new(cfg: &ModelConfig, precision: Precision) -> KvCache {
        let [keys_t, values, residuals, acts, scores, head_scores, lnf, logits] =
            KvCache::sizes(cfg);
        KvCache {
            keys_values: KeysValues {
                keys_t: Arena::zeros(stored_floats(keys_t, precision)),
                values: Arena::zeros(stored_floats(values, precision)),
                per_layer: cfg.channels * cfg.block_size,
                precision,
            },
            len: 0,
            config: *cfg,
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
            BlockActivations::sizes(cfg, t).total(),
            t * t,
            cfg.heads * t,
            c + 2,
            cfg.padded_vocab(),
        ]
    }

    /// Floats a cache for `cfg` holds at most (in f32), for sizing a run
    /// before it starts.
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
        let kv = &self.keys_values;
        4 * (kv.keys_t.len() + kv.values.len())
    }

    /// Bytes of the keys and values of a cache for `cfg` in `precision`
    /// ([`KvCache::cache_bytes`] without making one).
    pub fn bytes(cfg: &ModelConfig, precision: Precision) -> usize {
        let [keys_t, values, ..] = KvCache::sizes(cfg);
        4 * (stored_floats(keys_t, precision) + stored_floats(values, precision))
    }

    /// The precision of the products this cache serves (and so of its
    /// keys and values).
    pub fn precision(&self) -> Precision {
        self.keys_values.precision
    }
}

/// Floats of an arena holding `values` keys or values in `precision` (two
/// bf16 values a float).
fn stored_floats(values: usize, precision: Precision) -> usize {
    match precision {
        Precision::F32 => values,
        Precision::Bf16 => values.div_ceil(2),
    }
}

/// Every layer's cached keys (transposed) and values, `per_layer` values
/// each, stored as the products of `precision` read them.
pub(super) struct KeysValues {
    keys_t: Arena,
    values: Arena,
    per_layer: usize,
    precision: Precision,
}

impl KeysValues {
    /// Layer `l`'s keys (transposed) and values.
    pub(super) fn layer(&mut self, l: usize) -> LayerKeysValues<'_> {
        let at = l * self.per_layer..(l + 1) * self.per_layer;
        let (keys_t, values) = (&mut self.keys_t[..], &mut self.values[..]);
        match self.precision {
            Precision::F32 => LayerKeysValues::F32 {
                keys_t: &mut keys_t[at.clone()],
                values: &mut values[at],
            },
            Precision::Bf16 => LayerKeysValues::Bf16 {
                keys_t: &mut bytemuck::cast_slice_mut(keys_t)[at.clone()],
                values: &mut bytemuck::cast_slice_mut(values)[at],
            },
        }
    }
}

/// One layer's cached keys (`[C, T_max]`: row `d` holds feature `d` of
/// every position's key) and values (`[T_max, C]`), both in f32 or both
/// in bf16.
pub enum LayerKeysValues<'a> {
    F32 {
        keys_t: &'a mut [f32],
        values: &'a mut [f32],
    },
    Bf16 {
        keys_t: &'a mut [Bf16],
        values: &'a mut [Bf16],
    },
}

impl LayerKeysValues<'_> {
    /// The keys (transposed) and values, to read.
    pub fn views(&self) -> (Activation<'_>, Activation<'_>) {
        match self {
            LayerKeysValues::F32 { keys_t, values } => {
                (Activation::F32(keys_t), Activation::F32(values))
            }
            LayerKeysValues::Bf16 { keys_t, values } => {
                (Activation::Bf16(keys_t), Activation::Bf16(values))
            }
        }
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
        let cache = KvCache::new(&cfg, Precision::F32);
        let allocated = cache.cache_bytes() / 4
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

    #[test]
    fn a_bf16_cache_holds_its_keys_and_values_in_half_the_bytes() {
        let cfg = Preset::Tiny.config(Tokenizer::Byte);
        let (f32s, mut bf16s) = (
            KvCache::new(&cfg, Precision::F32),
            KvCache::new(&cfg, Precision::Bf16),
        );
        assert_eq!(2 * bf16s.cache_bytes(), f32s.cache_bytes());
        assert_eq!(KvCache::bytes(&cfg, Precision::Bf16), bf16s.cache_bytes());
        assert_eq!(KvCache::bytes(&cfg, Precision::F32), f32s.cache_bytes());
        let per_layer = cfg.channels * cfg.block_size;
        for l in 0..cfg.layers {
            match bf16s.keys_values.layer(l) {
                LayerKeysValues::Bf16 { keys_t, values } => {
                    assert_eq!((keys_t.len(), values.len()), (per_layer, per_layer));
                }
                LayerKeysValues::F32 { .. } => panic!("layer {l} of a bf16 cache is not bf16"),
            }
        }
    }
}
