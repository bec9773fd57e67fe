//! Checkpoints: a directory with `config.json` and `model.safetensors` in
//! the Hugging Face GPT-2 layout (`hf`, so `GPT2LMHeadModel.from_pretrained
//! (dir)` loads it unchanged), plus `training.safetensors` (`run_state`)
//! for `--resume`. Saving replaces the directory atomically (`atomic`).
//! Loading checks every file against `config.json` before allocating
//! anything the size of the model.

mod atomic;
mod files;
mod hf;
mod run_state;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use kernels::Kernels;
use safetensors::tensor::{Dtype, TensorView};

use crate::error::Error;
use crate::model::{Arena, Gpt, ModelConfig};
use atomic::{write_synced, write_tensors_synced, Destination};
use files::{read, to_bytes, TensorFile};
pub use run_state::{Progress, RunSchedule, TrainingState};

const CONFIG_FILE: &str = "config.json";
/// A `config.json` is a few KiB; one past 1 MiB is not one.
const CONFIG_MOST_BYTES: u64 = 1 << 20;
const MODEL_FILE: &str = "model.safetensors";
/// The metadata key of `model.safetensors` that records the model's head
/// count (absent from files saved by others, or before it was kept).
const HEADS_KEY: &str = "n_head";
/// The file of a checkpoint that holds the run's state (moments, step).
pub const TRAINING_FILE: &str = "training.safetensors";

/// What a checkpoint directory may hold: every save writes the first two.
const FILES: [&str; 3] = [CONFIG_FILE, MODEL_FILE, TRAINING_FILE];

fn destination(dir: &Path) -> Destination<'_> {
    Destination::new(dir, &FILES).requiring(&FILES[..2])
}

/// Refuses a destination that cannot be saved to: one that exists but is
/// not a checkpoint directory (saving replaces it whole), one with no
/// checkpoint in place while a stopped save's previous copy waits to be
/// restored, or one whose parent is missing or not writable. Cheap: call
/// it before a long run.
pub fn check_destination(dir: &Path) -> Result<(), Error> {
    destination(dir).check()
}

/// What tells the checkpoint saved in `dir` now from any other save there
/// (every save writes a new weights file): `None` where none is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedCheckpoint {
    len: u64,
    modified: Option<std::time::SystemTime>,
    /// The file's inode on Unix (0 elsewhere).
    inode: u64,
}

