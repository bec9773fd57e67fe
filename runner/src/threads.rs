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
    pool: Option<Arc<Pool>>,
}

/// The rayon pool, and what keeps its threads polling for work around
/// [`PoolHandle::install`].
#[cfg(feature = "parallel")]
struct Pool {
    rayon: rayon::ThreadPool,
    /// Entries ([`PoolHandle::install`]) running now.
    entries: std::sync::atomic::AtomicUsize,
    /// When the last entry ended, in nanoseconds from `clock`.
    last_end: std::sync::atomic::AtomicU64,
    clock: std::time::Instant,
    /// Each thread's polling job ([`Pool::poll`]): [`IDLE`], [`SENT`] or
    /// [`POLLING`].
    polling: Box<[std::sync::atomic::AtomicU8]>,
    /// Entries running on each thread (nested ones counted).
    entered: Box<[std::sync::atomic::AtomicUsize]>,
}

/// A shared handle on a [`Threads`] pool, for entering it once around a
/// whole pass (see [`PoolHandle::install`]).
#[derive(Clone)]
pub struct PoolHandle {
    #[cfg(feature = "parallel")]
    pool: Option<Arc<Pool>>,
}

impl PoolHandle {
    /// Runs `f` on one of the pool's threads (on this thread without a
    /// pool), the other threads kept awake until it returns. Splits inside
    /// `f` then start from a pool thread; entered from outside, every step
    /// would wake a sleeping worker and block this thread on a condition
    /// variable (measured: two threads decoded slower than one).
    ///
    /// An idle rayon worker yields for some tens of microseconds, then
    /// sleeps; on a virtual machine waking its core again took up to
    /// milliseconds, so the products of a training step (a millisecond
    /// each, several sequential gaps between them) often ran on one
    /// thread. So while `f` runs, and for `POLL_AFTER_ENTRY` after, the
    /// other threads poll the pool for work instead (OpenMP's default wait
    /// policy does the same): they keep their cores busy, and measured
    /// 2048 × 384 · 384 × 384 in bf16 on two threads 0.93 → 1.65× one
    /// thread. The polling jobs outlive entries that follow each other
    /// closely (training steps, decoded tokens), so those allocate nothing.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        #[cfg(feature = "parallel")]
        if let Some(pool) = &self.pool {
            return pool.rayon.install(|| {
                let _entry = Entry::start(pool);
                f()
            });
        }
        f()
    }
}

/// How long the other threads keep polling after an entry ends: long
/// enough to bridge the gap to the next step or token, short enough that
/// an idle pool soon stops using its cores.
#[cfg(feature = "parallel")]
const POLL_AFTER_ENTRY: std::time::Duration = std::time::Duration::from_millis(50);

/// A thread without a polling job.
#[cfg(feature = "parallel")]
const IDLE: u8 = 0;
/// A polling job sent to a thread and not started yet (a sleeping core may
/// take a while): no entry sends another.
#[cfg(feature = "parallel")]
const SENT: u8 = 1;
/// A thread running its polling job.
#[cfg(feature = "parallel")]
const POLLING: u8 = 2;

#[cfg(feature = "parallel")]
impl Pool {
    fn now(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether polling threads should go on: an entry runs, or one ended
    /// less than [`POLL_AFTER_ENTRY`] ago.
    fn wanted(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let after = u64::try_from(POLL_AFTER_ENTRY.as_nanos()).unwrap_or(u64::MAX);
        self.entries.load(SeqCst) > 0
            || self.now() < self.last_end.load(SeqCst).saturating_add(after)
    }

    /// The polling job of thread `index`: runs the pool's work as it
    /// comes while [`Pool::wanted`], if it was sent to this thread and the
    /// thread runs no entry (which it would then never get back to).
    fn poll(&self, index: usize) {
        use std::sync::atomic::Ordering::SeqCst;
        let (Some(state), Some(entered)) = (self.polling.get(index), self.entered.get(index))
        else {
            return;
        };
        if state
            .compare_exchange(SENT, POLLING, SeqCst, SeqCst)
            .is_err()
        {
            return;
        }
        if entered.load(SeqCst) > 0 {
            state.store(IDLE, SeqCst);
            return;
        }
        #[cfg(test)]
        tests::AWAKE.fetch_add(1, SeqCst);
        loop {
            if !self.wanted() {
                state.store(IDLE, SeqCst);
                // An entry that started meanwhile may have seen this thread
                // still polling and sent it nothing: then go on.
                let resumed = self.entries.load(SeqCst) > 0
                    && state
                        .compare_exchange(IDLE, POLLING, SeqCst, SeqCst)
                        .is_ok();
                if !resumed {
                    break;
                }
            }
            // With nothing to run, give the core away if another thread
            // wants it (more threads than cores), without sleeping.
            // With nothing to run, give the core to any other thread that
            // wants it (more threads than cores), without sleeping.
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::thread::yield_now();
            }
        }
        #[cfg(test)]
        tests::AWAKE.fetch_sub(1, SeqCst);
    }
}

/// One entry into the pool ([`PoolHandle::install`]) while it lives,
/// on pool thread `here`.
#[cfg(feature = "parallel")]
struct Entry {
    pool: Arc<Pool>,
    here: Option<usize>,
}

