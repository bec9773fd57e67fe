//! Generation through the key/value cache: the same logits as recomputing
//! the whole context, deterministic sampling, the sliding window, and clear
//! answers for bad prompts.

use std::ops::ControlFlow;

use kernels::{Backend, Kernels};
use runner::generate::{argmax, generate, Sampling};
use runner::model::{Gpt, Precision};
use runner::model::{ModelConfig, Preset};
use runner::rng::Rng;
use runner::threads::Threads;

/// A tiny model with weights large enough that every path matters.
fn model(block_size: usize) -> Gpt {
    model_on(Kernels::best(), block_size)
}

/// [`model`] on the given kernels.
fn model_on(kernels: Kernels, block_size: usize) -> Gpt {
    let cfg = ModelConfig {
        block_size,
        ..Preset::Tiny.config(runner::data::Tokenizer::Byte)
    };
    let mut model = Gpt::new(cfg, kernels, 5).unwrap();
    let mut rng = Rng::new(9);
    for p in model.params_mut().iter_mut() {
        *p += rng.normal(0.0, 0.05);
    }
    model
}

/// The last position's logits from a full forward pass over `context`.
fn full_logits(model: &mut Gpt, context: &[u32]) -> Vec<f32> {
    model.forward(context, 1, context.len()).unwrap();
    model.logits(context.len() - 1).unwrap().to_vec()
}

/// Asserts `cached` equals `full` to 1e-4 of the largest logit.
#[track_caller]
fn assert_same_logits(cached: &[f32], full: &[f32], what: &str) {
    assert_logits_within(cached, full, 1e-4, what);
}

#[test]
fn cached_logits_equal_a_full_recompute_at_every_position() {
    // Tolerance: both paths sum the same products in different orders (the
    // GEMM blocks differently for 1 row than for a whole block), so they
    // agree to f32 rounding: 1e-4 relative to the largest logit.
    let t = 32;
    let context: Vec<u32> = (0..t as u32).map(|i| (i * 71 + 5) % 256).collect();
    let backends = [Kernels::new(Backend::Scalar).unwrap(), Kernels::best()];
    for kernels in backends {
        let mut model = model_on(kernels, t);
        for threads in [1, 2] {
            model.set_threads(Threads::new(Some(threads)).unwrap());
            let mut cache = model.new_cache();
            // A prompt of `p` tokens in one pass (checked at its last
            // position), then one token at a time to the block size.
            for p in [1, 7, 20, t] {
                cache.clear();
                let cached = model
                    .forward_cached(&mut cache, &context[..p])
                    .unwrap()
                    .to_vec();
                let what = format!("{} × {threads}, prompt {p}", kernels.backend());
                assert_same_logits(&cached, &full_logits(&mut model, &context[..p]), &what);
                for n in p + 1..=t {
                    let cached = model
                        .forward_cached(&mut cache, &context[n - 1..n])
                        .unwrap()
                        .to_vec();
                    let full = full_logits(&mut model, &context[..n]);
                    assert_same_logits(&cached, &full, &format!("{what}, position {n}"));
                }
            }
            // A full cache takes no more.
            assert!(model.forward_cached(&mut cache, &[1]).is_err());
        }
    }
}

#[test]
fn cached_logits_do_not_depend_on_the_thread_count() {
    // Decoding splits products along k and, past a context of 128 at this
    // width, runs the heads in parallel; every split depends on the shape
    // alone, so the logits are bit-identical, and equal a full recompute.
    let cfg = ModelConfig {
        block_size: 144,
        layers: 1,
        heads: 4,
        channels: 256,
        ..Preset::Tiny.config(runner::data::Tokenizer::Byte)
    };
    let t = cfg.block_size;
    let context: Vec<u32> = (0..t as u32).map(|i| (i * 53 + 3) % 256).collect();
    let mut per_threads = Vec::new();
    for threads in [1, 2, 3] {
        let mut model = Gpt::new(cfg, Kernels::best(), 5).unwrap();
        model.set_threads(Threads::new(Some(threads)).unwrap());
        let mut cache = model.new_cache();
        let mut logits = model
            .forward_cached(&mut cache, &context[..5])
            .unwrap()
            .to_vec();
        for n in 6..=t {
            let last = model
                .forward_cached(&mut cache, &context[n - 1..n])
                .unwrap()
                .to_vec();
            if n == t {
                let full = full_logits(&mut model, &context);
                assert_same_logits(&last, &full, &format!("{threads} threads, position {t}"));
            }
            logits.extend(last);
        }
        per_threads.push(logits);
    }
    assert_eq!(per_threads[0], per_threads[1], "1 vs 2 threads");
    assert_eq!(per_threads[0], per_threads[2], "1 vs 3 threads");
}

