//! Nothing a user made is lost, and bad input is refused before any
//! work: outputs that would overwrite an input or land inside a checkpoint
//! being replaced, checkpoints that do not say what they hold, counts no
//! machine could run, and inputs that are not files.

mod common;
use common::{assert_clear_error, assert_success, runner, scratch};

use std::path::Path;

/// A tiny checkpoint at step 2 in `dir/name`.
fn tiny_checkpoint(dir: &Path, name: &str) -> String {
    let ckpt = dir.join(name).to_str().unwrap().to_owned();
    let out = runner(&[
        "train",
        "--preset",
        "tiny",
        "--steps",
        "10",
        "--stop-at",
        "2",
        "--batch",
        "2",
        "--save",
        &ckpt,
        "-q",
    ]);
    assert_success(&out);
    ckpt
}

fn text(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        "To be, or not to be, that is the question.\n".repeat(20),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn outputs_never_overwrite_what_the_run_reads_or_saves() {
    let dir = scratch("outputs");
    let ckpt = tiny_checkpoint(&dir, "ckpt");
    let model = Path::new(&ckpt).join("model.safetensors");
    let weights = std::fs::read(&model).unwrap();
    let data = text(&dir, "data.txt");
    let corpus = std::fs::read(&data).unwrap();
    let resume = ["train", "--resume", &ckpt, "--steps", "10", "--batch", "2"];

    let into_model = [&resume[..], &["--json", model.to_str().unwrap()]].concat();
    assert_clear_error(&runner(&into_model), "which this run reads");
    for option in ["--json", "--plot"] {
        let args = [
            "train", "--preset", "tiny", "--steps", "1", "--data", &data, option, &data,
        ];
        assert_clear_error(&runner(&args), "which this run reads");
    }
    assert_eq!(std::fs::read(&model).unwrap(), weights);
    assert_eq!(std::fs::read(&data).unwrap(), corpus);

    // A run refused for another reason leaves an existing log as it was.
    let log = dir.join("old.jsonl");
    std::fs::write(&log, "a log the user kept\n").unwrap();
    let other_batch = [
        "train",
        "--resume",
        &ckpt,
        "--steps",
        "10",
        "--batch",
        "3",
        "--json",
        log.to_str().unwrap(),
    ];
    assert_clear_error(&runner(&other_batch), "batch");
    // Refused from the state's header, before the data is read (this
    // data would be refused too, and would never end).
    let with_data = [&other_batch[..], &["--data", "/dev/zero"]].concat();
    assert_clear_error(&runner(&with_data), "--batch: checkpoint 2");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "a log the user kept\n"
    );

    // Inside the folder a save replaces whole: refused before training.
    let save = dir.join("new");
    let plot = save.join("loss.svg");
    let args = [
        "train",
        "--preset",
        "tiny",
        "--steps",
        "1",
        "--save",
        save.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ];
    assert_clear_error(&runner(&args), "--save folder");

    // `ckpt/.` is the checkpoint itself, replaced in place.
    let dot = format!("{ckpt}/.");
    let out = runner(&[&resume[..], &["--stop-at", "3", "--save", &dot, "-q"]].concat());
    assert_success(&out);
    let again = runner(&[&resume[..], &["--stop-at", "3"]].concat());
    assert_clear_error(&again, "not after the checkpoint's step 3");
}

#[test]
fn checkpoints_that_misdescribe_their_weights_are_refused() {
    let dir = scratch("misdescribed");
    let ckpt = tiny_checkpoint(&dir, "ckpt");
    let config = Path::new(&ckpt).join("config.json");
    let json = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, json.replace("\"n_layer\": 2", "\"n_layer\": 1")).unwrap();
    assert_clear_error(
        &runner(&["eval", "--checkpoint", &ckpt]),
        "beyond the 1 layers",
    );
    std::fs::write(&config, &json).unwrap();

    // A NaN among the weights: the first float of the data section.
    let model = Path::new(&ckpt).join("model.safetensors");
    let mut bytes = std::fs::read(&model).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + header..][..4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&model, &bytes).unwrap();
    assert_clear_error(&runner(&["eval", "--checkpoint", &ckpt]), "holds NaN");
    let resume = ["train", "--resume", &ckpt, "--steps", "10", "--batch", "2"];
    assert_clear_error(&runner(&resume), "holds NaN");

    // A save stopped between its two renames left the previous copy aside.
    let aside = dir.join(".gone.old-123");
    std::fs::rename(&ckpt, &aside).unwrap();
    let gone = dir.join("gone");
    assert_clear_error(
        &runner(&["eval", "--checkpoint", gone.to_str().unwrap()]),
        ".gone.old-123",
    );
}

