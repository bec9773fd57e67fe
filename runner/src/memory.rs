//! What a run (training, evaluation or decoding) will hold in memory, from
//! the same size functions that allocate it, checked against the machine
//! before anything large is allocated.

use crate::error::Error;
use crate::metrics::{gib, mib, physical_memory_bytes};
use crate::model::{Gpt, KvCache, ModelConfig};

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
    /// Activations and backward scratch of one micro-batch.
    pub activations: usize,
}

impl Footprint {
    /// A model of shape `cfg` trained on micro-batches of `batch` ×
    /// `t` tokens, with or without `recompute` (saturating for absurd
    /// shapes).
    pub fn training(cfg: &ModelConfig, batch: usize, t: usize, recompute: bool) -> Footprint {
        let n = cfg.param_floats();
        Footprint {
            parameters: n,
            gradients: n,
            optimizer_state: Optimizer::state_floats(n),
            optimizer_ranks: 1,
            activations: Gpt::activation_floats(cfg, batch, t, recompute),
        }
    }

    /// Evaluating a model of shape `cfg` on batches of `batch` × `t`
    /// tokens: no optimizer state.
    pub fn evaluation(cfg: &ModelConfig, batch: usize, t: usize) -> Footprint {
        Footprint {
            optimizer_state: 0,
            ..Footprint::training(cfg, batch, t, false)
        }
    }

    /// Decoding with a model of shape `cfg`: its parameters (and the
    /// gradient arena every model has) and a KV cache of a whole block.
    pub fn decoding(cfg: &ModelConfig) -> Footprint {
        let n = cfg.param_floats();
        Footprint {
            parameters: n,
            gradients: n,
            optimizer_state: 0,
            optimizer_ranks: 1,
            activations: KvCache::floats(cfg),
        }
    }

    /// Refuses a run of this footprint that would not fit this machine's
    /// memory (or 32 GiB where it cannot be read), rather than dying in
    /// the allocator; `what` names the run in the message.
    pub fn check(&self, what: &str) -> Result<(), Error> {
        check_fits(self.total_bytes() as u64, what)
    }

    /// Bytes of all of it.
    pub fn total_bytes(&self) -> usize {
        [
            self.parameters,
            self.gradients,
            self.optimizer_state,
            self.activations,
        ]
        .iter()
        .fold(0usize, |sum, &n| sum.saturating_add(n))
        .saturating_mul(4)
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
            "parameters {:.1} MiB, gradients {:.1} MiB, optimizer state {:.1} MiB{share}, activations {:.1} MiB",
            mib(4.0 * self.parameters as f64),
            mib(4.0 * self.gradients as f64),
            mib(4.0 * self.optimizer_state as f64),
            mib(4.0 * self.activations as f64)
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
            format!("about {:.1} GiB", gib(bytes as f64))
        };
        return Err(Error::Config(format!(
            "the run needs {need} of memory ({what}); {whose} {:.1} GiB",
            gib(limit_bytes as f64)
        )));
    }
    Ok(())
}

/// The memory a run may use, and whose limit that is (as the error line
/// words it): the machine's, or less where the process's address space is
/// limited.
pub fn usable_bytes() -> (u64, &'static str) {
    let machine = physical_memory_bytes().unwrap_or(32 << 30);
    let mut limit = std::mem::MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: `getrlimit` writes one `rlimit` through a valid pointer to
    // one; it is read only where the call says it succeeded.
    let process = unsafe {
        match libc::getrlimit(libc::RLIMIT_AS, limit.as_mut_ptr()) {
            0 => limit.assume_init().rlim_cur,
            _ => libc::RLIM_INFINITY,
        }
    };
    if process != libc::RLIM_INFINITY && (process as u64) < machine {
        (process as u64, "this process may map (ulimit -v)")
    } else {
        (machine, "this machine has")
    }
}

/// Refuses training runs that would not fit this machine's memory
/// ([`Footprint::check`]): a model of shape `cfg` on micro-batches of
/// `batch × t` tokens.
pub fn check_memory(
    cfg: &ModelConfig,
    batch: usize,
    t: usize,
    recompute: bool,
) -> Result<(), Error> {
    Footprint::training(cfg, batch, t, recompute)
        .check(&format!("model {cfg} with batch {batch} × {t} tokens"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Preset;

    #[test]
    fn the_footprint_is_what_a_training_step_allocates() {
        let cfg = Preset::Tiny.config(crate::data::Tokenizer::Byte);
        let f = Footprint::training(&cfg, 3, cfg.block_size, false);
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
        assert_eq!(
            Footprint::training(&cfg, 1 << 20, 1 << 16, false).total_bytes(),
            usize::MAX
        );
        assert!(check_memory(&cfg, 1 << 20, 1 << 16, true).is_err());
    }
}