#[test]
fn bf16_decoding_reads_packed_weights_that_follow_the_parameters() {
    // In bf16 a cached pass reads the weights packed once; a full pass
    // rounds them as it packs. Both multiply the same bf16 values, so they
    // agree to the rounding of activations to bf16 (2⁻⁸ relative) carried
    // through two layers: 2 % of the largest logit. The bound is far below
    // what stale weights give after the parameters change.
    let t = 24;
    let context: Vec<u32> = (0..t as u32).map(|i| (i * 37 + 11) % 256).collect();
    let backends = [Kernels::new(Backend::Scalar).unwrap(), Kernels::best()];
    for kernels in backends {
        let mut model = model_on(kernels, t);
        model.set_precision(Precision::Bf16);
        let what = kernels.backend().to_string();
        let mut cache = model.new_cache();
        assert_eq!(model.packed_bytes(), 0, "{what}: packed before decoding");
        let cached = model.forward_cached(&mut cache, &context).unwrap().to_vec();
        assert_eq!(
            model.packed_bytes(),
            4 * Gpt::packed_floats(&model.config),
            "{what}: bf16 decoding packs the weights, as the memory check counts them"
        );
        assert!(model.grads().is_empty(), "{what}: decoding holds gradients");
        let full = full_logits(&mut model, &context);
        assert_logits_within(&cached, &full, 2e-2, &what);
        // New parameters drop the packed copy; the next pass packs them.
        let mut rng = Rng::new(3);
        for p in model.params_mut().iter_mut() {
            *p += rng.normal(0.0, 0.05);
        }
        assert_eq!(model.packed_bytes(), 0, "{what}: stale weights kept");
        cache.clear();
        let cached = model.forward_cached(&mut cache, &context).unwrap().to_vec();
        let full = full_logits(&mut model, &context);
        assert_logits_within(&cached, &full, 2e-2, &format!("{what}, new parameters"));
        model.set_precision(Precision::F32);
        assert_eq!(model.packed_bytes(), 0, "{what}: f32 keeps no bf16 copy");
    }
}

#[test]
fn bf16_decoding_keeps_its_keys_and_values_in_bf16() {
    // A bf16 model's cache holds keys and values in bf16, half the bytes of
    // an f32 one; tokens decoded one at a time (the products of one row
    // read the cached bf16 rows in place) agree with a full pass to the
    // bound of the test above. A cache made for the other precision is
    // refused, not misread.
    let t = 24;
    let context: Vec<u32> = (0..t as u32).map(|i| (i * 29 + 7) % 256).collect();
    let backends = [Kernels::new(Backend::Scalar).unwrap(), Kernels::best()];
    for kernels in backends {
        let mut model = model_on(kernels, t);
        let what = kernels.backend().to_string();
        let mut f32_cache = model.new_cache();
        model.set_precision(Precision::Bf16);
        let mut cache = model.new_cache();
        assert_eq!(2 * cache.cache_bytes(), f32_cache.cache_bytes(), "{what}");
        let refused = model.forward_cached(&mut f32_cache, &context[..1]);
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("make a new cache"), "{what}: {message:?}");
        model.forward_cached(&mut cache, &context[..1]).unwrap();
        for n in 2..=t {
            let cached = model
                .forward_cached(&mut cache, &context[n - 1..n])
                .unwrap()
                .to_vec();
            let full = full_logits(&mut model, &context[..n]);
            assert_logits_within(&cached, &full, 2e-2, &format!("{what}, position {n}"));
        }
    }
}

/// Asserts `got` equals `want` to `tol` of the largest logit.
#[track_caller]
fn assert_logits_within(got: &[f32], want: &[f32], tol: f32, what: &str) {
    let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}, token {i}: {g} vs {w}"
        );
    }
}

