//! Checkpoints end to end: replacing a checkpoint only with consent, refusing destinations
//! that are not checkpoints, cleaning up after crashed saves, and one clear
//! error line (never an abort) for corrupt or impossible checkpoints.

mod common;
use common::{assert_clear_error, assert_success, json_losses, runner, scratch};

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use kernels::Kernels;
use runner::checkpoint::{self, RunSchedule, TrainingState};
use runner::data::DataFingerprint;
use runner::model::Gpt;
use runner::model::Preset;
use runner::train::optim::Optimizer;

/// `runner` with its address space capped at 1 GiB, so that allocating a
/// model of gigabytes fails loudly (an abort) instead of being overcommitted.
fn runner_in_1gib(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1048576 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .output()
        .expect("sh starts")
}

/// Trains the tiny model for `steps` steps and saves it to `ckpt`.
fn train_tiny(ckpt: &Path, steps: &str, seed: &str) -> Output {
    runner(&[
        "train",
        "--preset",
        "tiny",
        "--steps",
        steps,
        "--seed",
        seed,
        "--save",
        ckpt.to_str().unwrap(),
        "-q",
    ])
}

/// Resumes the checkpoint `ck` to step 6, quietly, with `extra` options.
fn resume_to_step_6(ck: &str, extra: &[&str]) -> Output {
    let args = ["train", "--resume", ck, "--steps", "6", "-q"];
    runner(&[&args[..], extra].concat())
}

/// The names in `dir` that start with a dot (temporary directories).
fn hidden_entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect()
}

/// Replaces `"key": old` by `"key": new` in the checkpoint's config.json.
fn edit_config(ckpt: &Path, key: &str, new: impl Into<serde_json::Value>) {
    let path = ckpt.join("config.json");
    let mut json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    json[key] = new.into();
    fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
}

#[test]
fn a_checkpoint_is_replaced_only_with_consent() {
    let dir = scratch("twice");
    let ckpt = dir.join("ckpt");
    let ckpt_s = ckpt.to_str().unwrap();
    assert_success(&train_tiny(&ckpt, "2", "1"));
    let first = fs::read(ckpt.join("model.safetensors")).unwrap();
    // Another run's --save is refused before it trains...
    let again = ["train", "--preset", "tiny", "--steps", "3", "--seed", "2"];
    let out = runner(&[&again[..], &["--save", ckpt_s, "-q"]].concat());
    assert_clear_error(&out, "holds a checkpoint already: give --overwrite");
    assert_eq!(fs::read(ckpt.join("model.safetensors")).unwrap(), first);
    // ...and replaces it with --overwrite.
    let out = runner(&[&again[..], &["--save", ckpt_s, "--overwrite", "-q"]].concat());
    assert_success(&out);
    let second = fs::read(ckpt.join("model.safetensors")).unwrap();
    assert_ne!(first, second, "the second save did not replace the model");
    let model = checkpoint::load_model(&ckpt, Kernels::best()).unwrap();
    let state = checkpoint::load_run(&ckpt, model.params().len()).unwrap();
    assert_eq!(state.step, 3, "the first run's state was loaded");

    // The run resumed from it replaces it without being asked (and says
    // that a seed does not apply to it).
    let resume = [
        "train", "--steps", "4", "--resume", ckpt_s, "--save", ckpt_s, "--seed", "5", "-q",
    ];
    let out = runner(&resume);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--seed is ignored with --resume"),
        "{stderr}"
    );
    let model = checkpoint::load_model(&ckpt, Kernels::best()).unwrap();
    let state = checkpoint::load_run(&ckpt, model.params().len()).unwrap();
    assert_eq!(state.step, 4);
    assert!(
        hidden_entries(&dir).is_empty(),
        "{:?}",
        hidden_entries(&dir)
    );
}

/// Starts a long tiny run saving to `ckpt` (with `extra` options) and
/// returns once its first step is logged, with the rest of its log.
fn start_long_run(ckpt: &Path, extra: &[&str]) -> (std::process::Child, impl std::io::Read) {
    use std::io::{BufRead, BufReader};
    let mut long = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["train", "--preset", "tiny", "--steps", "4000"])
        .args(["--log-every", "1", "--eval-every", "0", "--threads", "1"])
        .args(extra)
        .arg("--save")
        .arg(ckpt)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(long.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("Step: 1/") {
        line.clear();
        let read = log.read_line(&mut line).unwrap();
        assert!(read > 0, "the long run ended early");
    }
    (long, log)
}

/// Waits for a run from [`start_long_run`]; returns the rest of its log.
fn finish_long_run((mut long, mut log): (std::process::Child, impl std::io::Read)) -> String {
    let mut rest = String::new();
    log.read_to_string(&mut rest).unwrap();
    assert!(long.wait().unwrap().success(), "{rest}");
    rest
}

/// The step of the training state saved in `dir`.
fn saved_step(dir: &Path) -> u32 {
    let model = checkpoint::load_model(dir, Kernels::best()).unwrap();
    checkpoint::load_run(dir, model.params().len())
        .unwrap()
        .step
}

