//! The whole model's backward pass against finite differences of its
//! forward pass, on the `tiny` preset (L2 H2 C32 T32) with full-length
//! sequences, on every kernel backend this CPU has. Every parameter tensor
//! is checked, so every layer's backward is on the path of some check
//! (each layer alone: `layer_gradients.rs`).
//!
//! Per tensor, the check compares central differences with the backward's
//! gradient at a handful of single elements (the largest gradients, where
//! a wrong value shows most, and a few at random) and along a random
//! direction over the whole tensor, which involves every element.
//!
//! The objective is the mean cross-entropy recomputed in f64 from the
//! model's logits: the model's own loss is an f32 mean, whose rounding
//! (~5e-7 on a loss of 5.5) would swamp the change a step of one element
//! makes.

use kernels::{Backend, Kernels};
use runner::model::{Gpt, ModelConfig, Preset};
use runner::rng::Rng;

/// Mean over rows of `logsumexp(row) − row[target]`, in f64.
fn mean_cross_entropy(logits: &[f32], targets: &[u32], vocab: usize) -> f64 {
    let total: f64 = logits
        .chunks_exact(vocab)
        .zip(targets)
        .map(|(row, &target)| {
            let max = f64::from(row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)));
            let sum: f64 = row.iter().map(|&x| (f64::from(x) - max).exp()).sum();
            max + sum.ln() - f64::from(row[target as usize])
        })
        .sum();
    total / targets.len() as f64
}