/// The checkpoint saved in `dir` now, if any ([`SavedCheckpoint`]).
pub fn saved_checkpoint(dir: &Path) -> Option<SavedCheckpoint> {
    let meta = std::fs::metadata(dir.join(MODEL_FILE)).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(SavedCheckpoint {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

/// Refuses, before a training run, a save to `dir` of a `cfg` model with
/// its training state that the file system has no room for.
pub fn check_room(dir: &Path, cfg: &ModelConfig) -> Result<(), Error> {
    // The weights and Adam's two moments, in f32; the headers and
    // config.json take a few KiB, inside the margin.
    let floats = 3 * cfg.param_floats() as u64;
    destination(dir).check_room(4 * floats + (1 << 20))
}

/// Writes `model` (and, with `training`, the run's state) to `dir`,
/// replacing the checkpoint there only once the new one is complete.
pub fn save(
    dir: &Path,
    model: &Gpt,
    training: Option<&TrainingState<&[f32]>>,
) -> Result<(), Error> {
    destination(dir).replace_with(|tmp| write_checkpoint(dir, tmp, model, training))
}

/// [`save`] at the end of a run that found `seen` in `dir` when it
/// started: where another checkpoint has replaced it since, or `dir` no
/// longer takes a save, the run saves beside it (`DIR.1`, ...), with a
/// warning. Returns where it saved.
pub fn save_unless_changed(
    dir: &Path,
    seen: Option<SavedCheckpoint>,
    model: &Gpt,
    training: Option<&TrainingState<&[f32]>>,
) -> Result<PathBuf, Error> {
    let changed = |dir: &Path| saved_checkpoint(dir).is_some_and(|now| Some(now) != seen);
    destination(dir)
        .replace_or_save_beside(changed, |tmp| write_checkpoint(dir, tmp, model, training))
}

/// The files of a checkpoint of `model` (and `training`), for `dir`, into
/// the staging directory `tmp`.
fn write_checkpoint(
    dir: &Path,
    tmp: &Path,
    model: &Gpt,
    training: Option<&TrainingState<&[f32]>>,
) -> Result<(), Error> {
    let config =
        serde_json::to_vec_pretty(&hf::config_json(&model.config)).expect("JSON of plain values");
    write_synced(&tmp.join(CONFIG_FILE), &config)?;

    let bytes = to_bytes(model.params());
    let tensors = hf::layout(&model.config)
        .into_iter()
        .map(|t| {
            let data = &bytes[t.range.start * 4..t.range.end * 4];
            let view = TensorView::new(Dtype::F32, t.shape, data).expect("shape matches data");
            (format!("{}{}", hf::MODEL_PREFIX, t.name), view)
        })
        .collect::<Vec<_>>();
    // `format` is what transformers checks; `n_head` is ours: the weights
    // have the same shapes for any head count that divides the width.
    let meta = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        (HEADS_KEY.to_string(), model.config.heads.to_string()),
    ]);
    write_tensors_synced(&tmp.join(MODEL_FILE), tensors, meta)?;

    match training {
        Some(state) => {
            let weights = run_state::weights_hash(model.params());
            run_state::write(dir, &tmp.join(TRAINING_FILE), state, weights)
        }
        None => Ok(()),
    }
}

/// The model shape in `dir/config.json`, validated (sizes bounded, only
/// settings this runner computes, the tokenizer).
pub fn load_config(dir: &Path) -> Result<ModelConfig, Error> {
    Ok(read_config(dir)?.model)
}

/// [`load_config`] with what `config.json` says of the output layer.
fn read_config(dir: &Path) -> Result<hf::HfConfig, Error> {
    let exists = dir.exists();
    if exists && !dir.is_dir() {
        return Err(Error::checkpoint(
            dir,
            "not a directory (a checkpoint is a folder)",
        ));
    }
    // Missing, or an empty folder made in its place: a save stopped
    // between its renames may have left the checkpoint beside it.
    let empty = exists && std::fs::read_dir(dir).is_ok_and(|mut e| e.next().is_none());
    if !exists || empty {
        let state = if exists { "empty" } else { "no such directory" };
        match destination(dir).moved_aside() {
            Some(old) => {
                return Err(Error::checkpoint(
                    dir,
                    format!(
                        "{state}; a save that was stopped left the previous checkpoint at {}: rename it to {}",
                        old.display(),
                        dir.display()
                    ),
                ))
            }
            None if !exists => return Err(Error::checkpoint(dir, state)),
            // Empty alone: the first file read says which is missing.
            None => {}
        }
    }
    hf::parse_config(
        dir,
        CONFIG_FILE,
        &read(dir, CONFIG_FILE, CONFIG_MOST_BYTES)?,
    )
}

/// The model in `dir`, on `kernels`: a checkpoint of this runner, or any
/// Hugging Face GPT-2 directory (`config.json` + `model.safetensors` from
/// `save_pretrained`; names with or without `transformer.`; f32, bf16 or
/// f16; an `lm_head.weight` only if it equals `wte`, and required where
/// `config.json` unties it). Every tensor is checked against
/// `config.json` before the parameters are allocated, so a config asking
/// for more than the file holds is an error, not an out-of-memory abort;
/// then each is read straight into the parameters.
pub fn load_model(dir: &Path, kernels: Kernels) -> Result<Gpt, Error> {
    let hf::HfConfig {
        model: cfg,
        tied_head,
    } = read_config(dir)?;
    let mut file = TensorFile::open(dir, MODEL_FILE, hf::tensor_count(&cfg))?;
    let weights = locate_weights(dir, &file, &cfg, tied_head)?;
    let mut params = Arena::zeros(cfg.param_floats());
    for (t, name) in &weights {
        let values = &mut params[t.range.clone()];
        file.read_floats(name, 0, values)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::checkpoint(
                dir,
                format!("tensor {} holds {} at element {i}", t.name, values[i]),
            ));
        }
    }
    if file.tensor(hf::LM_HEAD).is_some() {
        // The tied head is the embedding; a different one is another model.
        let wte = &params[weights[0].0.range.clone()];
        let mut head = vec![0.0; wte.len().min(HEAD_CHUNK_FLOATS)];
        for (i, wte) in wte.chunks(HEAD_CHUNK_FLOATS).enumerate() {
            let head = &mut head[..wte.len()];
            file.read_floats(hf::LM_HEAD, i * HEAD_CHUNK_FLOATS, head)?;
            // Equal as numbers: -0 is 0.
            if head.iter().zip(wte).any(|(a, b)| a != b) {
                return Err(Error::checkpoint(
                    dir,
                    format!(
                        "{} differs from wte.weight: untied output layers are not supported",
                        hf::LM_HEAD
                    ),
                ));
            }
        }
    }
    warn_of_unread(file.names(), &weights);
    Gpt::from_params(cfg, kernels, params)
}

