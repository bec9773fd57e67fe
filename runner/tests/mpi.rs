//! Data-parallel training under `mpirun` (feature `mpi`): two ranks of
//! batch B follow one process of batch 2B on the same windows (gradients
//! summed during or after the backward pass, the optimizer state on every
//! rank or sharded with `--zero 1`), with or without a checkpoint between
//! them, and a failing rank ends the job. Each test is skipped with a
//! notice where the runner is built without `--features mpi` or `mpirun`
//! is missing.
//!
//! Tolerance: the two runs differ only in how each step's gradient is
//! summed (two partial sums of B windows added by MPI, against one sum of
//! 2B windows), a relative difference of a few f32 ulps (~1e-7) per
//! element and step. AdamW divides by the gradient's running RMS, so such
//! differences stay relative in the update, and over 20 steps of a model
//! this small they grow to at most ~20 × 1e-7 × a small condition factor:
//! losses are held to 1e-5 relative (measured 1e-7) and weights to 1e-5 of
//! the largest weight.
mod common;
use common::{assert_success, json_losses, runner, scratch};

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use safetensors::SafeTensors;

const TOL: f64 = 1e-5;

/// Whether the MPI tests can run here: the runner is built with the `mpi`
/// feature and `mpirun` starts (each absence noted on stderr).
fn mpirun_available() -> bool {
    if !cfg!(feature = "mpi") {
        eprintln!("notice: the MPI tests need `--features mpi`; skipping them");
        return false;
    }
    let found = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("notice: mpirun is missing; skipping the MPI tests");
    }
    found
}

/// `mpirun -np ranks runner args...`.
fn mpirun(ranks: usize, args: &[&str]) -> Output {
    mpirun_program(ranks, env!("CARGO_BIN_EXE_runner"), args)
}

/// `mpirun -np ranks program args...`, ended after two minutes (a rank
/// left waiting in a collective fails the test rather than hanging it).
fn mpirun_program(ranks: usize, program: &str, args: &[&str]) -> Output {
    Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "--timeout", "120"])
        .args(["-np", &ranks.to_string(), program])
        .args(args)
        .output()
        .expect("mpirun starts")
}

/// The `error: ...` lines of a job's stderr (mpirun's banners aside).
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect()
}

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= TOL * y.abs(),
            "{what}: step {}: {x} vs {y}",
            i + 1
        );
    }
}

fn weights(dir: &Path) -> Vec<f32> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| {
            let data = st.tensor(n).unwrap().data().to_vec();
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn train_args<'a>(batch: &'a str, json: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--preset",
        "tiny",
        "--steps",
        "20",
        "--batch",
        batch,
        "--threads",
        "1",
        "--json",
        json,
        "--eval-every",
        "0",
        "-q",
    ];
    args.extend_from_slice(extra);
    args
}

/// The weights of two checkpoints agree to `TOL` of the largest.
fn assert_weights_close(a: &Path, b: &Path, what: &str) {
    let (w1, w2) = (weights(a), weights(b));
    assert_eq!(w1.len(), w2.len(), "{what}");
    let largest = w1.iter().fold(0f32, |m, w| m.max(w.abs()));
    for (x, y) in w1.iter().zip(&w2) {
        assert!(
            (x - y).abs() <= TOL as f32 * largest,
            "{what}: weights {x} vs {y}"
        );
    }
}

