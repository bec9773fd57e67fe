//! A saved checkpoint with arbitrary damage (bytes overwritten, mostly in
//! the headers; files cut short, grown or missing): reading it gives a
//! model or one error, never a panic, and a model read has the shape its
//! `config.json` says.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use kernels::Kernels;
use libfuzzer_sys::fuzz_target;
use runner::checkpoint::{self, RunSchedule, TrainingState};
use runner::data::{DataFingerprint, Tokenizer};
use runner::model::{Gpt, ModelConfig};

const FILES: [&str; 3] = ["config.json", "model.safetensors", "training.safetensors"];

/// A folder of this process's own under the system's temporary one.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("runner-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}

/// The files of a small valid checkpoint with its whole training state.
fn pristine() -> &'static [Vec<u8>; 3] {
    static PRISTINE: OnceLock<[Vec<u8>; 3]> = OnceLock::new();
    PRISTINE.get_or_init(|| {
        let cfg = ModelConfig {
            vocab_size: 256,
            tokenizer: Some(Tokenizer::Byte),
            block_size: 4,
            layers: 1,
            heads: 2,
            channels: 4,
        };
        let model = Gpt::new(cfg, Kernels::best(), 1).expect("a valid model");
        let moments = vec![0.25; model.params().len()];
        let schedule = RunSchedule {
            lr: 3e-4,
            warmup: 2,
            total_steps: 10,
            batch: 4,
            grad_accum: 1,
            seq_len: Some(4),
            data: Some(DataFingerprint {
                train_tokens: 100,
                hash: 0xfeed,
                shards_hash: Some(0xbeef),
                shard_sizes_hash: Some(0xcafe),
            }),
        };
        let state = TrainingState {
            step: 3,
            rng_state: 7,
            moments: (&moments[..], &moments[..]),
            schedule: Some(schedule),
            data_path: None,
        };
        let dir = scratch("pristine").join("ck");
        checkpoint::save(&dir, &model, Some(&state)).expect("saved");
        let files = FILES.map(|file| std::fs::read(dir.join(file)).expect("written"));
        let _ = std::fs::remove_dir_all(dir.parent().expect("under scratch"));
        files
    })
}

/// `pristine` damaged, or `None` for a missing file.
fn damaged(u: &mut Unstructured, pristine: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut bytes = pristine.to_vec();
    match u.int_in_range(0u8..=7)? {
        0 => return Ok(None),
        1 => bytes.truncate(u.int_in_range(0..=bytes.len())?),
        2 => {
            let more = u.int_in_range(0..=64)?;
            bytes.extend_from_slice(u.bytes(more)?);
        }
        _ => {}
    }
    for _ in 0..u.int_in_range(0..=8)? {
        if bytes.is_empty() {
            break;
        }
        // Most edits land in the first bytes, where the headers are.
        let reach = match u.arbitrary()? {
            true => bytes.len().min(512),
            false => bytes.len(),
        };
        let at = u.int_in_range(0..=reach - 1)?;
        bytes[at] = u.arbitrary()?;
    }
    Ok(Some(bytes))
}

fn run(u: &mut Unstructured) -> Result<()> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| scratch("damaged"));
    for (file, pristine) in FILES.iter().zip(pristine()) {
        let path = dir.join(file);
        match damaged(u, pristine)? {
            Some(bytes) => std::fs::write(&path, bytes).expect("scratch is writable"),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let config = checkpoint::load_config(dir);
    let _ = checkpoint::load_progress(dir);
    let fits = checkpoint::check_weights_fit(dir);
    if let Ok(model) = checkpoint::load_model(dir, Kernels::best()) {
        let config = config.expect("a model loads only with its config");
        // Loading makes the header checks and more.
        assert!(fits.is_ok(), "the weights load but do not fit: {fits:?}");
        assert_eq!(model.config, config);
        assert_eq!(model.params().len(), config.param_floats());
        let _ = checkpoint::load_run(dir, model.params().len());
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
