//! [`Kernels`]: a handle proving that its backend runs on this CPU, through
//! which every routine is called. The routines themselves are defined in the
//! family modules (`elementwise`, `reduce`, ...), each as an `impl Kernels`
//! block that checks shapes and then calls [`dispatch!`].

use crate::backend::{detected_bf16, AmxState, Bf16Detection};
use crate::{Backend, Bf16Unit, Blocking, Cpu, KernelError};

/// A validated choice of backend; every routine of the crate is a method.
///
/// `Kernels::best()` picks the fastest backend the CPU supports;
/// `Kernels::new(backend)` forces one and fails if the CPU lacks it. The
/// handle is `Copy` and holds only fixed configuration (backend, bf16 unit,
/// GEMM blocking), so threads can share it freely.
///
/// ```
/// use kernels::{Backend, Kernels};
///
/// let k = Kernels::best();
/// let (a, b) = ([1.0, 2.0, 3.0], [10.0, 20.0, 30.0]);
/// let mut out = [0.0; 3];
/// k.add(&a, &b, &mut out)?;
/// assert_eq!(out, [11.0, 22.0, 33.0]);
///
/// // Forcing the scalar reference always works.
/// let scalar = Kernels::new(Backend::Scalar)?;
/// assert_eq!(scalar.dot(&a, &b)?, 140.0);
/// # Ok::<(), kernels::KernelError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    pub(crate) isa: Isa,
    /// Where [`Kernels::gemm_bf16`] runs.
    pub(crate) bf16: Bf16Unit,
    /// How [`Kernels::gemm`] blocks a product (`gemm/blocking.rs`).
    pub(crate) blocking: Blocking,
}

/// The instruction set a [`Kernels`] runs. `V3`/`V4` are only constructed
/// after detection said yes; the emulated widths exist only in tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    V3,
    #[cfg(target_arch = "x86_64")]
    V4,
    #[cfg(test)]
    Emulated8,
    #[cfg(test)]
    Emulated16,
}

impl Kernels {
    /// A handle running `backend`, or [`KernelError::UnsupportedBackend`] if
    /// this CPU (or OS) cannot run it.
    pub fn new(backend: Backend) -> Result<Kernels, KernelError> {
        // SAFETY: the detection's own results.
        unsafe { Kernels::new_on(backend, Backend::detected(), Bf16Unit::detected()) }
    }

    /// [`Kernels::new`] on a CPU whose best backend is `detected` and best
    /// bf16 unit `detected_bf16`.
    ///
    /// # Safety
    /// `detected` and `detected_bf16` claim nothing this CPU (and OS)
    /// lacks, except in a call that is refused.
    pub(crate) unsafe fn new_on(
        backend: Backend,
        detected: Backend,
        detected_bf16: Bf16Unit,
    ) -> Result<Kernels, KernelError> {
        if backend > detected {
            return Err(KernelError::UnsupportedBackend(backend));
        }
        let isa = match backend {
            Backend::Scalar => Isa::Scalar,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => Isa::V3,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => Isa::V4,
            #[cfg(not(target_arch = "x86_64"))]
            _ => return Err(KernelError::UnsupportedBackend(backend)),
        };
        // The bf16 units beyond the portable path are reached from AVX-512.
        let bf16 = match backend {
            Backend::Avx512 => detected_bf16,
            _ => Bf16Unit::Portable,
        };
        // SAFETY: `backend` is at most `detected`, and `bf16` is the
        // detected unit (on AVX-512) or the portable one, which runs
        // everywhere; on this CPU by the caller's contract.
        Ok(unsafe { Kernels::on(isa, bf16) })
    }

    /// A handle running `isa` with bf16 products on `bf16`, its GEMM
    /// blocked for this CPU's caches.
    ///
    /// # Safety
    /// `isa` and `bf16` run on this CPU: detection found them, or `isa` is
    /// scalar or emulated (whose bf16 units are emulated too).
    pub(crate) unsafe fn on(isa: Isa, bf16: Bf16Unit) -> Kernels {
        let blocking = crate::gemm::blocking_for(isa, Cpu::detected().caches());
        Kernels {
            isa,
            bf16,
            blocking,
        }
    }

    /// A handle running the fastest backend this CPU supports.
    pub fn best() -> Kernels {
        Kernels::new(Backend::detected())
            // SAFETY: the scalar backend runs everywhere.
            .unwrap_or_else(|_| unsafe { Kernels::on(Isa::Scalar, Bf16Unit::Portable) })
    }

