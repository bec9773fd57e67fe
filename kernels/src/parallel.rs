//! Caller-driven parallelism: a routine that can be split hands its pieces
//! to an [`Executor`] the caller supplies. This crate never spawns threads.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Runs the independent pieces of one routine, possibly on several threads.
///
/// A routine calls [`Executor::run`] once per phase; the pieces of a phase
/// write disjoint outputs, so they may run in any order and at the same
/// time. [`Sequential`] runs them in order on the calling thread; a rayon
/// executor is a few lines in the caller's crate:
///
/// ```ignore
/// struct Rayon(usize);
/// impl kernels::Executor for Rayon {
///     fn threads(&self) -> usize { self.0 }
///     fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
///         use rayon::prelude::*;
///         (0..pieces).into_par_iter().for_each(piece);
///     }
/// }
/// ```
pub trait Executor: Sync {
    /// How many pieces can run at once. Routines use it to decide how
    /// finely to split; 1 means "do not split".
    fn threads(&self) -> usize;

    /// Calls `piece(i)` exactly once for every `i` in `0..pieces`, in any
    /// order and possibly concurrently, and returns when all have returned.
    /// The routines call it with at least one piece.
    /// (The routines stay sound under an executor that breaks this: each
    /// piece still runs once. A repeated or out-of-range call runs no piece
    /// twice (beyond 4096 pieces it may run one not yet run), and the
    /// pieces it never ran run on the calling thread after `run` returns.)
    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync));
}

/// Threads a routine splits for at most: more would only make pieces
/// smaller than a tile, and it keeps the arithmetic on the count small.
const MAX_THREADS: usize = 1 << 16;

/// How many pieces of a routine `exec` can run at once, within
/// `1..=MAX_THREADS` whatever it reports.
pub(crate) fn threads_of<E: Executor + ?Sized>(exec: &E) -> usize {
    exec.threads().clamp(1, MAX_THREADS)
}

/// Calls `piece(i)` exactly once for every `i` in `0..pieces` through
/// `exec`, even if `exec` breaks its contract. The unsafe code of a split
/// routine relies on each piece running once, and `Executor` is a safe
/// trait: so a call runs its piece only if no call ran it before (a repeat
/// or an index past the last does nothing), and the pieces `exec` never
/// ran run here once it returns. A well-behaved executor keeps its order
/// and its split of the pieces among threads.
pub(crate) fn run_pieces<E: Executor + ?Sized>(
    exec: &E,
    pieces: usize,
    piece: &(dyn Fn(usize) + Sync),
) {
    if pieces == 0 {
        // Nothing to run: an executor is never asked for no pieces.
        return;
    }
    if pieces > TRACKED_PIECES {
        return run_claimed(exec, pieces, piece);
    }
    // One bit per piece, set by the call that runs it.
    let ran = [const { AtomicU64::new(0) }; TRACKED_PIECES / 64];
    let claim = |i: usize| {
        let bit = 1 << (i % 64);
        i < pieces && ran[i / 64].fetch_or(bit, Relaxed) & bit == 0
    };
    exec.run(pieces, &|i| {
        if claim(i) {
            piece(i);
        }
    });
    for i in 0..pieces {
        if claim(i) {
            piece(i);
        }
    }
}

/// Pieces [`run_pieces`] tracks one bit each (512 bytes of stack); more
/// than any routine makes for a few hundred threads.
const TRACKED_PIECES: usize = 4096;

/// [`run_pieces`] for more pieces than it tracks: each call claims the
/// next piece not yet run, whatever index it was given.
fn run_claimed<E: Executor + ?Sized>(exec: &E, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
    let next = AtomicUsize::new(0);
    let claim = || {
        next.fetch_update(Relaxed, Relaxed, |i| (i < pieces).then_some(i + 1))
            .ok()
    };
    exec.run(pieces, &|_| {
        if let Some(i) = claim() {
            piece(i);
        }
    });
    while let Some(i) = claim() {
        piece(i);
    }
}

/// Runs every piece in order on the calling thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sequential;

impl Executor for Sequential {
    fn threads(&self) -> usize {
        1
    }

    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
        (0..pieces).for_each(piece);
    }
}

/// A raw pointer that pieces running on other threads may use to write
/// their own disjoint part of a buffer.
pub(crate) struct SharedMut<T = f32>(pub(crate) *mut T);

// (By hand: a derive would ask `T: Copy`, and the pointer is always Copy.)
impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer. (A method, not the field, so that closures capture the
    /// whole `Sync` wrapper rather than the bare pointer.)
    #[inline(always)]
    pub(crate) fn ptr(self) -> *mut T {
        self.0
    }

    /// The `len` elements from `start` on, as one piece's own slice.
    ///
    /// # Safety
    /// They lie inside the buffer, and nothing else accesses them while the
    /// slice lives.
    #[inline(always)]
    pub(crate) unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [T] {
        // SAFETY: per the contract.
        unsafe { core::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

// SAFETY: `SharedMut` is only a pointer. Every routine that shares one across
// pieces guarantees that no two pieces access the same element while one of
// them writes it (each use states its partition), and runs its pieces through
// `run_pieces`, so that no piece runs twice, whatever the executor does. The
// elements it points to are plain numbers (f32, bf16), which may move between
// threads.
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: as for `Send`.
unsafe impl<T: Send> Sync for SharedMut<T> {}
