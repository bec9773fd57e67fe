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

use std::collections::HashMap;
use std::path::Path;

use kernels::Kernels;
use safetensors::tensor::{Dtype, TensorView};

use crate::data::VOCAB_SIZE;
use crate::error::Error;
use crate::model::{Arena, Gpt, ModelConfig};
use atomic::{write_synced, Destination};
use files::{corrupt, from_bytes, parse, read, to_bytes};
pub use run_state::{RunSchedule, TrainingState};

const CONFIG_FILE: &str = "config.json";
const MODEL_FILE: &str = "model.safetensors";
const TRAINING_FILE: &str = "training.safetensors";

/// What a checkpoint directory may hold.
const FILES: [&str; 3] = [CONFIG_FILE, MODEL_FILE, TRAINING_FILE];

fn destination(dir: &Path) -> Destination<'_> {
    Destination { dir, files: &FILES }
}

/// Refuses a destination that cannot be saved to: one that exists but is
/// not a checkpoint directory (saving replaces it whole), or whose parent
/// is missing or not writable. Cheap: call it before a long run.
pub fn check_destination(dir: &Path) -> Result<(), Error> {
    destination(dir).check()
}

/// Writes `model` (and, with `training`, the run's state) to `dir`,
/// replacing the checkpoint there only once the new one is complete.
pub fn save(
    dir: &Path,
    model: &Gpt,
    training: Option<&TrainingState<&[f32]>>,
) -> Result<(), Error> {
    destination(dir).replace_with(|tmp| {
        let config = serde_json::to_vec_pretty(&hf::config_json(&model.config))
            .expect("JSON of plain values");
        write_synced(&tmp.join(CONFIG_FILE), &config)?;

        let bytes = to_bytes(model.params());
        let tensors = hf::layout(&model.config)
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

        match training {
            Some(state) => write_synced(&tmp.join(TRAINING_FILE), &run_state::encode(dir, state)?),
            None => Ok(()),
        }
    })
}

/// The model shape in `dir/config.json`, validated (sizes bounded, the
/// byte tokenizer's vocabulary).
pub fn load_config(dir: &Path) -> Result<ModelConfig, Error> {
    if !dir.is_dir() {
        return Err(corrupt(dir, "no such directory"));
    }
    let cfg = hf::parse_config(dir, CONFIG_FILE, &read(dir, CONFIG_FILE)?)?;
    if cfg.vocab_size != VOCAB_SIZE {
        return Err(corrupt(
            dir,
            format!(
                "invalid configuration: vocab_size {}; this runner's byte tokenizer needs {VOCAB_SIZE}",
                cfg.vocab_size
            ),
        ));
    }
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
    let needed = hf::tensor_count(&cfg);
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
    let layout = hf::layout(&cfg);
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
    let mut params = Arena::zeros(cfg.param_count());
    for (t, view) in layout.into_iter().zip(views) {
        from_bytes(view.data(), &mut params[t.range]);
    }
    Gpt::from_params(cfg, kernels, params)
}

/// The run's state in `dir`, for a model of `params` parameters.
pub fn load_run(dir: &Path, params: usize) -> Result<TrainingState<Vec<f32>>, Error> {
    run_state::decode(dir, TRAINING_FILE, &read(dir, TRAINING_FILE)?, params)
}