    /// Where this handle's bf16 products run: the best unit its backend
    /// reaches on this CPU, unless [`Kernels::with_bf16_unit`] chose one.
    pub fn bf16_unit(&self) -> Bf16Unit {
        self.bf16
    }

    /// This handle with its bf16 products on `unit` (to force one, or to
    /// compare units in tests and benchmarks), or
    /// [`KernelError::UnsupportedBf16Unit`] if the CPU lacks it or the
    /// handle's backend cannot reach it (AVX512-BF16 and AMX need the
    /// AVX-512 backend), or [`KernelError::AmxPermissionRefused`] if the
    /// CPU has AMX but the OS refused the tile data.
    ///
    /// ```
    /// use kernels::{Bf16Unit, Kernels};
    ///
    /// let portable = Kernels::best().with_bf16_unit(Bf16Unit::Portable)?;
    /// assert_eq!(portable.bf16_unit(), Bf16Unit::Portable);
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn with_bf16_unit(self, unit: Bf16Unit) -> Result<Kernels, KernelError> {
        // SAFETY: the detection's own result.
        unsafe { self.with_bf16_unit_on(unit, detected_bf16()) }
    }

    /// [`Kernels::with_bf16_unit`] on a CPU where bf16 detection `found`
    /// what it says.
    ///
    /// # Safety
    /// `found` claims nothing this CPU (and OS) lacks, unless this handle
    /// runs an emulated instruction set (whose bf16 units are emulated
    /// too).
    pub(crate) unsafe fn with_bf16_unit_on(
        self,
        unit: Bf16Unit,
        found: Bf16Detection,
    ) -> Result<Kernels, KernelError> {
        if let (Bf16Unit::Amx, AmxState::Refused(errno)) = (unit, found.amx) {
            return Err(KernelError::AmxPermissionRefused(errno));
        }
        let reachable = match unit {
            Bf16Unit::Portable => true,
            Bf16Unit::Avx512Bf16 | Bf16Unit::Amx => self.backend() == Backend::Avx512,
        };
        if !(reachable && unit <= found.best) {
            return Err(KernelError::UnsupportedBf16Unit(unit));
        }
        Ok(Kernels { bf16: unit, ..self })
    }

    /// The backend this handle runs.
    pub fn backend(&self) -> Backend {
        match self.isa {
            Isa::Scalar => Backend::Scalar,
            #[cfg(target_arch = "x86_64")]
            Isa::V3 => Backend::Avx2,
            #[cfg(target_arch = "x86_64")]
            Isa::V4 => Backend::Avx512,
            #[cfg(test)]
            Isa::Emulated8 => Backend::Avx2,
            #[cfg(test)]
            Isa::Emulated16 => Backend::Avx512,
        }
    }
}

impl Default for Kernels {
    fn default() -> Kernels {
        Kernels::best()
    }
}

/// Runs `$scalar` on the scalar backend, or `$simd` with `$s` bound to the
/// [`crate::simd::Simd`] value of the handle's instruction set.
macro_rules! dispatch {
    ($kernels:expr, scalar: $scalar:expr, simd: |$s:ident| $simd:expr $(,)?) => {
        match $kernels.isa {
            $crate::dispatch::Isa::Scalar => $scalar,
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a handle holds `Isa::V3` only through `Kernels::on`,
            // whose contract is that detection confirmed AVX2 + FMA and OS
            // support for YMM state.
            $crate::dispatch::Isa::V3 => unsafe {
                $crate::simd::V3::vectorize(
                    #[inline(always)]
                    |$s| $simd,
                )
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a handle holds `Isa::V4` only through `Kernels::on`,
            // whose contract is that detection confirmed AVX-512F and OS
            // support for ZMM state.
            $crate::dispatch::Isa::V4 => unsafe {
                $crate::simd::V4::vectorize(
                    #[inline(always)]
                    |$s| $simd,
                )
            },
            #[cfg(test)]
            $crate::dispatch::Isa::Emulated8 => {
                let $s = $crate::simd::Emulated::<8>;
                $simd
            }
            #[cfg(test)]
            $crate::dispatch::Isa::Emulated16 => {
                let $s = $crate::simd::Emulated::<16>;
                $simd
            }
        }
    };
}
pub(crate) use dispatch;
