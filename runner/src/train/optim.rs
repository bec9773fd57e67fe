//! AdamW over the model's parameter tensors, with global gradient-norm
//! clipping and a warm-up + cosine learning-rate schedule; optionally
//! sharded over the ranks of a data-parallel run (ZeRO stage 1: each rank
//! keeps the moments of, and updates, its share of the parameters).

use std::borrow::Cow;
use std::ops::Range;

use kernels::{AdamW, Kernels};

use crate::error::Error;
use crate::model::tensors::{Params, PARAM_SPECS};
use crate::model::Gpt;
use crate::threads::Threads;
use crate::world::Collective;

/// Optimizer hyperparameters (GPT-2 / nanoGPT defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimizerSettings {
    /// Peak learning rate.
    pub lr: f32,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup: u32,
    /// Total steps; the cosine decay reaches `min_lr_ratio · lr` there.
    pub total_steps: u32,
    /// The floor of the decay, as a fraction of `lr`.
    pub min_lr_ratio: f32,
    /// Decoupled weight decay on matrices and embeddings.
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// The global gradient norm is clipped to this.
    pub grad_clip: f32,
}

impl OptimizerSettings {
    /// nanoGPT's settings with the given learning rate and schedule.
    pub fn new(lr: f32, warmup: u32, total_steps: u32) -> OptimizerSettings {
        OptimizerSettings {
            lr,
            warmup,
            total_steps,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
        }
    }

    /// The most |m| / √v that AdamW with these betas can reach, whatever
    /// the gradients: by Cauchy–Schwarz over the two moving averages of
    /// the same gradients, m² ≤ R·v with R = (1−β₁)² / ((1−β₂)(1−β₁²/β₂))
    /// (√R = 1.165 for β = 0.9, 0.95; real runs reach 1.1), here with 10 %
    /// for rounding. `None` where β₁² ≥ β₂, which bounds nothing.
    pub fn moment_ratio_limit(&self) -> Option<f64> {
        let (b1, b2) = (f64::from(self.beta1), f64::from(self.beta2));
        let ratio = (1.0 - b1).powi(2) / ((1.0 - b2) * (1.0 - b1 * b1 / b2));
        (b1 * b1 < b2).then(|| 1.1 * ratio.sqrt())
    }

    /// The first parameter whose moments are past
    /// [`OptimizerSettings::moment_ratio_limit`] (beyond 1e-20, for
    /// squares that underflowed): a damaged state, refused before it
    /// sends the weights to infinity.
    pub fn unreachable_moments(&self, m: &[f32], v: &[f32]) -> Option<usize> {
        let most = self.moment_ratio_limit()?;
        m.iter()
            .zip(v)
            .position(|(&m, &v)| f64::from(m).abs() > most * f64::from(v).max(0.0).sqrt() + 1e-20)
    }

    /// The learning rate of step `step` (counting from 1): linear warm-up,
    /// then cosine decay to `min_lr_ratio · lr` at `total_steps`.
    pub fn lr_at(&self, step: u32) -> f32 {
        if step <= self.warmup {
            return self.lr * step as f32 / self.warmup.max(1) as f32;
        }
        let span = self.total_steps.saturating_sub(self.warmup).max(1) as f32;
        let progress = ((step - self.warmup) as f32 / span).min(1.0);
        let min_lr = self.min_lr_ratio * self.lr;
        min_lr + 0.5 * (self.lr - min_lr) * (1.0 + (std::f32::consts::PI * progress).cos())
    }
}

/// AdamW's moments of this rank's share of the parameters (all of them
/// unless sharded), and the step count.
pub struct Optimizer {
    /// One arena: the first moments of the share, then the second.
    moments: Vec<f32>,
    /// Every rank's share of the parameter arena, in rank order: one range
    /// over all of it unless the optimizer is sharded.
    shards: Vec<Range<usize>>,
    /// This rank's index in `shards`.
    rank: usize,
    /// The model's parameter tensor sizes.
    sizes: Params<usize>,
    /// Updates done so far.
    pub step: u32,
    /// Sums of squared gradients, one per piece of the whole model
    /// (reused every step).
    partial_norms: Vec<f32>,
}

