//! Model shapes: the named presets and the checks that reject a shape
//! before anything is allocated.

use crate::data::Tokenizer;
use crate::error::Error;

/// The shape of a GPT-2-style model, and how its token ids become text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelConfig {
    /// Tokens in the vocabulary (the tokenizer's, or more).
    pub vocab_size: usize,
    /// The tokenizer its ids come from; `None` for a checkpoint that does
    /// not say and whose vocabulary is no known tokenizer's (it trains and
    /// evaluates on token shards, but cannot read or write text).
    pub tokenizer: Option<Tokenizer>,
    /// Longest sequence the model sees (positions).
    pub block_size: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// Width of the residual stream.
    pub channels: usize,
}

/// The named model sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// L2 H2 C32 T32: for tests, trains in seconds.
    Tiny,
    /// L2 H4 C128 T64: the default run's model (learns two-digit sums in
    /// under a minute on two cores).
    Demo,
    /// L4 H4 C256 T128: the default.
    Small,
    /// L6 H6 C384 T256: 10.8 M parameters, for Shakespeare.
    Shakes,
    /// L12 H12 C768 T1024: GPT-2 (124 M parameters with its tokenizer).
    Gpt2,
    /// L24 H16 C1024 T1024: GPT-2 medium (350 M with its tokenizer).
    Gpt2Medium,
}

/// The largest parameter count accepted (4 G floats would not fit in memory
/// here anyway); it keeps size arithmetic far from overflow.
const MAX_PARAMS: usize = 1 << 31;

impl Preset {
    /// The tokenizer a model of this size has unless told otherwise: GPT-2's
    /// for the GPT-2 sizes, bytes for the small ones.
    pub fn default_tokenizer(self) -> Tokenizer {
        match self {
            Preset::Gpt2 | Preset::Gpt2Medium => Tokenizer::Gpt2,
            _ => Tokenizer::Byte,
        }
    }

    /// The preset's shape, with `tokenizer`'s vocabulary.
    pub fn config(self, tokenizer: Tokenizer) -> ModelConfig {
        let (layers, heads, channels, block_size) = match self {
            Preset::Tiny => (2, 2, 32, 32),
            Preset::Demo => (2, 4, 128, 64),
            Preset::Small => (4, 4, 256, 128),
            Preset::Shakes => (6, 6, 384, 256),
            Preset::Gpt2 => (12, 12, 768, 1024),
            Preset::Gpt2Medium => (24, 16, 1024, 1024),
        };
        ModelConfig {
            vocab_size: tokenizer.vocab_size(),
            tokenizer: Some(tokenizer),
            block_size,
            layers,
            heads,
            channels,
        }
    }
}

/// The embedding's rows are padded to a multiple of this inside the model
/// (GPT-2's 50257 to 50304, as llm.c does): the LM head's product then has
/// whole register tiles (32 columns at most) and 64-byte rows of logits.
/// Checkpoints hold the real vocabulary.
pub const VOCAB_PADDING: usize = 128;

impl ModelConfig {
    /// The vocabulary as the model's buffers hold it: `vocab_size` rounded
    /// up to [`VOCAB_PADDING`]. The padded rows of the embedding stay zero,
    /// their logits never count in the loss and are never sampled.
    pub fn padded_vocab(&self) -> usize {
        self.vocab_size.saturating_add(VOCAB_PADDING - 1) / VOCAB_PADDING * VOCAB_PADDING
    }

    /// Rejects shapes that cannot be built: zero sizes, heads that do not
    /// divide the channels, sizes too large to allocate, and a vocabulary
    /// that does not hold its tokenizer's ids.
    pub fn validate(&self) -> Result<(), Error> {
        let fields = [
            ("vocab size", self.vocab_size),
            ("block size", self.block_size),
            ("layers", self.layers),
            ("heads", self.heads),
            ("channels", self.channels),
        ];
        for (name, value) in fields {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be at least 1")));
            }
        }
        if !self.channels.is_multiple_of(self.heads) {
            return Err(Error::Config(format!(
                "{} heads do not divide {} channels",
                self.heads, self.channels
            )));
        }
        if let Some(tokenizer) = self.tokenizer {
            if tokenizer.vocab_size() > self.vocab_size {
                return Err(Error::Config(format!(
                    "the {} tokenizer has {} tokens, more than the vocabulary of {}",
                    tokenizer.name(),
                    tokenizer.vocab_size(),
                    self.vocab_size
                )));
            }
        }
        // `param_count` comes from the parameter table (`tensors.rs`) and
        // saturates, so an absurd shape lands above the limit.
        match self.param_count() {
            n if n <= MAX_PARAMS && self.block_size <= 1 << 16 => Ok(()),
            _ => Err(Error::Config(format!(
                "model too large: {} layers × {} channels, block size {}, vocabulary {}",
                self.layers, self.channels, self.block_size, self.vocab_size
            ))),
        }
    }
}

/// `L4 H4 C256 T128 V256`: the shape in one word, as the log lines print it.
impl std::fmt::Display for ModelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "L{} H{} C{} T{} V{}",
            self.layers, self.heads, self.channels, self.block_size, self.vocab_size
        )
    }
}
