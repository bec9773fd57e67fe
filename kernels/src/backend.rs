//! Run-time CPU detection: which instruction sets the CPU has *and* the OS
//! has enabled, read once with cpuid and xgetbv (no `std` needed).

use core::fmt;
use core::str::FromStr;

use crate::KernelError;

/// An implementation of every routine in this crate.
///
/// ```
/// use kernels::Backend;
///
/// let best = Backend::detected();
/// assert!(best.is_supported());
/// assert!(Backend::Scalar.is_supported());
/// println!("running on {best}");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Backend {
    /// Portable scalar code; the reference every other backend is tested against.
    Scalar,
    /// AVX2 + FMA, 8 lanes (x86-64-v3).
    Avx2,
    /// AVX-512F, 16 lanes (x86-64-v4).
    Avx512,
}

impl Backend {
    /// Every backend, slowest first.
    pub const ALL: [Backend; 3] = [Backend::Scalar, Backend::Avx2, Backend::Avx512];

    /// The fastest backend this CPU and OS support.
    pub fn detected() -> Backend {
        *DETECTED.call_once(detect)
    }

    /// Whether this CPU and OS can run this backend.
    pub fn is_supported(self) -> bool {
        self <= Backend::detected()
    }

    /// The lower-case name used on command lines: `scalar`, `avx2`, `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
        }
    }

    /// f32 lanes per vector register.
    pub fn lanes(self) -> usize {
        match self {
            Backend::Scalar => 1,
            Backend::Avx2 => 8,
            Backend::Avx512 => 16,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = KernelError;

    /// Parses `scalar`, `avx2` or `avx512` (case-insensitive).
    fn from_str(s: &str) -> Result<Backend, KernelError> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s))
            .ok_or(KernelError::UnknownBackend)
    }
}

/// Where bf16 matrix products ([`crate::Kernels::gemm_bf16`]) run.
///
/// ```
/// use kernels::{Bf16Unit, Kernels};
///
/// // The portable path runs everywhere; a handle uses the best unit its
/// // backend can reach.
/// assert!(Bf16Unit::Portable.is_supported());
/// println!("bf16 products on {}", Kernels::best().bf16_unit());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bf16Unit {
    /// Operands rounded to bf16, multiplied by the f32 GEMM of the backend:
    /// the reference, on every CPU.
    Portable,
    /// `vdpbf16ps` (AVX512-BF16: AMD Zen 4 and later, Intel Cooper Lake
    /// and later), reached from the AVX-512 backend.
    Avx512Bf16,
}

impl Bf16Unit {
    /// Every unit, slowest first.
    pub const ALL: [Bf16Unit; 2] = [Bf16Unit::Portable, Bf16Unit::Avx512Bf16];

    /// The fastest unit this CPU and OS support.
    pub fn detected() -> Bf16Unit {
        *DETECTED_BF16.call_once(detect_bf16)
    }

    /// Whether this CPU and OS can run this unit.
    pub fn is_supported(self) -> bool {
        self <= Bf16Unit::detected()
    }

    /// `portable` or `avx512-bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Unit::Portable => "portable",
            Bf16Unit::Avx512Bf16 => "avx512-bf16",
        }
    }
}

impl fmt::Display for Bf16Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

static DETECTED_BF16: spin::Once<Bf16Unit> = spin::Once::new();

#[cfg(not(target_arch = "x86_64"))]
fn detect_bf16() -> Bf16Unit {
    Bf16Unit::Portable
}

/// AVX512-BF16 needs the AVX-512 backend (CPU and OS), AVX512BW and the
/// BF16 bit of cpuid leaf 7, sub-leaf 1.
#[cfg(target_arch = "x86_64")]
fn detect_bf16() -> Bf16Unit {
    use core::arch::x86_64::__cpuid_count;

    if Backend::detected() != Backend::Avx512 {
        return Bf16Unit::Portable;
    }
    // SAFETY: cpuid exists on every x86-64 CPU, and leaf 7 does on any CPU
    // with AVX-512 (detected above).
    #[allow(unused_unsafe)]
    let leaf7 = unsafe { __cpuid_count(7, 0) };
    let avx512bw = leaf7.ebx & (1 << 30) != 0;
    if !avx512bw || leaf7.eax < 1 {
        return Bf16Unit::Portable;
    }
    // SAFETY: as above; sub-leaf 1 exists since leaf 7 reports it.
    #[allow(unused_unsafe)]
    let sub1 = unsafe { __cpuid_count(7, 1) };
    if sub1.eax & (1 << 5) != 0 {
        Bf16Unit::Avx512Bf16
    } else {
        Bf16Unit::Portable
    }
}

static DETECTED: spin::Once<Backend> = spin::Once::new();

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Backend {
    Backend::Scalar
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Backend {
    use core::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};

    let bit = |word: u32, n: u32| word & (1 << n) != 0;

    // SAFETY: the cpuid instruction exists on every x86-64 CPU. (Newer Rust
    // declares `__cpuid` safe; the block keeps older toolchains building.)
    #[allow(unused_unsafe)]
    let max_leaf = unsafe { __cpuid(0) }.eax;
    if max_leaf < 7 {
        return Backend::Scalar;
    }
    // SAFETY: as above; leaves 1 and 7 exist since max_leaf >= 7.
    #[allow(unused_unsafe)]
    let (leaf1, leaf7) = unsafe { (__cpuid(1), __cpuid_count(7, 0)) };

    let osxsave = bit(leaf1.ecx, 27);
    let avx = bit(leaf1.ecx, 28);
    let fma = bit(leaf1.ecx, 12);
    let avx2 = bit(leaf7.ebx, 5);
    let avx512f = bit(leaf7.ebx, 16);
    if !(osxsave && avx) {
        return Backend::Scalar;
    }
    // SAFETY: OSXSAVE is set, so the OS has enabled xgetbv and XCR0 is readable.
    let xcr0 = unsafe { _xgetbv(0) };
    let os_saves_ymm = xcr0 & 0b110 == 0b110; // SSE and AVX state
    let os_saves_zmm = xcr0 & 0b1110_0000 == 0b1110_0000; // opmask, ZMM0-15 high, ZMM16-31

    if !(os_saves_ymm && avx2 && fma) {
        Backend::Scalar
    } else if os_saves_zmm && avx512f {
        Backend::Avx512
    } else {
        Backend::Avx2
    }
}
