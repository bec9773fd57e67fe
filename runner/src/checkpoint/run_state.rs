//! `training.safetensors`: what `--resume` needs beyond the model (the
//! AdamW moments, the step, the data RNG state) and the schedule of the
//! run, so that a resumed run can tell whether it continues the same one.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

use super::atomic::write_tensors_synced;
use super::files::{to_bytes, TensorFile};
use crate::data::{hash_words, DataFingerprint, FNV_OFFSET};
use crate::error::Error;

const FORMAT: &str = "cpu-gpt-training-v1";

/// The settings that shape a run's updates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSchedule {
    /// Peak learning rate.
    pub lr: f32,
    /// Warm-up steps.
    pub warmup: u32,
    /// Steps the schedule spans (`--steps`).
    pub total_steps: u32,
    /// Sequences per micro-batch over all ranks (`--batch` × processes).
    pub batch: usize,
    /// Micro-batches per step.
    pub grad_accum: usize,
    /// Tokens per sequence (`None` in states saved before it was kept).
    pub seq_len: Option<usize>,
    /// The data trained on (`None` in states saved before it was kept,
    /// and for a run whose data is not read yet).
    pub data: Option<DataFingerprint>,
}

impl RunSchedule {
    /// One `--flag: checkpoint X, this run Y` entry per setting in which
    /// `run` differs from `self` (the saved schedule); empty if none.
    /// `--steps` is left out: a resumed run may extend the schedule.
    pub fn differences(&self, run: &RunSchedule) -> Vec<String> {
        // Settings one side does not know match any.
        fn known<T: ToString>(saved: Option<T>, now: Option<T>) -> (String, String) {
            match (saved, now) {
                (Some(saved), Some(now)) => (saved.to_string(), now.to_string()),
                _ => Default::default(),
            }
        }
        let seq_lens = known(self.seq_len, run.seq_len);
        // A shards hash one side lacks (an older checkpoint's) matches any.
        let (saved_data, run_data) = match (self.data, run.data) {
            (Some(mut saved), Some(mut now)) => {
                if saved.shards_hash.is_none() || now.shards_hash.is_none() {
                    (saved.shards_hash, now.shards_hash) = (None, None);
                }
                if saved.shard_sizes_hash.is_none() || now.shard_sizes_hash.is_none() {
                    (saved.shard_sizes_hash, now.shard_sizes_hash) = (None, None);
                }
                (Some(saved), Some(now))
            }
            other => other,
        };
        let data = known(saved_data, run_data);
        let pairs = [
            ("--lr", self.lr.to_string(), run.lr.to_string()),
            ("--warmup", self.warmup.to_string(), run.warmup.to_string()),
            ("--batch", self.batch.to_string(), run.batch.to_string()),
            (
                "--grad-accum",
                self.grad_accum.to_string(),
                run.grad_accum.to_string(),
            ),
            ("--seq-len", seq_lens.0, seq_lens.1),
            ("--data", data.0, data.1),
        ];
        pairs
            .into_iter()
            .filter(|(_, saved, now)| saved != now)
            .map(|(flag, saved, now)| format!("{flag}: checkpoint {saved}, this run {now}"))
            .collect()
    }
}

/// A run's state. `M` is how the moments are held: slices to save,
/// vectors when loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingState<M> {
    /// Optimizer steps done.
    pub step: u32,
    /// The data-sampling RNG state after the last step.
    pub rng_state: u64,
    /// AdamW's first and second moments, laid out as the parameters.
    pub moments: (M, M),
    /// The run's schedule (`None` for a state saved without one).
    pub schedule: Option<RunSchedule>,
    /// Where the run's data lies, as an absolute path, so that a resumed
    /// run reads it without being told (`None` for the embedded corpus,
    /// a pipe, or a state saved before it was kept).
    pub data_path: Option<PathBuf>,
}

/// The hash of `weights` (as the checkpoint stores them) that the state
/// saved beside them records, so that a state is never resumed with
/// another save's weights.
pub fn weights_hash(weights: &[f32]) -> u64 {
    hash_words(FNV_OFFSET, &to_bytes(weights))
}

