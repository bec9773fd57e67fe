//! After the first step, a training step and a decoding pass allocate
//! nothing: every buffer is sized once and reused. A counting global
//! allocator (this test binary's own) checks it, on 1 and 2 threads. The
//! binary has no test harness, whose own threads would allocate while a
//! count runs. The same allocator keeps the peak of the bytes held, which
//! the memory check's footprint must bound.
//!
//! With a pool, rayon's own queues now and then allocate a block or grow a
//! deque (seen: 2 allocations over 3 steps, in one run of ten), so there
//! the bound is one allocation per step, and one per four decoding passes:
//! a buffer of ours allocated per step or pass would exceed it. A worker's
//! own scratch (attention's head buffers, its products' workspace) is
//! sized the first time it runs a piece that needs it, and on a loaded
//! machine a worker may run its first such piece only after the warm-up
//! (seen in CI: 4 allocations in 3 steps, 4096 to 26752 bytes); so with a
//! pool the training steps are counted in three windows, and the quietest
//! must keep to the bound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use kernels::Kernels;
use runner::memory::Footprint;
use runner::model::{Gpt, ModelConfig, Multiplier, Precision, Preset};
use runner::rng::Rng;
use runner::threads::Threads;
use runner::train::optim::{Optimizer, OptimizerSettings};
use runner::train::{train_step, BatchBuffers, DataParallel};