#[test]
fn a_run_whose_destination_changed_meanwhile_saves_beside_it() {
    let dir = scratch("meanwhile");
    // Another run saves to the same place while a long one trains (even
    // one given --overwrite: it agreed to replace what was there when it
    // started).
    let ckpt = dir.join("ckpt");
    let long = start_long_run(&ckpt, &["--overwrite"]);
    assert_success(&train_tiny(&ckpt, "1", "7"));
    let rest = finish_long_run(long);
    assert!(rest.contains("another run saved there"), "{rest}");
    assert_eq!(
        saved_step(&ckpt),
        1,
        "the short run's checkpoint was replaced"
    );
    assert_eq!(saved_step(&dir.join("ckpt.1")), 4000);

    // The user puts a folder of theirs where the run will save.
    let mine = dir.join("mine");
    let long = start_long_run(&mine, &[]);
    fs::create_dir(&mine).unwrap();
    fs::write(mine.join("notes.txt"), b"mine").unwrap();
    let rest = finish_long_run(long);
    assert!(rest.contains("holds `notes.txt`"), "{rest}");
    assert_eq!(fs::read(mine.join("notes.txt")).unwrap(), b"mine");
    assert_eq!(saved_step(&dir.join("mine.1")), 4000);

    // The folder it saves in is removed: the error names the checkpoint
    // asked for (the one beside it fails too).
    let gone = dir.join("gone");
    fs::create_dir(&gone).unwrap();
    let ckpt = gone.join("ck");
    let (mut long, mut log) = start_long_run(&ckpt, &[]);
    fs::remove_dir(&gone).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut log, &mut rest).unwrap();
    assert!(!long.wait().unwrap().success(), "{rest}");
    let named = format!("checkpoint {}: its parent", ckpt.display());
    assert!(rest.contains(&named), "{rest}");
}

#[test]
fn a_destination_that_is_not_a_checkpoint_is_refused() {
    let dir = scratch("notckpt");
    let file = dir.join("notes.txt");
    fs::write(&file, b"keep me").unwrap();
    assert_clear_error(&train_tiny(&file, "1", "1"), "is not a directory");
    assert_eq!(fs::read(&file).unwrap(), b"keep me");
    // Under a file, the parent is named.
    let under = file.join("ckpt");
    assert_clear_error(&train_tiny(&under, "1", "1"), "its parent");

    let other = dir.join("project");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("main.rs"), b"fn main() {}").unwrap();
    assert_clear_error(&train_tiny(&other, "1", "1"), "holds `main.rs`");
    assert_eq!(fs::read(other.join("main.rs")).unwrap(), b"fn main() {}");
    assert!(!other.join("model.safetensors").exists());
    assert!(
        hidden_entries(&dir).is_empty(),
        "{:?}",
        hidden_entries(&dir)
    );

    // An empty directory holds nothing to lose and is filled.
    let empty = dir.join("empty");
    fs::create_dir(&empty).unwrap();
    assert_success(&train_tiny(&empty, "1", "1"));
    assert!(empty.join("model.safetensors").is_file());

    // A link to it would be replaced by a folder, not followed.
    #[cfg(unix)]
    {
        let link = dir.join("link");
        std::os::unix::fs::symlink(&empty, &link).unwrap();
        assert_clear_error(&train_tiny(&link, "1", "1"), "is a symbolic link");
        assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
    }
}

#[test]
fn stale_temporary_directories_are_removed() {
    let dir = scratch("stale");
    let ckpt = dir.join("ckpt");
    // A previous copy moved aside is superseded only where the checkpoint
    // it was moved aside for is in place (else it is the one to restore).
    assert_success(&train_tiny(&ckpt, "1", "1"));
    for stale in [".ckpt.tmp-999999", ".ckpt.old-999998"] {
        fs::create_dir(dir.join(stale)).unwrap();
        fs::write(dir.join(stale).join("model.safetensors"), b"partial").unwrap();
    }
    // Names outside the pattern belong to someone else.
    for kept in [".other.tmp-1", ".ckpt.tmp-notapid"] {
        fs::create_dir(dir.join(kept)).unwrap();
    }
    let out = runner(
        &["train", "--preset", "tiny", "--steps", "1"]
            .into_iter()
            .chain(["--save", ckpt.to_str().unwrap(), "--overwrite", "-q"])
            .collect::<Vec<_>>(),
    );
    assert_success(&out);
    let mut left = hidden_entries(&dir);
    left.sort();
    assert_eq!(left, [".ckpt.tmp-notapid", ".other.tmp-1"]);
    assert!(ckpt.join("training.safetensors").is_file());
}