/// Writes `state` as `training.safetensors` at `path` (in the staging
/// directory of the checkpoint `dir`), with the hash of the `weights`
/// saved beside it.
pub fn write(
    dir: &Path,
    path: &Path,
    state: &TrainingState<&[f32]>,
    weights: u64,
) -> Result<(), Error> {
    let (m, v) = state.moments;
    let n = m.len();
    if v.len() != n {
        return Err(Error::checkpoint(
            dir,
            format!("{n} first moments but {} second moments", v.len()),
        ));
    }
    let (m, v) = (to_bytes(m), to_bytes(v));
    let tensor = |bytes| TensorView::new(Dtype::F32, vec![n], bytes).expect("shape matches");
    let tensors = vec![
        (MOMENTS[0].to_string(), tensor(&m)),
        (MOMENTS[1].to_string(), tensor(&v)),
    ];
    let mut meta = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("step".to_string(), state.step.to_string()),
        ("rng_state".to_string(), state.rng_state.to_string()),
        // In hex, as errors show it.
        ("weights_hash".to_string(), format!("{weights:016x}")),
    ]);
    if let Some(s) = state.schedule {
        // f32's `Display` is the shortest text that parses back exactly.
        meta.extend([
            ("lr".to_string(), s.lr.to_string()),
            ("warmup".to_string(), s.warmup.to_string()),
            ("total_steps".to_string(), s.total_steps.to_string()),
            ("batch".to_string(), s.batch.to_string()),
            ("grad_accum".to_string(), s.grad_accum.to_string()),
        ]);
        if let Some(t) = s.seq_len {
            meta.insert("seq_len".to_string(), t.to_string());
        }
        if let Some(data) = s.data {
            // Only a path that reads back: a state file is UTF-8 text.
            if let Some(path) = state.data_path.as_deref().and_then(Path::to_str) {
                meta.insert(DATA_PATH_KEY.to_string(), path.to_string());
            }
            meta.extend([
                ("train_tokens".to_string(), data.train_tokens.to_string()),
                // In hex, as errors show it.
                ("data_hash".to_string(), format!("{:016x}", data.hash)),
            ]);
            let hashes = [
                ("shards_hash", data.shards_hash),
                ("shard_sizes_hash", data.shard_sizes_hash),
            ];
            for (key, hash) in hashes {
                if let Some(hash) = hash {
                    meta.insert(key.to_string(), format!("{hash:016x}"));
                }
            }
        }
    }
    write_tensors_synced(path, tensors, meta)
}

/// The state in the `file` of the checkpoint `dir` for a model of
/// `params` parameters, refusing moments that would poison AdamW.
pub fn read(dir: &Path, file: &str, params: usize) -> Result<TrainingState<Vec<f32>>, Error> {
    let (mut m, mut v) = (vec![0.0; params], vec![0.0; params]);
    let Progress {
        step,
        rng_state,
        schedule,
        data_path,
        ..
    } = read_into(dir, file, params, 0..params, (&mut m, &mut v))?;
    Ok(TrainingState {
        step,
        rng_state,
        moments: (m, v),
        schedule,
        data_path,
    })
}

/// [`read`] with the moments of parameters `share` read into `moments`
/// (first, second; `share.len()` each) and no others, so that a resumed
/// run holds no second copy of them; returns the rest of the state.
pub fn read_into(
    dir: &Path,
    file: &str,
    params: usize,
    share: Range<usize>,
    moments: (&mut [f32], &mut [f32]),
) -> Result<Progress, Error> {
    let mut tensors = TensorFile::open(dir, file, MOMENTS.len())?;
    let bad = |reason: String| Error::checkpoint(dir, format!("{file}: {reason}"));
    let progress = Progress::of(&tensors.metadata()).map_err(bad)?;
    // Both checked before either is read.
    for name in MOMENTS {
        let (dtype, shape) = tensors
            .tensor(name)
            .ok_or_else(|| bad(format!("lacks tensor {name}")))?;
        if dtype != Dtype::F32 {
            return Err(bad(format!(
                "tensor {name} is {dtype:?}; the optimizer's moments are saved in F32"
            )));
        }
        if shape != [params] {
            return Err(bad(format!(
                "tensor {name} has shape {shape:?}, but the model has {params} parameters"
            )));
        }
    }
    let (m, v) = moments;
    tensors.read_floats(MOMENTS[0], share.start, m)?;
    tensors.read_floats(MOMENTS[1], share.start, v)?;
    // AdamW divides by the square root of `v`: a NaN or negative value
    // here would silently poison every later step.
    let sane = m.iter().all(|x| x.is_finite()) && v.iter().all(|x| x.is_finite() && *x >= 0.0);
    if !sane {
        return Err(bad(
            "the AdamW moments hold NaN, infinite or negative values".into(),
        ));
    }
    Ok(progress)
}

/// The tensors of the two AdamW moments, first and second.
const MOMENTS: [&str; 2] = ["adam_m", "adam_v"];

/// Where a saved run stands: what its metadata says.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub step: u32,
    pub rng_state: u64,
    pub schedule: Option<RunSchedule>,
    /// `weights_hash` of the weights saved with it (`None` in states
    /// saved before it was kept).
    pub weights_hash: Option<u64>,
    /// [`TrainingState::data_path`].
    pub data_path: Option<PathBuf>,
}

/// The metadata key of the run's data path.
const DATA_PATH_KEY: &str = "data_path";