/// The system allocator, counting allocations and reallocations.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// Bytes held now, and the most held since [`peak_held_in`] reset it.
static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn hold(bytes: usize) {
    let now = HELD.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: forwards every call to `System` unchanged; the counter has no
// effect on the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        hold(layout.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // Counted as the new block allocated beside the old, as a move
        // would be: the larger of the two ways.
        hold(new_size);
        HELD.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn config() -> ModelConfig {
    ModelConfig {
        block_size: 64,
        ..Preset::Tiny.config(runner::data::Tokenizer::Byte)
    }
}

/// Allocations made by `f` (on any thread).
fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    f();
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

/// The most bytes `f` held at once (on any thread) beyond those held
/// before it.
fn peak_held_in(f: impl FnOnce()) -> usize {
    let before = HELD.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    f();
    PEAK.load(Ordering::SeqCst) - before
}

fn main() {
    // Every one-thread count runs before the first pool exists: the
    // workers of a dropped pool exit in the background, and may allocate
    // while a later count runs (seen once in CI).
    the_footprint_bounds_what_training_and_decoding_hold();
    for threads in [1, 2] {
        training_steps_after_the_first_allocate_nothing(threads);
        decoding_passes_after_the_first_allocate_nothing(threads);
    }
    println!("allocations: steady-state training steps and decoding passes: ok");
}

fn training_steps_after_the_first_allocate_nothing(threads: usize) {
    let (b, t) = (4, 64);
    let tokens: Vec<u32> = (0..4096u32).map(|i| (i * 31 + 7) % 256).collect();
    {
        let mut model = Gpt::new(config(), Kernels::best(), 1).unwrap();
        model.set_threads(Threads::new(Some(threads)).unwrap());
        let mut optimizer = Optimizer::new(model.sizes());
        let settings = OptimizerSettings::new(1e-3, 0, 10);
        let mut buffers = BatchBuffers::new(b, t);
        let mut rng = Rng::new(3);
        let mut step = |model: &mut Gpt| {
            let batches = |x: &mut [u32], y: &mut [u32]| {
                runner::data::sample_batch(&tokens, b, t, &mut rng, x, y);
                Ok(())
            };
            let lr = 1e-3;
            train_step(
                model,
                &mut optimizer,
                &settings,
                lr,
                2,
                (b, t),
                &mut buffers,
                batches,
                DataParallel::single(),
            )
            .unwrap();
        };
        // Warm-up: buffers, the pool's threads and their GEMM workspaces.
        for _ in 0..2 {
            step(&mut model);
        }
        let windows = if threads == 1 { 1 } else { 3 };
        let counts: Vec<usize> = (0..windows)
            .map(|_| {
                allocations_in(|| {
                    for _ in 0..3 {
                        step(&mut model);
                    }
                })
            })
            .collect();
        let allowed = if threads == 1 { 0 } else { 3 };
        assert!(
            counts.iter().min().is_some_and(|&c| c <= allowed),
            "{threads} thread(s): windows of 3 steps allocated {counts:?} times"
        );
    }
}

fn decoding_passes_after_the_first_allocate_nothing(threads: usize) {
    {
        let mut model = Gpt::new(config(), Kernels::best(), 1).unwrap();
        model.set_threads(Threads::new(Some(threads)).unwrap());
        let mut cache = model.new_cache();
        model.forward_cached(&mut cache, &[1, 2, 3, 4]).unwrap();
        model.forward_cached(&mut cache, &[5]).unwrap();
        let passes = 54;
        let count = allocations_in(|| {
            for token in 6..6 + passes {
                model.forward_cached(&mut cache, &[token as u32]).unwrap();
            }
        });
        let allowed = if threads == 1 { 0 } else { passes / 4 };
        assert!(
            count <= allowed,
            "{threads} thread(s): {passes} passes allocated {count} times"
        );
    }
}

/// What the memory check counts for a training run (the model, its
/// gradients, the optimizer, the activations, the products' workspace and
/// attention's buffers) bounds the bytes it holds, and is not far above
/// them: in f32 and bf16, for a large vocabulary and batch (the LM head's
/// products dominate the workspace) and for a long block (attention's
/// `t × t` buffers); and so for decoding a whole block. Each case runs on
/// a fresh thread, whose thread-local buffers start empty.
fn the_footprint_bounds_what_training_and_decoding_hold() {
    let wide = ModelConfig {
        vocab_size: 4000,
        tokenizer: None,
        block_size: 64,
        layers: 2,
        heads: 2,
        channels: 32,
    };
    let long = ModelConfig {
        vocab_size: 256,
        block_size: 768,
        ..wide
    };
    for precision in [Precision::F32, Precision::Bf16] {
        let mm = Multiplier {
            kernels: Kernels::best(),
            precision,
        };
        for (cfg, b) in [(wide, 16), (long, 1)] {
            let t = cfg.block_size;
            let held = std::thread::spawn(move || peak_held_in(|| train_two_steps(cfg, mm, b)));
            let held = held.join().unwrap();
            let counted = Footprint::training(&cfg, (b, t), false, (1, mm)).total_bytes();
            // Besides the footprint: the batch's tokens, and the small
            // things of a step (the profile, the pieces' partial sums).
            let beside = 2 * 4 * b * t + (64 << 10);
            let what = format!("{cfg} in {}, batch {b}", precision.name());
            assert!(
                held <= counted + beside,
                "{what}: held {held} bytes, counted {counted}"
            );
            assert!(
                held >= counted / 10 * 9,
                "{what}: held {held} bytes, counted {counted}"
            );
        }
        let decoding = std::thread::spawn(move || peak_held_in(|| decode_a_block(long, mm)));
        let held = decoding.join().unwrap();
        let counted = Footprint::decoding(&long, (1, mm)).total_bytes();
        let what = format!("decoding {long} in {}", precision.name());
        assert!(
            held <= counted + (64 << 10),
            "{what}: held {held} bytes, counted {counted}"
        );
        assert!(
            held >= counted / 10 * 9,
            "{what}: held {held} bytes, counted {counted}"
        );
    }
    println!("allocations: the memory check's footprint bounds what runs hold: ok");
}

fn train_two_steps(cfg: ModelConfig, mm: Multiplier, b: usize) {
    let t = cfg.block_size;
    let vocab = cfg.vocab_size as u32;
    let tokens: Vec<u32> = (0..4 * b as u32 * t as u32 + 1)
        .map(|i| (i * 31 + 7) % vocab)
        .collect();
    let mut model = Gpt::new(cfg, mm.kernels, 1).unwrap();
    model.set_precision(mm.precision);
    let mut optimizer = Optimizer::new(model.sizes());
    let settings = OptimizerSettings::new(1e-3, 0, 10);
    let mut buffers = BatchBuffers::new(b, t);
    let mut rng = Rng::new(3);
    for _ in 0..2 {
        let batches = |x: &mut [u32], y: &mut [u32]| {
            runner::data::sample_batch(&tokens, b, t, &mut rng, x, y);
            Ok(())
        };
        let parallel = DataParallel::single();
        let shape = (b, t);
        train_step(
            &mut model,
            &mut optimizer,
            &settings,
            1e-3,
            1,
            shape,
            &mut buffers,
            batches,
            parallel,
        )
        .unwrap();
    }
}

fn decode_a_block(cfg: ModelConfig, mm: Multiplier) {
    let mut model = Gpt::new(cfg, mm.kernels, 1).unwrap();
    model.set_precision(mm.precision);
    let mut cache = model.new_cache();
    let prompt: Vec<u32> = (0..cfg.block_size as u32 - 1).map(|i| i % 200).collect();
    model.forward_cached(&mut cache, &prompt).unwrap();
    model.forward_cached(&mut cache, &[1]).unwrap();
}
