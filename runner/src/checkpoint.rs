//! Checkpoints: a directory with `config.json` and `model.safetensors` in
//! the Hugging Face GPT-2 layout (so `GPT2LMHeadModel.from_pretrained(dir)`
//! loads it unchanged), plus `training.safetensors` with the AdamW moments,
//! the step, the data RNG state and the run's schedule for `--resume`.
//!
//! Saving writes a complete new directory beside the destination and
//! renames it into place, so a crash never leaves a half-written
//! checkpoint. Loading checks every file against `config.json` before
//! allocating anything the size of the model.

use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use kernels::Kernels;
use log::warn;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::{json, Value};

use crate::config::ModelConfig;
use crate::error::Error;
use crate::model::{Arena, Gpt, Params, LAYER_NORM_EPS};
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

/// The settings that shape a run's updates, stored with its training state
/// so that a resumed run can tell whether it continues the same schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSchedule {
    /// Peak learning rate.
    pub lr: f32,
    /// Warm-up steps.
    pub warmup: u32,
    /// Steps the schedule spans (`--steps`).
    pub total_steps: u32,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Micro-batches per step.
    pub grad_accum: usize,
}

impl RunSchedule {
    /// One `--flag: checkpoint X, this run Y` entry per setting in which
    /// `run` differs from `self` (the saved schedule); empty if none.
    /// `--steps` is left out: a resumed run may extend the schedule.
    pub fn differences(&self, run: &RunSchedule) -> Vec<String> {
        let pairs = [
            ("--lr", self.lr.to_string(), run.lr.to_string()),
            ("--warmup", self.warmup.to_string(), run.warmup.to_string()),
            ("--batch", self.batch.to_string(), run.batch.to_string()),
            (
                "--grad-accum",
                self.grad_accum.to_string(),
                run.grad_accum.to_string(),
            ),
        ];
        pairs
            .into_iter()
            .filter(|(_, saved, now)| saved != now)
            .map(|(flag, saved, now)| format!("{flag}: checkpoint {saved}, this run {now}"))
            .collect()
    }
}

/// One tensor of the Hugging Face layout: its name, where it lies in the
/// parameter arena, and its shape.
struct HfTensor {
    name: String,
    range: Range<usize>,
    shape: Vec<usize>,
}

/// Whether a parameter field is one tensor (`transformer.wte.weight`)
/// rather than one per layer (`transformer.h.{layer}.ln_1.weight`).
fn is_global(field: &str) -> bool {
    matches!(field, "wte" | "wpe" | "lnfw" | "lnfb")
}

/// How many tensors [`hf_layout`] lists, without building it.
fn hf_tensor_count(cfg: &ModelConfig) -> usize {
    Params::sizes(cfg)
        .into_named()
        .iter()
        .map(|&(field, _)| if is_global(field) { 1 } else { cfg.layers })
        .sum()
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
        if is_global(field) {
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
/// replacing the checkpoint there only once the new one is complete.
pub fn save(dir: &Path, model: &Gpt, training: Option<&TrainingState>) -> Result<(), Error> {
    write_checkpoint(dir, model, training.map(|state| (state, None)))
}

/// [`save`] with the training state and the schedule of the run, which
/// [`load_run`] gives back so that `--resume` can compare it.
pub fn save_run(
    dir: &Path,
    model: &Gpt,
    training: &TrainingState,
    schedule: &RunSchedule,
) -> Result<(), Error> {
    write_checkpoint(dir, model, Some((training, Some(schedule))))
}

/// Refuses a destination that exists but is not a checkpoint directory (a
/// file, or a directory holding anything besides the checkpoint files),
/// since saving replaces it whole. Cheap: call it before a long run too.
pub fn check_destination(dir: &Path) -> Result<(), Error> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let refuse = |what: String| {
        Err(corrupt(
            dir,
            format!("{what}, so it is not a checkpoint to replace; choose another path"),
        ))
    };
    if !meta.is_dir() {
        return refuse("exists and is not a directory".into());
    }
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let name = entry.map_err(|e| Error::io(dir, e))?.file_name();
        let name = name.to_string_lossy();
        if ![CONFIG_FILE, MODEL_FILE, TRAINING_FILE].contains(&name.as_ref()) {
            return refuse(format!("holds `{name}`"));
        }
    }
    Ok(())
}