/// How much of an output layer [`load_model`] compares with the embedding
/// at a time.
const HEAD_CHUNK_FLOATS: usize = 1 << 20;

/// The tensors of `file` (the weights of the checkpoint `dir`) that the
/// parameters of a `cfg` model are read from, with their names in the
/// file, checked from its header alone: as many tensors as the layers
/// need and none beyond them, each of a float type and the shape
/// `config.json` gives it, under one name (with or without
/// `transformer.`), the head count `n_head` says, and an output layer the
/// shape of the embedding, which must be there when `tied_head` is false.
fn locate_weights(
    dir: &Path,
    file: &TensorFile,
    cfg: &ModelConfig,
    tied_head: bool,
) -> Result<Vec<(hf::HfTensor, String)>, Error> {
    // Checked first so that the layout built next is no longer than the
    // header, whatever number of layers config.json claims.
    let needed = hf::tensor_count(cfg);
    if file.names().len() < needed {
        return Err(Error::checkpoint(
            dir,
            format!(
                "{MODEL_FILE} holds {} tensors; the {} layers of {CONFIG_FILE} need {needed}",
                file.names().len(),
                cfg.layers
            ),
        ));
    }
    // Layers beyond config.json's would be silently dropped: another model.
    let beyond = file.names().iter().find(|name| {
        let name = name.strip_prefix(hf::MODEL_PREFIX).unwrap_or(name);
        hf::outside_layers(name, cfg.layers)
    });
    if let Some(name) = beyond {
        return Err(Error::checkpoint(
            dir,
            format!(
                "{MODEL_FILE} holds {name}, beyond the {} layers of {CONFIG_FILE}",
                cfg.layers
            ),
        ));
    }
    let mut weights = Vec::with_capacity(needed);
    for t in hf::layout(cfg) {
        let prefixed = format!("{}{}", hf::MODEL_PREFIX, t.name);
        let (name, (dtype, shape)) = match (file.tensor(&prefixed), file.tensor(&t.name)) {
            // Two candidates: which one is the model is anyone's guess.
            (Some(_), Some(_)) => {
                return Err(Error::checkpoint(
                    dir,
                    format!("{MODEL_FILE} holds both {prefixed} and {}", t.name),
                ))
            }
            (Some(found), None) => (prefixed, found),
            (None, Some(found)) => (t.name.clone(), found),
            (None, None) => {
                return Err(Error::checkpoint(
                    dir,
                    format!("{MODEL_FILE} lacks tensor {}", t.name),
                ))
            }
        };
        check_tensor(dir, &t.name, &t.shape, dtype, shape)?;
        weights.push((t, name));
    }
    match file.tensor(hf::LM_HEAD) {
        Some((dtype, shape)) => check_tensor(dir, hf::LM_HEAD, &weights[0].0.shape, dtype, shape)?,
        // An untied head that is not in the file would be left to chance
        // (transformers initialises it at random): not this model.
        None if !tied_head => {
            return Err(Error::checkpoint(
                dir,
                format!(
                    "{CONFIG_FILE} sets `tie_word_embeddings` to false, but {MODEL_FILE} has no {}",
                    hf::LM_HEAD
                ),
            ))
        }
        None => {}
    }
    let saved_heads = file.metadata().get(HEADS_KEY).cloned();
    check_heads(dir, cfg, saved_heads.as_deref())?;
    Ok(weights)
}

