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
    std::fs::write(&log, "{\"kind\":\"eval\",\"step\":7}\n").unwrap();
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
        "{\"kind\":\"eval\",\"step\":7}\n"
    );

    // An output replaces only what an earlier run of it wrote: not another
    // checkpoint's weights or its config.json, nor a text under an SVG's
    // name.
    let other = tiny_checkpoint(&dir, "other");
    let other_model = Path::new(&other).join("model.safetensors");
    let other_weights = std::fs::read(&other_model).unwrap();
    let other_s = other_model.to_str().unwrap();
    let tiny = ["--preset", "tiny", "--steps", "1", "-q"];
    for args in [
        [&["train"][..], &tiny, &["--json", other_s]].concat(),
        [
            &[
                "bench",
                "--seq-lens",
                "8",
                "--no-decoding",
                "--json",
                other_s,
            ][..],
            &tiny[..4],
        ]
        .concat(),
        vec![
            "generate",
            "--checkpoint",
            &ckpt,
            "--prompt",
            "a",
            "--json",
            other_s,
        ],
    ] {
        assert_clear_error(&runner(&args), "exists and is not a JSON-lines log");
    }
    assert_eq!(std::fs::read(&other_model).unwrap(), other_weights);
    let other_config = Path::new(&other).join("config.json");
    let config = std::fs::read(&other_config).unwrap();
    let json_config = [
        &["train"][..],
        &tiny,
        &["--json", other_config.to_str().unwrap()],
    ]
    .concat();
    assert_clear_error(&runner(&json_config), "exists and is not a JSON-lines log");
    assert_eq!(std::fs::read(&other_config).unwrap(), config);
    let notes = dir.join("notes.svg");
    std::fs::write(&notes, "notes, not a plot\n").unwrap();
    let plot_notes = [&["train"][..], &tiny, &["--plot", notes.to_str().unwrap()]].concat();
    assert_clear_error(&runner(&plot_notes), "exists and is not a loss plot");
    assert_eq!(
        std::fs::read_to_string(&notes).unwrap(),
        "notes, not a plot\n"
    );
    // An earlier run's log is replaced.
    let log_s = log.to_str().unwrap();
    assert_success(&runner(
        &[&["train"][..], &tiny, &["--json", log_s]].concat(),
    ));
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .starts_with("{\"kind\":\"train_step\""));

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
    let gone_s = gone.to_str().unwrap();
    assert_clear_error(&runner(&["eval", "--checkpoint", gone_s]), ".gone.old-123");
    // Saving there would delete that copy: refused, and the copy kept.
    let save = [
        "train", "--preset", "tiny", "--steps", "1", "--save", gone_s,
    ];
    assert_clear_error(&runner(&save), ".gone.old-123");
    // Nor once an empty folder stands in its place, which eval names too.
    std::fs::create_dir(&gone).unwrap();
    assert_clear_error(&runner(&save), ".gone.old-123");
    assert_clear_error(
        &runner(&["eval", "--checkpoint", gone_s]),
        "empty; a save that was stopped left the previous checkpoint at",
    );
    std::fs::remove_dir(&gone).unwrap();
    assert!(aside.join("model.safetensors").exists());
    std::fs::rename(&aside, &ckpt).unwrap();

    // Weights so large that the arithmetic overflows: no silent NaN loss.
    let mut bytes = std::fs::read(&model).unwrap();
    for x in bytes[8 + header..].chunks_exact_mut(4) {
        x.copy_from_slice(&f32::MAX.to_le_bytes());
    }
    std::fs::write(&model, &bytes).unwrap();
    // (Found only by running the model: `-q` keeps its start line out.)
    let eval = ["eval", "--checkpoint", &ckpt, "-q"];
    assert_clear_error(&runner(&eval), "NaN or infinite");
    let generate = ["generate", "--checkpoint", &ckpt, "--prompt", "To", "-q"];
    assert_clear_error(&runner(&generate), "NaN or infinite");

    // A file of the checkpoint that is not a regular file (a device would
    // never end, a pipe would block the open).
    #[cfg(unix)]
    {
        std::fs::remove_file(&model).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &model).unwrap();
        assert_clear_error(
            &runner(&["eval", "--checkpoint", &ckpt]),
            "model.safetensors is not a regular file",
        );
    }
    // A checkpoint path that is a file.
    assert_clear_error(
        &runner(&["eval", "--checkpoint", model.to_str().unwrap()]),
        "not a directory",
    );
}