#[test]
fn a_corrupt_training_state_is_one_clear_error() {
    let dir = scratch("badstate");
    let ckpt = dir.join("ckpt");
    let ckpt_s = ckpt.to_str().unwrap();
    assert_success(&train_tiny(&ckpt, "2", "1"));
    let resume = || runner(&["train", "--steps", "4", "--resume", ckpt_s, "-q"]);
    let state = ckpt.join("training.safetensors");
    let bytes = fs::read(&state).unwrap();

    fs::write(&state, &bytes[..bytes.len() / 2]).unwrap();
    assert_clear_error(&resume(), "training.safetensors is corrupt or truncated");
    fs::write(&state, b"\x05\x00\x00\x00\x00\x00\x00\x00garbage").unwrap();
    assert_clear_error(&resume(), "training.safetensors is corrupt or truncated");
    // A header longer than the file is refused before it is read.
    fs::write(&state, 99_999_999u64.to_le_bytes()).unwrap();
    assert_clear_error(&resume(), "a header of 99999999 bytes in a file of 8 bytes");
    fs::remove_file(&state).unwrap();
    assert_clear_error(&resume(), "training.safetensors is missing");

    // Well-formed, but from a model of another size.
    let other = dir.join("other");
    let out = runner(&[
        "train",
        "--preset",
        "tiny",
        "--channels",
        "64",
        "--steps",
        "1",
        "--save",
        other.to_str().unwrap(),
        "-q",
    ]);
    assert_success(&out);
    fs::copy(other.join("training.safetensors"), &state).unwrap();
    assert_clear_error(&resume(), "but the model has");

    // The right shape, the wrong element type: said as such.
    {
        use safetensors::tensor::{Dtype, TensorView};
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (m, v) = (st.tensor("adam_m").unwrap(), st.tensor("adam_v").unwrap());
        let half = &m.data()[..m.data().len() / 2];
        let views = [
            (
                "adam_m",
                TensorView::new(Dtype::BF16, m.shape().to_vec(), half).unwrap(),
            ),
            ("adam_v", v),
        ];
        let bf16 = safetensors::serialize(views, meta.metadata().clone()).unwrap();
        fs::write(&state, bf16).unwrap();
    }
    assert_clear_error(
        &resume(),
        "tensor adam_m is BF16; the optimizer's moments are saved in F32",
    );

    // Of the same shape, but saved with other weights (a later step).
    let later = dir.join("later");
    assert_success(&train_tiny(&later, "3", "1"));
    fs::copy(later.join("training.safetensors"), &state).unwrap();
    assert_clear_error(
        &resume(),
        "was saved with other weights than model.safetensors",
    );

    // Intact again: the run resumes.
    fs::write(&state, &bytes).unwrap();
    assert_success(&resume());
}

