//! The Hugging Face GPT-2 layout: `config.json`, and the names and shapes
//! of the tensors of `model.safetensors` (Conv1D `[in, out]` weights,
//! `transformer.h.N.*` per layer, the LM head tied to `wte`), all read
//! from the model's parameter table.

use std::ops::Range;
use std::path::Path;

use serde_json::{json, Value};

use clap::ValueEnum;

use crate::data::Tokenizer;
use crate::error::Error;
use crate::model::tensors::{ParamTensor, INIT_STD};
use crate::model::{ModelConfig, LAYER_NORM_EPS};

/// One tensor of the layout: its name, where it lies in the parameter
/// arena, and its shape.
pub struct HfTensor {
    pub name: String,
    pub range: Range<usize>,
    pub shape: Vec<usize>,
}

/// How many tensors [`layout`] lists, without building it.
pub fn tensor_count(cfg: &ModelConfig) -> usize {
    ParamTensor::all(cfg).iter().map(|t| t.copies).sum()
}

/// The Hugging Face names (after `transformer.`), arena ranges and shapes
/// of the parameters. The embedding's range is its checkpoint rows, the
/// first of its padded rows in the arena.
pub fn layout(cfg: &ModelConfig) -> Vec<HfTensor> {
    let mut out = Vec::with_capacity(tensor_count(cfg));
    let mut offset = 0;
    for t in ParamTensor::all(cfg) {
        if t.per_layer {
            let n = t.shape.floats();
            for layer in 0..cfg.layers {
                let start = offset + layer * n;
                out.push(HfTensor {
                    name: format!("{LAYER_PREFIX}{layer}.{}", t.spec.hf_name),
                    range: start..start + n,
                    shape: t.shape.dims(),
                });
            }
        } else {
            out.push(HfTensor {
                name: t.spec.hf_name.to_string(),
                range: offset..offset + t.shape.saved_floats(),
                shape: t.shape.dims(),
            });
        }
        offset += t.len;
    }
    out
}

/// The prefix `GPT2LMHeadModel.save_pretrained` puts before every name of
/// [`layout`]; checkpoints saved from a bare `GPT2Model` (as the `gpt2`
/// repository's are) have none, and both load.
pub const MODEL_PREFIX: &str = "transformer.";

/// What a per-layer tensor's name starts with, before its layer's index.
const LAYER_PREFIX: &str = "h.";

/// Whether a tensor name (without [`MODEL_PREFIX`]) is a per-layer
/// tensor's whose index is not one of `layers` layers (past them, or no
/// index at all: `h.99999999999999999999.x` overflows any integer).
pub fn outside_layers(name: &str, layers: usize) -> bool {
    let Some(rest) = name.strip_prefix(LAYER_PREFIX) else {
        return false;
    };
    let index = rest.split('.').next().unwrap_or_default();
    index.parse::<usize>().map_or(true, |layer| layer >= layers)
}

/// The untied output layer's name; when present it must equal `wte`.
pub const LM_HEAD: &str = "lm_head.weight";

/// The key this runner adds to `config.json` to record the tokenizer
/// (Hugging Face keeps unknown keys, so the file still loads there).
const TOKENIZER_KEY: &str = "tokenizer";

/// `x` as its shortest decimal reads (`1e-5`, not the f32's exact
/// `9.999999747378752e-6`), as Hugging Face's own files write it.
fn as_written(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// The Hugging Face `config.json` of a model.
pub fn config_json(cfg: &ModelConfig) -> Value {
    // The byte tokenizer ends lines, not documents: newline stands in.
    let end = cfg.tokenizer.and_then(Tokenizer::end_of_text).unwrap_or(10);
    json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.channels,
        "n_layer": cfg.layers,
        "n_head": cfg.heads,
        "n_inner": null,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": as_written(LAYER_NORM_EPS),
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": as_written(INIT_STD),
        "scale_attn_weights": true,
        "tie_word_embeddings": true,
        "bos_token_id": end,
        "eos_token_id": end,
        "torch_dtype": "float32",
        TOKENIZER_KEY: cfg.tokenizer.map(Tokenizer::name),
    })
}