#[test]
fn a_bad_checkpoint_is_refused_before_the_data_is_read() {
    let dir = scratch("checkpoint-first");
    let ckpt = tiny_checkpoint(&dir, "ckpt");
    std::fs::remove_file(Path::new(&ckpt).join("model.safetensors")).unwrap();
    let train_and_eval = |data: &Path| {
        let data = data.to_str().unwrap();
        let train = [
            "train",
            "--init-from",
            &ckpt,
            "--data",
            data,
            "--steps",
            "1",
        ];
        [
            runner(&train),
            runner(&["eval", "--checkpoint", &ckpt, "--data", data]),
        ]
    };
    // The data is a shard whose header is sound but whose token (300) is
    // past the byte model's vocabulary, which only reading it finds: the
    // error is the checkpoint's, so the checkpoint was read first.
    let shard = dir.join("tokens.bin");
    let mut bytes = vec![0u8; 1024];
    for (i, value) in [20240520i32, 1, 64].into_iter().enumerate() {
        bytes[4 * i..][..4].copy_from_slice(&value.to_le_bytes());
    }
    bytes.extend((0..64u16).flat_map(|i| (if i == 5 { 300 } else { i }).to_le_bytes()));
    std::fs::write(&shard, &bytes).unwrap();
    for out in train_and_eval(&shard) {
        assert_clear_error(&out, "model.safetensors is missing");
    }
    // An empty text is refused from its size, before either is read.
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    for out in train_and_eval(&empty) {
        assert_clear_error(&out, "empty.txt: the file is empty");
    }
    // A data path that does not exist is found before either is read.
    for out in train_and_eval(&dir.join("missing.txt")) {
        assert_clear_error(&out, "missing.txt");
    }
}

#[test]
fn a_save_never_deletes_a_folder_under_a_checkpoint_files_name() {
    let dir = scratch("folder-named-like-a-file");
    let out = dir.join("out");
    std::fs::create_dir_all(out.join("config.json")).unwrap();
    std::fs::write(out.join("config.json").join("notes.txt"), b"mine").unwrap();
    let save = out.to_str().unwrap();
    let args = ["train", "--preset", "tiny", "--steps", "1", "--save", save];
    assert_clear_error(&runner(&args), "not a file");
    assert_eq!(
        std::fs::read(out.join("config.json").join("notes.txt")).unwrap(),
        b"mine"
    );
}

