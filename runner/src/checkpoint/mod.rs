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
use safetensors::SafeTensors;

use crate::error::Error;
use crate::model::{Arena, Gpt, ModelConfig};
use atomic::{write_synced, write_tensors_synced, Destination};
use files::{floats_from, parse, read, safetensors_bound, to_bytes};
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

/// Bytes of the largest file that loading `dir` reads whole: its model,
/// and its training state where `with_state` (0 for a file that cannot be
/// read, which the load then refuses with its reason).
pub fn read_whole_bytes(dir: &Path, cfg: &ModelConfig, with_state: bool) -> u64 {
    // A file past what it can hold for `cfg` is refused unread, for that.
    let size =
        |file: &str, most: u64| std::fs::metadata(dir.join(file)).map_or(0, |m| m.len().min(most));
    let state = match with_state {
        true => size(TRAINING_FILE, state_file_bound(cfg.param_floats())),
        false => 0,
    };
    size(MODEL_FILE, model_file_bound(cfg)).max(state)
}

/// The most bytes `model.safetensors` can hold for a model of shape `cfg`:
/// its weights, and an untied head (`param_count` counts one copy).
fn model_file_bound(cfg: &ModelConfig) -> u64 {
    let head = cfg.vocab_size.saturating_mul(cfg.channels);
    safetensors_bound(cfg.param_count().saturating_add(head))
}