/// The `optimizer state X MiB` of a run's start-up log line.
fn optimizer_state_mib(out: &Output) -> f64 {
    let log = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    let rest = log
        .split("optimizer state ")
        .nth(1)
        .unwrap_or_else(|| panic!("no optimizer state in the log: {log}"));
    rest.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn two_ranks_follow_one_process_of_twice_the_batch() {
    if !mpirun_available() {
        return;
    }
    let dir = scratch("mpi");
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (one, ck1) = (path("one.json"), path("ck1"));
    assert_success(&runner(&train_args("8", &one, &["--save", &ck1])));
    let single = json_losses(Path::new(&one));
    assert_eq!(single.len(), 20);

    // Gradients summed during or after the backward pass, optimizer state
    // on every rank or sharded: the same run.
    let variants: [&[&str]; 4] = [
        &[],
        &["--no-overlap"],
        &["--zero", "1"],
        &["--zero", "1", "--no-overlap"],
    ];
    let mut two_rank_losses = Vec::new();
    for (i, flags) in variants.iter().enumerate() {
        let (json, ck) = (path(&format!("two{i}.json")), path(&format!("ck2-{i}")));
        let out = mpirun(
            2,
            &train_args("4", &json, &[&["--save", &ck], *flags].concat()),
        );
        assert_success(&out);
        let what = format!("2 ranks × B 4 {flags:?} against 1 process × B 8");
        two_rank_losses = json_losses(Path::new(&json));
        assert_close(&two_rank_losses, &single, &what);
        assert_weights_close(Path::new(&ck1), Path::new(&ck), &what);
    }

    // Three ranks of a model whose second shard ends inside a tensor (the
    // first piece of fcw at or after 2/3 of the parameters): spans of
    // gradients summed to two owners, moments split mid-tensor.
    let wide = ["--channels", "96"];
    let (wide1, wide3) = (path("wide1.json"), path("wide3.json"));
    assert_success(&runner(&train_args("12", &wide1, &wide)));
    let sharded = [&wide[..], &["--zero", "1"]].concat();
    assert_success(&mpirun(3, &train_args("4", &wide3, &sharded)));
    let (one, three) = (
        json_losses(Path::new(&wide1)),
        json_losses(Path::new(&wide3)),
    );
    assert_close(
        &three,
        &one,
        "3 ranks × B 4 --zero 1 against 1 process × B 12",
    );

    // With micro-batches, only the last backward pass overlaps the sums:
    // 2 ranks × B 2 × 2 micro-batches against 1 process × B 4 × 2.
    let (acc1, acc2) = (path("accum1.json"), path("accum2.json"));
    assert_success(&runner(&train_args("4", &acc1, &["--grad-accum", "2"])));
    for flags in [&[][..], &["--zero", "1"]] {
        let args = [&["--grad-accum", "2"][..], flags].concat();
        assert_success(&mpirun(2, &train_args("2", &acc2, &args)));
        let (one, two) = (json_losses(Path::new(&acc1)), json_losses(Path::new(&acc2)));
        assert_close(&two, &one, &format!("micro-batches {flags:?}"));
    }

    // Logged (not -q, so every rank's collectives around the log lines
    // run): each rank holds half of the optimizer state with --zero 1 (of
    // a model wide enough for the log's 0.1 MiB to tell).
    let logged = |flags: &[&str]| {
        let run = [
            "train",
            "--preset",
            "tiny",
            "--channels",
            "128",
            "--steps",
            "2",
        ];
        let out = mpirun(
            2,
            &[&run[..], &["--batch", "4", "--threads", "1"], flags].concat(),
        );
        assert_success(&out);
        out
    };
    let (whole, shared) = (logged(&[]), logged(&["--zero", "1"]));
    let (whole, shared) = (optimizer_state_mib(&whole), optimizer_state_mib(&shared));
    assert!(
        (shared - whole / 2.0).abs() <= 0.1 * whole,
        "optimizer state per rank: {shared} MiB sharded, {whole} MiB not"
    );

    // A 2-rank checkpoint at step 10 (its moments gathered from the shards
    // with --zero 1) resumes in one process of the same global batch and
    // continues the curve; a 1-process one resumes sharded over 2 ranks.
    for (i, flags) in [&[][..], &["--zero", "1"]].iter().enumerate() {
        let (half, rest, ck) = (
            path("half.json"),
            path("rest.json"),
            path(&format!("ck-half{i}")),
        );
        let stop = [&["--stop-at", "10", "--save", &ck][..], flags].concat();
        assert_success(&mpirun(2, &train_args("4", &half, &stop)));
        assert_success(&runner(&train_args("8", &rest, &["--resume", &ck])));
        let what = format!("2 ranks {flags:?} resumed in 1 process");
        assert_close(
            &json_losses(Path::new(&rest)),
            &two_rank_losses[10..],
            &what,
        );
    }
    let (half, rest, ck) = (path("half1.json"), path("rest2.json"), path("ck-half-1"));
    let stop = ["--stop-at", "10", "--save", &ck];
    assert_success(&runner(&train_args("8", &half, &stop)));
    let resume = ["--resume", &ck, "--zero", "1"];
    assert_success(&mpirun(2, &train_args("4", &rest, &resume)));
    let what = "1 process resumed on 2 ranks with --zero 1";
    assert_close(&json_losses(Path::new(&rest)), &single[10..], what);

    // Without --batch, the ranks share the run's batch of 8; 3 cannot.
    let rest = path("rest3.json");
    let resume = ["train", "--resume", &ck, "--threads", "1", "-q"];
    let resume = [&resume[..], &["--eval-every", "0", "--json", &rest]].concat();
    assert_success(&mpirun(2, &resume));
    let what = "1 process resumed on 2 ranks sharing its batch";
    assert_close(&json_losses(Path::new(&rest)), &single[10..], what);
    let out = mpirun(3, &resume);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        log.contains("batch of 8 sequences (over all ranks) does not divide among 3 ranks"),
        "{log}"
    );
}

