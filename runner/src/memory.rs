//! What a run (training, evaluation or decoding) will hold in memory, from
//! the same size functions that allocate it, checked against the machine
//! before anything large is allocated.

use crate::error::Error;
use crate::metrics::{gib, mapped_bytes, mib, physical_memory_bytes};
use crate::model::tensors::Params;
use crate::model::{Gpt, KvCache, ModelConfig, Multiplier, Precision};
use crate::train::optim::shard_ranges;
use crate::world::Collective;

use crate::train::optim::Optimizer;

/// Floats of each kind of buffer of a training run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub parameters: usize,
    pub gradients: usize,
    pub optimizer_state: usize,
    /// Ranks sharing the optimizer state (1 unless sharded): each holds
    /// `optimizer_state` floats of it.
    pub optimizer_ranks: usize,
    /// Activations and backward scratch of one micro-batch (for decoding,
    /// the KV cache and any bf16 copy of the weights).
    pub activations: usize,
    /// The workspace the model's products share (a product's operands
    /// packed; rounded copies of them in bf16 without a bf16 unit).
    pub workspace: usize,
    /// The buffers of every thread running attention: in training, each
    /// holds a head's `t × t` probabilities and their gradient.
    pub thread_buffers: usize,
}

impl Footprint {
    /// A model of shape `cfg` trained on micro-batches of `batch` ×
    /// `t` tokens, with or without `recompute`, on `threads` threads with
    /// products in `mm` (saturating for absurd shapes).
    pub fn training(
        cfg: &ModelConfig,
        (batch, t): (usize, usize),
        recompute: bool,
        (threads, mm): (usize, Multiplier),
    ) -> Footprint {
        let n = cfg.param_floats();
        Footprint {
            parameters: n,
            gradients: n,
            optimizer_state: Optimizer::state_floats(n),
            optimizer_ranks: 1,
            activations: Gpt::activation_floats(cfg, batch, t, recompute),
            workspace: Gpt::workspace_floats(cfg, mm, batch.saturating_mul(t), true),
            thread_buffers: Gpt::thread_floats(cfg, mm, t, true).saturating_mul(holding(threads)),
        }
    }

    /// Evaluating a model of shape `cfg` on batches of `batch` × `t`
    /// tokens on `threads` threads with products in `mm`: no gradients, no
    /// optimizer state, no backward pass.
    pub fn evaluation(
        cfg: &ModelConfig,
        (batch, t): (usize, usize),
        (threads, mm): (usize, Multiplier),
    ) -> Footprint {
        Footprint {
            gradients: 0,
            optimizer_state: 0,
            workspace: Gpt::workspace_floats(cfg, mm, batch.saturating_mul(t), false),
            thread_buffers: Gpt::thread_floats(cfg, mm, t, false).saturating_mul(holding(threads)),
            ..Footprint::training(cfg, (batch, t), false, (threads, mm))
        }
    }

    /// Decoding with a model of shape `cfg` on `threads` threads with
    /// products in `mm`: its parameters, a KV cache of a whole block, the
    /// products' workspace (and each thread's) and, in bf16, the weights
    /// packed in bf16.
    pub fn decoding(cfg: &ModelConfig, (threads, mm): (usize, Multiplier)) -> Footprint {
        let packed = match mm.precision {
            Precision::F32 => 0,
            Precision::Bf16 => Gpt::packed_floats(cfg),
        };
        Footprint {
            parameters: cfg.param_floats(),
            gradients: 0,
            optimizer_state: 0,
            optimizer_ranks: 1,
            activations: KvCache::floats(cfg).saturating_add(packed),
            workspace: Gpt::decoding_workspace_floats(cfg, mm),
            thread_buffers: Gpt::decoding_thread_floats(cfg, mm).saturating_mul(holding(threads)),
        }
    }

    /// Refuses a run of this footprint, with the bytes its data holds
    /// beside it (and what holds them), that would not fit this machine's
    /// memory (or 32 GiB where it cannot be read), rather than dying in
    /// the allocator; `what` names the run in the message. Returns the
    /// run's own bytes, which the data may not take.
    pub fn check(&self, what: &str, data: Option<&(u64, String)>) -> Result<u64, Error> {
        let bytes = self.total_bytes() as u64;
        match data {
            Some((held, data)) => check_fits(
                bytes.saturating_add(*held),
                &format!("{what}, beside {data}"),
            ),
            None => check_fits(bytes, what),
        }?;
        Ok(bytes)
    }

