//! How the runner spreads work over cores: a rayon pool behind the
//! `parallel` feature, or the calling thread alone. `kernels` never spawns
//! threads; it hands GEMM pieces to [`Threads`] through its `Executor`
//! trait, and the runner splits row-wise work itself.
//!
//! Every split is into pieces whose results do not depend on how many
//! threads run them (fixed chunk sizes, reductions combined in a fixed
//! order), so a seed gives bit-identical losses for any thread count.

#[cfg(feature = "parallel")]
use std::sync::Arc;

use kernels::Executor;

use crate::error::Error;

/// A pool of `count` threads (1: run everything on the caller's thread).
pub struct Threads {
    count: usize,
    #[cfg(feature = "parallel")]
    pool: Option<Arc<rayon::ThreadPool>>,
}

/// A shared handle on a [`Threads`] pool, for entering it once around a
/// whole pass (see [`PoolHandle::install`]).
#[derive(Clone)]
pub struct PoolHandle {
    #[cfg(feature = "parallel")]
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl PoolHandle {
    /// Runs `f` on one of the pool's threads (on this thread without a
    /// pool). Splits inside `f` then start from a pool thread, whose idle
    /// siblings are still spinning between the many short parallel steps
    /// of a decoding pass; entered from outside, every step would wake a
    /// sleeping worker and block this thread on a condition variable
    /// (measured: two threads decoded slower than one).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        #[cfg(feature = "parallel")]
        if let Some(pool) = &self.pool {
            return pool.install(f);
        }
        f()
    }
}

impl Threads {
    /// One thread: the caller's.
    pub fn single() -> Threads {
        Threads {
            count: 1,
            #[cfg(feature = "parallel")]
            pool: None,
        }
    }

    /// `count` threads, or for `None` all cores (one without the
    /// `parallel` feature).
    pub fn new(count: Option<usize>) -> Result<Threads, Error> {
        let count = count.unwrap_or_else(|| {
            if cfg!(feature = "parallel") {
                available_cores()
            } else {
                1
            }
        });
        if count == 0 {
            return Err(Error::Config("--threads must be at least 1".into()));
        }
        if count == 1 {
            return Ok(Threads::single());
        }
        #[cfg(feature = "parallel")]
        {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(count)
                .build()
                .map_err(|e| Error::Config(format!("cannot start {count} threads: {e}")))?;
            Ok(Threads {
                count,
                pool: Some(Arc::new(pool)),
            })
        }
        #[cfg(not(feature = "parallel"))]
        Err(Error::Config(format!(
            "--threads {count}: this runner was built without the `parallel` feature"
        )))
    }

    /// Threads in the pool.
    pub fn count(&self) -> usize {
        self.count
    }

    /// A handle for entering the pool around a whole pass.
    pub fn handle(&self) -> PoolHandle {
        PoolHandle {
            #[cfg(feature = "parallel")]
            pool: self.pool.clone(),
        }
    }

    /// Calls `f(i)` for every `i` in `0..n`, spread over the pool, and
    /// returns the first error.
    pub fn try_for_each(
        &self,
        n: usize,
        f: impl Fn(usize) -> Result<(), Error> + Sync + Send,
    ) -> Result<(), Error> {
        #[cfg(feature = "parallel")]
        if let Some(pool) = self.pool.as_ref().filter(|_| n > 1) {
            use rayon::prelude::*;
            return pool.install(|| (0..n).into_par_iter().try_for_each(f));
        }
        (0..n).try_for_each(f)
    }

    /// Calls `f(i, chunk)` for consecutive chunks of `chunk` items of
    /// `data` (the last may be shorter), spread over the pool.
    pub fn try_for_each_chunk<T: Send>(
        &self,
        data: &mut [T],
        chunk: usize,
        f: impl Fn(usize, &mut [T]) -> Result<(), Error> + Sync + Send,
    ) -> Result<(), Error> {
        #[cfg(feature = "parallel")]
        if let Some(pool) = self.pool.as_ref().filter(|_| data.len() > chunk) {
            use rayon::prelude::*;
            return pool.install(|| {
                data.par_chunks_mut(chunk.max(1))
                    .enumerate()
                    .try_for_each(|(i, c)| f(i, c))
            });
        }
        data.chunks_mut(chunk.max(1))
            .enumerate()
            .try_for_each(|(i, c)| f(i, c))
    }

    /// As [`Threads::try_for_each_chunk`] over two buffers chunked in step
    /// (chunk `i` of `a` has `a_chunk` items, of `b` `b_chunk`).
    pub fn try_for_each_chunk2<A: Send, B: Send>(
        &self,
        (a, a_chunk): (&mut [A], usize),
        (b, b_chunk): (&mut [B], usize),
        f: impl Fn(usize, &mut [A], &mut [B]) -> Result<(), Error> + Sync + Send,
    ) -> Result<(), Error> {
        #[cfg(feature = "parallel")]
        if let Some(pool) = self.pool.as_ref().filter(|_| a.len() > a_chunk) {
            use rayon::prelude::*;
            return pool.install(|| {
                a.par_chunks_mut(a_chunk.max(1))
                    .zip(b.par_chunks_mut(b_chunk.max(1)))
                    .enumerate()
                    .try_for_each(|(i, (a, b))| f(i, a, b))
            });
        }
        a.chunks_mut(a_chunk.max(1))
            .zip(b.chunks_mut(b_chunk.max(1)))
            .enumerate()
            .try_for_each(|(i, (a, b))| f(i, a, b))
    }
}

impl Threads {
    /// As [`Threads::try_for_each_chunk2`] over three buffers.
    #[allow(clippy::type_complexity)]
    pub fn try_for_each_chunk3<A: Send, B: Send, C: Send>(
        &self,
        (a, a_chunk): (&mut [A], usize),
        (b, b_chunk): (&mut [B], usize),
        (c, c_chunk): (&mut [C], usize),
        f: impl Fn(usize, &mut [A], &mut [B], &mut [C]) -> Result<(), Error> + Sync + Send,
    ) -> Result<(), Error> {
        #[cfg(feature = "parallel")]
        if let Some(pool) = self.pool.as_ref().filter(|_| a.len() > a_chunk) {
            use rayon::prelude::*;
            return pool.install(|| {
                a.par_chunks_mut(a_chunk.max(1))
                    .zip(b.par_chunks_mut(b_chunk.max(1)))
                    .zip(c.par_chunks_mut(c_chunk.max(1)))
                    .enumerate()
                    .try_for_each(|(i, ((a, b), c))| f(i, a, b, c))
            });
        }
        a.chunks_mut(a_chunk.max(1))
            .zip(b.chunks_mut(b_chunk.max(1)))
            .zip(c.chunks_mut(c_chunk.max(1)))
            .enumerate()
            .try_for_each(|(i, ((a, b), c))| f(i, a, b, c))
    }
}

/// Cores available to this process.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Executor for Threads {
    fn threads(&self) -> usize {
        self.count
    }

    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
        // A single piece runs here: waking the pool costs more than it saves.
        #[cfg(feature = "parallel")]
        if let Some(pool) = self.pool.as_ref().filter(|_| pieces > 1) {
            use rayon::prelude::*;
            pool.install(|| (0..pieces).into_par_iter().for_each(piece));
            return;
        }
        (0..pieces).for_each(piece)
    }
}
