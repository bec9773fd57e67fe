//! Checkpoints: a directory with `config.json` and `model.safetensors` in
//! the Hugging Face GPT-2 layout (so `GPT2LMHeadModel.from_pretrained(dir)`
//! loads it unchanged), plus `training.safetensors` with the AdamW moments,
//! the step and the data RNG state for `--resume`. A checkpoint is written
//! into a temporary directory and renamed into place, so a crash never
//! leaves a half-written one.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

use kernels::Kernels;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::{json, Value};

use crate::config::ModelConfig;
use crate::error::Error;
use crate::model::{Gpt, Params, LAYER_NORM_EPS};
use crate::optim::Optimizer;

const CONFIG_FILE: &str = "config.json";
const MODEL_FILE: &str = "model.safetensors";
const TRAINING_FILE: &str = "training.safetensors";
const TRAINING_FORMAT: &str = "cpu-gpt-training-v1";

/// What `--resume` needs beyond the model.
pub struct TrainingState {
    pub optimizer: Optimizer,
    /// The data-sampling RNG state after the last step.
    pub rng_state: u64,
}

/// One tensor of the Hugging Face layout: its name, where it lies in the
/// parameter arena, and its shape.
struct HfTensor {
    name: String,
    range: Range<usize>,
    shape: Vec<usize>,
}

/// The Hugging Face names and shapes of the parameter arena's tensors.
fn hf_layout(cfg: &ModelConfig) -> Vec<HfTensor> {
    let (c, l) = (cfg.channels, cfg.layers);
    let mut out = Vec::new();
    let mut offset = 0;
    for (field, size) in Params::sizes(cfg).into_named() {
        let (suffix, shape): (&str, Vec<usize>) = match field {
            "wte" => ("wte.weight", vec![cfg.vocab_size, c]),
            "wpe" => ("wpe.weight", vec![cfg.block_size, c]),
            "lnfw" => ("ln_f.weight", vec![c]),
            "lnfb" => ("ln_f.bias", vec![c]),
            "ln1w" => ("ln_1.weight", vec![c]),
            "ln1b" => ("ln_1.bias", vec![c]),
            "qkvw" => ("attn.c_attn.weight", vec![c, 3 * c]),
            "qkvb" => ("attn.c_attn.bias", vec![3 * c]),
            "attprojw" => ("attn.c_proj.weight", vec![c, c]),
            "attprojb" => ("attn.c_proj.bias", vec![c]),
            "ln2w" => ("ln_2.weight", vec![c]),
            "ln2b" => ("ln_2.bias", vec![c]),
            "fcw" => ("mlp.c_fc.weight", vec![c, 4 * c]),
            "fcb" => ("mlp.c_fc.bias", vec![4 * c]),
            "fcprojw" => ("mlp.c_proj.weight", vec![4 * c, c]),
            "fcprojb" => ("mlp.c_proj.bias", vec![c]),
            other => unreachable!("unknown tensor {other}"),
        };
        if matches!(field, "wte" | "wpe" | "lnfw" | "lnfb") {
            out.push(HfTensor {
                name: format!("transformer.{suffix}"),
                range: offset..offset + size,
                shape,
            });
        } else {
            let per_layer = size / l;
            for layer in 0..l {
                let start = offset + layer * per_layer;
                out.push(HfTensor {
                    name: format!("transformer.h.{layer}.{suffix}"),
                    range: start..start + per_layer,
                    shape: shape.clone(),
                });
            }
        }
        offset += size;
    }
    out
}

fn to_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn from_bytes(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

fn corrupt(dir: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: dir.into(),
        reason: reason.into(),
    }
}