impl Progress {
    fn of(meta: &HashMap<String, String>) -> Result<Progress, String> {
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(format!("not a {FORMAT} file"));
        }
        // States saved without a schedule have none; one with part of it
        // is damaged (and would resume with defaults for the rest).
        let keys = ["lr", "warmup", "total_steps", "batch", "grad_accum"];
        let schedule = if keys.iter().any(|key| meta.contains_key(*key)) {
            let schedule = RunSchedule {
                lr: metadata_number(meta, "lr")?,
                warmup: metadata_number(meta, "warmup")?,
                total_steps: metadata_number(meta, "total_steps")?,
                batch: metadata_number(meta, "batch")?,
                grad_accum: metadata_number(meta, "grad_accum")?,
                seq_len: if meta.contains_key("seq_len") {
                    Some(metadata_number(meta, "seq_len")?)
                } else {
                    None
                },
                data: if meta.contains_key("data_hash") || meta.contains_key("train_tokens") {
                    Some(DataFingerprint {
                        train_tokens: metadata_number(meta, "train_tokens")?,
                        hash: metadata_hex(meta, "data_hash")?,
                        shards_hash: optional_hex(meta, "shards_hash")?,
                        shard_sizes_hash: optional_hex(meta, "shard_sizes_hash")?,
                    })
                } else {
                    None
                },
            };
            if !(schedule.lr.is_finite() && schedule.lr > 0.0) {
                return Err(format!("stored lr {} is not positive", schedule.lr));
            }
            if schedule.batch == 0 || schedule.grad_accum == 0 {
                return Err("stored batch or grad_accum is 0".into());
            }
            if schedule.total_steps == 0 || schedule.seq_len == Some(0) {
                return Err("stored total_steps or seq_len is 0".into());
            }
            Some(schedule)
        } else {
            None
        };
        let step = metadata_number(meta, "step")?;
        if let Some(total) = schedule
            .map(|s| s.total_steps)
            .filter(|&total| total < step)
        {
            return Err(format!(
                "stored step {step} is past its run's {total} steps"
            ));
        }
        Ok(Progress {
            step,
            rng_state: metadata_number(meta, "rng_state")?,
            schedule,
            weights_hash: optional_hex(meta, "weights_hash")?,
            data_path: data_path(meta, schedule)?,
        })
    }
}

/// The progress in the state file `file` of `dir`, from its header alone
/// (the moments, twice the model's size, are not read): cheap enough to
/// refuse a resume before any long work. [`read`] checks the rest.
pub fn read_progress(dir: &Path, file: &str) -> Result<Progress, Error> {
    let meta = TensorFile::open(dir, file, MOMENTS.len())?.metadata();
    Progress::of(&meta).map_err(|reason| {
        Error::checkpoint(dir, format!("{file} is corrupt or truncated: {reason}"))
    })
}

/// The data path a state's metadata records: kept with the data's
/// fingerprint (in `schedule`), which says whether the file there is
/// still the one trained on, and absolute, as written.
fn data_path(
    meta: &HashMap<String, String>,
    schedule: Option<RunSchedule>,
) -> Result<Option<PathBuf>, String> {
    let Some(text) = meta.get(DATA_PATH_KEY) else {
        return Ok(None);
    };
    let path = PathBuf::from(text);
    if !path.is_absolute() {
        return Err(format!(
            "metadata `{DATA_PATH_KEY}` is not an absolute path: `{text}`"
        ));
    }
    Ok(schedule.and_then(|s| s.data).map(|_| path))
}

/// The hexadecimal number stored under `key` in a safetensors header's
/// metadata.
fn metadata_hex(meta: &HashMap<String, String>, key: &str) -> Result<u64, String> {
    let text = metadata_text(meta, key)?;
    u64::from_str_radix(text, 16)
        .map_err(|_| format!("metadata `{key}` is not a hexadecimal number: `{text}`"))
}

/// The hexadecimal number stored under `key`, if the metadata has one
/// (states saved before it was kept do not).
fn optional_hex(meta: &HashMap<String, String>, key: &str) -> Result<Option<u64>, String> {
    match meta.contains_key(key) {
        true => metadata_hex(meta, key).map(Some),
        false => Ok(None),
    }
}

/// The number stored under `key` in a safetensors header's metadata.
fn metadata_number<T: std::str::FromStr>(
    meta: &HashMap<String, String>,
    key: &str,
) -> Result<T, String> {
    let text = metadata_text(meta, key)?;
    text.parse()
        .map_err(|_| format!("metadata `{key}` is not a valid number: `{text}`"))
}

/// The text stored under `key` in a safetensors header's metadata.
fn metadata_text<'m>(meta: &'m HashMap<String, String>, key: &str) -> Result<&'m str, String> {
    meta.get(key)
        .map(String::as_str)
        .ok_or_else(|| format!("metadata lacks `{key}`"))
}
