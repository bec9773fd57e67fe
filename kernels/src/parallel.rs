//! Caller-driven parallelism: a routine that can be split hands its pieces
//! to an [`Executor`] the caller supplies. This crate never spawns threads.

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
    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync));
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
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);

impl SharedMut {
    /// The pointer. (A method, not the field, so that closures capture the
    /// whole `Sync` wrapper rather than the bare pointer.)
    #[inline(always)]
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: `SharedMut` is only a pointer. Every routine that shares one across
// pieces guarantees that no two pieces access the same element while one of
// them writes it (each use states its partition).
unsafe impl Send for SharedMut {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedMut {}