#[cfg(feature = "parallel")]
impl Entry {
    fn start(pool: &Arc<Pool>) -> Entry {
        use std::sync::atomic::Ordering::SeqCst;
        let here = rayon::current_thread_index();
        if let Some(entered) = here.and_then(|i| pool.entered.get(i)) {
            entered.fetch_add(1, SeqCst);
        }
        pool.entries.fetch_add(1, SeqCst);
        // A polling job for every other thread that has none (a copy goes
        // to every thread; those not marked return); none once they poll.
        let mut send = false;
        for (i, state) in pool.polling.iter().enumerate() {
            if Some(i) != here {
                send |= state.compare_exchange(IDLE, SENT, SeqCst, SeqCst).is_ok();
            }
        }
        if send {
            let shared = Arc::clone(pool);
            rayon::spawn_broadcast(move |thread| shared.poll(thread.index()));
        }
        Entry {
            pool: Arc::clone(pool),
            here,
        }
    }
}

#[cfg(feature = "parallel")]
impl Drop for Entry {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::SeqCst;
        let pool = &self.pool;
        pool.last_end.store(pool.now(), SeqCst);
        pool.entries.fetch_sub(1, SeqCst);
        if let Some(entered) = self.here.and_then(|i| pool.entered.get(i)) {
            entered.fetch_sub(1, SeqCst);
        }
    }
}

/// Threads a core beyond which `--threads` is refused: the pool's threads
/// poll for work while a step runs, so past a few a core they crowd out
/// the work itself (on 2 cores, 2048 threads took seconds a token, 4096
/// half a minute).
const MAX_THREADS_PER_CORE: usize = 8;

impl Threads {
    /// One thread: the caller's.
    pub fn single() -> Threads {
        Threads {
            count: 1,
            #[cfg(feature = "parallel")]
            pool: None,
        }
    }

    /// The thread count when none is asked for: all cores, or one without
    /// the `parallel` feature.
    pub fn default_count() -> usize {
        if cfg!(feature = "parallel") {
            available_cores()
        } else {
            1
        }
    }

    /// The threads a run asked for `count` gets: all cores for `None`
    /// (one without the `parallel` feature).
    pub fn resolved(count: Option<usize>) -> usize {
        count.unwrap_or_else(Threads::default_count)
    }

    /// The warning `count` threads earn (`None` for all cores) where they
    /// pass the cores here: the command logs it once it has accepted its
    /// input.
    pub fn oversubscribed(count: Option<usize>) -> Option<String> {
        let count = Threads::resolved(count);
        let cores = available_cores();
        (count > cores).then(|| {
            format!("--threads {count} is more than the {cores} cores here: the threads will take turns, slower than {cores}")
        })
    }

    /// `count` threads, or for `None` all cores (one without the
    /// `parallel` feature); see [`Threads::oversubscribed`].
    pub fn new(count: Option<usize>) -> Result<Threads, Error> {
        let count = Threads::resolved(count);
        if count == 0 {
            return Err(Error::Config("--threads must be at least 1".into()));
        }
        let cores = available_cores();
        let most = cores.saturating_mul(MAX_THREADS_PER_CORE);
        if count > most {
            return Err(Error::Config(format!(
                "--threads {count} is more than {MAX_THREADS_PER_CORE} a core ({most} on the {cores} cores here)"
            )));
        }
        if count == 1 {
            return Ok(Threads::single());
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
                pool: Some(Arc::new(Pool {
                    rayon: pool,
                    entries: Default::default(),
                    last_end: Default::default(),
                    clock: std::time::Instant::now(),
                    polling: (0..count).map(|_| Default::default()).collect(),
                    entered: (0..count).map(|_| Default::default()).collect(),
                })),
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
            return pool.rayon.install(|| {
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
            pool.rayon
                .install(|| (0..pieces).into_par_iter().for_each(piece));
            return;
        }
        (0..pieces).for_each(piece)
    }
}

#[cfg(all(test, feature = "parallel"))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    /// Threads polling for work inside [`PoolHandle::install`] right now
    /// (in every pool: no other test of this crate enters one of several
    /// threads).
    pub(super) static AWAKE: AtomicUsize = AtomicUsize::new(0);

    /// Waits (at most a few seconds) for every polling thread to stop.
    fn all_asleep() -> bool {
        let start = Instant::now();
        while AWAKE.load(Ordering::SeqCst) != 0 {
            if start.elapsed() > Duration::from_secs(5) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Work inside `install` gives the sequential result, entries nested
    /// on any thread included; the other threads poll while it runs and
    /// stop soon after, also when it panics.
    #[test]
    fn install_keeps_the_other_threads_awake_until_it_returns() {
        let threads = Threads::new(Some(3)).unwrap();
        let pool = threads.handle();
        for round in 0..20 {
            let mut data = vec![0u64; 1000];
            let saw_polling = pool.install(|| {
                let polling = (0..200).any(|_| {
                    std::thread::sleep(Duration::from_micros(100));
                    AWAKE.load(Ordering::SeqCst) > 0
                });
                threads
                    .try_for_each_piece((&mut data[..], 7), |i, piece| {
                        // Entries nest, on any thread.
                        pool.install(|| piece.iter_mut().for_each(|x| *x = (i * round) as u64));
                        Ok(())
                    })
                    .unwrap();
                polling
            });
            assert!(saw_polling, "round {round}: no other thread polled");
            let want: Vec<u64> = (0..1000).map(|j| (j / 7 * round) as u64).collect();
            assert_eq!(data, want, "round {round}");
            assert!(all_asleep(), "round {round}: a thread still polls");
        }
        let entry = std::panic::AssertUnwindSafe(|| pool.install(|| panic!("inside the pool")));
        let panicked = std::panic::catch_unwind(entry);
        assert!(panicked.is_err());
        assert!(all_asleep(), "a thread still polls after a panic");
    }
}