/// The most bytes `training.safetensors` can hold for `params` parameters:
/// two moments a parameter.
fn state_file_bound(params: usize) -> u64 {
    safetensors_bound(params.saturating_mul(2))
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
/// `config.json` unties it). Every tensor
/// is checked against `config.json` before the parameters are allocated,
/// so a config asking for more than the file holds is an error, not an
/// out-of-memory abort.
pub fn load_model(dir: &Path, kernels: Kernels) -> Result<Gpt, Error> {
    let hf::HfConfig {
        model: cfg,
        tied_head,
    } = read_config(dir)?;
    let bytes = read(dir, MODEL_FILE, model_file_bound(&cfg))?;
    let st = parse(dir, MODEL_FILE, &bytes)?;
    // An untied head that is not in the file would be left to chance
    // (transformers initialises it at random): not this model.
    if !tied_head && st.tensor(hf::LM_HEAD).is_err() {
        return Err(Error::checkpoint(
            dir,
            format!(
                "{CONFIG_FILE} sets `tie_word_embeddings` to false, but {MODEL_FILE} has no {}",
                hf::LM_HEAD
            ),
        ));
    }
    // Checked first so that the layout built next is no longer than the
    // header, whatever number of layers config.json claims.
    let needed = hf::tensor_count(&cfg);
    if st.len() < needed {
        return Err(Error::checkpoint(
            dir,
            format!(
                "{MODEL_FILE} holds {} tensors; the {} layers of {CONFIG_FILE} need {needed}",
                st.len(),
                cfg.layers
            ),
        ));
    }
    // Layers beyond config.json's would be silently dropped: another model.
    let beyond = st.names().into_iter().find(|name| {
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
    let layout = hf::layout(&cfg);
    let find = |name: &str| {
        let prefixed = format!("{}{name}", hf::MODEL_PREFIX);
        match (st.tensor(&prefixed), st.tensor(name)) {
            // Two candidates: which one is the model is anyone's guess.
            (Ok(_), Ok(_)) => Err(Error::checkpoint(
                dir,
                format!("{MODEL_FILE} holds both {prefixed} and {name}"),
            )),
            (Ok(view), _) | (_, Ok(view)) => Ok(view),
            _ => Err(Error::checkpoint(
                dir,
                format!("{MODEL_FILE} lacks tensor {name}"),
            )),
        }
    };
    let mut views = Vec::with_capacity(layout.len());
    for t in &layout {
        let view = find(&t.name)?;
        let dtype = format!("{:?}", view.dtype());
        check_tensor(dir, &t.name, &t.shape, &dtype, view.shape())?;
        views.push(view);
    }
    // From the bytes just parsed, not the file again: it may have changed.
    let (_, header) = SafeTensors::read_metadata(&bytes).expect("parsed above");
    let saved_heads = header
        .metadata()
        .as_ref()
        .and_then(|meta| meta.get(HEADS_KEY));
    check_heads(dir, &cfg, saved_heads.map(String::as_str))?;
    let mut params = Arena::zeros(cfg.param_floats());
    for (t, view) in layout.iter().zip(&views) {
        let values = &mut params[t.range.clone()];
        floats_from(view.dtype(), view.data(), values);
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::checkpoint(
                dir,
                format!("tensor {} holds {} at element {i}", t.name, values[i]),
            ));
        }
    }
    if let Ok(head) = st.tensor(hf::LM_HEAD) {
        // The tied head is the embedding; a different one is another model.
        let wte = &layout[0];
        if !is_float(head.dtype()) || head.shape() != wte.shape.as_slice() {
            return Err(Error::checkpoint(
                dir,
                format!(
                    "{} is {:?} {:?}, but wte.weight is {:?}",
                    hf::LM_HEAD,
                    head.dtype(),
                    head.shape(),
                    wte.shape
                ),
            ));
        }
        let mut values = vec![0.0; wte.range.len()];
        floats_from(head.dtype(), head.data(), &mut values);
        // Equal as numbers: -0 is 0.
        let same = values
            .iter()
            .zip(&params[wte.range.clone()])
            .all(|(a, b)| a == b);
        if !same {
            return Err(Error::checkpoint(
                dir,
                format!(
                    "{} differs from wte.weight: untied output layers are not supported",
                    hf::LM_HEAD
                ),
            ));
        }
    }
    warn_of_unread(&st.names(), &layout);
    Gpt::from_params(cfg, kernels, params)
}

/// Logs one warning naming the tensors of `names` that no parameter of
/// `layout` reads: another model's, or a file edited by hand. The
/// attention-mask buffers older Hugging Face files hold (`attn.bias`,
/// `attn.masked_bias`) are not weights and pass without a word.
fn warn_of_unread(names: &[&str], layout: &[hf::HfTensor]) {
    // A set: a crafted file may hold as many names as the layout has
    // tensors, and comparing every pair would take minutes.
    let read: HashSet<&str> = layout.iter().map(|t| t.name.as_str()).collect();
    let unread: Vec<&str> = names
        .iter()
        .copied()
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

/// The element types a checkpoint's weights may have, as safetensors
/// spells them.
const FLOAT_TYPES: [&str; 3] = ["F32", "BF16", "F16"];

/// Whether a checkpoint's weights may have the element type `dtype`.
fn is_float(dtype: Dtype) -> bool {
    FLOAT_TYPES.contains(&format!("{dtype:?}").as_str())
}

/// Refuses the tensor `name` of `dtype` (as safetensors spells it) and
/// `shape` where the model needs a float tensor of `expected` shape.
fn check_tensor(
    dir: &Path,
    name: &str,
    expected: &[usize],
    dtype: &str,
    shape: &[usize],
) -> Result<(), Error> {
    if FLOAT_TYPES.contains(&dtype) && shape == expected {
        return Ok(());
    }
    Err(Error::checkpoint(
        dir,
        format!(
            "tensor {name} is {dtype} {shape:?}, expected F32, BF16 or F16 {expected:?} (by {CONFIG_FILE})"
        ),
    ))
}

/// Refuses, from the headers alone, weights whose tensors do not have the
/// shapes `config.json` (read as `cfg`) gives them: a `config.json` from
/// another checkpoint is named as the cause before the run's settings are
/// compared with the state saved beside it. [`load_model`] checks the
/// rest.
pub fn check_weights_fit(dir: &Path, cfg: &ModelConfig) -> Result<(), Error> {
    let header = files::header(dir, MODEL_FILE)?;
    for t in hf::layout(cfg) {
        let prefixed = format!("{}{}", hf::MODEL_PREFIX, t.name);
        let Some(info) = header.get(&prefixed).or_else(|| header.get(&t.name)) else {
            return Err(Error::checkpoint(
                dir,
                format!("{MODEL_FILE} lacks tensor {}", t.name),
            ));
        };
        let dtype = info
            .get("dtype")
            .and_then(|d| d.as_str())
            .unwrap_or("no type");
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(|s| s.as_array())
            .map(|dims| {
                dims.iter()
                    .map(|d| d.as_u64().map_or(usize::MAX, |d| d as usize))
                    .collect()
            })
            .unwrap_or_default();
        check_tensor(dir, &t.name, &t.shape, dtype, &shape)?;
    }
    let saved_heads = header
        .get("__metadata__")
        .and_then(|meta| meta.get(HEADS_KEY)?.as_str());
    check_heads(dir, cfg, saved_heads)
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
    let most = state_file_bound(params);
    run_state::decode(dir, TRAINING_FILE, &read(dir, TRAINING_FILE, most)?, params)
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
