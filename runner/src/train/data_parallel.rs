//! How the ranks of a data-parallel run sum their gradients: after the
//! backward pass, or while it runs (each block's gradients as soon as the
//! pass has finished them, on a thread of their own). Summed over all
//! ranks (every rank then holds every gradient), or, with the sharded
//! optimizer, each part only to the rank that updates it.

use std::ops::Range;
use std::sync::mpsc;
use std::time::Instant;

use super::optim::part_in;
use crate::error::Error;
use crate::metrics::ms_since;
use crate::model::Gpt;
use crate::world::{Collective, SingleProcess};

/// How a step's gradients are shared across the run's processes.
#[derive(Clone, Copy)]
pub struct DataParallel<'w> {
    pub world: &'w dyn Collective,
    /// Sum each block's gradients while the backward pass computes the
    /// blocks below it, rather than all of them after it.
    pub overlap: bool,
}

impl DataParallel<'static> {
    /// One process: nothing to share.
    pub fn single() -> DataParallel<'static> {
        DataParallel {
            world: &SingleProcess,
            overlap: false,
        }
    }
}

/// Milliseconds of one backward pass whose gradients were summed while it
/// ran.
pub struct OverlappedTimes {
    /// The pass itself.
    pub backward_ms: f64,
    /// Summing while the pass ran (hidden behind it, as far as the cores
    /// allow): the summing thread's time in sums, less the wait after the
    /// pass, through which it was summing what was left.
    pub overlapped_ms: f64,
    /// Waited for the last sums after the pass ended.
    pub waiting_ms: f64,
}

/// Sums `span` (the gradients starting at `start` in the arena) over the
/// ranks: over all of them with one shard (every rank updates every
/// parameter), else each part to the rank whose shard holds it.
pub fn sum_gradients(
    world: &dyn Collective,
    shards: &[Range<usize>],
    start: usize,
    span: &mut [f32],
) {
    if let [_] = shards {
        world.all_reduce_sum(span);
        return;
    }
    for (owner, shard) in shards.iter().enumerate() {
        if let Some(part) = part_in(shard, start, span.len()) {
            world.reduce_sum_to(owner, &mut span[part]);
        }
    }
}

/// `model`'s backward pass with each span of gradients summed
/// ([`sum_gradients`]) by a second thread as soon as the pass has
/// finished it. The sums run in the same order on every rank, so the
/// ranks' collectives match.
pub fn backward_summing(
    model: &mut Gpt,
    world: &dyn Collective,
    shards: &[Range<usize>],
) -> Result<OverlappedTimes, Error> {
    let (send_to_sum, to_sum) = mpsc::channel::<(usize, &mut [f32])>();
    std::thread::scope(|scope| {
        let summing = scope.spawn(move || {
            let mut busy = 0.0;
            for (start, span) in to_sum {
                let t = Instant::now();
                sum_gradients(world, shards, start, span);
                busy += ms_since(t);
            }
            busy
        });
        let t0 = Instant::now();
        let pass = model.backward_streaming(|start, span| {
            // The receiver lives until every span is sent.
            let _ = send_to_sum.send((start, span));
        });
        drop(send_to_sum);
        let backward_ms = ms_since(t0);
        let t1 = Instant::now();
        let summing_ms = summing
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let waiting_ms = ms_since(t1);
        pass.map(|()| OverlappedTimes {
            backward_ms,
            overlapped_ms: (summing_ms - waiting_ms).max(0.0),
            waiting_ms,
        })
    })
}
