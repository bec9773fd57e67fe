//! The processes of a data-parallel run and what they exchange. The
//! trainer is written against [`Collective`]: one process
//! ([`SingleProcess`], the default build and any run not started by
//! `mpirun`), or an MPI world (feature `mpi`), whose ranks each train on
//! their share of every step's windows and sum their gradients.

use std::ops::Range;

/// What a data-parallel run needs from its processes. Every rank calls
/// the same collectives in the same order, with the same lengths (but for
/// each rank's part in [`Collective::gather_to_leader`]).
pub trait Collective: Sync {
    /// This process's index, 0 to `size() - 1`; rank 0 logs and saves.
    fn rank(&self) -> usize;
    /// Processes in the run.
    fn size(&self) -> usize;
    /// Every rank's `x` summed, in place on every rank (the same bits on
    /// all: each element is reduced once, then distributed).
    fn all_reduce_sum(&self, x: &mut [f32]);
    /// Every rank's `x` summed (losses, token counts, hashes).
    fn all_reduce_f64(&self, x: &mut [f64]);
    /// `x` summed over the ranks on this rank's host (those that share its
    /// memory), the same on each of them.
    fn host_sum(&self, x: f64) -> f64;
    /// Rank `root`'s `x` on every rank.
    fn broadcast(&self, root: usize, x: &mut [f32]);
    /// Every rank's `x` summed into rank `root`'s `x`; the other ranks'
    /// `x` is left as it was (the sharded optimizer's reduce-scatter, one
    /// owner at a time).
    fn reduce_sum_to(&self, root: usize, x: &mut [f32]);
    /// Each rank's `part` (the range `parts[rank]` of a whole; `parts` are
    /// in rank order, one per rank) written into rank 0's `whole`; the
    /// other ranks' `whole` is not touched (and may be empty).
    fn gather_to_leader(&self, part: &[f32], parts: &[Range<usize>], whole: &mut [f32]);
    /// Ends every process of the run with exit code `code` (after this
    /// rank printed why): one failing rank must not leave the others
    /// waiting in a collective forever.
    fn abort(&self, code: i32) -> !;
    /// How the log names the run: `1 process` or `2 processes (MPI)`.
    fn describe(&self) -> String;
}

/// A run of one process: every collective is the identity.
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &mut [f32]) {}
    fn all_reduce_f64(&self, _: &mut [f64]) {}
    fn host_sum(&self, x: f64) -> f64 {
        x
    }
    fn broadcast(&self, _: usize, _: &mut [f32]) {}
    fn reduce_sum_to(&self, _: usize, _: &mut [f32]) {}
    fn gather_to_leader(&self, part: &[f32], parts: &[Range<usize>], whole: &mut [f32]) {
        whole[parts[0].clone()].copy_from_slice(part);
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        "1 process".into()
    }
}

#[cfg(feature = "mpi")]
mod mpi_world {
    use std::ops::Range;
    use std::sync::Mutex;

    use mpi::collective::SystemOperation;
    use mpi::datatype::PartitionMut;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::{Communicator, CommunicatorCollectives, Root};
    use mpi::Count;

    use super::Collective;

    /// `MPI_COMM_WORLD`, initialized once by [`super::start`].
    pub struct MpiWorld {
        pub(super) world: SimpleCommunicator,
        /// The copy of what a sum sends (its send and receive buffers may
        /// not overlap, and rsmpi has no `MPI_IN_PLACE`), kept between
        /// calls so a step allocates nothing.
        pub(super) send: Mutex<Vec<f32>>,
    }

    /// Floats per message of a sum: what its copy holds at most (4 MiB,
    /// rather than a copy of every gradient), and large enough that the
    /// latency per message is small beside the transfer.
    const SUM_MESSAGE_FLOATS: usize = 1 << 20;

    impl MpiWorld {
        /// `sum(copy, chunk)` for each message-sized chunk of `x`, with
        /// `copy` a copy of the chunk in the reused send buffer.
        fn sum_chunks(&self, x: &mut [f32], sum: impl Fn(&[f32], &mut [f32])) {
            let mut send = self.send.lock().unwrap_or_else(|e| e.into_inner());
            for chunk in x.chunks_mut(SUM_MESSAGE_FLOATS) {
                send.clear();
                send.extend_from_slice(chunk);
                sum(&send, chunk);
            }
        }
    }

    /// MPI's counts and displacements of `parts` (which the trainer keeps
    /// under `i32::MAX` floats, see `train`).
    fn counts_and_displacements(parts: &[Range<usize>]) -> (Vec<Count>, Vec<Count>) {
        let count = |n: usize| Count::try_from(n).expect("a part of at most i32::MAX floats");
        let counts = parts.iter().map(|p| count(p.len())).collect();
        let displacements = parts.iter().map(|p| count(p.start)).collect();
        (counts, displacements)
    }