#[test]
fn generation_stops_when_its_reader_leaves() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let dir = scratch("closed-pipe");
    let ckpt = tiny_checkpoint(&dir, "ckpt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["generate", "--checkpoint", &ckpt, "--prompt", "To", "-q"])
        .args(["--max-new-tokens", "1000000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // As `runner generate ... | head -c 16` does: read a little, leave.
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("generate kept running after its reader left");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");

    // Any other failure to write (a full disk) is an error.
    #[cfg(target_os = "linux")]
    {
        let out = Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(["generate", "--checkpoint", &ckpt, "--prompt", "To", "-q"])
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        assert_clear_error(&out, "stdout: No space left on device");
    }
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
    // More threads than 8 a core: they would crowd out the work.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let too_many = (8 * cores + 1).to_string();
    let cases: [(Vec<&str>, &str); 9] = [
        (
            vec![
                "generate",
                "--checkpoint",
                &ckpt,
                "--prompt",
                "a",
                "--threads",
                &too_many,
            ],
            "a core",
        ),
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
    // Options that earn a warning, in runs refused later on: the error
    // line comes alone.
    let over = (cores + 1).to_string();
    let missing = dir.join("missing.txt");
    let missing = missing.to_str().unwrap();
    let user_file = dir.join("notes.txt");
    std::fs::write(&user_file, b"mine").unwrap();
    let warned: [(Vec<&str>, &str); 4] = [
        (
            vec![
                "train",
                "--preset",
                "tiny",
                "--steps",
                "2",
                "--stop-at",
                "1",
                "--data",
                missing,
            ],
            "missing.txt",
        ),
        (
            vec![
                "train",
                "--preset",
                "tiny",
                "--threads",
                &over,
                "--data",
                missing,
            ],
            "missing.txt",
        ),
        (
            vec![
                "train",
                "--preset",
                "tiny",
                "--warmup",
                "5",
                "--steps",
                "2",
                "--log-every",
                "0",
            ],
            "--log-every must be at least 1",
        ),
        (
            [
                &bench[..],
                &["--threads", &over, "--json", user_file.to_str().unwrap()],
            ]
            .concat(),
            "not a JSON-lines log",
        ),
    ];
    for (args, needle) in warned {
        assert_clear_error(&runner(&args), needle);
    }
}

#[test]
fn prepare_leaves_nothing_half_made() {
    let dir = scratch("prepare-half");
    let data = text(&dir, "data.txt");
    let folder = dir.join("folder");
    std::fs::create_dir(&folder).unwrap();
    let out = dir.join("shards");
    let prepare_with = |tokenizer: &str, inputs: &[&str], val_tokens: &str| {
        let mut args = vec!["prepare", "--tokenizer", tokenizer, "--input"];
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
    let prepare = |inputs: &[&str], val_tokens: &str| prepare_with("byte", inputs, val_tokens);
    // A folder among the inputs is refused before the first is tokenized.
    let refused = prepare(&[&data, folder.to_str().unwrap()], "50");
    assert_clear_error(&refused, "not a regular file");
    assert!(!out.exists(), "the output folder was left behind");
    // Inputs that all fit the validation shard train nothing: refused
    // before any work where their size alone says so...
    let size = std::fs::metadata(&data).unwrap().len();
    assert!(size < 100_000);
    assert_clear_error(&prepare(&[&data], "100000"), "give at most");
    assert!(!out.exists(), "the output folder was left behind");
    // (bytes are exactly as many tokens as bytes)...
    let refused = prepare(&[&data], &size.to_string());
    assert_clear_error(&refused, &format!("give at most {size} tokens"));
    assert!(!out.exists(), "the output folder was left behind");
    // ...and once tokenized where only the tokens do (GPT-2's are fewer
    // than the bytes): what was written by then is removed.
    let refused = prepare_with("gpt2", &[&data], &size.to_string());
    assert_clear_error(&refused, "tokens, none left for training after");
    assert!(!String::from_utf8_lossy(&refused.stderr).contains("at most"));
    assert!(!out.exists(), "shards were left behind");
    // Every folder made on the way is removed, whatever the path's form;
    // `DIR/.` is the folder DIR.
    let winding = dir.join("w").join("x").join("..").join("y");
    let winding = winding.to_str().unwrap();
    let refused = runner(&[
        "prepare",
        "--tokenizer",
        "gpt2",
        "--input",
        &data,
        "--output",
        winding,
        "--val-tokens",
        &size.to_string(),
        "-q",
    ]);
    assert_clear_error(&refused, "tokens, none left for training after");
    assert!(!dir.join("w").exists(), "the new folders were left behind");
    let dotted = dir.join("d").join(".");
    let made = runner(&[
        "prepare",
        "--input",
        &data,
        "--output",
        dotted.to_str().unwrap(),
        "--val-tokens",
        "100",
        "-q",
    ]);
    assert_success(&made);
    assert!(dir.join("d").join("data_val_000000.bin").exists());
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
    assert_clear_error(&runner(&args), "--shard-tokens 3000000000 does not fit");
    assert!(!dir.join("a").exists(), "the new folders were left behind");
    // A validation shard too short for training to use.
    let one = [&args[..], &["--val-tokens", "1"]].concat();
    assert_clear_error(&runner(&one), "--val-tokens must be at least 2");
    assert!(!dir.join("a").exists(), "the new folders were left behind");
    // An output that is a file.
    let mut args = args;
    args[6] = &data;
    args[8] = "100";
    assert_clear_error(&runner(&args), "exists and is not a folder");
    // Or one under a file.
    let under = format!("{data}/sub");
    args[6] = &under;
    assert_clear_error(
        &runner(&args),
        &format!("{data} exists and is not a folder"),
    );
    // A file named like an unfinished shard is the user's, never replaced.
    std::fs::create_dir_all(&out).unwrap();
    let tmp = out.join("data_val_000000.bin.tmp");
    let other = out.join("data_train_000001.bin.tmp");
    std::fs::write(&tmp, "mine").unwrap();
    std::fs::write(&other, "mine too").unwrap();
    assert_clear_error(
        &prepare(&[&data], "50"),
        "holds 2 unfinished shard(s) data_*.bin.tmp",
    );
    assert_eq!(std::fs::read(&tmp).unwrap(), b"mine");
    std::fs::remove_file(&tmp).unwrap();
    std::fs::remove_file(&other).unwrap();
    assert_success(&prepare(&[&data], "50"));
    assert!(out.join("data_train_000001.bin").exists());
}

/// Runs the binary as a user without root's power over permissions: as
/// itself when it is not root, else as `nobody` through `setpriv`; `None`,
/// with a notice, where neither can run it (no `setpriv`, or a binary
/// `nobody` cannot reach).
fn runner_unprivileged(args: &[&str]) -> Option<std::process::Output> {
    let id = std::process::Command::new("id").arg("-u").output().ok()?;
    let exe = env!("CARGO_BIN_EXE_runner");
    let mut command = if String::from_utf8_lossy(&id.stdout).trim() == "0" {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", exe]);
        c
    } else {
        std::process::Command::new(exe)
    };
    let reachable = command.get_args().count() == 0 || {
        let mut probe = std::process::Command::new(command.get_program());
        probe.args(command.get_args()).arg("--version");
        probe.output().is_ok_and(|o| o.status.success())
    };
    if !reachable {
        println!("notice: cannot run the binary as an unprivileged user here; skipped");
        return None;
    }
    Some(command.args(args).output().expect("runner starts"))
}

#[test]
fn folders_and_files_the_user_may_not_use_are_refused_before_any_work() {
    use std::os::unix::fs::PermissionsExt;

    let dir = scratch("permissions");
    let set_mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // `nobody` must reach the scratch folder and read the text.
    set_mode(&dir, 0o755);
    let data = text(&dir, "data.txt");
    let locked = dir.join("locked");
    std::fs::create_dir(&locked).unwrap();
    set_mode(&locked, 0o555);
    let locked_s = locked.to_str().unwrap();
    let prepare = [
        "prepare",
        "--input",
        &data,
        "--output",
        locked_s,
        "--val-tokens",
        "100",
    ];
    let Some(out) = runner_unprivileged(&prepare) else {
        return;
    };
    // Refused on opening the first shard, before "Tokenizing ...".
    assert_clear_error(&out, "Permission denied");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("Tokenizing"));
    assert_eq!(std::fs::read_dir(&locked).unwrap().count(), 0);

    let save = locked.join("ckpt");
    let train = [
        "train",
        "--preset",
        "tiny",
        "--steps",
        "3",
        "--save",
        save.to_str().unwrap(),
    ];
    let out = runner_unprivileged(&train).unwrap();
    assert_clear_error(&out, "cannot write in");

    set_mode(Path::new(&data), 0o000);
    let out = runner_unprivileged(&["train", "--preset", "tiny", "--steps", "3", "--data", &data])
        .unwrap();
    assert_clear_error(&out, "Permission denied");
    set_mode(&locked, 0o755);
}

/// Sends SIGTERM (as Ctrl-C) to the process `pid`, `times` times 20 ms
/// apart (as GNU `timeout` does, to the process and then its process
/// group, when it is held up between the two: sent at once, two signals
/// mostly arrive as one).
fn terminate(pid: u32, times: usize) {
    let kill = std::process::Command::new("sh")
        .args([
            "-c",
            "kill -TERM \"$0\"; for _ in $(seq 2 \"$1\"); do sleep 0.02; kill -TERM \"$0\"; done",
        ])
        .args([pid.to_string(), times.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

/// Starts the runner with `args`, reads its stderr until a line satisfies
/// `ready`, then sends it SIGTERM `times` times ([`terminate`]); returns
/// the process and the rest of its stderr to read.
fn started_then_terminated(
    args: &[&std::ffi::OsStr],
    times: usize,
    ready: impl Fn(&str) -> bool,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStderr>,
) {
    use std::io::BufRead;

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !ready(&line) {
        line.clear();
        let read = stderr.read_line(&mut line).unwrap();
        assert!(read > 0, "the run ended before it was ready to stop");
    }
    terminate(child.id(), times);
    (child, stderr)
}

/// As [`started_then_terminated`], then returns the rest of the stderr
/// and how the process ended.
fn terminated_once(
    args: &[&std::ffi::OsStr],
    times: usize,
    ready: impl Fn(&str) -> bool,
) -> (String, std::process::ExitStatus) {
    use std::io::Read;

    let (mut child, mut stderr) = started_then_terminated(args, times, ready);
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    (rest, child.wait().unwrap())
}

/// SIGTERM (as Ctrl-C) during `prepare` removes the shards begun and the
/// folders made, and the process then ends as the signal would have.
#[test]
fn an_interrupted_prepare_leaves_nothing_and_ends_by_the_signal() {
    use std::os::unix::process::ExitStatusExt;

    let dir = scratch("prepare-interrupted");
    let data = dir.join("prose.txt");
    // 16 MiB: seconds of GPT-2 tokenizing.
    let line = b"It was the best of times, it was the worst of times, it was the age of wisdom.\n";
    std::fs::write(&data, line.repeat((16 << 20) / line.len())).unwrap();
    let out = dir.join("new").join("shards");
    let args = ["prepare", "--tokenizer", "gpt2", "--shard-tokens", "100000"];
    let paths = [
        "--input".as_ref(),
        data.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
    ];
    // Logged once the signals are caught and the first shard is open.
    let args: Vec<_> = args.iter().map(|a| a.as_ref()).chain(paths).collect();
    let (rest, status) = terminated_once(&args, 1, |line| line.starts_with("Tokenizing"));
    assert_eq!(
        rest.trim(),
        "[warn] stopping: removing the unfinished shards (Ctrl-C again ends the run at once)\n\
         error: interrupted before the shards were complete"
    );
    assert_eq!(status.signal(), Some(15), "{status:?}");
    assert!(!dir.join("new").exists(), "the folders made were left");
}

/// SIGTERM (as Ctrl-C) during `train` stops it after the step under way
/// and saves that step's checkpoint, which `--resume` continues from the
/// next step; the process then ends as the signal would have. A plot that
/// can no longer be written is a warning: the error says how to continue,
/// in the precision the run trained in.
#[test]
fn an_interrupted_train_saves_its_steps_and_ends_by_the_signal() {
    use std::os::unix::process::ExitStatusExt;

    let dir = scratch("train-interrupted");
    let ckpt = dir.join("ck");
    let ckpt = ckpt.to_str().unwrap();
    let plots = dir.join("plots");
    std::fs::create_dir(&plots).unwrap();
    let plot = plots.join("loss.svg");
    let args = ["train", "--preset", "tiny", "--steps", "100000"];
    let args = [&args[..], &["--eval-every", "0", "--save", ckpt]].concat();
    let args = [&args[..], &["--precision", "bf16"]].concat();
    let args = [&args[..], &["--plot", plot.to_str().unwrap()]].concat();
    let args: Vec<_> = args.iter().map(|a| a.as_ref()).collect();
    let (rest, status) = terminated_once(&args, 1, |line| {
        let ready = line.contains("Step: 1/100000");
        if ready {
            std::fs::remove_dir(&plots).unwrap();
        }
        ready
    });
    assert_eq!(status.signal(), Some(15), "{status:?}\n{rest}");
    let lines: Vec<&str> = rest.lines().filter(|l| !l.is_empty()).collect();
    let notice = "[warn] stopping after the step under way, and saving it (Ctrl-C again ends the run at once)";
    assert!(lines.contains(&notice), "{rest}");
    let last = lines.last().unwrap();
    let step: u32 = last
        .strip_prefix("error: interrupted after step ")
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{rest}"));
    assert_eq!(
        *last,
        format!(
            "error: interrupted after step {step} of 100000; `runner train --resume {ckpt} --precision bf16 --save {ckpt}` continues the run"
        )
    );
    let unplotted = format!("[warn] {}: ", plot.display());
    assert!(lines.iter().any(|l| l.starts_with(&unplotted)), "{rest}");
    assert!(
        lines.contains(&format!("Saved checkpoint to {ckpt}").as_str()),
        "{rest}"
    );
    let stopped = format!("Training stopped - {step} steps in ");
    assert!(lines.iter().any(|l| l.starts_with(&stopped)), "{rest}");
    let logged = format!("Step: {step}/100000");
    assert!(lines.iter().any(|l| l.ends_with(&logged)), "{rest}");

    let next = (step + 1).to_string();
    // --steps left out: the run's.
    let resumed = ["train", "--resume", ckpt, "--stop-at", &next];
    let out = runner(&resumed);
    assert_success(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains(&format!("Step: {next}/100000")), "{log}");
    assert!(log.contains("Training complete - 1 steps"), "{log}");
}

/// `train` of 1000 steps of about a second (a second signal lands inside
/// one), saving to `ckpt`.
fn slow_steps_saved_to(ckpt: &Path) -> Vec<std::ffi::OsString> {
    let args = [
        "train", "--preset", "shakes", "--batch", "8", "--steps", "1000",
    ];
    let save = [
        "--eval-every".as_ref(),
        "0".as_ref(),
        "--save".as_ref(),
        ckpt.as_os_str(),
    ];
    args.iter()
        .map(Into::into)
        .chain(save.map(Into::into))
        .collect()
}

/// Two SIGTERMs 20 ms apart (GNU `timeout`'s, to the process and then
/// its group) are one request: `train` stops after the step under way
/// and saves it, rather than end at once as for a person's second Ctrl-C.
#[test]
fn a_signal_sent_twice_is_one_request() {
    use std::os::unix::process::ExitStatusExt;

    let dir = scratch("train-signalled-twice");
    let ckpt = dir.join("ck");
    let args = slow_steps_saved_to(&ckpt);
    let args: Vec<_> = args.iter().map(|a| a.as_ref()).collect();
    let (rest, status) = terminated_once(&args, 2, |line| line.contains("Step: 1/1000"));
    assert_eq!(status.signal(), Some(15), "{status:?}\n{rest}");
    assert!(rest.contains("Saved checkpoint to"), "{rest}");
    assert!(rest.contains("error: interrupted after step"), "{rest}");
    assert!(ckpt.join("model.safetensors").is_file());
}

/// A second SIGTERM (as a second Ctrl-C) ends `train` at once, by the
/// signal, in the middle of a step: nothing is saved, no error is printed.
#[test]
fn a_second_signal_ends_train_at_once() {
    use std::io::{BufRead, Read};
    use std::os::unix::process::ExitStatusExt;

    let dir = scratch("train-killed");
    let ckpt = dir.join("ck");
    let args = slow_steps_saved_to(&ckpt);
    let args: Vec<_> = args.iter().map(|a| a.as_ref()).collect();
    let (mut child, mut stderr) =
        started_then_terminated(&args, 1, |line| line.contains("Step: 1/1000"));
    let mut line = String::new();
    while !line.starts_with("[warn] stopping after the step under way") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no notice");
    }
    // A person's second Ctrl-C, not the first sent twice (see
    // `interrupt::SAME_REQUEST_NS`).
    std::thread::sleep(std::time::Duration::from_millis(500));
    terminate(child.id(), 1);
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(15), "{status:?}\n{rest}");
    assert!(
        !rest.contains("error:") && !rest.contains("Saved"),
        "{rest}"
    );
    assert!(!ckpt.exists(), "a checkpoint was saved");
}

/// A read-only checkpoint replaced with `--overwrite` leaves its old copy
/// beside it (nobody may empty it): each save then warns of it, naming it,
/// and none is refused for it.
#[test]
fn a_copy_that_cannot_be_removed_is_warned_of_not_in_the_way() {
    use std::os::unix::fs::PermissionsExt;

    let dir = scratch("read-only-copy");
    let set_mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    set_mode(&dir, 0o777);
    let ckpt = dir.join("ck");
    let train = |extra: &[&str]| {
        let args = ["train", "--preset", "tiny", "--steps", "2", "-q", "--save"];
        runner_unprivileged(&[&args[..], &[ckpt.to_str().unwrap()], extra].concat())
    };
    let Some(first) = train(&[]) else {
        return;
    };
    assert_success(&first);
    set_mode(&ckpt, 0o555);
    for _ in 0..2 {
        let out = train(&["--overwrite"]).unwrap();
        assert_success(&out);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains(".ck.old-") && log.contains("remove it yourself"),
            "{log}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left.len(),
        2,
        "the checkpoint and the one stuck copy: {left:?}"
    );
}

/// An output that fails once the run is under way (a full disk, here
/// `/dev/full` behind the path) does not cost the training: the
/// checkpoint of the steps done is saved first, then the run ends with
/// the output's error. A `--json` record ends it at the step whose record
/// failed; the plot, drawn last, after the save.
#[test]
fn a_failing_output_does_not_lose_the_trained_model() {
    let dir = scratch("failing-output");
    if !Path::new("/dev/full").exists() {
        eprintln!("notice: no /dev/full here; skipping");
        return;
    }
    for (option, file, stopped_at) in [("--json", "log.jsonl", 1), ("--plot", "loss.svg", 6)] {
        let full = dir.join(file);
        let _ = std::fs::remove_file(&full);
        std::os::unix::fs::symlink("/dev/full", &full).unwrap();
        let ckpt = dir.join(format!("ckpt{option}"));
        let args = [
            "train",
            "--preset",
            "tiny",
            "--steps",
            "6",
            "--batch",
            "2",
            "--save",
            ckpt.to_str().unwrap(),
            option,
            full.to_str().unwrap(),
        ];
        let out = runner(&args);
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{option}: {log}");
        let last = log.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains("No space left on device"),
            "{option}: the run ends with the output's error:\n{log}"
        );
        assert!(log.contains("Saved checkpoint"), "{option}: {log}");
        let resume = [
            "train",
            "--resume",
            ckpt.to_str().unwrap(),
            "--steps",
            "8",
            "--batch",
            "2",
        ];
        let out = runner(&resume);
        assert_success(&out);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains(&format!("Step: {}/8", stopped_at + 1)),
            "{option}: the saved checkpoint is at step {stopped_at}:\n{log}"
        );
    }
}

/// A checkpoint file grown past what it holds (a sparse 200 MiB
/// `model.safetensors` or `training.safetensors`, past what its header
/// describes; a 2 MiB `config.json`, past what such a file takes) is
/// refused before it is read, by every command that loads it.
#[test]
fn checkpoint_files_grown_past_what_they_hold_are_refused_unread() {
    let dir = scratch("grown");
    let ckpt = tiny_checkpoint(&dir, "ckpt");
    for (file, size) in [
        ("model.safetensors", 200u64 << 20),
        ("training.safetensors", 200 << 20),
        ("config.json", 2 << 20),
    ] {
        let grown = dir.join(format!("grown-{file}"));
        let _ = std::fs::remove_dir_all(&grown);
        std::fs::create_dir(&grown).unwrap();
        for entry in std::fs::read_dir(&ckpt).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), grown.join(entry.file_name())).unwrap();
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(grown.join(file))
            .unwrap();
        f.set_len(size).unwrap();
        let g = grown.to_str().unwrap();
        let needle = match file {
            "config.json" => format!("{file} is {size} bytes, more than"),
            _ => format!("{file} is corrupt or truncated: its header describes"),
        };
        assert_clear_error(
            &runner(&["train", "--resume", g, "--steps", "12", "--batch", "2"]),
            &needle,
        );
        if file != "training.safetensors" {
            assert_clear_error(
                &runner(&["generate", "--checkpoint", g, "--prompt", "a"]),
                &needle,
            );
        }
    }
}
