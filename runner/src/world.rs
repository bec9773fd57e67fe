//! The processes of a data-parallel run and what they exchange. The
//! trainer is written against [`Collective`]: one process
//! ([`SingleProcess`], the default build and any run not started by
//! `mpirun`), or an MPI world (feature `mpi`), whose ranks each train on
//! their share of every step's windows and sum their gradients.

/// What a data-parallel run needs from its processes.
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
    /// Rank 0's `x` on every rank.
    fn broadcast(&self, x: &mut [f32]);
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
    fn broadcast(&self, _: &mut [f32]) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        "1 process".into()
    }
}

#[cfg(feature = "mpi")]
mod mpi_world {
    use mpi::collective::SystemOperation;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::{Communicator, CommunicatorCollectives, Root};

    use super::Collective;

    /// `MPI_COMM_WORLD`, initialized once by [`super::start`].
    pub struct MpiWorld {
        pub(super) world: SimpleCommunicator,
    }

    // SAFETY: `start` initializes MPI at thread level `Serialized` (any
    // thread may call, one at a time), and the trainer calls collectives
    // from one thread at a time (the training loop's, inside or outside
    // the pool); the communicator is a handle MPI owns, valid until
    // `MPI_Finalize`, which runs only when `Started` drops at the end of
    // `main`.
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
            let send = x.to_vec();
            self.world
                .all_reduce_into(&send[..], x, SystemOperation::sum());
        }
        fn all_reduce_f64(&self, x: &mut [f64]) {
            let send = x.to_vec();
            self.world
                .all_reduce_into(&send[..], x, SystemOperation::sum());
        }
        fn broadcast(&self, x: &mut [f32]) {
            self.world.process_at_rank(0).broadcast_into(x);
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

/// Starts the run's processes: with the `mpi` feature, initializes MPI
/// (a lone process without `mpirun` is a world of one). Call once, first
/// thing in `main`, and keep the result until the end.
pub fn start() -> Started {
    #[cfg(feature = "mpi")]
    {
        let universe = mpi::initialize_with_threading(mpi::Threading::Serialized).map(|(u, _)| u);
        if let Some(u) = &universe {
            let world = mpi_world::MpiWorld { world: u.world() };
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
