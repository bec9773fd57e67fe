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

/// A pool of `count` threads (1: run everything on the caller's thread);
/// clones share the pool.
#[derive(Clone)]
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

/// Threads beyond which `--threads` is surely a typo (each is a stack
/// of its own, started up front).
const MAX_THREADS: usize = 4096;

impl Threads {
    /// One thread: the caller's.
    pub fn single() -> Threads {
        Threads {
            count: 1,
            #[cfg(feature = "parallel")]
            pool: None,
        }
    }

    /// The thread count when none is asked for: all cores (at most
    /// `MAX_THREADS`), or one without the `parallel` feature.
    pub fn default_count() -> usize {
        if cfg!(feature = "parallel") {
            available_cores().min(MAX_THREADS)
        } else {
            1
        }
    }

    /// `count` threads, or for `None` all cores (one without the
    /// `parallel` feature).
    pub fn new(count: Option<usize>) -> Result<Threads, Error> {
        let count = count.unwrap_or_else(Threads::default_count);
        if count == 0 {
            return Err(Error::Config("--threads must be at least 1".into()));
        }
        if count > MAX_THREADS {
            return Err(Error::Config(format!(
                "--threads {count} is more than {MAX_THREADS}"
            )));
        }
        if count == 1 {
            return Ok(Threads::single());
        }
        let cores = available_cores();
        if count > cores {
            log::warn!(
                "--threads {count} is more than the {cores} cores here: the threads will take turns, slower than {cores}"
            );
        }
        #[cfg(feature = "parallel")]
        {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(count)
                .build()
                .map_err(|e| Error::Threads {
                    threads: count,
                    reason: e.to_string(),
                })?;
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

    /// Calls `f(i, piece)` for every piece of `pieces` (one buffer
    /// `(&mut data, piece_len)`, or a pair of such, nested for more, cut
    /// in step), spread over the pool, and returns the first error.
    pub fn try_for_each_piece<P: Pieces>(
        &self,
        pieces: P,
        f: impl Fn(usize, P::Piece) -> Result<(), Error> + Sync + Send,
    ) -> Result<(), Error> {
        #[cfg(feature = "parallel")]
        if let Some(pool) = self.pool.as_ref().filter(|_| pieces.several()) {
            use rayon::prelude::*;
            return pool.install(|| {
                pieces
                    .par()
                    .enumerate()
                    .try_for_each(|(i, piece)| f(i, piece))
            });
        }
        pieces
            .seq()
            .enumerate()
            .try_for_each(|(i, piece)| f(i, piece))
    }
}

/// Buffers cut into consecutive pieces that are handed out together:
/// `(&mut data, piece_len)` (the last piece may be shorter), or a pair of
/// `Pieces` cut in step (piece `i` of each).
pub trait Pieces: Send + Sized {
    type Piece: Send;
    type Seq: Iterator<Item = Self::Piece>;
    #[cfg(feature = "parallel")]
    type Par: rayon::iter::IndexedParallelIterator<Item = Self::Piece>;
    /// Whether there is more than one piece (one runs on the caller).
    fn several(&self) -> bool;
    fn seq(self) -> Self::Seq;
    #[cfg(feature = "parallel")]
    fn par(self) -> Self::Par;
}

impl<'a, T: Send> Pieces for (&'a mut [T], usize) {
    type Piece = &'a mut [T];
    type Seq = std::slice::ChunksMut<'a, T>;
    #[cfg(feature = "parallel")]
    type Par = rayon::slice::ChunksMut<'a, T>;
    fn several(&self) -> bool {
        self.0.len() > self.1
    }
    fn seq(self) -> Self::Seq {
        self.0.chunks_mut(self.1.max(1))
    }
    #[cfg(feature = "parallel")]
    fn par(self) -> Self::Par {
        use rayon::prelude::*;
        self.0.par_chunks_mut(self.1.max(1))
    }
}

impl<A: Pieces, B: Pieces> Pieces for (A, B) {
    type Piece = (A::Piece, B::Piece);
    type Seq = std::iter::Zip<A::Seq, B::Seq>;
    #[cfg(feature = "parallel")]
    type Par = rayon::iter::Zip<A::Par, B::Par>;
    fn several(&self) -> bool {
        self.0.several()
    }
    fn seq(self) -> Self::Seq {
        self.0.seq().zip(self.1.seq())
    }
    #[cfg(feature = "parallel")]
    fn par(self) -> Self::Par {
        use rayon::prelude::*;
        self.0.par().zip(self.1.par())
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