#[test]
fn a_failing_rank_ends_the_job_with_its_error() {
    if !mpirun_available() {
        return;
    }
    let dir = scratch("mpi-fail");
    let text = dir.join("text.txt");
    std::fs::write(
        &text,
        "to be or not to be, that is the question\n".repeat(50),
    )
    .unwrap();
    // Rank 1 is given a file that does not exist.
    let script = format!(
        "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then d={missing}; else d={text}; fi; exec {bin} train --preset tiny --steps 100000 --data \"$d\" -q",
        missing = dir.join("missing.txt").display(),
        text = text.display(),
        bin = env!("CARGO_BIN_EXE_runner"),
    );
    let start = Instant::now();
    let out = mpirun_program(2, "sh", &["-c", &script]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
    let ours = error_lines(&stderr);
    assert_eq!(ours.len(), 1, "{stderr}");
    assert!(
        ours[0].starts_with("error: rank 1: ") && ours[0].contains("missing.txt"),
        "{stderr}"
    );
}

/// SIGTERM to one rank (as a batch system sends every rank when a job is
/// cancelled) stops every rank after the same step: rank 0 saves it and
/// alone says so, nothing is aborted, and the saved run resumes there.
#[test]
fn a_signal_to_one_rank_stops_every_rank_at_the_same_step() {
    if !mpirun_available() {
        return;
    }
    let dir = scratch("mpi-interrupted");
    let (ckpt, json) = (dir.join("ck"), dir.join("log.jsonl"));
    let (ckpt, json) = (ckpt.to_str().unwrap(), json.to_str().unwrap());
    let run = format!(
        "{} train --preset tiny --steps 100000 --threads 1 --eval-every 0 --save {ckpt} --json {json}",
        env!("CARGO_BIN_EXE_runner")
    );
    // Rank 1 is signalled once rank 0 has recorded a step: both train.
    let script = format!(
        "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then {run} & p=$!; until [ -s {json} ]; do sleep 0.1; done; kill -TERM $p; wait $p; exit $?; else exec {run}; fi"
    );
    let out = mpirun_program(2, "sh", &["-c", &script]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Rank 1 ends by its signal, rank 0 (which caught none) with 1:
    // mpirun reports whichever ended first.
    let code = out.status.code();
    assert!(matches!(code, Some(1 | 143)), "{code:?}: {stderr}");
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    let step: usize = errors[0]
        .strip_prefix("error: interrupted after step ")
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(
        errors[0],
        format!(
            "error: interrupted after step {step} of 100000; `mpirun -np 2 runner train --resume {ckpt} --save {ckpt}` continues the run"
        )
    );
    assert!(
        stderr.contains(&format!("Saved checkpoint to {ckpt}\n")),
        "{stderr}"
    );
    assert_eq!(json_losses(Path::new(json)).len(), step, "{stderr}");

    let next = (step + 1).to_string();
    let resumed = [
        "train",
        "--resume",
        ckpt,
        "--stop-at",
        &next,
        "--threads",
        "1",
    ];
    let out = mpirun(2, &resumed);
    assert_success(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains(&format!("Step: {next}/100000")), "{log}");
    assert!(log.contains("Training complete - 1 steps"), "{log}");
}

/// A divergence, which every rank finds at the same step, ends the ranks
/// together: the run as the step before left it is saved (the optimizer's
/// shares gathered, with `--zero 1`), rank 0 alone says so, and none is
/// aborted.
#[test]
fn a_diverged_run_of_several_ranks_is_saved_and_ends_every_rank() {
    if !mpirun_available() {
        return;
    }
    let dir = scratch("mpi-diverged");
    let (failed, stopped) = (dir.join("failed"), dir.join("stopped"));
    let run = |ckpt: &Path, extra: &[&str]| {
        let ck = ckpt.to_str().unwrap();
        let args = ["train", "--preset", "tiny", "--steps", "20", "--lr", "1e30"];
        let rest = ["--zero", "1", "--threads", "1", "--save", ck, "-q"];
        mpirun(2, &[&args[..], &rest, extra].concat())
    };
    let out = run(&failed, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors = error_lines(&stderr);
    let diverged = format!(
        "error: training diverged: the gradient norm is NaN at step 2; try a lower --lr; the run as step 1 left it was saved to {}",
        failed.display()
    );
    assert_eq!(errors, [diverged.as_str()], "{stderr}");
    assert!(!stderr.contains("MPI_ABORT"), "{stderr}");
    assert_success(&run(&stopped, &["--stop-at", "1"]));
    for file in ["model.safetensors", "training.safetensors"] {
        let bytes = |ckpt: &Path| std::fs::read(ckpt.join(file)).unwrap();
        assert!(bytes(&failed) == bytes(&stopped), "{file} differs");
    }
}

/// A command for one process (the demo, eval, generate, prepare) is
/// refused under mpirun before it prints or writes anything once a rank.
#[test]
fn a_command_for_one_process_is_refused_on_several_ranks() {
    if !mpirun_available() {
        return;
    }
    let dir = scratch("mpi-one-process");
    let text = dir.join("text.txt");
    std::fs::write(&text, "to be or not to be\n".repeat(20)).unwrap();
    let (text, shards) = (text.to_str().unwrap(), dir.join("shards"));
    let prepare = [
        "prepare",
        "--input",
        text,
        "--output",
        shards.to_str().unwrap(),
    ];
    for (args, command) in [
        (&[][..], "runner"),
        (
            &["eval", "--checkpoint", "none", "--data", text][..],
            "runner eval",
        ),
        (&prepare[..], "runner prepare"),
    ] {
        let out = mpirun(2, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        let refusal =
            format!("`{command}` runs in one process, not on 2 ranks: start it without mpirun");
        let errors = error_lines(&stderr);
        assert!(!errors.is_empty(), "{stderr}");
        assert!(errors.iter().all(|e| e.ends_with(&refusal)), "{stderr}");
        assert!(out.stdout.is_empty(), "{command} printed");
    }
    assert!(!shards.exists(), "prepare wrote shards");
}

/// A rank killed mid-run (as by the kernel's out-of-memory killer) cannot
/// say why; `mpirun` ends the job, naming the rank and its exit code,
/// rather than leaving rank 0 waiting in a collective.
#[test]
fn a_killed_rank_ends_the_job() {
    if !mpirun_available() {
        return;
    }
    let run = format!(
        "{} train --preset small --steps 100000 --threads 1 -q",
        env!("CARGO_BIN_EXE_runner")
    );
    let script = format!(
        "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then {run} & p=$!; sleep 3; kill -9 $p; wait $p; exit $?; else exec {run}; fi"
    );
    let start = Instant::now();
    let out = mpirun_program(2, "sh", &["-c", &script]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{stderr}");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn bench_under_mpirun_counts_every_ranks_tokens_and_the_communication() {
    if !mpirun_available() {
        return;
    }
    let dir = scratch("mpi-bench");
    let json = dir.join("bench.json");
    let bench = [
        "bench",
        "--preset",
        "tiny",
        "--seq-lens",
        "32",
        "--batch",
        "4",
        "--threads",
        "1",
        "--backends",
        "auto",
        "--steps",
        "2",
        "--no-decoding",
        "-q",
        "--json",
    ];
    assert_success(&mpirun(
        2,
        &[&bench[..], &[json.to_str().unwrap()]].concat(),
    ));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "rank 0 alone writes the file");
    assert_eq!(rows[0]["ranks"], 2);
    assert!(rows[0]["communication_ms"].as_f64().unwrap() > 0.0);
    assert!(rows[0]["tokens_per_sec"].as_f64().unwrap() > 0.0);
    let bound_peak = rows[0]["peak_gflops"].as_f64().unwrap();

    // Two ranks each on every core, with as many threads as there are
    // cores: the peak counts the host's cores once, not twice.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.to_string();
    let mut shared = bench.to_vec();
    let at = shared.iter().position(|&a| a == "--threads").unwrap();
    shared[at + 1] = &threads;
    let out = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "--timeout", "120"])
        .args([
            "--bind-to",
            "none",
            "-np",
            "2",
            env!("CARGO_BIN_EXE_runner"),
        ])
        .args([&shared[..], &[json.to_str().unwrap()]].concat())
        .output()
        .unwrap();
    assert_success(&out);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let shared_peak = rows[0]["peak_gflops"].as_f64().unwrap();
    // Against one thread a rank (a core each, where there are two):
    // the host's cores over 2, with room for a shared machine's noise;
    // counting every rank's threads would give twice that.
    let most = bound_peak * cores.max(2) as f64 / 2.0 * 1.4;
    assert!(
        shared_peak <= most,
        "peak {shared_peak} GFLOP/s on {cores} shared cores, against {bound_peak} bound"
    );
}