/// Logs one warning naming the tensors of `names` that none of `weights`
/// (the parameters' tensors) is read from: another model's, or a file edited by hand. The
/// attention-mask buffers older Hugging Face files hold (`attn.bias`,
/// `attn.masked_bias`) are not weights and pass without a word.
fn warn_of_unread(names: &[String], weights: &[(hf::HfTensor, String)]) {
    // A set: a crafted file may hold as many names as the layout has
    // tensors, and comparing every pair would take minutes.
    let read: HashSet<&str> = weights.iter().map(|(t, _)| t.name.as_str()).collect();
    let unread: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|&name| {
            let bare = name.strip_prefix(hf::MODEL_PREFIX).unwrap_or(name);
            let buffer = bare.ends_with(".attn.bias") || bare.ends_with(".attn.masked_bias");
            !buffer && name != hf::LM_HEAD && !read.contains(bare)
        })
        .collect();
    if let Some(first) = unread.first() {
        log::warn!(
            "{MODEL_FILE} holds {} tensor(s) this model does not read, ignored (the first: {first})",
            unread.len()
        );
    }
}

/// The element types a checkpoint's weights may have.
const FLOAT_TYPES: [Dtype; 3] = [Dtype::F32, Dtype::BF16, Dtype::F16];

/// Refuses the tensor `name` of `dtype` and `shape` where the model needs
/// a float tensor of `expected` shape.
fn check_tensor(
    dir: &Path,
    name: &str,
    expected: &[usize],
    dtype: Dtype,
    shape: &[usize],
) -> Result<(), Error> {
    if FLOAT_TYPES.contains(&dtype) && shape == expected {
        return Ok(());
    }
    Err(Error::checkpoint(
        dir,
        format!(
            "tensor {name} is {dtype:?} {shape:?}, expected F32, BF16 or F16 {expected:?} (by {CONFIG_FILE})"
        ),
    ))
}

/// Refuses, from the headers alone, weights that do not fit the model
/// `config.json` describes (the checks [`load_model`] makes before it
/// reads a tensor): a `config.json` from another checkpoint is named as
/// the cause before the run's settings are compared with the state saved
/// beside it.
pub fn check_weights_fit(dir: &Path) -> Result<(), Error> {
    let hf::HfConfig {
        model: cfg,
        tied_head,
    } = read_config(dir)?;
    let file = TensorFile::open(dir, MODEL_FILE, hf::tensor_count(&cfg))?;
    locate_weights(dir, &file, &cfg, tied_head).map(drop)
}

/// Refuses a `config.json` (read as `cfg`) whose `n_head` is not the head
/// count `model.safetensors` records in its metadata (`saved`): the
/// weights have the same shapes for any head count that divides the
/// width, so the model would run as another one. A file that records none
/// (saved by others) fits any.
fn check_heads(dir: &Path, cfg: &ModelConfig, saved: Option<&str>) -> Result<(), Error> {
    match saved {
        Some(saved) if saved != cfg.heads.to_string() => Err(Error::checkpoint(
            dir,
            format!(
                "{CONFIG_FILE} gives n_head {}, but {MODEL_FILE} was saved from a model of {saved} heads: the files do not belong together",
                cfg.heads
            ),
        )),
        _ => Ok(()),
    }
}

/// Where the run saved in `dir` stands (step, schedule), without reading
/// its moments.
pub fn load_progress(dir: &Path) -> Result<Progress, Error> {
    run_state::read_progress(dir, TRAINING_FILE)
}

/// The run's state in `dir`, for a model of `params` parameters.
pub fn load_run(dir: &Path, params: usize) -> Result<TrainingState<Vec<f32>>, Error> {
    run_state::read(dir, TRAINING_FILE, params)
}

/// [`load_run`] with the moments of parameters `share` read into
/// `moments` (first, second) and no others; returns the rest of the
/// state.
pub fn load_run_into(
    dir: &Path,
    params: usize,
    share: std::ops::Range<usize>,
    moments: (&mut [f32], &mut [f32]),
) -> Result<Progress, Error> {
    run_state::read_into(dir, TRAINING_FILE, params, share, moments)
}

/// Refuses to resume the state in `dir` with `model` (loaded from `dir`)
/// unless it was saved with these weights: a `training.safetensors` from
/// another save beside this `model.safetensors` would continue with the
/// wrong moments. A state saved before the hash was kept matches any.
pub fn check_run_matches(dir: &Path, model: &Gpt) -> Result<(), Error> {
    let saved = run_state::read_progress(dir, TRAINING_FILE)?.weights_hash;
    match saved {
        Some(hash) if hash != run_state::weights_hash(model.params()) => Err(Error::checkpoint(
            dir,
            format!(
                "{TRAINING_FILE} was saved with other weights than {MODEL_FILE} (from another save?): resume from a checkpoint saved whole, or start from these weights with --init-from"
            ),
        )),
        _ => Ok(()),
    }
}
