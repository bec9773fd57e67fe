//! AdamW over the model's parameter tensors, with global gradient-norm
//! clipping and a warm-up + cosine learning-rate schedule; optionally
//! sharded over the ranks of a data-parallel run (ZeRO stage 1: each rank
//! keeps the moments of, and updates, its share of the parameters).

use std::borrow::Cow;
use std::ops::Range;

use kernels::AdamW;

use crate::error::Error;
use crate::model::tensors::{Params, PARAM_SPECS};
use crate::model::Gpt;
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
        let pieces: usize = grads
            .into_array()
            .iter()
            .map(|g| g.len().div_ceil(PARAMS_PER_PIECE))
            .sum();
        self.partial_norms.clear();
        self.partial_norms.resize(pieces, 0.0);
        // Sums of squares per piece of each tensor, then added in order.
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
        let norm = self
            .partial_norms
            .iter()
            .map(|&x| f64::from(x))
            .sum::<f64>()
            .sqrt() as f32;
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
    use crate::model::{ModelConfig, Preset};
    use crate::world::SingleProcess;

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
            for (i, g) in m.grads.iter_mut().enumerate() {
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
}