    /// This footprint on a rank that keeps shard `shard` of `shards` of
    /// the optimizer state ([`shard_ranges`]) of a model of shape `cfg`;
    /// rank 0 (shard 0) also gathers the whole state to save it.
    pub fn with_optimizer_shard(
        self,
        cfg: &ModelConfig,
        (shard, shards): (usize, usize),
    ) -> Footprint {
        if shards <= 1 {
            return self;
        }
        let share = shard_ranges(Params::sizes(cfg), shards)[shard].len();
        let gathered = match shard {
            0 => Optimizer::state_floats(cfg.param_floats()),
            _ => 0,
        };
        Footprint {
            optimizer_state: Optimizer::state_floats(share).saturating_add(gathered),
            optimizer_ranks: shards,
            ..self
        }
    }

    /// The largest of `footprints` (in bytes; all zeros for none).
    pub fn largest(footprints: impl IntoIterator<Item = Footprint>) -> Footprint {
        let none = Footprint {
            parameters: 0,
            gradients: 0,
            optimizer_state: 0,
            optimizer_ranks: 1,
            activations: 0,
            workspace: 0,
            thread_buffers: 0,
        };
        footprints
            .into_iter()
            .max_by_key(Footprint::total_bytes)
            .unwrap_or(none)
    }

    /// Bytes at the peak, while the run goes on (a checkpoint is read
    /// tensor by tensor into the parameters, a few MiB at a time).
    pub fn total_bytes(&self) -> usize {
        [
            self.parameters,
            self.gradients,
            self.optimizer_state,
            self.activations,
            self.workspace,
            self.thread_buffers,
        ]
        .iter()
        .fold(0usize, |sum, &n| sum.saturating_add(n))
        .saturating_mul(4)
    }
}

/// Threads that may hold attention's buffers in a run on `threads`: a
/// pool's, and the thread that calls it, which runs a lone piece itself.
fn holding(threads: usize) -> usize {
    match threads {
        0 | 1 => 1,
        n => n + 1,
    }
}

/// `parameters 12.4 MiB, gradients ...`: the start-up log line's figures.
impl std::fmt::Display for Footprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let share = match self.optimizer_ranks {
            1 => String::new(),
            n => format!(" (this rank's share of {n})"),
        };
        write!(
            f,
            "parameters {:.1} MiB, gradients {:.1} MiB, optimizer state {:.1} MiB{share}, activations {:.1} MiB, products' workspace {:.1} MiB, attention's thread buffers {:.1} MiB",
            mib(4.0 * self.parameters as f64),
            mib(4.0 * self.gradients as f64),
            mib(4.0 * self.optimizer_state as f64),
            mib(4.0 * self.activations as f64),
            mib(4.0 * self.workspace as f64),
            mib(4.0 * self.thread_buffers as f64)
        )
    }
}

/// Refuses a run that needs `bytes` of memory, more than this machine has
/// or this process may map (`ulimit -v`; 32 GiB where neither can be
/// read); `what` says what takes them.
pub fn check_fits(bytes: u64, what: &str) -> Result<(), Error> {
    let (limit_bytes, whose) = usable_bytes();
    if bytes > limit_bytes {
        // Sizes saturate at u64::MAX: past it, no figure is meaningful.
        let need = if bytes == u64::MAX {
            "more than 16 EiB".to_string()
        } else {
            format!("about {}", size_text(bytes))
        };
        return Err(Error::Config(format!(
            "the run needs {need} of memory ({what}); {whose} {}",
            size_text(limit_bytes)
        )));
    }
    Ok(())
}

/// `bytes` as `1.2 GiB`, or in MiB below a GiB (where a tenth of a GiB
/// would hide the difference between a need and a limit).
pub fn size_text(bytes: u64) -> String {
    if bytes < 10 << 20 {
        format!("{:.1} MiB", mib(bytes as f64))
    } else if bytes < 1 << 30 {
        format!("{:.0} MiB", mib(bytes as f64))
    } else {
        format!("{:.1} GiB", gib(bytes as f64))
    }
}

