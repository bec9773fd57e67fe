//! The Hugging Face GPT-2 layout: `config.json`, and the names and shapes
//! of the tensors of `model.safetensors` (Conv1D `[in, out]` weights,
//! `transformer.h.N.*` per layer, the LM head tied to `wte`), all read
//! from the model's parameter table.

use std::ops::Range;
use std::path::Path;

use serde_json::{json, Value};

use super::files::corrupt;
use crate::error::Error;
use crate::model::tensors::ParamTensor;
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
    ParamTensor::all(cfg)
        .iter()
        .map(|t| if t.per_layer { cfg.layers } else { 1 })
        .sum()
}

/// The Hugging Face names, arena ranges and shapes of the parameters.
pub fn layout(cfg: &ModelConfig) -> Vec<HfTensor> {
    let mut out = Vec::with_capacity(tensor_count(cfg));
    let mut offset = 0;
    for t in ParamTensor::all(cfg) {
        if t.per_layer {
            let n = t.shape.floats();
            for layer in 0..cfg.layers {
                let start = offset + layer * n;
                out.push(HfTensor {
                    name: format!("transformer.h.{layer}.{}", t.spec.hf_name),
                    range: start..start + n,
                    shape: t.shape.dims(),
                });
            }
        } else {
            out.push(HfTensor {
                name: format!("transformer.{}", t.spec.hf_name),
                range: offset..offset + t.len,
                shape: t.shape.dims(),
            });
        }
        offset += t.len;
    }
    out
}

/// The Hugging Face `config.json` of a model.
pub fn config_json(cfg: &ModelConfig) -> Value {
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
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "tie_word_embeddings": true,
        "bos_token_id": 10,
        "eos_token_id": 10,
        "torch_dtype": "float32",
    })
}

/// The model shape in a `config.json` (of the checkpoint `dir`, named in
/// errors): the sizes, and the settings this runner can run.
pub fn parse_config(dir: &Path, file: &str, bytes: &[u8]) -> Result<ModelConfig, Error> {
    let corrupt = |reason: String| corrupt(dir, reason);
    let json: Value = serde_json::from_slice(bytes)
        .map_err(|e| corrupt(format!("{file} is not valid JSON: {e}")))?;
    let field = |key: &str| {
        json.get(key)
            .and_then(Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| corrupt(format!("{file} lacks a whole number `{key}`")))
    };
    let cfg = ModelConfig {
        vocab_size: field("vocab_size")?,
        block_size: field("n_positions")?,
        layers: field("n_layer")?,
        heads: field("n_head")?,
        channels: field("n_embd")?,
    };
    if let Some(act) = json.get("activation_function").and_then(Value::as_str) {
        if act != "gelu_new" {
            return Err(corrupt(format!(
                "activation `{act}` is not supported (only gelu_new)"
            )));
        }
    }
    if let Some(eps) = json.get("layer_norm_epsilon").and_then(Value::as_f64) {
        if (eps - f64::from(LAYER_NORM_EPS)).abs() > 1e-9 {
            return Err(corrupt(format!(
                "layer_norm_epsilon {eps} is not supported (only 1e-5)"
            )));
        }
    }
    cfg.validate().map_err(|e| corrupt(e.to_string()))?;
    Ok(cfg)
}