#[test]
fn options_a_checkpoint_already_has_are_not_a_mismatch() {
    let dir = scratch("same-shape");
    let ckpt = tiny_checkpoint(&dir, "ckpt");
    for extra in [["--tokenizer", "byte"], ["--block-size", "32"]] {
        let args = [
            &[
                "train",
                "--init-from",
                &ckpt,
                "--steps",
                "1",
                "--batch",
                "2",
                "-q",
            ][..],
            &extra[..],
        ]
        .concat();
        assert_success(&runner(&args));
    }
    let other = [
        "train",
        "--init-from",
        &ckpt,
        "--steps",
        "1",
        "--block-size",
        "16",
    ];
    assert_clear_error(&runner(&other), "asks for L2 H2 C32 T16");
}

#[test]
fn counts_no_machine_could_run_are_refused_before_work() {
    let dir = scratch("counts");
    let ckpt = tiny_checkpoint(&dir, "ckpt");
    let bench = [
        "bench",
        "--preset",
        "tiny",
        "--seq-lens",
        "8",
        "--backends",
        "scalar",
    ];
    let cases: [(Vec<&str>, &str); 8] = [
        (
            [&bench[..], &["--steps", "18446744073709551614"]].concat(),
            "--steps",
        ),
        ([&bench[..], &["--batch", "100000000"]].concat(), "memory"),
        (
            vec!["train", "--preset", "tiny", "--stop-at", "0"],
            "--stop-at",
        ),
        (
            vec!["train", "--preset", "tiny", "--threads", "100000"],
            "--threads",
        ),
        (
            vec!["eval", "--checkpoint", &ckpt, "--batch", "0"],
            "--batch",
        ),
        (
            vec!["train", "--preset", "tiny", "--data", "/dev/zero"],
            "not a regular file",
        ),
        (
            vec![
                "train",
                "--preset",
                "tiny",
                "--data",
                "/dev/zero",
                "--heads",
                "3",
            ],
            "heads",
        ),
        (
            vec![
                "generate",
                "--checkpoint",
                &ckpt,
                "--prompt",
                "To",
                "--json",
                "/nonexistent/out.json",
            ],
            "nonexistent",
        ),
    ];
    for (args, needle) in cases {
        let out = runner(&args);
        assert_clear_error(&out, needle);
        assert!(out.stdout.is_empty(), "{args:?} printed output first");
    }
}

#[test]
fn prepare_leaves_nothing_half_made() {
    let dir = scratch("prepare-half");
    let data = text(&dir, "data.txt");
    let folder = dir.join("folder");
    std::fs::create_dir(&folder).unwrap();
    let out = dir.join("shards");
    let prepare = |inputs: &[&str], val_tokens: &str| {
        let mut args = vec!["prepare", "--tokenizer", "byte", "--input"];
        args.extend_from_slice(inputs);
        args.extend_from_slice(&[
            "--output",
            out.to_str().unwrap(),
            "--val-tokens",
            val_tokens,
            "--shard-tokens",
            "100",
            "-q",
        ]);
        runner(&args)
    };
    // A folder among the inputs is refused before the first is tokenized.
    let refused = prepare(&[&data, folder.to_str().unwrap()], "50");
    assert_clear_error(&refused, "not a regular file");
    assert!(!out.exists(), "the output folder was left behind");
    // Inputs that all fit the validation shard train nothing.
    assert_clear_error(&prepare(&[&data], "100000"), "--val-tokens");
    assert!(!out.exists(), "shards were left behind");
    // Sizes no shard header can hold, into folders that do not exist yet.
    let nested = dir.join("a").join("b");
    let args = [
        "prepare",
        "--tokenizer",
        "byte",
        "--input",
        &data,
        "--output",
        nested.to_str().unwrap(),
        "--shard-tokens",
        "3000000000",
    ];
    assert_clear_error(&runner(&args), "does not fit");
    assert!(!dir.join("a").exists(), "the new folders were left behind");
    assert_success(&prepare(&[&data], "50"));
    assert!(out.join("data_train_000001.bin").exists());
}