    // SAFETY: `start` initializes MPI at thread level `Serialized` (any
    // thread may call, one at a time), and the trainer calls collectives
    // from one thread at a time (the training loop's, or the thread that
    // sums gradients during the backward pass while the loop makes no MPI
    // call, joined before it makes one); the communicator is a handle MPI
    // owns, valid until `MPI_Finalize`, which runs only when `Started`
    // drops at the end of `main`.
    unsafe impl Sync for MpiWorld {}
    // SAFETY: as for `Sync`: moving the handle to another thread is
    // allowed at `Serialized`.
    unsafe impl Send for MpiWorld {}

    impl Collective for MpiWorld {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn all_reduce_sum(&self, x: &mut [f32]) {
            self.sum_chunks(x, |send, x| {
                self.world.all_reduce_into(send, x, SystemOperation::sum())
            });
        }
        fn all_reduce_f64(&self, x: &mut [f64]) {
            let send = x.to_vec();
            self.world
                .all_reduce_into(&send[..], x, SystemOperation::sum());
        }
        fn host_sum(&self, x: f64) -> f64 {
            // MPI_COMM_TYPE_SHARED: the ranks of one host, freed on drop.
            let host = self.world.split_shared(self.world.rank());
            let mut sum = 0.0;
            host.all_reduce_into(&x, &mut sum, SystemOperation::sum());
            sum
        }
        fn broadcast(&self, root: usize, x: &mut [f32]) {
            self.world.process_at_rank(root as i32).broadcast_into(x);
        }
        fn reduce_sum_to(&self, root: usize, x: &mut [f32]) {
            let owner = self.world.process_at_rank(root as i32);
            if self.rank() == root {
                self.sum_chunks(x, |send, x| {
                    owner.reduce_into_root(send, x, SystemOperation::sum())
                });
            } else {
                // The same chunks as the owner's.
                for chunk in x.chunks(SUM_MESSAGE_FLOATS) {
                    owner.reduce_into(chunk, SystemOperation::sum());
                }
            }
        }
        fn gather_to_leader(&self, part: &[f32], parts: &[Range<usize>], whole: &mut [f32]) {
            let leader = self.world.process_at_rank(0);
            if self.rank() == 0 {
                let (counts, displacements) = counts_and_displacements(parts);
                let mut whole = PartitionMut::new(whole, counts, displacements);
                leader.gather_varcount_into_root(part, &mut whole);
            } else {
                leader.gather_varcount_into(part);
            }
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
        fn describe(&self) -> String {
            format!("{} processes (MPI)", self.size())
        }
    }
}

#[cfg(feature = "mpi")]
static WORLD: std::sync::OnceLock<Box<dyn Collective + Send>> = std::sync::OnceLock::new();

/// Keeps MPI initialized while it lives (finalized when dropped); nothing
/// without the `mpi` feature.
pub struct Started {
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

impl Started {
    /// Finalizes MPI (nothing without the `mpi` feature): the end of a
    /// process that leaves on its own, not through [`Collective::abort`].
    pub fn finish(self) {}
}

/// Prints `error: {message}` in one write: `eprintln!` writes its pieces
/// one by one, and the banner `mpirun` prints when a rank aborts came
/// between them. Control characters (a line break in a file name) are
/// escaped, so that the error stays one line.
pub fn print_error(message: &str) {
    let line = format!("error: {}\n", crate::logger::one_line(message));
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

/// Starts the run's processes: with the `mpi` feature, initializes MPI
/// (a lone process without `mpirun` is a world of one). Call once, first
/// thing in `main`, and keep the result until the end.
pub fn start() -> Started {
    #[cfg(feature = "mpi")]
    {
        // Open MPI waits for a message by spinning on a core unless told to
        // yield it. The thread that sums gradients during the backward
        // pass waits beside the compute threads, and spinning took their
        // core (backward 11 % slower); a setting of the user's wins.
        const YIELD: &str = "OMPI_MCA_mpi_yield_when_idle";
        if std::env::var_os(YIELD).is_none() {
            // Before MPI or the thread pool starts threads: `main` has
            // only its own thread here.
            std::env::set_var(YIELD, "1");
        }
        use mpi::traits::Communicator;
        use mpi::Threading;
        let universe = mpi::initialize_with_threading(Threading::Serialized).map(|(u, granted)| {
            // Collectives run on pool and summing threads, not only on the
            // thread that initialized MPI.
            if !matches!(granted, Threading::Serialized | Threading::Multiple) {
                print_error(&format!(
                    "this MPI library grants thread level {granted:?}; the runner needs Serialized"
                ));
                u.world().abort(1);
            }
            u
        });
        if let Some(u) = &universe {
            let world = mpi_world::MpiWorld {
                world: u.world(),
                send: Default::default(),
            };
            let _ = WORLD.set(Box::new(world));
        }
        Started {
            _universe: universe,
        }
    }
    #[cfg(not(feature = "mpi"))]
    Started {}
}

/// The run's processes: the MPI world once [`start`] initialized it, else
/// a single process.
pub fn current() -> &'static dyn Collective {
    #[cfg(feature = "mpi")]
    if let Some(world) = WORLD.get() {
        return world.as_ref();
    }
    &SingleProcess
}