/// Address space each thread of a pool maps beside the heap: its stack
/// (2 MiB, Rust's default), counted twice per core for the pools that
/// run more threads than cores. `ulimit -v` counts it.
const THREAD_ADDRESS_SPACE: u64 = 4 << 20;

/// What a run allocates beside the buffers its footprint counts: the
/// GPT-2 tokenizer's tables and compiled pattern (28 MiB in one block),
/// file and log buffers. Only an address-space limit is tight enough for
/// it to matter.
const UNCOUNTED_BYTES: u64 = 48 << 20;

/// The address-space limit this process runs under (`ulimit -v`), if any.
fn address_space_limit() -> Option<u64> {
    let mut limit = std::mem::MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: `getrlimit` writes one `rlimit` through a valid pointer to
    // one; it is read only where the call says it succeeded.
    let current = unsafe {
        match libc::getrlimit(libc::RLIMIT_AS, limit.as_mut_ptr()) {
            0 => limit.assume_init().rlim_cur,
            _ => libc::RLIM_INFINITY,
        }
    };
    (current != libc::RLIM_INFINITY).then_some(current as u64)
}

/// Under an address-space limit, has glibc's allocator keep one arena for
/// all threads: it reserves 64 MiB of address space for each arena it adds
/// (one per thread that allocates), which the limit counts although no
/// memory backs it, and which left a model's allocation refused after
/// the check passed. The threads allocate little once a run has started,
/// so sharing one arena costs nothing measurable. Call first in `main`,
/// before any other thread exists.
pub fn share_allocator_under_limit() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if address_space_limit().is_some() {
        // SAFETY: `mallopt` sets a tuning value of the allocator; glibc
        // asks that it not race its first use by other threads, and this
        // runs first in `main`, on the only thread.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    }
}

