//! Model shapes: the named presets and the checks that reject a shape
//! before anything is allocated.

use crate::error::Error;

/// The shape of a GPT-2-style model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelConfig {
    /// Tokens in the vocabulary (the tokenizer's).
    pub vocab_size: usize,
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
}

/// The largest parameter count accepted (4 G floats would not fit in memory
/// here anyway); it keeps size arithmetic far from overflow.
const MAX_PARAMS: usize = 1 << 31;

impl Preset {
    /// The preset's shape, for a tokenizer of `vocab_size` tokens.
    pub fn config(self, vocab_size: usize) -> ModelConfig {
        let (layers, heads, channels, block_size) = match self {
            Preset::Tiny => (2, 2, 32, 32),
            Preset::Demo => (2, 4, 128, 64),
            Preset::Small => (4, 4, 256, 128),
            Preset::Shakes => (6, 6, 384, 256),
        };
        ModelConfig {
            vocab_size,
            block_size,
            layers,
            heads,
            channels,
        }
    }
}

impl ModelConfig {
    /// Rejects shapes that cannot be built: zero sizes, heads that do not
    /// divide the channels, and sizes too large to allocate. (Whether the
    /// vocabulary is the tokenizer's is the caller's to check.)
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
        // `param_count` comes from the parameter table (`tensors.rs`) and
        // saturates, so an absurd shape lands above the limit.
        match self.param_count() {
            n if n <= MAX_PARAMS && self.block_size <= 1 << 16 => Ok(()),
            _ => Err(Error::Config(format!(
                "model too large: {} layers × {} channels, block size {}",
                self.layers, self.channels, self.block_size
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