/// What a `config.json` says: the model shape, and whether the output
/// layer is the token embedding (`tie_word_embeddings`, true unless set
/// false; an untied head must then be in the weights).
pub struct HfConfig {
    pub model: ModelConfig,
    pub tied_head: bool,
}

/// The model shape in a `config.json` (of the checkpoint `dir`, named in
/// errors): the sizes, the tokenizer, the head's tying, and a refusal
/// naming the key of any setting this runner does not compute.
pub fn parse_config(dir: &Path, file: &str, bytes: &[u8]) -> Result<HfConfig, Error> {
    let corrupt = |reason: String| Error::checkpoint(dir, format!("{file}: {reason}"));
    let json: Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
    let field = |key: &str| match json.get(key) {
        None => Err(corrupt(format!("lacks `{key}`"))),
        Some(v) => v
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| {
                corrupt(format!(
                    "`{key}` is {v}, not a non-negative integer of at most 64 bits"
                ))
            }),
    };
    let unsupported = |key: &str, value: &Value, supported: &str| {
        corrupt(format!(
            "`{key}` is {value}; this runner supports only {supported}"
        ))
    };
    let setting = |key: &str| json.get(key).filter(|v| !v.is_null());
    if let Some(v) = setting("model_type").filter(|v| v.as_str() != Some("gpt2")) {
        return Err(unsupported("model_type", v, "\"gpt2\""));
    }
    // gelu_pytorch_tanh is the same tanh approximation as gelu_new.
    if let Some(v) = setting("activation_function")
        .filter(|v| !matches!(v.as_str(), Some("gelu_new" | "gelu_pytorch_tanh")))
    {
        return Err(unsupported("activation_function", v, "\"gelu_new\""));
    }
    for (key, supported) in [
        ("scale_attn_by_inverse_layer_idx", false),
        ("add_cross_attention", false),
        ("scale_attn_weights", true),
    ] {
        if let Some(v) = setting(key).filter(|v| v.as_bool() != Some(supported)) {
            return Err(unsupported(key, v, &supported.to_string()));
        }
    }
    if let Some(eps) = setting("layer_norm_epsilon") {
        if eps
            .as_f64()
            .is_none_or(|eps| (eps - f64::from(LAYER_NORM_EPS)).abs() > 1e-9)
        {
            return Err(unsupported("layer_norm_epsilon", eps, "1e-5"));
        }
    }
    let tied_head = match setting("tie_word_embeddings") {
        None => true,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| unsupported("tie_word_embeddings", v, "true or false"))?,
    };
    let channels = field("n_embd")?;
    if let Some(v) = setting("n_inner").filter(|v| v.as_u64() != (channels as u64).checked_mul(4)) {
        return Err(unsupported("n_inner", v, "null (4 × n_embd)"));
    }
    let vocab_size = field("vocab_size")?;
    let tokenizer = match setting(TOKENIZER_KEY) {
        Some(v) => Some(
            v.as_str()
                .and_then(|name| Tokenizer::from_str(name, false).ok())
                .ok_or_else(|| unsupported(TOKENIZER_KEY, v, "\"byte\" or \"gpt2\""))?,
        ),
        // A checkpoint from elsewhere: GPT-2's own vocabulary, or ours.
        None => Tokenizer::with_vocab(vocab_size),
    };
    let cfg = ModelConfig {
        vocab_size,
        tokenizer,
        block_size: field("n_positions")?,
        layers: field("n_layer")?,
        heads: field("n_head")?,
        channels,
    };
    cfg.validate().map_err(|e| corrupt(e.to_string()))?;
    Ok(HfConfig {
        model: cfg,
        tied_head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_index_that_is_not_one_of_the_layers_is_outside() {
        assert!(!outside_layers("h.0.attn.c_attn.weight", 2));
        assert!(!outside_layers("h.1.ln_1.bias", 2));
        assert!(!outside_layers("wte.weight", 2));
        assert!(outside_layers("h.2.ln_1.bias", 2));
        assert!(outside_layers("h.99999999999999999999999.foo", 2));
        assert!(outside_layers("h.x.ln_1.bias", 2));
        assert!(outside_layers("h.", 2));
    }
}