/// The first and second moments of every parameter: borrowed from an
/// optimizer that holds them all, gathered from the ranks' shares if not.
pub type FullMoments<'a> = (Cow<'a, [f32]>, Cow<'a, [f32]>);

/// Parameters per piece of the update: a fixed size, so the gradient norm
/// (summed piece by piece, in order) never depends on the thread count or
/// the sharding.
const PARAMS_PER_PIECE: usize = 1 << 16;

/// Each of `ranks` ranks' share of a parameter arena of tensors `sizes`:
/// contiguous ranges in rank order that cover it, cut only where a piece
/// of the update starts (so every piece, and its term of the gradient
/// norm, is one rank's), each starting at the first piece at or after an
/// equal split. A rank may get nothing in a model of few pieces.
pub fn shard_ranges(sizes: Params<usize>, ranks: usize) -> Vec<Range<usize>> {
    let total = sizes.total();
    let piece_starts: Vec<usize> = sizes
        .starts()
        .into_array()
        .into_iter()
        .zip(sizes.into_array())
        .flat_map(|(start, len)| (0..len).step_by(PARAMS_PER_PIECE).map(move |s| start + s))
        .collect();
    let ranks = ranks.max(1);
    let mut cuts = vec![0];
    for r in 1..ranks {
        let target = (total as u128 * r as u128 / ranks as u128) as usize;
        let at = piece_starts.partition_point(|&s| s < target);
        cuts.push(piece_starts.get(at).copied().unwrap_or(total));
    }
    cuts.push(total);
    cuts.windows(2).map(|w| w[0]..w[1]).collect()
}

/// The part of a tensor at `start`, `len` long, inside `shard`, as a range
/// of the tensor.
pub(crate) fn part_in(shard: &Range<usize>, start: usize, len: usize) -> Option<Range<usize>> {
    let (lo, hi) = (shard.start.max(start), shard.end.min(start + len));
    (lo < hi).then(|| lo - start..hi - start)
}

impl Optimizer {
    /// Zero moments for every parameter of a model of tensors `sizes`.
    pub fn new(sizes: Params<usize>) -> Optimizer {
        Optimizer::sharded(sizes, (0, 1))
    }

    /// Zero moments for shard `shard` of `shards` ([`shard_ranges`]) of
    /// the parameters of a model of tensors `sizes`.
    pub fn sharded(sizes: Params<usize>, (shard, shards): (usize, usize)) -> Optimizer {
        let rank = shard;
        let shards = shard_ranges(sizes, shards);
        let owned = shards[rank].len();
        Optimizer {
            moments: vec![0.0; Optimizer::state_floats(owned)],
            shards,
            rank,
            sizes,
            step: 0,
            partial_norms: Vec::new(),
        }
    }

    /// Floats of optimizer state for `params` parameters.
    pub fn state_floats(params: usize) -> usize {
        params.saturating_mul(2)
    }

    /// [`Optimizer::sharded`] resumed after `step` updates with these first
    /// and second moments of every parameter (of which it keeps its share).
    /// (A resumed run reads its share straight into
    /// [`Optimizer::moments_mut`] instead.)
    #[cfg(test)]
    pub fn from_state(
        sizes: Params<usize>,
        (shard, shards): (usize, usize),
        step: u32,
        (first, second): (Vec<f32>, Vec<f32>),
    ) -> Optimizer {
        let mut optimizer = Optimizer::sharded(sizes, (shard, shards));
        let owned = optimizer.owned();
        let (m, v) = optimizer.moments_mut();
        m.copy_from_slice(&first[owned.clone()]);
        v.copy_from_slice(&second[owned]);
        optimizer.step = step;
        optimizer
    }

    /// The range of the parameter arena this rank updates.
    pub fn owned(&self) -> Range<usize> {
        self.shards[self.rank].clone()
    }

    /// Whether the ranks share the optimizer state (ZeRO stage 1).
    pub fn is_sharded(&self) -> bool {
        self.shards.len() > 1
    }

    /// Every rank's share of the parameters, in rank order.
    pub fn shards(&self) -> &[Range<usize>] {
        &self.shards
    }