/// The Hugging Face `config.json` of a model.
fn config_json(cfg: &ModelConfig) -> Value {
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

/// Writes `model` (and, with `training`, the optimizer state) to `dir`,
/// replacing any checkpoint there only once the new one is complete.
pub fn save(dir: &Path, model: &Gpt, training: Option<&TrainingState>) -> Result<(), Error> {
    let name = dir
        .file_name()
        .ok_or_else(|| corrupt(dir, "not a directory name"))?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;

    let config =
        serde_json::to_vec_pretty(&config_json(&model.config)).expect("JSON of plain values");
    write_synced(&tmp.join(CONFIG_FILE), &config)?;

    let bytes = to_bytes(&model.params);
    let tensors = hf_layout(&model.config)
        .into_iter()
        .map(|t| {
            let data = &bytes[t.range.start * 4..t.range.end * 4];
            let view = TensorView::new(Dtype::F32, t.shape, data).expect("shape matches data");
            (t.name, view)
        })
        .collect::<Vec<_>>();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let encoded =
        safetensors::serialize(tensors, Some(meta)).map_err(|e| corrupt(dir, e.to_string()))?;
    write_synced(&tmp.join(MODEL_FILE), &encoded)?;

    if let Some(state) = training {
        let (m, v) = (to_bytes(&state.optimizer.m), to_bytes(&state.optimizer.v));
        let n = state.optimizer.m.len();
        let tensors = vec![
            (
                "adam_m",
                TensorView::new(Dtype::F32, vec![n], &m).expect("shape matches"),
            ),
            (
                "adam_v",
                TensorView::new(Dtype::F32, vec![n], &v).expect("shape matches"),
            ),
        ];
        let meta = HashMap::from([
            ("format".to_string(), TRAINING_FORMAT.to_string()),
            ("step".to_string(), state.optimizer.step.to_string()),
            ("rng_state".to_string(), state.rng_state.to_string()),
        ]);
        let encoded =
            safetensors::serialize(tensors, Some(meta)).map_err(|e| corrupt(dir, e.to_string()))?;
        write_synced(&tmp.join(TRAINING_FILE), &encoded)?;
    }

    // Swap the complete new directory into place.
    let old = parent.join(format!(
        ".{}.old-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if dir.exists() {
        fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut file = fs::File::create(path).map_err(|e| Error::io(path, e))?;
    file.write_all(bytes).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

fn read(dir: &Path, file: &str) -> Result<Vec<u8>, Error> {
    let path: PathBuf = dir.join(file);
    fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => corrupt(dir, format!("{file} is missing")),
        _ => Error::io(path, e),
    })
}

/// The model shape in `dir/config.json`.
pub fn load_config(dir: &Path) -> Result<ModelConfig, Error> {
    if !dir.is_dir() {
        return Err(corrupt(dir, "no such directory"));
    }
    let json: Value = serde_json::from_slice(&read(dir, CONFIG_FILE)?)
        .map_err(|e| corrupt(dir, format!("{CONFIG_FILE} is not valid JSON: {e}")))?;
    let field = |key: &str| {
        json.get(key)
            .and_then(Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| corrupt(dir, format!("{CONFIG_FILE} lacks a whole number `{key}`")))
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
            return Err(corrupt(
                dir,
                format!("activation `{act}` is not supported (only gelu_new)"),
            ));
        }
    }
    if let Some(eps) = json.get("layer_norm_epsilon").and_then(Value::as_f64) {
        if (eps - f64::from(LAYER_NORM_EPS)).abs() > 1e-9 {
            return Err(corrupt(
                dir,
                format!("layer_norm_epsilon {eps} is not supported (only 1e-5)"),
            ));
        }
    }
    cfg.validate().map_err(|e| corrupt(dir, e.to_string()))?;
    Ok(cfg)
}

/// The model in `dir`, on `kernels`.
pub fn load_model(dir: &Path, kernels: Kernels) -> Result<Gpt, Error> {
    let cfg = load_config(dir)?;
    let bytes = read(dir, MODEL_FILE)?;
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| corrupt(dir, format!("{MODEL_FILE}: {e}")))?;
    let mut params = vec![0.0; Params::sizes(&cfg).total()];
    for t in hf_layout(&cfg) {
        let view = st
            .tensor(&t.name)
            .map_err(|_| corrupt(dir, format!("{MODEL_FILE} lacks tensor {}", t.name)))?;
        if view.dtype() != Dtype::F32 || view.shape() != t.shape.as_slice() {
            return Err(corrupt(
                dir,
                format!(
                    "tensor {} is {:?} {:?}, expected F32 {:?}",
                    t.name,
                    view.dtype(),
                    view.shape(),
                    t.shape
                ),
            ));
        }
        from_bytes(view.data(), &mut params[t.range]);
    }
    Gpt::from_params(cfg, kernels, params)
}

/// The optimizer state in `dir`, for a model of `params` parameters.
pub fn load_training_state(dir: &Path, params: usize) -> Result<TrainingState, Error> {
    let bytes = read(dir, TRAINING_FILE)?;
    let bad = |reason: String| corrupt(dir, format!("{TRAINING_FILE}: {reason}"));
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(TRAINING_FORMAT) {
        return Err(bad(format!("not a {TRAINING_FORMAT} file")));
    }
    let number = |key: &str| -> Result<u64, Error> {
        meta.get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(format!("metadata lacks `{key}`")))
    };
    let step = u32::try_from(number("step")?).map_err(|_| bad("step out of range".into()))?;
    let rng_state = number("rng_state")?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut optimizer = Optimizer::new(params);
    optimizer.step = step;
    for (name, out) in [("adam_m", &mut optimizer.m), ("adam_v", &mut optimizer.v)] {
        let view = st
            .tensor(name)
            .map_err(|_| bad(format!("lacks tensor {name}")))?;
        if view.dtype() != Dtype::F32 || view.shape() != [params] {
            return Err(bad(format!(
                "tensor {name} does not match a model of {params} parameters"
            )));
        }
        from_bytes(view.data(), out);
    }
    Ok(TrainingState {
        optimizer,
        rng_state,
    })
}