fn loss_at(model: &mut Gpt, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> f64 {
    model.forward(tokens, b, t).unwrap();
    let logits: Vec<f32> = (0..b * t)
        .flat_map(|i| model.logits(i).unwrap().to_vec())
        .collect();
    mean_cross_entropy(&logits, targets, model.config.vocab_size)
}

/// Step for single elements: the loss changes by ~1e-2 × the gradient,
/// far above the model's f32 rounding (~1e-8 of the loss), while the
/// O(h²) truncation stays ~1e-3 of the gradient.
const ELEMENT_H: f32 = 1e-2;

/// Allowed `|analytic − numeric|` at an element, relative to `|analytic|`
/// plus `FLOOR ×` the tensor's largest gradient (rounding noise scales with
/// the activations, not with one element's gradient). Observed: ≤ 2.5e-3.
const ELEMENT_TOL: f64 = 2e-2;
const FLOOR: f64 = 1e-2;

/// A step along a random direction moves every element of the tensor, so
/// it is smaller, keeping the truncation error small.
const DIRECTION_H: f32 = 1e-3;

/// Allowed error along the direction, relative to `Σ |gradient · step|`.
/// Observed: ≤ 5e-5.
const DIRECTION_TOL: f64 = 1e-3;

#[test]
fn every_parameter_gradient_matches_finite_differences() {
    // The byte vocabulary (256, no padding), and 300 tokens, which the
    // model pads to 384: the loss (recomputed here from the 300 logits)
    // and its gradients must not see the padding.
    let byte = Preset::Tiny.config(runner::data::Tokenizer::Byte);
    let padded = ModelConfig {
        vocab_size: 300,
        tokenizer: None,
        ..byte
    };
    assert_eq!(padded.padded_vocab(), 384);
    let backends = Backend::ALL.into_iter().filter(|b| b.is_supported());
    for (backend, cfg) in backends.flat_map(|b| [(b, byte), (b, padded)]) {
        let (b, t, v) = (2, cfg.block_size, cfg.vocab_size);
        let kernels = Kernels::new(backend).unwrap();
        let mut model = Gpt::new(cfg, kernels, 7).unwrap();
        // Larger weights than the init, so that every path carries signal.
        let mut rng = Rng::new(3);
        for p in model.params_mut().iter_mut() {
            *p += rng.normal(0.0, 0.1);
        }
        let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();
        let targets: Vec<u32> = (0..b * t).map(|_| rng.below(v) as u32).collect();

        model.zero_grad();
        model.forward(&tokens, b, t).unwrap();
        let loss = model.loss(&targets, Some(1.0 / (b * t) as f32)).unwrap();
        model.backward().unwrap();
        let grads = model.grads().to_vec();
        let unpadded = loss_at(&mut model, &tokens, &targets, b, t);
        assert!(
            (f64::from(loss) - unpadded).abs() <= 1e-5 * unpadded,
            "{backend} V{v}: loss {loss}, over the real vocabulary {unpadded}"
        );
        // The padded rows of the embedding get no gradient, so they stay 0.
        let c = cfg.channels;
        assert!(grads[v * c..cfg.padded_vocab() * c]
            .iter()
            .all(|&g| g == 0.0));

        let sizes = model.sizes();
        let mut offset = 0;
        let specs = runner::model::tensors::PARAM_SPECS.into_array();
        for (spec, len) in specs.iter().zip(sizes.into_array()) {
            let name = spec.hf_name;
            let range = offset..offset + len;
            offset += len;
            let grad = &grads[range.clone()];
            let largest = grad.iter().fold(0.0_f64, |m, &g| m.max(f64::from(g).abs()));
            assert!(largest > 0.0, "{backend} V{v}: {name}: no gradient at all");

            // Single elements: the four largest gradients and four at random.
            let mut by_size: Vec<usize> = (0..len).collect();
            by_size.sort_by(|&i, &j| grad[j].abs().total_cmp(&grad[i].abs()));
            let random = (0..4).map(|_| rng.below(len));
            for i in by_size.into_iter().take(4).chain(random) {
                let p = &mut model.params_mut()[range.start + i];
                let original = *p;
                let (up, down) = (original + ELEMENT_H, original - ELEMENT_H);
                *p = up;
                let loss_up = loss_at(&mut model, &tokens, &targets, b, t);
                model.params_mut()[range.start + i] = down;
                let loss_down = loss_at(&mut model, &tokens, &targets, b, t);
                model.params_mut()[range.start + i] = original;
                // The step actually taken, after f32 rounding of p ± h.
                let numeric = (loss_up - loss_down) / (f64::from(up) - f64::from(down));
                let analytic = f64::from(grad[i]);
                assert!(
                    (analytic - numeric).abs() <= ELEMENT_TOL * (analytic.abs() + FLOOR * largest),
                    "{backend}: {name}[{i}]: backward gives {analytic}, finite differences {numeric}"
                );
            }

            // A random direction `d` over the whole tensor.
            let direction: Vec<f32> = (0..len).map(|_| rng.normal(0.0, 1.0)).collect();
            let original = model.params()[range.clone()].to_vec();
            let shifted = |sign: f32| -> Vec<f32> {
                original
                    .iter()
                    .zip(&direction)
                    .map(|(&o, &d)| o + sign * DIRECTION_H * d)
                    .collect()
            };
            let (plus, minus) = (shifted(1.0), shifted(-1.0));
            model.params_mut()[range.clone()].copy_from_slice(&plus);
            let loss_up = loss_at(&mut model, &tokens, &targets, b, t);
            model.params_mut()[range.clone()].copy_from_slice(&minus);
            let loss_down = loss_at(&mut model, &tokens, &targets, b, t);
            model.params_mut()[range.clone()].copy_from_slice(&original);
            let terms = || {
                grad.iter()
                    .zip(plus.iter().zip(&minus))
                    .map(|(&g, (&p, &m))| f64::from(g) * (f64::from(p) - f64::from(m)))
            };
            let expected: f64 = terms().sum();
            let magnitude: f64 = terms().map(f64::abs).sum();
            assert!(
                (expected - (loss_up - loss_down)).abs() <= DIRECTION_TOL * magnitude,
                "{backend}: {name} along a random direction: backward gives {expected}, \
                 finite differences {}",
                loss_up - loss_down
            );
        }
        assert_eq!(offset, model.params().len());
    }
}

#[test]
fn gradients_accumulate_over_micro_batches() {
    let cfg = Preset::Tiny.config(runner::data::Tokenizer::Byte);
    let (b, t) = (2, cfg.block_size);
    let kernels = Kernels::best();
    let mut model = Gpt::new(cfg, kernels, 1).unwrap();
    let tokens: Vec<u32> = (0..b * t).map(|i| (i * 37 % 256) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| (i * 11 % 256) as u32).collect();
    model.zero_grad();
    model.forward(&tokens, b, t).unwrap();
    model.loss(&targets, Some(1.0)).unwrap();
    model.backward().unwrap();
    let once = model.grads().to_vec();
    model.forward(&tokens, b, t).unwrap();
    model.loss(&targets, Some(1.0)).unwrap();
    model.backward().unwrap();
    for (twice, once) in model.grads().iter().zip(&once) {
        assert!(
            (twice - 2.0 * once).abs() <= 1e-5 * (1.0 + once.abs()),
            "{twice} vs 2 × {once}"
        );
    }
}

/// `--recompute` keeps less and recomputes the rest in the backward pass:
/// the loss and every gradient are the same bits, in both precisions and
/// over several micro-batches, with batch buffers reused between shapes.
#[test]
fn recomputing_activations_gives_the_same_gradients() {
    use runner::model::Precision;
    let cfg = Preset::Tiny.config(runner::data::Tokenizer::Byte);
    let (b, t) = (3, cfg.block_size);
    assert!(Gpt::activation_floats(&cfg, b, t, true) < Gpt::activation_floats(&cfg, b, t, false));
    let mut rng = Rng::new(9);
    let tokens: Vec<u32> = (0..2 * b * t).map(|_| rng.below(256) as u32).collect();
    let targets: Vec<u32> = (0..2 * b * t).map(|_| rng.below(256) as u32).collect();
    let backends = Backend::ALL.into_iter().filter(|b| b.is_supported());
    for (backend, precision) in backends.flat_map(|b| [(b, Precision::F32), (b, Precision::Bf16)]) {
        let run = |recompute: bool| {
            let mut model = Gpt::new(cfg, Kernels::new(backend).unwrap(), 5).unwrap();
            model.set_precision(precision);
            model.set_recompute(recompute);
            model.zero_grad();
            let mut losses = Vec::new();
            for (x, y) in tokens.chunks(b * t).zip(targets.chunks(b * t)) {
                model.forward(x, b, t).unwrap();
                losses.push(model.loss(y, Some(0.5 / (b * t) as f32)).unwrap());
                model.backward().unwrap();
            }
            // A shorter batch in between reuses (and must not corrupt) the
            // buffers.
            model.forward(&tokens[..t / 2], 1, t / 2).unwrap();
            (losses, model.grads().to_vec())
        };
        let (kept, recomputed) = (run(false), run(true));
        assert_eq!(kept.0, recomputed.0, "{backend} {precision:?}: losses");
        assert!(
            kept.1
                .iter()
                .zip(&recomputed.1)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{backend} {precision:?}: gradients differ"
        );
    }
}
