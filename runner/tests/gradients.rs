//! The backward pass against finite differences of the forward pass, for
//! every parameter tensor (so every layer's backward is on the path of at
//! least one check), on every kernel backend this CPU has.
//!
//! Per tensor, the check compares a directional derivative: with a random
//! direction `d` over that tensor, `(L(θ + h·d) − L(θ − h·d)) / 2h` against
//! `∇L · d`. Summing over a whole tensor keeps f32 rounding noise small next
//! to the signal, which per-element differences in f32 would not.

use kernels::{Backend, Kernels};
use runner::config::{ModelConfig, Preset};
use runner::model::Gpt;
use runner::rng::Rng;

fn tiny() -> ModelConfig {
    ModelConfig {
        block_size: 8,
        ..Preset::Tiny.config()
    }
}

fn loss_at(model: &mut Gpt, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> f64 {
    model.forward(tokens, b, t).unwrap();
    f64::from(model.loss(targets, None).unwrap())
}

#[test]
fn every_parameter_gradient_matches_finite_differences() {
    let (b, t) = (2, 8);
    for backend in Backend::ALL.into_iter().filter(|b| b.is_supported()) {
        let kernels = Kernels::new(backend).unwrap();
        let mut model = Gpt::new(tiny(), kernels, 7).unwrap();
        // Larger weights than the init, so that every path carries signal.
        let mut rng = Rng::new(3);
        for p in model.params.iter_mut() {
            *p += rng.normal(0.0, 0.1);
        }
        let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(256) as u32).collect();
        let targets: Vec<u32> = (0..b * t).map(|_| rng.below(256) as u32).collect();

        model.zero_grad();
        model.forward(&tokens, b, t).unwrap();
        model.loss(&targets, Some(1.0 / (b * t) as f32)).unwrap();
        model.backward().unwrap();
        let grads = model.grads.clone();

        let sizes = model.sizes();
        let mut offset = 0;
        for (name, len) in sizes.into_named() {
            let range = offset..offset + len;
            offset += len;
            let direction: Vec<f32> = (0..len).map(|_| rng.normal(0.0, 1.0)).collect();
            let analytic: f64 = grads[range.clone()]
                .iter()
                .zip(&direction)
                .map(|(&g, &d)| f64::from(g) * f64::from(d))
                .sum();
            let h = 1e-3_f32;
            let original = model.params[range.clone()].to_vec();
            let shifted = |sign: f32, model: &mut Gpt| {
                for ((p, &o), &d) in model.params[range.clone()]
                    .iter_mut()
                    .zip(&original)
                    .zip(&direction)
                {
                    *p = o + sign * h * d;
                }
                loss_at(model, &tokens, &targets, b, t)
            };
            let numeric =
                (shifted(1.0, &mut model) - shifted(-1.0, &mut model)) / (2.0 * f64::from(h));
            model.params[range.clone()].copy_from_slice(&original);
            let scale = analytic.abs().max(numeric.abs()).max(1e-3);
            assert!(
                (analytic - numeric).abs() <= 0.03 * scale,
                "{backend}: {name}: backward gives {analytic}, finite differences {numeric}"
            );
        }
        assert_eq!(offset, model.params.len());
    }
}

#[test]
fn gradients_accumulate_over_micro_batches() {
    let (b, t) = (2, 8);
    let kernels = Kernels::best();
    let mut model = Gpt::new(tiny(), kernels, 1).unwrap();
    let tokens: Vec<u32> = (0..b * t).map(|i| (i * 37 % 256) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| (i * 11 % 256) as u32).collect();
    model.zero_grad();
    model.forward(&tokens, b, t).unwrap();
    model.loss(&targets, Some(1.0)).unwrap();
    model.backward().unwrap();
    let once = model.grads.clone();
    model.forward(&tokens, b, t).unwrap();
    model.loss(&targets, Some(1.0)).unwrap();
    model.backward().unwrap();
    for (twice, once) in model.grads.iter().zip(&once) {
        assert!(
            (twice - 2.0 * once).abs() <= 1e-5 * (1.0 + once.abs()),
            "{twice} vs 2 × {once}"
        );
    }
}