#[test]
fn a_tokenizer_that_does_not_fit_the_vocabulary_is_refused() {
    let dir = scratch("vocab");
    let ckpt = dir.join("ckpt");
    let ckpt_s = ckpt.to_str().unwrap();
    assert_success(&train_tiny(&ckpt, "1", "1"));
    let config = fs::read_to_string(ckpt.join("config.json")).unwrap();
    assert!(config.contains(r#""tokenizer": "byte""#), "{config}");
    edit_config(&ckpt, "vocab_size", 100);
    let needle = "the byte tokenizer has 256 tokens, more than the vocabulary of 100";
    assert_clear_error(&runner(&["eval", "--checkpoint", ckpt_s]), needle);
    assert_clear_error(
        &runner(&["train", "--steps", "4", "--resume", ckpt_s]),
        needle,
    );
    edit_config(&ckpt, "vocab_size", 256);
    edit_config(&ckpt, "tokenizer", "sentencepiece");
    assert_clear_error(
        &runner(&["eval", "--checkpoint", ckpt_s]),
        "`tokenizer` is \"sentencepiece\"",
    );
}

#[test]
fn impossible_sizes_are_refused_before_allocating() {
    let dir = scratch("absurd");
    let ckpt = dir.join("ckpt");
    let ckpt_s = ckpt.to_str().unwrap();
    assert_success(&train_tiny(&ckpt, "1", "1"));

    // Beyond any parameter budget.
    edit_config(&ckpt, "n_embd", 1_000_000);
    edit_config(&ckpt, "n_layer", 100_000);
    let out = runner_in_1gib(&["eval", "--checkpoint", ckpt_s]);
    assert_clear_error(&out, "too large");

    // Within the parameter budget but not this process's address space
    // (12 GiB under the 1 GiB cap): refused as memory before anything is
    // read or allocated; without the cap, as not what the file holds.
    edit_config(&ckpt, "n_embd", 8192);
    edit_config(&ckpt, "n_layer", 2);
    edit_config(&ckpt, "n_head", 1);
    let out = runner_in_1gib(&["eval", "--checkpoint", ckpt_s]);
    assert_clear_error(&out, "this process may still map (ulimit -v) ");
    let out = runner(&["eval", "--checkpoint", ckpt_s]);
    assert_clear_error(&out, "expected F32, BF16 or F16 [256, 8192]");

    // More layers than the file has tensors for, and than fit memory
    // with even one window of 4096 positions.
    edit_config(&ckpt, "n_embd", 32);
    edit_config(&ckpt, "n_layer", 100_000);
    edit_config(&ckpt, "n_positions", 4096);
    let out = runner_in_1gib(&["eval", "--checkpoint", ckpt_s]);
    assert_clear_error(&out, "memory");
    edit_config(&ckpt, "n_positions", 32);
    edit_config(&ckpt, "n_layer", 1000);
    let out = runner_in_1gib(&["eval", "--checkpoint", ckpt_s]);
    assert_clear_error(&out, "holds 28 tensors");

    // A batch that cannot fit, over a text large enough to fill it (a
    // sparse file): refused from the text's size, before a byte of it is
    // read.
    edit_config(&ckpt, "n_layer", -1);
    let out = runner_in_1gib(&["eval", "--checkpoint", ckpt_s]);
    assert_clear_error(&out, "`n_layer` is -1, not a non-negative integer");
    edit_config(&ckpt, "n_layer", 2);
    let text = dir.join("huge.txt");
    let sparse_text = |bytes: u64| {
        let file = std::fs::File::create(&text).unwrap();
        file.set_len(bytes).unwrap();
    };
    sparse_text(1 << 27);
    let data = text.to_str().unwrap();
    let args = [
        "eval",
        "--checkpoint",
        ckpt_s,
        "--data",
        data,
        "--batch",
        "10000000",
    ];
    // (128 MiB: at most 2^22 windows of 32 tokens, so the batch is cut
    // to them, and still does not fit.)
    assert_clear_error(&runner_in_1gib(&args), "with batch 4194304 × 32 tokens");

    // A text whose tokens alone would not fit any machine here (1 TiB):
    // refused before it is read, by eval and by train.
    sparse_text(1 << 40);
    let needle = "the 1024.0 GiB text";
    assert_clear_error(&runner_in_1gib(&args[..5]), needle);
    let train = ["train", "--preset", "tiny", "--steps", "1", "--data", data];
    assert_clear_error(&runner_in_1gib(&train), needle);
    std::fs::remove_file(&text).unwrap();

    // Validation shards whose tokens, all held by eval, would not fit
    // (64 sparse shards of 2^31 - 1 tokens: 512 GiB as u32).
    let shards = dir.join("shards");
    std::fs::create_dir(&shards).unwrap();
    let count = i32::MAX;
    let mut header = vec![0u8; 1024];
    for (i, value) in [20240520, 1, count].into_iter().enumerate() {
        header[4 * i..][..4].copy_from_slice(&value.to_le_bytes());
    }
    let names = (0..64).map(|i| format!("x_val_{i:06}.bin"));
    for name in names.chain(["x_train_000001.bin".to_string()]) {
        let path = shards.join(name);
        std::fs::write(&path, &header).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(1024 + 2 * count as u64).unwrap();
    }
    let eval = [
        "eval",
        "--checkpoint",
        ckpt_s,
        "--data",
        shards.to_str().unwrap(),
    ];
    assert_clear_error(&runner_in_1gib(&eval), "137438953408 tokens");
    std::fs::remove_dir_all(&shards).unwrap();
}

/// A run resumed without `--data` reads the data its checkpoint records
/// (a file's absolute path), refuses it once it is gone, and takes the
/// `--data` given instead.
#[test]
fn a_resumed_run_reads_the_data_it_trained_on() {
    let dir = scratch("resume-data");
    let text = dir.join("corpus.txt");
    fs::write(
        &text,
        "All the world's a stage, and all the men and women merely players.\n".repeat(40),
    )
    .unwrap();
    let ckpt = dir.join("ckpt");
    let (ck, data) = (ckpt.to_str().unwrap(), text.to_str().unwrap());
    let first = [
        "train", "--preset", "tiny", "--steps", "2", "--data", data, "--save", ck,
    ];
    assert_success(&runner(&first));
    // From another folder, so that the path recorded must be absolute.
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["train", "--resume", ck, "--steps", "4", "--save", ck])
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert_success(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    let absolute = &text;
    assert!(absolute.is_absolute());
    assert!(
        log.contains(&format!("from {}", absolute.display())),
        "{log}"
    );
    // The same data through stdin, which cannot be read again: the save
    // keeps the path the run recorded.
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["train", "--resume", ck, "--steps", "5", "--save", ck, "-q"])
        .args(["--data", "/dev/stdin"])
        .stdin(fs::File::open(&text).unwrap())
        .output()
        .unwrap();
    assert_success(&out);
    let progress = checkpoint::load_progress(&ckpt).unwrap();
    assert_eq!(progress.step, 5);
    assert_eq!(progress.data_path.as_deref(), Some(absolute.as_path()));

    // Another text at the recorded path: refused as other data.
    let original = fs::read(&text).unwrap();
    fs::write(&text, "Now is the winter of our discontent.\n".repeat(60)).unwrap();
    let resume = ["train", "--resume", ck, "--steps", "7", "-q"];
    let changed = format!(
        "give the --data it was trained on (this run reads {})",
        text.display()
    );
    assert_clear_error(&runner(&resume), &changed);
    fs::write(&text, original).unwrap();

    let moved = dir.join("moved.txt");
    fs::rename(&text, &moved).unwrap();
    let gone = format!(
        "trained on {}, which is gone: give the --data it was trained on",
        absolute.display()
    );
    assert_clear_error(&runner(&resume), &gone);
    // A pipe there now would block the run: refused without reading it.
    let fifo = Command::new("mkfifo").arg(&text).status().unwrap();
    assert!(fifo.success());
    let pipe = format!(
        "trained on {}, which is neither a file nor a folder now",
        absolute.display()
    );
    assert_clear_error(&runner(&resume), &pipe);
    fs::remove_file(&text).unwrap();
    let given = [&resume[..], &["--data", moved.to_str().unwrap()]].concat();
    assert_success(&runner(&given));
    // A recorded path that is not absolute is a damaged state.
    set_state_metadata(&ckpt, "data_path", "corpus.txt");
    let relative = "metadata `data_path` is not an absolute path: `corpus.txt`";
    assert_clear_error(&runner(&given), relative);
}

#[test]
fn the_run_schedule_round_trips() {
    let dir = scratch("schedule");
    let cfg = Preset::Tiny.config(runner::data::Tokenizer::Byte);
    let model = Gpt::new(cfg, Kernels::best(), 3).unwrap();
    let optimizer = Optimizer::new(model.sizes());
    let schedule = RunSchedule {
        lr: 3e-4,
        warmup: 5,
        total_steps: 100,
        batch: 4,
        grad_accum: 2,
        seq_len: Some(32),
        data: Some(DataFingerprint {
            train_tokens: 9000,
            hash: u64::MAX - 1,
            shards_hash: Some(0x1234),
            shard_sizes_hash: Some(0x99),
        }),
    };
    let state = TrainingState {
        step: 7,
        rng_state: 42,
        moments: optimizer.moments(),
        schedule: Some(schedule),
        data_path: Some("/data/corpus.txt".into()),
    };
    let with = dir.join("with");
    checkpoint::save(&with, &model, Some(&state)).unwrap();
    // The same model and state save to the same bytes.
    let again = dir.join("again");
    checkpoint::save(&again, &model, Some(&state)).unwrap();
    for file in ["model.safetensors", "training.safetensors"] {
        assert_eq!(
            fs::read(with.join(file)).unwrap(),
            fs::read(again.join(file)).unwrap(),
            "{file}"
        );
    }
    let loaded = checkpoint::load_run(&with, model.params().len()).unwrap();
    assert_eq!((loaded.step, loaded.rng_state), (7, 42));
    assert_eq!(loaded.schedule, Some(schedule));
    assert_eq!(loaded.data_path, state.data_path);

    let changed = RunSchedule {
        lr: 1e-3,
        batch: 8,
        seq_len: Some(16),
        data: Some(DataFingerprint {
            train_tokens: 9000,
            hash: 1,
            shards_hash: None,
            shard_sizes_hash: None,
        }),
        ..schedule
    };
    assert_eq!(
        schedule.differences(&changed),
        [
            "--lr: checkpoint 0.0003, this run 0.001",
            "--batch: checkpoint 4, this run 8",
            "--seq-len: checkpoint 32, this run 16",
            "--data: checkpoint 9000 training tokens (hash fffffffffffffffe), this run 9000 training tokens (hash 0000000000000001)",
        ]
    );
    assert!(schedule.differences(&schedule).is_empty());
    // Shards of the same length but other tokens: only their hash tells;
    // a checkpoint saved before shards were hashed matches any.
    let saved_data = schedule.data.unwrap();
    let other_shards = RunSchedule {
        data: Some(DataFingerprint {
            shards_hash: Some(0x4321),
            ..saved_data
        }),
        ..schedule
    };
    assert_eq!(
        schedule.differences(&other_shards),
        ["--data: checkpoint 9000 training tokens (hash fffffffffffffffe, shards 0000000000001234, shard sizes 0000000000000099), this run 9000 training tokens (hash fffffffffffffffe, shards 0000000000004321, shard sizes 0000000000000099)"]
    );
    let unhashed = RunSchedule {
        data: Some(DataFingerprint {
            shards_hash: None,
            shard_sizes_hash: None,
            ..saved_data
        }),
        ..schedule
    };
    assert!(unhashed.differences(&other_shards).is_empty());
    assert!(other_shards.differences(&unhashed).is_empty());
    // The same tokens cut into other shards: only the sizes tell; a state
    // saved before they were hashed matches any cut, and is still held to
    // its tokens.
    let other_cut = RunSchedule {
        data: Some(DataFingerprint {
            shard_sizes_hash: Some(0x77),
            ..saved_data
        }),
        ..schedule
    };
    assert_eq!(
        schedule.differences(&other_cut),
        ["--data: checkpoint 9000 training tokens (hash fffffffffffffffe, shards 0000000000001234, shard sizes 0000000000000099), this run 9000 training tokens (hash fffffffffffffffe, shards 0000000000001234, shard sizes 0000000000000077)"]
    );
    let uncut = RunSchedule {
        data: Some(DataFingerprint {
            shard_sizes_hash: None,
            ..saved_data
        }),
        ..schedule
    };
    assert!(uncut.differences(&other_cut).is_empty());
    assert_eq!(uncut.differences(&other_shards).len(), 1);
    // A state saved before the sequence length and data were kept, or a
    // run whose data is not read yet, matches any.
    let unknown = RunSchedule {
        seq_len: None,
        data: None,
        ..schedule
    };
    for (saved, now) in [(&unknown, &changed), (&changed, &unknown)] {
        assert!(saved
            .differences(now)
            .iter()
            .all(|d| !d.contains("--seq-len") && !d.contains("--data")));
    }

    // Saved without a schedule (as by older runners): none comes back.
    let without = dir.join("without");
    let state = TrainingState {
        schedule: None,
        ..state
    };
    checkpoint::save(&without, &model, Some(&state)).unwrap();
    let loaded = checkpoint::load_run(&without, model.params().len()).unwrap();
    assert_eq!(loaded.schedule, None);
}

#[test]
fn moments_that_would_poison_adamw_are_refused() {
    let dir = scratch("nan");
    let model = Gpt::new(
        Preset::Tiny.config(runner::data::Tokenizer::Byte),
        Kernels::best(),
        3,
    )
    .unwrap();
    for (i, poison) in [(0, f32::NAN), (1, -1.0)] {
        let mut optimizer = Optimizer::new(model.sizes());
        let (m, v) = optimizer.moments_mut();
        let moment = if i == 0 { m } else { v };
        moment[5] = poison;
        let state = TrainingState {
            step: 0,
            rng_state: 1,
            moments: optimizer.moments(),
            schedule: None,
            data_path: None,
        };
        let ckpt = dir.join(format!("ckpt{i}"));
        checkpoint::save(&ckpt, &model, Some(&state)).unwrap();
        let err =
            checkpoint::load_run(&ckpt, model.params().len()).expect_err("poisoned moments load");
        assert!(
            err.to_string().contains("NaN, infinite or negative"),
            "{err}"
        );
    }
}

/// A step that fails (here the run diverges at step 2) leaves the run as
/// the step before it left it, and that is saved: the same bytes as a run
/// stopped there.
#[test]
fn a_failed_step_saves_the_run_as_the_step_before_left_it() {
    let dir = scratch("failed-step");
    let (failed, stopped) = (dir.join("failed"), dir.join("stopped"));
    let run = |ckpt: &Path, extra: &[&str]| {
        let ck = ckpt.to_str().unwrap();
        let args = ["train", "--preset", "tiny", "--steps", "20", "--lr", "1e30"];
        runner(&[&args[..], &["--save", ck, "-q"], extra].concat())
    };
    let diverged = format!(
        "training diverged: the gradient norm is NaN at step 2; try a lower --lr; the run as step 1 left it was saved to {}",
        failed.display()
    );
    assert_clear_error(&run(&failed, &[]), &diverged);
    assert_success(&run(&stopped, &["--stop-at", "1"]));
    for file in ["model.safetensors", "training.safetensors"] {
        let bytes = |ckpt: &Path| fs::read(ckpt.join(file)).unwrap();
        assert!(bytes(&failed) == bytes(&stopped), "{file} differs");
    }
}

/// Finite moments that AdamW could not have written (a damaged file) are
/// refused on resuming, before any step, not reported later as a
/// diverged run.
#[test]
fn moments_adamw_cannot_produce_are_refused_on_resuming() {
    let dir = scratch("huge-moments");
    let ckpt = dir.join("ck");
    assert_success(&train_tiny(&ckpt, "3", "1"));
    let path = ckpt.join("training.safetensors");
    let bytes = fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let m = st.tensor("adam_m").unwrap();
    // Where adam_m's data lies in the file: the header, then the data.
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let offset = m.data().as_ptr() as usize - bytes.as_ptr() as usize;
    assert!(offset >= header);
    let mut damaged = bytes.clone();
    damaged[offset + 4 * 9..][..4].copy_from_slice(&3e38f32.to_le_bytes());
    fs::write(&path, &damaged).unwrap();
    let out = runner(&[
        "train",
        "--resume",
        ckpt.to_str().unwrap(),
        "--steps",
        "6",
        "-q",
    ]);
    assert_clear_error(&out, "parameter 9 has AdamW moments m 3e38");
    assert!(String::from_utf8_lossy(&out.stderr).contains("the file is damaged"));
}

/// A `config.json` edited beside a saved run is named as the cause, not
/// the run's settings.
#[test]
fn an_edited_config_is_blamed_on_resuming() {
    let dir = scratch("edited-config");
    let ckpt = dir.join("ck");
    assert_success(&train_tiny(&ckpt, "3", "1"));
    let ck = ckpt.to_str().unwrap();
    let resume = |extra: &[&str]| resume_to_step_6(ck, extra);
    // The weights are checked against it before the state, whose
    // sequence length (32) differs from the run's default (the block
    // size): a smaller block size, a larger one.
    edit_config(&ckpt, "n_positions", 16);
    assert_clear_error(
        &resume(&[]),
        "tensor wpe.weight is F32 [32, 32], expected F32, BF16 or F16 [16, 32]",
    );
    edit_config(&ckpt, "n_positions", 64);
    for extra in [&[][..], &["--seq-len", "32"]] {
        assert_clear_error(
            &resume(extra),
            "tensor wpe.weight is F32 [32, 32], expected",
        );
    }
    // So is another model's width (a config.json from another checkpoint).
    edit_config(&ckpt, "n_embd", 128);
    assert_clear_error(&resume(&[]), "tensor wte.weight is F32 [256, 32], expected");
    edit_config(&ckpt, "n_embd", 32);
    edit_config(&ckpt, "n_positions", 32);
    // A state that trained past the weights' block size is not theirs.
    let seq_len = state_metadata(&ckpt, "seq_len");
    set_state_metadata(&ckpt, "seq_len", "64");
    assert_clear_error(
        &resume(&["--seq-len", "32"]),
        "training.safetensors says its run trained at --seq-len 64, longer than the block size of 32",
    );
    set_state_metadata(&ckpt, "seq_len", &seq_len);
    // Another head count: weights of the same shapes, another model,
    // which every command that loads them refuses.
    edit_config(&ckpt, "n_head", 4);
    let other_heads =
        "config.json gives n_head 4, but model.safetensors was saved from a model of 2 heads";
    assert_clear_error(&resume(&[]), other_heads);
    assert_clear_error(&runner(&["eval", "--checkpoint", ck]), other_heads);
    let generate = [
        "generate",
        "--checkpoint",
        ck,
        "--prompt",
        "a",
        "--max-new-tokens",
        "1",
    ];
    assert_clear_error(&runner(&generate), other_heads);
    edit_config(&ckpt, "n_head", 2);
    assert_success(&runner(&generate));
    assert_success(&resume(&[]));
}

#[test]
fn resuming_with_another_schedule_or_an_impossible_batch_is_refused() {
    let dir = scratch("resume-settings");
    let ckpt = dir.join("ck");
    assert_success(&train_tiny(&ckpt, "3", "1"));
    let ck = ckpt.to_str().unwrap();
    let saved_hash = state_metadata(&ckpt, "data_hash");
    assert_eq!(saved_hash.len(), 16, "{saved_hash}");
    let resume = |extra: &[&str]| resume_to_step_6(ck, extra);
    // The saved run used the default --lr; another one would not continue it.
    assert_clear_error(&resume(&["--lr", "0.5"]), "--lr: checkpoint");
    assert_clear_error(
        &resume(&["--grad-accum", "2"]),
        "leave those options out to take the checkpoint's, or start",
    );
    assert_clear_error(
        &resume(&["--seq-len", "16"]),
        "--seq-len: checkpoint 32, this run 16",
    );
    // An absurd batch is refused before anything is allocated.
    assert_clear_error(&resume(&["--batch", "100000000000"]), "sequences per step");
    assert_clear_error(&resume(&["--batch", "1000000"]), "--batch: checkpoint 8");
    // Other data: refused after reading it, before any step. A text of
    // the embedded corpus's length is still other data.
    let text = dir.join("other.txt");
    let embedded = runner::data::corpus::text().len();
    let other: Vec<u8> = b"to be or not to be "
        .iter()
        .copied()
        .cycle()
        .take(embedded)
        .collect();
    fs::write(&text, other).unwrap();
    let out = resume(&["--data", text.to_str().unwrap()]);
    assert_clear_error(&out, "--data: checkpoint ");
    assert_clear_error(
        &out,
        &format!(
            "give the --data it was trained on (this run reads {}), or start a new run from its weights with --init-from",
            text.display()
        ),
    );
    // A fingerprint that does not parse is a corrupt state, not a panic.
    set_state_metadata(&ckpt, "data_hash", "not hex");
    assert_clear_error(
        &resume(&[]),
        "metadata `data_hash` is not a hexadecimal number",
    );
    // Its --steps unknown, the state is blamed, not --stop-at.
    let out = runner(&["train", "--resume", ck, "--stop-at", "500"]);
    assert_clear_error(&out, "metadata `data_hash` is not a hexadecimal number");
    set_state_metadata(&ckpt, "data_hash", &saved_hash);
    let saved_batch = state_metadata(&ckpt, "batch");
    set_state_metadata(&ckpt, "batch", "0");
    assert_clear_error(&resume(&[]), "stored batch or grad_accum is 0");
    set_state_metadata(&ckpt, "batch", &saved_batch);
    // Part of a schedule or of a fingerprint is damage, not a state saved
    // without one (which would resume with the defaults, on any data).
    for (key, saved) in [("lr", "0.001"), ("data_hash", saved_hash.as_str())] {
        edit_state_metadata(&ckpt, key, None);
        assert_clear_error(&resume(&[]), &format!("metadata lacks `{key}`"));
        set_state_metadata(&ckpt, key, saved);
    }
    // A window of 0 is damage too, not a default to train with.
    set_state_metadata(&ckpt, "seq_len", "0");
    assert_clear_error(&resume(&[]), "stored total_steps or seq_len is 0");
    set_state_metadata(&ckpt, "seq_len", "32");
    // A step past the run's own length: damaged, not resumable.
    set_state_metadata(&ckpt, "total_steps", "2");
    assert_clear_error(&resume(&[]), "stored step 3 is past its run's 2 steps");
    set_state_metadata(&ckpt, "total_steps", "3");
    // Extending --steps is what resuming is for; the log says the decay
    // moved.
    let out = resume(&[]);
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let moved = "--steps 6 is not the checkpoint's 3: the learning rate's decay now ends at step 6";
    assert!(stderr.contains(moved), "{stderr}");
    let _ = fs::remove_dir_all(&dir);
}

/// `--resume DIR` alone continues the run as it was asked for: its
/// steps, batch, accumulation, learning rate, warm-up and window come
/// from the checkpoint, and the losses are those of the run not stopped.
#[test]
fn resuming_takes_the_run_settings_not_given() {
    let dir = scratch("resume-defaults");
    let (full, resumed) = (dir.join("full.jsonl"), dir.join("resumed.jsonl"));
    let ck = dir.join("ck");
    let ck = ck.to_str().unwrap();
    let schedule = [
        "train",
        "--preset",
        "tiny",
        "--steps",
        "6",
        "--batch",
        "3",
        "--grad-accum",
        "2",
        "--lr",
        "0.003",
        "--warmup",
        "2",
        "--seq-len",
        "16",
        "--seed",
        "5",
        "-q",
    ];
    let json = |path| ["--json", path];
    let (full_json, resumed_json) = (full.to_str().unwrap(), resumed.to_str().unwrap());
    assert_success(&runner(&[&schedule[..], &json(full_json)].concat()));
    let stopped = [&schedule[..], &["--stop-at", "3", "--save", ck]].concat();
    assert_success(&runner(&stopped));
    let resume = ["train", "--resume", ck, "-q"];
    assert_success(&runner(&[&resume[..], &json(resumed_json)].concat()));
    let (full, resumed) = (json_losses(&full), json_losses(&resumed));
    assert_eq!(full.len(), 6);
    assert_eq!(resumed, full[3..], "the resumed run is another one");
    let _ = fs::remove_dir_all(&dir);
}

/// The value under `key` in the metadata of `ckpt`'s training state.
fn state_metadata(ckpt: &Path, key: &str) -> String {
    let bytes = fs::read(ckpt.join("training.safetensors")).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    header.metadata().as_ref().unwrap()[key].clone()
}

/// Rewrites `ckpt`'s training state with `key` set to `value` in its
/// metadata.
fn set_state_metadata(ckpt: &Path, key: &str, value: &str) {
    edit_state_metadata(ckpt, key, Some(value));
}

/// Sets `key` to `value` in the metadata of `ckpt`'s training state, or
/// removes it where `value` is `None`.
fn edit_state_metadata(ckpt: &Path, key: &str, value: Option<&str>) {
    use safetensors::SafeTensors;

    let path = ckpt.join("training.safetensors");
    let bytes = fs::read(&path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    match value {
        Some(value) => meta.insert(key.into(), value.into()),
        None => meta.remove(key),
    };
    let st = SafeTensors::deserialize(&bytes).unwrap();
    fs::write(
        &path,
        safetensors::serialize(st.tensors(), Some(meta)).unwrap(),
    )
    .unwrap();
}

#[test]
fn an_unwritable_destination_is_refused_before_training() {
    let dir = scratch("unwritable");
    let missing_parent = dir.join("no-such-dir").join("ckpt");
    // Without -q: a single stderr line proves no step ran (each logs).
    let train_to = |dest: &str| {
        runner(&[
            "train", "--preset", "tiny", "--steps", "500", "--save", dest,
        ])
    };
    assert_clear_error(
        &train_to(missing_parent.to_str().unwrap()),
        "is not a directory",
    );
    assert!(!missing_parent.parent().unwrap().exists());
    assert_clear_error(&train_to("/proc/runner-ckpt"), "cannot write in /proc");
    assert!(
        hidden_entries(&dir).is_empty(),
        "{:?}",
        hidden_entries(&dir)
    );
}

#[test]
fn stop_at_past_the_last_step_is_refused() {
    let out = runner(&[
        "train",
        "--preset",
        "tiny",
        "--steps",
        "5",
        "--stop-at",
        "6",
    ]);
    assert_clear_error(&out, "--stop-at 6 is after the last step");
}

/// `ckpt`'s weights with a copy of `h.0.ln_1.weight`, zeroed, added as
/// `name`.
fn add_tensor(ckpt: &Path, name: &str) {
    use safetensors::tensor::TensorView;
    use safetensors::SafeTensors;

    let path = ckpt.join("model.safetensors");
    let bytes = fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, TensorView)> = st.tensors();
    let (_, ln) = views
        .iter()
        .find(|(name, _)| name == "transformer.h.0.ln_1.weight")
        .unwrap();
    let zeros = vec![0u8; ln.data().len()];
    let extra = TensorView::new(ln.dtype(), ln.shape().to_vec(), &zeros).unwrap();
    views.push((name.into(), extra));
    fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn tensors_the_model_does_not_read_are_refused_or_named() {
    let dir = scratch("extra-tensors");
    let ckpt = dir.join("ck");
    assert_success(&train_tiny(&ckpt, "1", "1"));
    let saved = fs::read(ckpt.join("model.safetensors")).unwrap();
    let eval = || runner(&["eval", "--checkpoint", ckpt.to_str().unwrap()]);

    // One tensor under both names: which is the model is anyone's guess.
    add_tensor(&ckpt, "h.0.ln_1.weight");
    assert_clear_error(
        &eval(),
        "holds both transformer.h.0.ln_1.weight and h.0.ln_1.weight",
    );

    // A tensor no parameter reads loads, with one warning naming it.
    fs::write(ckpt.join("model.safetensors"), &saved).unwrap();
    add_tensor(&ckpt, "transformer.h.0.attn.rotary");
    let out = eval();
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 tensor(s) this model does not read, ignored (the first: transformer.h.0.attn.rotary)"),
        "{stderr}"
    );
    // Hugging Face's attention-mask buffers pass without a word.
    fs::write(ckpt.join("model.safetensors"), &saved).unwrap();
    add_tensor(&ckpt, "h.0.attn.bias");
    let out = eval();
    assert_success(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("does not read"));
}

/// A mistake a cheap check finds is the one error line of `eval` and
/// `generate`: found before the checkpoint is read (here its weights are
/// cut short, which reading them would report instead), and with no
/// warning of the options before it.
#[test]
fn cheap_mistakes_are_refused_first_and_alone() {
    let dir = scratch("cheap-first");
    let ckpt = dir.join("ck");
    assert_success(&train_tiny(&ckpt, "1", "1"));
    let ck = ckpt.to_str().unwrap();
    let model = ckpt.join("model.safetensors");
    let bytes = fs::read(&model).unwrap();
    fs::write(&model, &bytes[..100]).unwrap();
    let text = |name: &str, content: &[u8]| {
        let path = dir.join(name);
        fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (empty, one) = (text("empty.txt", b""), text("one.txt", b"a"));
    let eval = |data: &str| runner(&["eval", "--checkpoint", ck, "--data", data]);
    assert_clear_error(&eval(&empty), "the file is empty");
    assert_clear_error(&eval(&one), "evaluation needs at least 2 tokens");
    let emulated = ["--backend", "scalar", "--precision", "bf16"];
    let out = runner(&[&["eval", "--checkpoint", ck, "--batch", "0"][..], &emulated].concat());
    assert_clear_error(&out, "--batch must be at least 1");
    let generate = ["generate", "--checkpoint", ck, "--prompt", ""];
    assert_clear_error(
        &runner(&[&generate[..], &emulated].concat()),
        "the prompt is empty",
    );
    let out = runner(&[&generate[..], &["--bf16-unit", "portable"]].concat());
    assert_clear_error(&out, "the prompt is empty");
    // With the checkpoint whole again, the warnings come once accepted.
    fs::write(&model, &bytes).unwrap();
    let out = runner(
        &[
            &["generate", "--checkpoint", ck, "--prompt", "a"][..],
            &emulated,
        ]
        .concat(),
    );
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("[warn] this CPU or backend has no bf16 unit"));
}
