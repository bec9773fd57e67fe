//! Training behaviour through the library: learning (overfitting a short
//! text), determinism, exact resumption, and checkpoint round trips.

mod common;
use common::scratch;

use kernels::Kernels;
use runner::checkpoint;
use runner::data::Tokenizer;
use runner::eval::evaluate;
use runner::model::{ModelConfig, Preset};
use runner::train::{train, TrainSettings};

fn settings(steps: u32) -> TrainSettings {
    TrainSettings {
        config: Some(Preset::Tiny.config(Tokenizer::Byte)),
        data: None,
        init_from: None,
        seq_len: None,
        recompute: false,
        steps,
        batch: 4,
        grad_accum: 2,
        lr: 3e-3,
        warmup: 5,
        seed: 11,
        eval_every: 0,
        log_every: 1000,
        save: None,
        overwrite: false,
        resume: None,
        stop_at: None,
        json: None,
        threads: Some(1),
        plot: None,
        precision: runner::model::Precision::F32,
        shard_optimizer: false,
        overlap: true,
        warnings: Vec::new(),
    }
}

#[test]
fn overfits_a_short_text() {
    // 64 bytes of text, seen in random windows of 33: the tiny model can
    // memorise it, so the loss must fall far below both the uniform
    // ln 256 = 5.5 nats and the ~3 nats per byte of the text's letter
    // frequencies. Below 0.3 means it predicts almost every next byte.
    let dir = scratch("overfit");
    let path = dir.join("short.txt");
    std::fs::write(
        &path,
        "The quick brown fox jumps over the lazy dog, again and again!\n\n",
    )
    .unwrap();
    let s = TrainSettings {
        data: Some(path),
        steps: 300,
        ..settings(300)
    };
    let (_, report) = train(&s, Kernels::best()).unwrap();
    let tail: f32 = report.losses[290..].iter().sum::<f32>() / 10.0;
    assert!(
        report.losses[0] > 5.0,
        "starts near uniform: {}",
        report.losses[0]
    );
    assert!(tail < 0.3, "final loss {tail}");
}

#[test]
fn the_same_seed_gives_the_same_losses() {
    let (_, a) = train(&settings(12), Kernels::best()).unwrap();
    let (_, b) = train(&settings(12), Kernels::best()).unwrap();
    assert_eq!(a.losses, b.losses);
    let other = TrainSettings {
        seed: 12,
        ..settings(12)
    };
    let (_, c) = train(&other, Kernels::best()).unwrap();
    assert_ne!(a.losses, c.losses);
}

#[cfg(feature = "parallel")]
#[test]
fn the_losses_do_not_depend_on_the_thread_count() {
    let base = TrainSettings {
        batch: 8,
        ..settings(6)
    };
    let (_, one) = train(
        &TrainSettings {
            threads: Some(1),
            plot: None,
            ..base.clone()
        },
        Kernels::best(),
    )
    .unwrap();
    for threads in [2, 3] {
        let (_, many) = train(
            &TrainSettings {
                threads: Some(threads),
                ..base.clone()
            },
            Kernels::best(),
        )
        .unwrap();
        assert_eq!(one.losses, many.losses, "{threads} threads");
    }
}

#[test]
fn resume_continues_exactly_as_an_uninterrupted_run() {
    let dir = scratch("resume");
    let ckpt = dir.join("ckpt");
    let (_, straight) = train(&settings(20), Kernels::best()).unwrap();
    // The same 20-step plan, interrupted after step 8 and saved...
    let head = TrainSettings {
        save: Some(ckpt.clone()),
        stop_at: Some(8),
        ..settings(20)
    };
    let (_, head) = train(&head, Kernels::best()).unwrap();
    assert_eq!(head.losses.len(), 8);
    // ...then resumed from the checkpoint to the end.
    let tail = TrainSettings {
        config: None,
        resume: Some(ckpt),
        ..settings(20)
    };
    let (_, tail) = train(&tail, Kernels::best()).unwrap();
    let joined: Vec<f32> = head.losses.into_iter().chain(tail.losses).collect();
    assert_eq!(joined, straight.losses);
}

#[test]
fn a_saved_checkpoint_evaluates_the_same() {
    let dir = scratch("ckpt");
    let ckpt = dir.join("model");
    let s = TrainSettings {
        save: Some(ckpt.clone()),
        ..settings(6)
    };
    let (mut model, _) = train(&s, Kernels::best()).unwrap();
    let tokens = Tokenizer::Byte.encode(b"12+34=46\n500-1=499\n7+8=15\n");
    let t = model.config.block_size;
    let before = evaluate(&mut model, &tokens, t, 4, None).unwrap();
    let mut loaded = checkpoint::load_model(&ckpt, Kernels::best()).unwrap();
    assert_eq!(loaded.params(), model.params());
    let after = evaluate(&mut loaded, &tokens, t, 4, None).unwrap();
    assert_eq!(before.loss, after.loss);
    assert_eq!(before.tokens, tokens.len() - 1);
    let cfg: ModelConfig = checkpoint::load_config(&ckpt).unwrap();
    assert_eq!(cfg, Preset::Tiny.config(Tokenizer::Byte));
}

/// bf16 products follow the f32 run closely (the operands lose 16 bits,
/// the sums stay f32), differ from it (the bf16 path really runs), and
/// give the same losses for any thread count.
#[test]
fn bf16_training_follows_f32_and_is_deterministic() {
    let bf16 = |threads| TrainSettings {
        precision: runner::model::Precision::Bf16,
        threads: Some(threads),
        ..settings(30)
    };
    let (_, f32_run) = train(&settings(30), Kernels::best()).unwrap();
    let (_, one) = train(&bf16(1), Kernels::best()).unwrap();
    let (_, two) = train(&bf16(2), Kernels::best()).unwrap();
    assert_eq!(one.losses, two.losses, "bf16 losses depend on the threads");
    assert_ne!(one.losses, f32_run.losses, "bf16 changed nothing");
    for (step, (&b, &f)) in one.losses.iter().zip(&f32_run.losses).enumerate() {
        assert!((b - f).abs() <= 0.02 * f, "step {step}: bf16 {b}, f32 {f}");
    }
}