/// Writes every file into a fresh directory beside `dir` and swaps it into
/// place (see [`install`]).
fn write_checkpoint(
    dir: &Path,
    model: &Gpt,
    training: Option<(&TrainingState, Option<&RunSchedule>)>,
) -> Result<(), Error> {
    check_destination(dir)?;
    let name = dir
        .file_name()
        .ok_or_else(|| corrupt(dir, "not a directory name"))?
        .to_string_lossy()
        .into_owned();
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    // Beside `dir`, so the final renames stay on one file system. Two runs
    // saving to one destination at the same time are not supported.
    let (tmp_prefix, old_prefix) = (format!(".{name}.tmp-"), format!(".{name}.old-"));
    let pid = std::process::id();
    // A staging directory is never the only copy of anything: one left by
    // a crashed save only wastes space.
    remove_siblings(parent, &tmp_prefix)?;
    let tmp = parent.join(format!("{tmp_prefix}{pid}"));
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let installed = write_files(&tmp, dir, model, training)
        .and_then(|()| sync_dir(&tmp))
        .and_then(|()| install(&tmp, dir, &parent.join(format!("{old_prefix}{pid}"))));
    if let Err(e) = installed {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sync_dir(parent)?;
    // The new checkpoint is in place, so every copy moved aside (this
    // save's, or one a crash left between two renames) is superseded. The
    // save has succeeded: failing to delete them is only worth a warning.
    if let Err(e) = remove_siblings(parent, &old_prefix) {
        warn!("could not remove the previous checkpoint: {e}");
    }
    Ok(())
}

/// Renames the complete directory `staged` to `dir`. An existing `dir` is
/// moved to `old` first, and back if the second rename fails, so a failed
/// save leaves the previous checkpoint where it was.
fn install(staged: &Path, dir: &Path, old: &Path) -> Result<(), Error> {
    // `check_destination` passed: `dir` is a checkpoint directory or absent.
    let replacing = dir.exists();
    if replacing {
        fs::rename(dir, old).map_err(|e| Error::io(dir, e))?;
    }
    if let Err(e) = fs::rename(staged, dir) {
        if replacing && fs::rename(old, dir).is_err() {
            return Err(corrupt(
                dir,
                format!(
                    "could not install the new checkpoint ({e}) nor move the previous one back from {}",
                    old.display()
                ),
            ));
        }
        return Err(Error::io(dir, e));
    }
    Ok(())
}

/// Removes the directories in `parent` named `prefix` + a process id: the
/// temporary names of [`write_checkpoint`], and nothing else.
fn remove_siblings(parent: &Path, prefix: &str) -> Result<(), Error> {
    for entry in fs::read_dir(parent).map_err(|e| Error::io(parent, e))? {
        let entry = entry.map_err(|e| Error::io(parent, e))?;
        let name = entry.file_name();
        let is_ours = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if is_ours {
            fs::remove_dir_all(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    Ok(())
}

/// Writes the checkpoint files (of the checkpoint `dir`, named in errors)
/// into `tmp`.
fn write_files(
    tmp: &Path,
    dir: &Path,
    model: &Gpt,
    training: Option<(&TrainingState, Option<&RunSchedule>)>,
) -> Result<(), Error> {
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

    let Some((state, schedule)) = training else {
        return Ok(());
    };
    let (m, v) = state.optimizer.moments();
    let n = m.len();
    let (m, v) = (to_bytes(m), to_bytes(v));
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
    let mut meta = HashMap::from([
        ("format".to_string(), TRAINING_FORMAT.to_string()),
        ("step".to_string(), state.optimizer.step.to_string()),
        ("rng_state".to_string(), state.rng_state.to_string()),
    ]);
    if let Some(s) = schedule {
        // f32's `Display` is the shortest text that parses back exactly.
        meta.extend([
            ("lr".to_string(), s.lr.to_string()),
            ("warmup".to_string(), s.warmup.to_string()),
            ("total_steps".to_string(), s.total_steps.to_string()),
            ("batch".to_string(), s.batch.to_string()),
            ("grad_accum".to_string(), s.grad_accum.to_string()),
        ]);
    }
    let encoded =
        safetensors::serialize(tensors, Some(meta)).map_err(|e| corrupt(dir, e.to_string()))?;
    write_synced(&tmp.join(TRAINING_FILE), &encoded)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut file = fs::File::create(path).map_err(|e| Error::io(path, e))?;
    file.write_all(bytes).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

/// Flushes a directory's entries (names created or renamed in it) to disk,
/// without which a crash could lose a rename that already returned.
fn sync_dir(path: &Path) -> Result<(), Error> {
    // Other systems cannot open a directory as a file.
    #[cfg(unix)]
    fs::File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| Error::io(path, e))?;
    Ok(())
}

fn read(dir: &Path, file: &str) -> Result<Vec<u8>, Error> {
    let path: PathBuf = dir.join(file);
    fs::read(&path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => corrupt(dir, format!("{file} is missing")),
        _ => Error::io(path, e),
    })
}

/// The parsed `file` of the checkpoint `dir`. The header's tensors cover
/// the file exactly (safetensors checks it), so tensors checked against it
/// are bounded by the file's size.
fn parse<'a>(dir: &Path, file: &str, bytes: &'a [u8]) -> Result<SafeTensors<'a>, Error> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| corrupt(dir, format!("{file} is corrupt or truncated: {e}")))
}

/// The model shape in `dir/config.json`, validated (sizes bounded, the
/// byte vocabulary).
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

/// The model in `dir`, on `kernels`. Every tensor is checked against
/// `config.json` before the parameters are allocated, so a config asking
/// for more than the file holds is an error, not an out-of-memory abort.
pub fn load_model(dir: &Path, kernels: Kernels) -> Result<Gpt, Error> {
    let cfg = load_config(dir)?;
    let bytes = read(dir, MODEL_FILE)?;
    let st = parse(dir, MODEL_FILE, &bytes)?;
    // Checked first so that the layout built next is no longer than the
    // header, whatever number of layers config.json claims.
    let needed = hf_tensor_count(&cfg);
    if st.len() < needed {
        return Err(corrupt(
            dir,
            format!(
                "{MODEL_FILE} holds {} tensors; the {} layers of {CONFIG_FILE} need {needed}",
                st.len(),
                cfg.layers
            ),
        ));
    }
    let layout = hf_layout(&cfg);
    let mut views = Vec::with_capacity(layout.len());
    for t in &layout {
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
        views.push(view);
    }
    let mut params = Arena::zeros(Params::sizes(&cfg).total());
    for (t, view) in layout.into_iter().zip(views) {
        from_bytes(view.data(), &mut params[t.range]);
    }
    Gpt::from_params(cfg, kernels, params)
}

/// The optimizer state in `dir`, for a model of `params` parameters, and
/// the schedule of the run that saved it (`None` if it was saved without,
/// by [`save`]).
pub fn load_run(dir: &Path, params: usize) -> Result<(TrainingState, Option<RunSchedule>), Error> {
    let bytes = read(dir, TRAINING_FILE)?;
    let st = parse(dir, TRAINING_FILE, &bytes)?;
    let bad = |reason: String| corrupt(dir, format!("{TRAINING_FILE}: {reason}"));
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some(TRAINING_FORMAT) {
        return Err(bad(format!("not a {TRAINING_FORMAT} file")));
    }
    let step = metadata_number(&meta, "step").map_err(bad)?;
    let rng_state = metadata_number(&meta, "rng_state").map_err(bad)?;
    // Files saved by `save`, rather than `save_run`, have no schedule.
    let schedule = if meta.contains_key("lr") {
        let schedule = RunSchedule {
            lr: metadata_number(&meta, "lr").map_err(bad)?,
            warmup: metadata_number(&meta, "warmup").map_err(bad)?,
            total_steps: metadata_number(&meta, "total_steps").map_err(bad)?,
            batch: metadata_number(&meta, "batch").map_err(bad)?,
            grad_accum: metadata_number(&meta, "grad_accum").map_err(bad)?,
        };
        if !(schedule.lr.is_finite() && schedule.lr > 0.0) {
            return Err(bad(format!("stored lr {} is not positive", schedule.lr)));
        }
        Some(schedule)
    } else {
        None
    };

    let mut views = Vec::with_capacity(2);
    for name in ["adam_m", "adam_v"] {
        let view = st
            .tensor(name)
            .map_err(|_| bad(format!("lacks tensor {name}")))?;
        if view.dtype() != Dtype::F32 || view.shape() != [params] {
            return Err(bad(format!(
                "tensor {name} is {:?} {:?}, but the model has {params} parameters",
                view.dtype(),
                view.shape()
            )));
        }
        views.push(view);
    }
    let mut optimizer = Optimizer::new(params);
    optimizer.step = step;
    let (m, v) = optimizer.moments_mut();
    from_bytes(views[0].data(), m);
    from_bytes(views[1].data(), v);
    // AdamW divides by the square root of `v`: a NaN or negative value
    // here would silently poison every later step.
    let sane = m.iter().all(|x| x.is_finite()) && v.iter().all(|x| x.is_finite() && *x >= 0.0);
    if !sane {
        return Err(bad(
            "the AdamW moments hold NaN, infinite or negative values".into(),
        ));
    }
    let state = TrainingState {
        optimizer,
        rng_state,
    };
    Ok((state, schedule))
}

/// The number stored under `key` in a safetensors header's metadata.
fn metadata_number<T: std::str::FromStr>(
    meta: &HashMap<String, String>,
    key: &str,
) -> Result<T, String> {
    let text = meta
        .get(key)
        .ok_or_else(|| format!("metadata lacks `{key}`"))?;
    text.parse()
        .map_err(|_| format!("metadata `{key}` is not a valid number: `{text}`"))
}