#[test]
fn greedy_is_deterministic_and_equals_top_k_1() {
    let mut model = model(32);
    let mut cache = model.new_cache();
    let prompt = [10, 49, 50, 43];
    let greedy = Sampling {
        temperature: 0.0,
        top_k: None,
        top_p: None,
    };
    let a = generate(&mut model, &mut cache, &prompt, 40, &greedy, 1, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let b = generate(&mut model, &mut cache, &prompt, 40, &greedy, 2, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(a.tokens, b.tokens);
    let top1 = Sampling {
        temperature: 1.3,
        top_k: Some(1),
        top_p: None,
    };
    let c = generate(&mut model, &mut cache, &prompt, 40, &top1, 3, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(a.tokens, c.tokens);
}

#[test]
fn the_same_seed_gives_the_same_tokens() {
    let mut model = model(32);
    let mut cache = model.new_cache();
    let prompt = [72, 105];
    for sampling in [
        Sampling {
            temperature: 1.0,
            top_k: None,
            top_p: None,
        },
        Sampling {
            temperature: 0.8,
            top_k: Some(20),
            top_p: None,
        },
        Sampling {
            temperature: 0.9,
            top_k: None,
            top_p: Some(0.9),
        },
    ] {
        let mut streamed = Vec::new();
        let a = generate(&mut model, &mut cache, &prompt, 50, &sampling, 42, |t| {
            streamed.push(t);
            ControlFlow::Continue(())
        })
        .unwrap();
        let b = generate(&mut model, &mut cache, &prompt, 50, &sampling, 42, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        let c = generate(&mut model, &mut cache, &prompt, 50, &sampling, 43, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(a.tokens, b.tokens, "{sampling:?}");
        assert_eq!(a.tokens, streamed, "every token is streamed, in order");
        assert_ne!(
            a.tokens, c.tokens,
            "{sampling:?}: another seed, another text"
        );
        // A reader that leaves (a closed pipe) stops the stream there.
        let mut heard = 0;
        let d = generate(&mut model, &mut cache, &prompt, 50, &sampling, 42, |_| {
            heard += 1;
            if heard == 7 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert_eq!(d.tokens, a.tokens[..7], "{sampling:?}");
    }
}

#[test]
fn top_k_and_top_p_restrict_the_choice() {
    let mut model = model(32);
    let mut cache = model.new_cache();
    let prompt = [65];
    let logits = model.forward_cached(&mut cache, &prompt).unwrap().to_vec();
    let mut order: Vec<u32> = (0..256).collect();
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    let mut sampler = runner::generate::Sampler::new(256);
    let mut rng = Rng::new(1);
    let top3 = Sampling {
        temperature: 5.0,
        top_k: Some(3),
        top_p: None,
    };
    for _ in 0..200 {
        let tok = sampler.sample(&logits, &top3, &mut rng);
        assert!(order[..3].contains(&tok), "{tok} is not among the top 3");
    }
    // A tiny nucleus keeps only the most likely token.
    let nucleus = Sampling {
        temperature: 1.0,
        top_k: None,
        top_p: Some(1e-6),
    };
    for _ in 0..50 {
        assert_eq!(sampler.sample(&logits, &nucleus, &mut rng), argmax(&logits));
    }
}

/// A vocabulary padded past the tokenizer's (as nanoGPT pads GPT-2's to
/// 50304) never has its padding drawn: those tokens have no text.
#[test]
fn only_tokens_the_tokenizer_can_write_are_drawn() {
    let cfg = ModelConfig {
        vocab_size: 300,
        ..Preset::Tiny.config(runner::data::Tokenizer::Byte)
    };
    let mut model = Gpt::new(cfg, Kernels::best(), 5).unwrap();
    // The padding's embedding rows (tied to the head) scaled far up: their
    // logits are the largest wherever they are positive.
    let c = cfg.channels;
    for w in &mut model.params_mut()[256 * c..300 * c] {
        *w *= 1000.0;
    }
    let prompt = [10, 20, 30];
    let padded_wins = full_logits(&mut model, &prompt);
    assert!(argmax(&padded_wins) >= 256, "the test draws no padding");
    let mut cache = model.new_cache();
    for temperature in [0.0, 1.0] {
        let sampling = Sampling {
            temperature,
            top_k: None,
            top_p: None,
        };
        let stats = generate(&mut model, &mut cache, &prompt, 60, &sampling, 7, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(stats.tokens.len(), 60);
        assert!(
            stats.tokens.iter().all(|&t| t < 256),
            "temperature {temperature}: {:?}",
            stats.tokens
        );
    }
}

#[test]
fn the_window_slides_past_the_block_size() {
    // Greedy decoding far past the block size, against a reference that
    // recomputes the whole window each time with the documented rule: when
    // the window is full, keep its last half block and continue.
    let t = 8;
    let mut model = model(t);
    let mut cache = model.new_cache();
    let prompt = [1, 2, 3, 4, 5, 6, 7, 8];
    let greedy = Sampling {
        temperature: 0.0,
        top_k: None,
        top_p: None,
    };
    let got = generate(&mut model, &mut cache, &prompt, 30, &greedy, 0, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let mut window = prompt.to_vec();
    let mut want = Vec::new();
    for _ in 0..30 {
        let token = argmax(&full_logits(&mut model, &window));
        want.push(token);
        if window.len() == t {
            window.drain(..t - t / 2 + 1);
        }
        window.push(token);
    }
    assert_eq!(got.tokens, want);
}

#[test]
fn bad_prompts_and_settings_are_errors() {
    let mut model = model(16);
    let mut cache = model.new_cache();
    let ok = Sampling {
        temperature: 1.0,
        top_k: None,
        top_p: None,
    };
    let err = |m: &mut Gpt, c: &mut _, p: &[u32], s: &Sampling| {
        generate(m, c, p, 4, s, 0, |_| ControlFlow::Continue(()))
            .unwrap_err()
            .to_string()
    };
    assert!(err(&mut model, &mut cache, &[], &ok).contains("empty"));
    assert!(
        err(&mut model, &mut cache, &[7; 17], &ok).contains("longer than the model's block size")
    );
    // A prompt that fills the whole block still generates (the cache
    // slides): every token asked for, each emitted and in the vocabulary.
    let mut emitted = Vec::new();
    let stats = generate(&mut model, &mut cache, &[7; 16], 4, &ok, 0, |t| {
        emitted.push(t);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(stats.tokens.len(), 4);
    assert_eq!(emitted, stats.tokens);
    assert!(
        stats.tokens.iter().all(|&t| (t as usize) < 256),
        "{emitted:?}"
    );
    // Each bad setting is refused, naming the option at fault.
    for (bad, option) in [
        (
            Sampling {
                temperature: -1.0,
                ..ok
            },
            "--temperature",
        ),
        (
            Sampling {
                temperature: f32::NAN,
                ..ok
            },
            "--temperature",
        ),
        (
            Sampling {
                top_k: Some(0),
                ..ok
            },
            "--top-k",
        ),
        (
            Sampling {
                top_p: Some(0.0),
                ..ok
            },
            "--top-p",
        ),
        (
            Sampling {
                top_p: Some(1.5),
                ..ok
            },
            "--top-p",
        ),
    ] {
        let message = err(&mut model, &mut cache, &[7], &bad);
        assert!(message.contains(option), "{bad:?}: {message}");
    }
}

/// A vocabulary of 300 is padded to 384 inside the model, and the padded
/// logits are 0. Here every real logit is negative, so a sampler that saw
/// the padding would pick it: every token drawn must still be below 300,
/// greedy or sampled, in both precisions.
#[test]
fn padded_logits_are_never_sampled() {
    let cfg = ModelConfig {
        vocab_size: 300,
        tokenizer: None,
        ..Preset::Tiny.config(runner::data::Tokenizer::Byte)
    };
    for precision in [Precision::F32, Precision::Bf16] {
        let mut model = Gpt::new(cfg, Kernels::best(), 5).unwrap();
        model.set_precision(precision);
        let (v, c) = (cfg.vocab_size, cfg.channels);
        let sizes = model.sizes();
        let p = sizes.split_mut(model.params_mut());
        // logits[v] = ln_f(x) · wte[v] = (-u) · u < 0 for every real v.
        let u: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 / c as f32).collect();
        for row in p.wte[..v * c].chunks_exact_mut(c) {
            row.copy_from_slice(&u);
        }
        p.lnfw.fill(0.0);
        for (b, &x) in p.lnfb.iter_mut().zip(&u) {
            *b = -x;
        }
        model.forward(&[1, 2, 3], 1, 3).unwrap();
        let logits = model.logits(2).unwrap();
        assert_eq!(logits.len(), v);
        assert!(logits.iter().all(|&l| l < -1.0), "{:?}", &logits[..4]);
        let mut cache = model.new_cache();
        for temperature in [0.0, 1.0, 5.0] {
            let sampling = Sampling {
                temperature,
                top_k: None,
                top_p: None,
            };
            let stats = generate(&mut model, &mut cache, &[1, 2], 40, &sampling, 3, |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
            assert_eq!(stats.tokens.len(), 40);
            assert!(
                stats.tokens.iter().all(|&t| (t as usize) < v),
                "{:?}",
                stats.tokens
            );
            assert_eq!(cache.logits().len(), v);
        }
    }
}
