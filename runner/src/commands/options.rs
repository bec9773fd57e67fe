//! The options several commands share, flattened into each one's
//! arguments.

use std::path::Path;

use clap::{Args, ValueEnum};
use kernels::{Backend, Bf16Unit, Kernels};

use crate::checkpoint;
use crate::error::Error;
use crate::logger;
use crate::model::{Gpt, Precision};
use crate::threads::Threads;

/// A float option's value; text beyond f32's range (`1e39`, `1e-46`) is
/// refused rather than read as infinity or 0, which the option's own check
/// would then report as a value the user never wrote (or take silently).
pub fn float(text: &str) -> Result<f32, String> {
    let value: f32 = text.parse().map_err(|e| format!("{e}"))?;
    if value.is_infinite() && !text.to_ascii_lowercase().contains("inf") {
        return Err(format!("{text} is beyond the range of f32 (±3.4e38)"));
    }
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    if value == 0.0 && mantissa.contains(|c: char| ('1'..='9').contains(&c)) {
        return Err(format!(
            "{text} is below the smallest f32 (±1.4e-45); write 0 for 0"
        ));
    }
    Ok(value)
}

/// How much every command logs.
#[derive(Args, Debug, Clone)]
pub struct Verbosity {
    /// Only warnings, errors and the results (text, tables).
    #[arg(short, long)]
    pub quiet: bool,
}

impl Verbosity {
    /// Installs the logger at this level.
    pub fn init(&self) {
        logger::init(self.quiet);
    }
}

/// Options every command that runs one model shares.
#[derive(Args, Debug, Clone)]
pub struct RunOptions {
    #[command(flatten)]
    pub verbosity: Verbosity,
    /// Kernel backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Threads [default: all cores]. Results do not depend on it.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Element type of the matrix products: f32, or bf16 (operands rounded
    /// to bf16, f32 sums; activations that only products read are kept in
    /// bf16, and decoding holds the weights and the key/value cache in
    /// bf16; layer norm, softmax, the loss and AdamW stay f32; see README).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Where bf16 products run [default: the best unit the backend
    /// reaches]. Forcing one the CPU or OS lacks is an error.
    #[arg(long, value_enum, value_name = "UNIT")]
    pub bf16_unit: Option<Bf16UnitChoice>,
}

impl RunOptions {
    /// Installs the logger at the asked level and returns the kernels.
    pub fn start(&self) -> Result<Kernels, Error> {
        self.verbosity.init();
        let mut kernels = self.backend.kernels()?;
        if let Some(unit) = self.bf16_unit {
            // Said here, where the cause is known: the kernels' error
            // cannot tell a forced backend's limit from the CPU's.
            let needs_avx512 = unit != Bf16UnitChoice::Portable;
            let forced = self.backend != BackendChoice::Auto;
            if needs_avx512 && forced && kernels.backend() != Backend::Avx512 {
                let name = unit.to_possible_value().map(|v| v.get_name().to_owned());
                return Err(Error::Config(format!(
                    "--bf16-unit {} runs on the AVX-512 backend, not on --backend {}: drop --backend or give avx512",
                    name.unwrap_or_default(),
                    kernels.backend()
                )));
            }
            kernels = kernels.with_bf16_unit(unit.unit())?;
        }
        Ok(kernels)
    }

    /// What to warn of in these options on `kernels` (from [`start`]),
    /// for the command to log once it has accepted the rest of its input,
    /// so that a refused command prints its error line alone.
    ///
    /// [`start`]: RunOptions::start
    pub fn warnings(&self, kernels: Kernels) -> Vec<String> {
        let mut warnings: Vec<String> = Threads::oversubscribed(self.threads).into_iter().collect();
        if self.bf16_unit.is_some() && self.precision == Precision::F32 {
            warnings.push(
                "--bf16-unit has no effect in f32: add --precision bf16 to run the products on it"
                    .into(),
            );
        }
        if let (None, Precision::Bf16, Some(errno)) =
            (self.bf16_unit, self.precision, Bf16Unit::amx_refused())
        {
            warnings.push(format!(
                "this CPU has AMX but the OS refused the tile data permission (arch_prctl returned {errno}): bf16 products run on {}",
                kernels.bf16_unit()
            ));
        }
        if self.precision == Precision::Bf16 && kernels.bf16_unit() == Bf16Unit::Portable {
            let why = match self.bf16_unit {
                Some(_) => "--bf16-unit portable",
                None => "this CPU or backend has no bf16 unit",
            };
            warnings.push(format!("{why}: bf16 runs emulated (operands rounded to bf16, f32 FMA); training and long prompts run slower than in f32"));
        }
        warnings
    }

    /// The checkpoint in `dir` on `kernels`, running on these threads in
    /// this precision.
    pub fn load_model(&self, dir: &Path, kernels: Kernels) -> Result<Gpt, Error> {
        let threads = Threads::new(self.threads)?;
        let mut model = checkpoint::load_model(dir, kernels)?;
        model.set_threads(threads);
        model.set_precision(self.precision);
        Ok(model)
    }
}

/// Which kernels to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The fastest this CPU supports.
    Auto,
    /// The portable reference (the naive baseline).
    Scalar,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512F.
    Avx512,
}

impl BackendChoice {
    /// The kernels handle, or an error if the CPU lacks the backend.
    pub fn kernels(self) -> Result<Kernels, Error> {
        let backend = match self {
            BackendChoice::Auto => return Ok(Kernels::best()),
            BackendChoice::Scalar => Backend::Scalar,
            BackendChoice::Avx2 => Backend::Avx2,
            BackendChoice::Avx512 => Backend::Avx512,
        };
        Ok(Kernels::new(backend)?)
    }
}

/// A bf16 unit to force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Bf16UnitChoice {
    /// Operands rounded to bf16, the backend's f32 multiply (any CPU).
    Portable,
    /// `vdpbf16ps` (AVX-512 backend).
    Avx512Bf16,
    /// AMX tiles (AVX-512 backend; needs the OS's tile data permission).
    Amx,
}

impl Bf16UnitChoice {
    fn unit(self) -> Bf16Unit {
        match self {
            Bf16UnitChoice::Portable => Bf16Unit::Portable,
            Bf16UnitChoice::Avx512Bf16 => Bf16Unit::Avx512Bf16,
            Bf16UnitChoice::Amx => Bf16Unit::Amx,
        }
    }
}