/// The memory a run may use, and whose limit that is (as the error line
/// words it): the machine's, or less where the process's address space is
/// limited. Read once, at the first check, before the run allocates its
/// buffers: a later check of the same run counts them in its footprint,
/// not twice.
pub fn usable_bytes() -> (u64, &'static str) {
    static USABLE: std::sync::OnceLock<(u64, &'static str)> = std::sync::OnceLock::new();
    *USABLE.get_or_init(read_usable_bytes)
}

/// [`usable_bytes`], read now.
fn read_usable_bytes() -> (u64, &'static str) {
    let machine = physical_memory_bytes().unwrap_or(32 << 30);
    match address_space_limit().filter(|&limit| limit < machine) {
        Some(limit) => {
            // What is mapped already (the program, its libraries) counts
            // against the limit too, and so will the stacks of a pool of
            // up to one thread per core.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
            let taken = mapped_bytes()
                .unwrap_or(0)
                .saturating_add(cores.saturating_mul(THREAD_ADDRESS_SPACE))
                .saturating_add(UNCOUNTED_BYTES);
            (
                limit.saturating_sub(taken),
                "this process may still map (ulimit -v)",
            )
        }
        None => (machine, "this machine has"),
    }
}

/// Refuses ranks that each fit (their `bytes` checked against their own
/// limit) but together pass the memory of the host they share: the
/// same verdict on every rank of the host (nothing to check in one
/// process).
pub fn check_host(world: &dyn Collective, bytes: u64) -> Result<(), Error> {
    if world.size() == 1 {
        return Ok(());
    }
    let together = world.host_sum(bytes as f64) as u64;
    let machine = physical_memory_bytes().unwrap_or(32 << 30);
    if together > machine {
        return Err(Error::Config(format!(
            "the ranks on this host need about {} of memory together; this machine has {}",
            size_text(together),
            size_text(machine)
        )));
    }
    Ok(())
}

/// Refuses training runs that would not fit this machine's memory
/// ([`Footprint::check`]): a model of shape `cfg` on micro-batches of
/// `batch × t` tokens and `threads` threads with products in any of `mms`
/// (the largest counts) and shard `shard` of the optimizer state
/// ([`Footprint::with_optimizer_shard`]), beside the bytes its `data`
/// holds. Returns the model's bytes.
pub fn check_memory(
    cfg: &ModelConfig,
    (batch, t): (usize, usize),
    recompute: bool,
    (threads, mms): (usize, &[Multiplier]),
    shard: (usize, usize),
    data: Option<&(u64, String)>,
) -> Result<u64, Error> {
    let training = |&mm: &Multiplier| {
        Footprint::training(cfg, (batch, t), recompute, (threads, mm))
            .with_optimizer_shard(cfg, shard)
    };
    Footprint::largest(mms.iter().map(training)).check(
        &format!("model {cfg} with batch {batch} × {t} tokens on {threads} thread(s)"),
        data,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Preset;
    use kernels::{Backend, Kernels};

    fn products(precision: Precision) -> Multiplier {
        Multiplier {
            kernels: Kernels::new(Backend::Scalar).unwrap(),
            precision,
        }
    }

    #[test]
    fn the_footprint_is_what_a_training_step_allocates() {
        let cfg = Preset::Tiny.config(crate::data::Tokenizer::Byte);
        let f32s = products(Precision::F32);
        let f = Footprint::training(&cfg, (3, cfg.block_size), false, (2, f32s));
        assert_eq!(f.parameters, cfg.param_floats());
        assert_eq!(f.optimizer_state, 2 * cfg.param_floats());
        let b = 3;
        let t = cfg.block_size;
        // Counted by hand from the tensors' shapes.
        let (l, c, v) = (cfg.layers, cfg.channels, cfg.vocab_size);
        let bt = b * t;
        let acts = (l + 1) * bt * c + l * bt * (17 * c + 4) + bt * (c + 3 + v);
        let scratch = bt * (v + 17 * c);
        assert_eq!(f.activations, acts + scratch);
        // Each thread's attention buffers: the backward pass's `t × t`.
        assert!(f.thread_buffers >= 2 * 2 * t * t);
        let alone = Footprint::training(&cfg, (3, t), false, (1, f32s));
        // Two pool threads, and the calling thread that runs a lone piece.
        assert_eq!(f.thread_buffers, 3 * alone.thread_buffers);
        let evaluation = Footprint::evaluation(&cfg, (3, t), (1, f32s));
        assert!(evaluation.thread_buffers < alone.thread_buffers);
        // The LM head's input gradient packs its whole A (`bt × v`, the
        // vocabulary at most a pass deep) in f32; without a bf16 unit a
        // bf16 product also rounds copies of A, B and C.
        assert!(f.workspace >= bt * v, "{}", f.workspace);
        let bf16 = Footprint::training(&cfg, (3, t), false, (1, products(Precision::Bf16)));
        assert!(bf16.workspace >= f.workspace + bt * v, "{}", bf16.workspace);
    }

    /// The model and its data are refused together where each alone
    /// would fit (an evaluation holds both at once).
    #[test]
    fn the_data_held_counts_beside_the_model() {
        let (usable, _) = usable_bytes();
        let half = usize::try_from(usable / 2).unwrap();
        let model = Footprint {
            parameters: half / 4 + 1,
            ..Footprint::largest([])
        };
        let data = (usable / 2 + 1, "the tokens".to_string());
        model.check("the model", None).unwrap();
        check_fits(data.0, "the tokens").unwrap();
        let err = model.check("the model", Some(&data)).unwrap_err();
        assert!(
            err.to_string().contains("(the model, beside the tokens)"),
            "{err}"
        );
    }

    #[test]
    fn only_training_holds_gradients_and_bf16_decoding_holds_packed_weights() {
        let cfg = Preset::Tiny.config(crate::data::Tokenizer::Byte);
        let n = cfg.param_floats();
        let f32s = products(Precision::F32);
        let decoding = Footprint::decoding(&cfg, (2, f32s));
        assert_eq!(decoding.gradients, 0);
        let workspaces = |mm| {
            Gpt::decoding_workspace_floats(&cfg, mm) + 3 * Gpt::decoding_thread_floats(&cfg, mm)
        };
        let running = 4 * (n + KvCache::floats(&cfg));
        assert_eq!(decoding.total_bytes(), running + 4 * workspaces(f32s));
        let bf16s = products(Precision::Bf16);
        let bf16 = Footprint::decoding(&cfg, (2, bf16s)).total_bytes();
        let packed = Gpt::packed_floats(&cfg);
        assert_eq!(bf16, running + 4 * (packed + workspaces(bf16s)));
        let training = Footprint::training(&cfg, (1, 1), false, (1, f32s));
        let acts = Gpt::activation_floats(&cfg, 1, 1, false);
        let buffers = Gpt::thread_floats(&cfg, f32s, 1, true);
        let workspace = Gpt::workspace_floats(&cfg, f32s, 1, true);
        assert_eq!(
            training.total_bytes(),
            4 * (4 * n + acts + buffers + workspace)
        );
        assert_eq!(Footprint::evaluation(&cfg, (1, 1), (1, f32s)).gradients, 0);
    }

    /// A rank that shards the optimizer state counts its share, and rank 0
    /// the whole state beside it, which it gathers to save.
    #[test]
    fn a_sharded_optimizer_counts_its_share_and_the_gather_to_save() {
        let cfg = Preset::Tiny.config(crate::data::Tokenizer::Byte);
        let n = cfg.param_floats();
        let whole = Footprint::training(&cfg, (2, 8), false, (1, products(Precision::F32)));
        assert_eq!(whole.with_optimizer_shard(&cfg, (0, 1)), whole);
        let shares = shard_ranges(Params::sizes(&cfg), 2);
        let [first, second] = [0, 1].map(|shard| whole.with_optimizer_shard(&cfg, (shard, 2)));
        assert_eq!(second.optimizer_state, 2 * shares[1].len());
        assert_eq!(first.optimizer_state, 2 * shares[0].len() + 2 * n);
        assert_eq!((first.optimizer_ranks, second.parameters), (2, n));
    }

    /// Ranks sharing a host, as the host's sum of their `bytes` sees them.
    struct RanksOnOneHost(usize);

    impl Collective for RanksOnOneHost {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            self.0
        }
        fn host_sum(&self, x: f64) -> f64 {
            x * self.0 as f64
        }
        fn all_reduce_sum(&self, _: &mut [f32]) {
            unreachable!("a memory check sums on the host only")
        }
        fn all_reduce_f64(&self, _: &mut [f64]) {
            unreachable!("a memory check sums on the host only")
        }
        fn broadcast(&self, _: usize, _: &mut [f32]) {
            unreachable!("a memory check sums on the host only")
        }
        fn reduce_sum_to(&self, _: usize, _: &mut [f32]) {
            unreachable!("a memory check sums on the host only")
        }
        fn gather_to_leader(&self, _: &[f32], _: &[std::ops::Range<usize>], _: &mut [f32]) {
            unreachable!("a memory check sums on the host only")
        }
        fn abort(&self, _: i32) -> ! {
            unreachable!("a memory check sums on the host only")
        }
        fn describe(&self) -> String {
            format!("{} ranks on one host", self.0)
        }
    }

    /// Ranks that each fit the host but not together are refused; one
    /// process is checked against its own limit only.
    #[test]
    fn ranks_on_one_host_share_its_memory() {
        let machine = physical_memory_bytes().unwrap_or(32 << 30);
        let most = machine / 10 * 6;
        check_host(&RanksOnOneHost(1), machine * 2).unwrap();
        check_host(&crate::world::SingleProcess, machine * 2).unwrap();
        let err = check_host(&RanksOnOneHost(2), most)
            .unwrap_err()
            .to_string();
        assert!(err.contains("the ranks on this host need about"), "{err}");
        check_host(&RanksOnOneHost(2), machine / 3).unwrap();
    }

    #[test]
    fn sizes_below_a_gib_are_told_in_mib() {
        assert_eq!(size_text(200 << 20), "200 MiB");
        assert_eq!(size_text(300 << 10), "0.3 MiB");
        assert_eq!(size_text(3 << 29), "1.5 GiB");
    }

    #[test]
    fn absurd_shapes_saturate_and_are_refused() {
        let cfg = ModelConfig {
            vocab_size: 256,
            tokenizer: None,
            block_size: 1 << 16,
            layers: 1 << 40,
            heads: 1,
            channels: 1,
        };
        let f32s = products(Precision::F32);
        assert_eq!(
            Footprint::training(&cfg, (1 << 20, 1 << 16), false, (1, f32s)).total_bytes(),
            usize::MAX
        );
        let (shape, threads) = ((1 << 20, 1 << 16), (1, &[f32s][..]));
        assert!(check_memory(&cfg, shape, true, threads, (0, 1), None).is_err());
    }
}