    /// The first and second moments of [`Optimizer::owned`].
    pub fn moments(&self) -> (&[f32], &[f32]) {
        self.moments.split_at(self.moments.len() / 2)
    }

    /// The first and second moments of [`Optimizer::owned`], mutable.
    pub fn moments_mut(&mut self) -> (&mut [f32], &mut [f32]) {
        let half = self.moments.len() / 2;
        self.moments.split_at_mut(half)
    }

    /// The moments of every parameter, on rank 0 (gathered from every
    /// rank's share when sharded, so a checkpoint is the same as one
    /// process's); `None` on the other ranks. Every rank must call it.
    pub fn full_moments(&self, world: &dyn Collective) -> Option<FullMoments<'_>> {
        let leader = world.rank() == 0;
        let (m, v) = self.moments();
        if !self.is_sharded() {
            return leader.then_some((Cow::Borrowed(m), Cow::Borrowed(v)));
        }
        let whole = |part: &[f32]| {
            let mut whole = vec![0.0; if leader { self.sizes.total() } else { 0 }];
            world.gather_to_leader(part, &self.shards, &mut whole);
            whole
        };
        let (m, v) = (whole(m), whole(v));
        leader.then_some((Cow::Owned(m), Cow::Owned(v)))
    }

    /// One update of `model`'s share ([`Optimizer::owned`]) from its
    /// gradients (summed over the ranks, at least in that share) at
    /// learning rate `lr`. Returns the norm of the whole gradient before
    /// clipping (the same bits on every rank, and for given summed
    /// gradients the same bits sharded or not); a
    /// non-finite norm (the run diverged) is an error rather than a silent
    /// NaN model. A sharded optimizer leaves the other shares to
    /// [`Optimizer::share_weights`].
    pub fn update(
        &mut self,
        model: &mut Gpt,
        settings: &OptimizerSettings,
        lr: f32,
        world: &dyn Collective,
    ) -> Result<f32, Error> {
        let k = model.kernels();
        let (params, grads, threads) = model.optimizer_view();
        let owned = self.owned();
        let starts = self.sizes.starts().into_array();
        let norm = self.gradient_norm(k, &grads, threads, world)?;
        if !norm.is_finite() {
            return Err(Error::Diverged {
                step: self.step + 1,
                norm,
            });
        }
        let clip_scale = if norm > settings.grad_clip {
            settings.grad_clip / norm
        } else {
            1.0
        };
        self.step += 1;
        let step = self.step;
        let (m, v) = self.moments_mut();
        let tensors = PARAM_SPECS
            .into_array()
            .into_iter()
            .zip(starts)
            .zip(params.into_array().into_iter().zip(grads.into_array()));
        for ((spec, start), (p, g)) in tensors {
            let Some(part) = part_in(&owned, start, p.len()) else {
                continue;
            };
            let state = part.start + start - owned.start..part.end + start - owned.start;
            let (p, g) = (&mut p[part.clone()], &g[part]);
            let (m, v) = (&mut m[state.clone()], &mut v[state]);
            let opt = AdamW {
                lr,
                beta1: settings.beta1,
                beta2: settings.beta2,
                eps: settings.eps,
                weight_decay: if spec.weight_decay {
                    settings.weight_decay
                } else {
                    0.0
                },
            };
            threads.try_for_each_piece(
                (
                    (p, PARAMS_PER_PIECE),
                    ((m, PARAMS_PER_PIECE), (v, PARAMS_PER_PIECE)),
                ),
                |i, (p, (m, v))| {
                    let g = &g[i * PARAMS_PER_PIECE..][..p.len()];
                    Ok(k.adamw_step(&opt, step, clip_scale, p, g, m, v)?)
                },
            )?;
        }
        Ok(norm)
    }

    /// The norm of the whole gradient: sums of squares per fixed piece of
    /// each tensor (of this rank's share), added in order (over every
    /// rank's pieces when sharded), so that any thread count and world
    /// size gives the same bits.
    fn gradient_norm(
        &mut self,
        k: Kernels,
        grads: &Params<&[f32]>,
        threads: &Threads,
        world: &dyn Collective,
    ) -> Result<f32, Error> {
        let owned = self.owned();
        let starts = self.sizes.starts().into_array();
        let pieces: usize = grads
            .into_array()
            .iter()
            .map(|g| g.len().div_ceil(PARAMS_PER_PIECE))
            .sum();
        self.partial_norms.clear();
        self.partial_norms.resize(pieces, 0.0);
        let mut first_piece = 0;
        for (g, start) in grads.into_array().into_iter().zip(starts) {
            if let Some(part) = part_in(&owned, start, g.len()) {
                let first = first_piece + part.start / PARAMS_PER_PIECE;
                let g = &g[part];
                let n = g.len().div_ceil(PARAMS_PER_PIECE);
                threads.try_for_each_piece(
                    (&mut self.partial_norms[first..first + n], 1),
                    |i, out| {
                        let piece = &g[i * PARAMS_PER_PIECE..];
                        out[0] = k.sum_squares(&piece[..PARAMS_PER_PIECE.min(piece.len())]);
                        Ok(())
                    },
                )?;
            }
            first_piece += g.len().div_ceil(PARAMS_PER_PIECE);
        }
        if self.is_sharded() {
            // Each piece's term comes from its one owner and the others
            // add zeros: exact, so every rank sums the same terms.
            world.all_reduce_sum(&mut self.partial_norms);
        }
        Ok(self
            .partial_norms
            .iter()
            .map(|&x| f64::from(x))
            .sum::<f64>()
            .sqrt() as f32)
    }

    /// After [`Optimizer::update`] of a sharded optimizer, every rank's
    /// updated share of the parameters on every rank (nothing otherwise):
    /// each owner broadcasts its share, in place (an all-gather would need
    /// a copy of the share to send).
    pub fn share_weights(&self, model: &mut Gpt, world: &dyn Collective) {
        if self.is_sharded() {
            let params = model.params_mut();
            for (owner, shard) in self.shards.iter().enumerate() {
                world.broadcast(owner, &mut params[shard.clone()]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;

    use kernels::Kernels;

    use super::*;
    use crate::data::Tokenizer;
    use crate::model::tensors::ParamTensor;
    use crate::model::{ModelConfig, Preset};
    use crate::rng::Rng;
    use crate::world::SingleProcess;

    /// f32's unit roundoff, 2⁻²⁴.
    const U: f64 = f32::EPSILON as f64 / 2.0;

    /// Rank `rank` of `size`, whose collectives change nothing: enough to
    /// run one rank's share of a sharded update in a single process.
    struct OneRankOf(usize, usize);

    impl Collective for OneRankOf {
        fn rank(&self) -> usize {
            self.0
        }
        fn size(&self) -> usize {
            self.1
        }
        fn all_reduce_sum(&self, _: &mut [f32]) {}
        fn all_reduce_f64(&self, _: &mut [f64]) {}
        fn host_sum(&self, x: f64) -> f64 {
            x
        }
        fn broadcast(&self, _: usize, _: &mut [f32]) {}
        fn reduce_sum_to(&self, _: usize, _: &mut [f32]) {}
        fn gather_to_leader(&self, _: &[f32], _: &[Range<usize>], _: &mut [f32]) {}
        fn abort(&self, _: i32) -> ! {
            unreachable!("no rank fails here")
        }
        fn describe(&self) -> String {
            format!("rank {} of {}", self.0, self.1)
        }
    }

    /// Two layers whose matrices span several pieces, so shards cut inside
    /// tensors.
    fn config() -> ModelConfig {
        ModelConfig {
            vocab_size: 256,
            tokenizer: Some(Tokenizer::Byte),
            block_size: 32,
            layers: 2,
            heads: 2,
            channels: 128,
        }
    }

    #[test]
    fn shards_cover_the_parameters_in_rank_order_cut_only_at_pieces() {
        let configs = [config(), Preset::Tiny.config(Tokenizer::Byte), {
            Preset::Gpt2.config(Tokenizer::Gpt2)
        }];
        for cfg in configs {
            let sizes = Params::sizes(&cfg);
            let total = sizes.total();
            let tensors: Vec<(usize, usize)> = sizes
                .starts()
                .into_array()
                .into_iter()
                .zip(sizes.into_array())
                .collect();
            // A whole number of pieces into the tensor it falls in.
            let at_a_piece =
                |cut: usize| match tensors.iter().find(|&&(s, n)| (s..s + n).contains(&cut)) {
                    Some((start, _)) => (cut - start).is_multiple_of(PARAMS_PER_PIECE),
                    None => cut == total,
                };
            let largest_piece = sizes
                .into_array()
                .into_iter()
                .max()
                .unwrap()
                .min(PARAMS_PER_PIECE);
            for ranks in 1..=5 {
                let shards = shard_ranges(sizes, ranks);
                assert_eq!(shards.len(), ranks);
                assert_eq!(shards[0].start, 0);
                assert_eq!(shards[ranks - 1].end, total);
                for (r, pair) in shards.windows(2).enumerate() {
                    assert_eq!(pair[0].end, pair[1].start, "{cfg}: ranks {ranks}");
                    assert!(at_a_piece(pair[1].start), "{cfg}: cut {r}");
                }
                for shard in &shards {
                    // As even as whole pieces allow.
                    assert!(
                        shard.len().abs_diff(total / ranks) <= largest_piece,
                        "{cfg}: {shards:?}"
                    );
                }
            }
        }
    }

    /// Moments that AdamW itself wrote, from gradients of wildly varying
    /// scale (tiny ones whose squares underflow included), are within the
    /// bound; a huge first moment is not.
    #[test]
    fn moments_adamw_wrote_are_reachable_and_damaged_ones_are_not() {
        let settings = OptimizerSettings::new(1e-3, 0, 10);
        let opt = AdamW {
            lr: 1e-3,
            beta1: settings.beta1,
            beta2: settings.beta2,
            eps: settings.eps,
            weight_decay: 0.0,
        };
        let k = Kernels::best();
        let n = 257;
        let (mut p, mut m, mut v) = (vec![0.5f32; n], vec![0.0f32; n], vec![0.0f32; n]);
        let mut rng = Rng::new(11);
        for step in 1..=300u32 {
            let g: Vec<f32> = (0..n)
                .map(|i| {
                    let scale = [1e-30, 1e-12, 1.0, 1e6][(i + step as usize / 37) % 4];
                    // A burst after calm is where |m| / √v is largest.
                    let burst = if step % 50 < 3 { 1e3 } else { 1.0 };
                    (rng.uniform() * 2.0 - 1.0) * scale * burst
                })
                .collect();
            k.adamw_step(&opt, step, 1.0, &mut p, &g, &mut m, &mut v)
                .unwrap();
            assert_eq!(settings.unreachable_moments(&m, &v), None, "step {step}");
        }
        m[7] = 3e38;
        assert_eq!(settings.unreachable_moments(&m, &v), Some(7));
        let (mut m, v) = (vec![0.0f32; 4], vec![1.0f32; 4]);
        m[2] = -1.3; // |m| ≤ 1.1 · 1.165 · √v = 1.28
        m[1] = 1.25;
        assert_eq!(settings.unreachable_moments(&m, &v), Some(2));
    }

    /// The shares of three ranks' updates, put together, are the update of
    /// one optimizer over everything, bit for bit (weight decay on the
    /// right tensors across cuts, moments at the right offsets), and so
    /// are the moments each rank keeps. Clipping is off: with it, the
    /// norm needs the other ranks' terms (tested under `mpirun`).
    #[test]
    fn sharded_updates_put_together_are_the_whole_update() {
        let cfg = config();
        let settings = OptimizerSettings {
            grad_clip: f32::INFINITY,
            ..OptimizerSettings::new(1e-2, 0, 10)
        };
        let model = || {
            let mut m = Gpt::new(cfg, Kernels::best(), 5).unwrap();
            for (i, g) in m.grads_mut().iter_mut().enumerate() {
                *g = ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
            }
            m
        };
        let mut whole = model();
        let mut reference = Optimizer::new(whole.sizes());
        for _ in 0..3 {
            reference
                .update(&mut whole, &settings, 1e-2, &SingleProcess)
                .unwrap();
        }
        let ranks = 3;
        let mut stitched = vec![f32::NAN; whole.params().len()];
        let (mut m, mut v) = (stitched.clone(), stitched.clone());
        for rank in 0..ranks {
            let mut share = model();
            let mut optimizer = Optimizer::sharded(share.sizes(), (rank, ranks));
            let world = OneRankOf(rank, ranks);
            for _ in 0..3 {
                optimizer
                    .update(&mut share, &settings, 1e-2, &world)
                    .unwrap();
            }
            let owned = optimizer.owned();
            assert!(!owned.is_empty());
            stitched[owned.clone()].copy_from_slice(&share.params()[owned.clone()]);
            let (first, second) = optimizer.moments();
            m[owned.clone()].copy_from_slice(first);
            v[owned].copy_from_slice(second);
        }
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&stitched), bits(whole.params()));
        let (first, second) = reference.moments();
        assert_eq!(bits(&m), bits(first));
        assert_eq!(bits(&v), bits(second));

        // Resumed from the whole moments, each rank keeps its share.
        let resumed = Optimizer::from_state(
            whole.sizes(),
            (1, ranks),
            3,
            (first.to_vec(), second.to_vec()),
        );
        let owned = resumed.owned();
        assert_eq!(resumed.moments().0, &first[owned.clone()]);
        assert_eq!(resumed.moments().1, &second[owned]);
    }

    /// The schedule of `lr_at`, written here another way: a straight line
    /// from 0 to the peak over `warmup` steps, then the peak's excess over
    /// the floor (a tenth of it) scaled by `cos²(π/2 · progress)`, with the
    /// progress counted over the steps after the warm-up and held at 1
    /// after the last step.
    fn schedule(peak: f64, warmup: u32, total: u32, step: u32) -> f64 {
        let floor = peak / 10.0;
        if step <= warmup {
            return peak * f64::from(step) / f64::from(warmup);
        }
        let done = f64::from(step - warmup);
        let progress = (done / f64::from(total - warmup)).min(1.0);
        floor + (peak - floor) * (std::f64::consts::FRAC_PI_2 * progress).cos().powi(2)
    }

    #[test]
    fn lr_warms_up_linearly_then_decays_by_a_cosine_to_a_tenth() {
        for (peak, warmup, total) in [(6e-4, 10, 100), (1e-3, 7, 53), (3e-4, 0, 40), (1e-2, 1, 2)] {
            let s = OptimizerSettings::new(peak, warmup, total);
            let peak = f64::from(peak);
            // f32 rounding of the ratio and of the cosine: ~1e-7 of the peak.
            let close = |step: u32, want: f64| {
                let got = f64::from(s.lr_at(step));
                assert!(
                    (got - want).abs() <= 1e-6 * peak,
                    "warmup {warmup}, total {total}: lr at step {step} is {got}, want {want}"
                );
            };
            for step in 1..=total + 5 {
                close(step, schedule(peak, warmup, total, step));
            }
            // The landmarks, spelled out.
            if warmup > 0 {
                close(1, peak / f64::from(warmup));
                close(warmup, peak);
            }
            // The first step after the warm-up is already below the peak.
            let first_decay = f64::from(s.lr_at(warmup + 1));
            assert!(first_decay < peak, "{first_decay}");
            close(total, peak / 10.0);
            close(total + 5, peak / 10.0);
            // Never rising after the warm-up.
            for step in warmup + 1..total + 5 {
                assert!(s.lr_at(step + 1) <= s.lr_at(step), "step {step}");
            }
        }
    }

    /// Whether GPT-2's AdamW decays a tensor, decided from its shape rather
    /// than the table's flag: the matrices and embeddings (two dimensions)
    /// do, the biases and LayerNorm parameters (one) do not.
    fn decays(tensor: &ParamTensor) -> bool {
        tensor.shape.dims().len() == 2
    }

    /// The backends this CPU runs, the scalar one first.
    fn backends() -> Vec<Kernels> {
        kernels::Backend::ALL
            .into_iter()
            .filter(|b| b.is_supported())
            .map(|b| Kernels::new(b).unwrap())
            .collect()
    }

    /// A model of awkward sizes: V 37 (padded to 128), C 12, 3 heads.
    fn small_config() -> ModelConfig {
        ModelConfig {
            vocab_size: 37,
            tokenizer: None,
            block_size: 9,
            layers: 2,
            heads: 3,
            channels: 12,
        }
    }

    fn normals(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| rng.normal(0.0, std)).collect()
    }

    #[test]
    fn the_table_decays_matrices_and_embeddings_only() {
        for tensor in ParamTensor::all(&small_config()) {
            let name = tensor.spec.hf_name;
            let vector = name.ends_with(".bias") || name.starts_with("ln_");
            assert_eq!(tensor.spec.weight_decay, !vector, "{name}");
            assert_eq!(tensor.spec.weight_decay, decays(&tensor), "{name}");
        }
    }

    /// One update against AdamW written out in f64 (decoupled weight
    /// decay as PyTorch applies it: `p ← p·(1 − lr·λ) − lr·m̂/(√v̂ + ε)`),
    /// from random moments at step 4 (so the bias corrections of step 5
    /// matter), with the gradient's global norm above the clip (scaled to
    /// the clip) and below it (unchanged), on every backend, on a small
    /// model and on one whose tensors span several pieces of the update.
    #[test]
    fn update_is_adamw_with_clipping_and_decay_on_matrices_only() {
        for cfg in [small_config(), config()] {
            let tensors = ParamTensor::all(&cfg);
            for k in backends() {
                for clipped in [true, false] {
                    check_one_update(cfg, &tensors, k, clipped);
                }
            }
        }
    }

    fn check_one_update(cfg: ModelConfig, tensors: &[ParamTensor], k: Kernels, clipped: bool) {
        let what = format!("{cfg} {} clipped {clipped}", k.backend());
        let mut rng = Rng::new(90);
        let mut model = Gpt::new(cfg, k, 91).unwrap();
        let n = model.params().len();
        // Parameters of order 1 everywhere (biases included), so that a
        // decay of lr·λ·p shows wherever it is applied.
        let p0 = normals(&mut rng, n, 1.0);
        model.params_mut().copy_from_slice(&p0);
        let mut g = normals(&mut rng, n, 1.0);
        let norm_of = |g: &[f32]| g.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        if !clipped {
            // Scaled to a norm of about half the clip.
            let s = (0.5 / norm_of(&g)) as f32;
            g.iter_mut().for_each(|x| *x *= s);
        }
        model.grads_mut().copy_from_slice(&g);
        let m0 = normals(&mut rng, n, 0.05);
        let v0: Vec<f32> = normals(&mut rng, n, 0.05)
            .iter()
            .map(|x| x * x + 1e-4)
            .collect();
        let steps_before = 4;
        let mut optimizer = Optimizer::from_state(
            model.sizes(),
            (0, 1),
            steps_before,
            (m0.clone(), v0.clone()),
        );
        let settings = OptimizerSettings::new(2e-2, 3, 50);
        let lr = settings.lr_at(steps_before + 1);
        let norm = optimizer
            .update(&mut model, &settings, lr, &SingleProcess)
            .unwrap();
        assert_eq!(optimizer.step, steps_before + 1, "{what}");

        // The reference, in f64.
        let want_norm = norm_of(&g);
        // The norm is summed in f32 per piece of up to 2¹⁶ squares (then
        // in f64): its rounding error grows like √n·U ≈ 1.5e-5 relative
        // for random terms; 1e-4 leaves room.
        let norm_tol = 1e-4;
        assert!(
            (f64::from(norm) - want_norm).abs() <= norm_tol * want_norm,
            "{what}: norm {norm}, want {want_norm}"
        );
        let clip = f64::from(settings.grad_clip);
        assert_eq!(want_norm > clip, clipped, "{what}: the test's own setup");
        let scale = if want_norm > clip {
            clip / want_norm
        } else {
            1.0
        };
        let (b1, b2) = (f64::from(settings.beta1), f64::from(settings.beta2));
        let (eps, lr) = (f64::from(settings.eps), f64::from(lr));
        let t = i32::try_from(steps_before + 1).unwrap();
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        // The clip scale's error (from the norm's) reaches the moments once
        // (m) or twice (v), only when clipping.
        let scale_err = if clipped { norm_tol } else { 0.0 };
        let (got_m, got_v) = optimizer.moments();
        let got_p = model.params();
        let mut start = 0;
        for tensor in tensors {
            let decay = if decays(tensor) {
                f64::from(settings.weight_decay)
            } else {
                0.0
            };
            for i in start..start + tensor.len {
                let grad = f64::from(g[i]) * scale;
                let m = b1 * f64::from(m0[i]) + (1.0 - b1) * grad;
                let v = b2 * f64::from(v0[i]) + (1.0 - b2) * grad * grad;
                let (m_hat, v_hat) = (m / c1, v / c2);
                let step = m_hat / (v_hat.sqrt() + eps);
                let p = f64::from(p0[i]);
                let want_p = p * (1.0 - lr * decay) - lr * step;
                // f32 rounding: a few U of each term (8 U: twice the
                // roundings of the two products and the sum), and the clip
                // scale's.
                let m_tol = 8.0 * U * (b1 * f64::from(m0[i]).abs() + (1.0 - b1) * grad.abs())
                    + (1.0 - b1) * grad.abs() * scale_err;
                let v_tol = 8.0 * U * v + 2.0 * (1.0 - b2) * grad * grad * scale_err;
                // The step: m̂ / √v̂ to ~16 U (powf, sqrt, the division), and
                // the moments' own errors.
                let step_tol = step.abs() * (16.0 * U + m_tol / m.abs().max(1e-30) + v_tol / v);
                let p_tol = 4.0 * U * (p.abs() + want_p.abs())
                    + lr * (step_tol + decay * p.abs() * 4.0 * U);
                let name = tensor.spec.hf_name;
                for (x, got, want, tol) in [
                    ("m", got_m[i], m, m_tol),
                    ("v", got_v[i], v, v_tol),
                    ("p", got_p[i], want_p, p_tol),
                ] {
                    assert!(
                        (f64::from(got) - want).abs() <= tol,
                        "{what}: {name} {x}[{}]: got {got}, want {want} (allowed {tol:e})",
                        i - start
                    );
                }
            }
            start += tensor.len;
        }
        assert_eq!(start, n);
    }

    /// A NaN or infinite gradient anywhere is `Error::Diverged` (with the
    /// step it would have been and a non-finite norm), and leaves the
    /// parameters, the moments and the step count as they were.
    #[test]
    fn non_finite_gradient_is_diverged_and_changes_nothing() {
        let cfg = small_config();
        for k in backends() {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut rng = Rng::new(95);
                let mut model = Gpt::new(cfg, k, 96).unwrap();
                let n = model.params().len();
                let grads = normals(&mut rng, n, 1.0);
                model.grads_mut().copy_from_slice(&grads);
                let mut optimizer = Optimizer::new(model.sizes());
                let settings = OptimizerSettings::new(1e-2, 2, 10);
                // One good step first, so the moments are not all zero.
                optimizer
                    .update(&mut model, &settings, 1e-2, &SingleProcess)
                    .unwrap();
                // In the middle of a bias, in the last tensor, in the first.
                for at in [n / 2 + 1, n - 1, 0] {
                    model.grads_mut().copy_from_slice(&grads);
                    model.grads_mut()[at] = bad;
                    let params = model.params().to_vec();
                    let (m, v) = (
                        optimizer.moments().0.to_vec(),
                        optimizer.moments().1.to_vec(),
                    );
                    let result = optimizer.update(&mut model, &settings, 1e-2, &SingleProcess);
                    let what = format!("{} gradient {bad} at {at}", k.backend());
                    match result {
                        Err(Error::Diverged { step, norm }) => {
                            assert_eq!(step, 2, "{what}");
                            assert!(!norm.is_finite(), "{what}: norm {norm}");
                        }
                        other => panic!("{what}: {other:?}"),
                    }
                    let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(model.params()), bits(&params), "{what}: parameters");
                    assert_eq!(bits(optimizer.moments().0), bits(&m), "{what}: m");
                    assert_eq!(bits(optimizer.moments().1), bits(&v), "{what}: v");
                    assert_eq!(optimizer.step, 1, "{what}: step");
                }
            }
        }
    }
}
