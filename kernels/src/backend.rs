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
    /// Operands rounded to bf16, multiplied by the f32 GEMM of the backend
    /// (products of at most 16 rows: summed down k from B's packed pairs
    /// or bf16 rows): the reference, on every CPU.
    Portable,
    /// `vdpbf16ps` (AVX512-BF16: AMD Zen 4 and later, Intel Cooper Lake
    /// and later), reached from the AVX-512 backend. Products of at most 3
    /// rows, bound by reading B, are summed as the portable unit's few
    /// rows are.
    Avx512Bf16,
    /// AMX tiles (`tdpbf16ps`: Intel Sapphire Rapids and later), reached
    /// from the AVX-512 backend, and only once Linux granted this process
    /// the tile data state (requested by detection, once). Products of
    /// fewer than 32 rows run as on [`Bf16Unit::Avx512Bf16`].
    Amx,
}

impl Bf16Unit {
    /// Every unit, slowest first.
    pub const ALL: [Bf16Unit; 3] = [Bf16Unit::Portable, Bf16Unit::Avx512Bf16, Bf16Unit::Amx];

    /// The fastest unit this CPU and OS support. The first call on a CPU
    /// with AMX asks Linux for the tile data state
    /// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); if that is
    /// refused, AMX is not supported and [`Bf16Unit::amx_refused`] says why.
    pub fn detected() -> Bf16Unit {
        detected_bf16().best
    }

    /// Whether this CPU and OS can run this unit.
    pub fn is_supported(self) -> bool {
        self <= Bf16Unit::detected()
    }

    /// When the CPU has AMX but the OS refused this process the tile data
    /// state: the error number `arch_prctl` returned (negated errno).
    pub fn amx_refused() -> Option<i64> {
        match detected_bf16().amx {
            AmxState::Refused(errno) => Some(errno),
            _ => None,
        }
    }

    /// `portable`, `avx512-bf16` or `amx`.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Unit::Portable => "portable",
            Bf16Unit::Avx512Bf16 => "avx512-bf16",
            Bf16Unit::Amx => "amx",
        }
    }
}

impl fmt::Display for Bf16Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Bf16Unit {
    type Err = KernelError;

    /// Parses `portable`, `avx512-bf16` or `amx` (case-insensitive).
    fn from_str(s: &str) -> Result<Bf16Unit, KernelError> {
        Bf16Unit::ALL
            .into_iter()
            .find(|u| u.name().eq_ignore_ascii_case(s))
            .ok_or(KernelError::UnknownBf16Unit)
    }
}

/// What detection found for bf16: the best unit granted, and whether AMX
/// was present, granted or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bf16Detection {
    pub(crate) best: Bf16Unit,
    pub(crate) amx: AmxState,
}

/// AMX as detection found it (always `Absent` under Miri, which runs no
/// cpuid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(miri, allow(dead_code))]
pub(crate) enum AmxState {
    /// The CPU or XCR0 lacks AMX tiles or AMX-BF16 (or AVX512-BF16, which
    /// the tile path's packing and epilogue use).
    Absent,
    /// Present, and the OS granted the tile data state.
    Granted,
    /// Present, and the OS refused the tile data state (the error).
    Refused(i64),
}

static DETECTED_BF16: spin::Once<Bf16Detection> = spin::Once::new();

pub(crate) fn detected_bf16() -> Bf16Detection {
    *DETECTED_BF16.call_once(detect_bf16)
}

// Miri cannot run cpuid or xgetbv (see `detect`).
#[cfg(any(not(target_arch = "x86_64"), miri))]
fn detect_bf16() -> Bf16Detection {
    Bf16Detection {
        best: Bf16Unit::Portable,
        amx: AmxState::Absent,
    }
}

/// AVX512-BF16 needs the AVX-512 backend (CPU and OS), AVX512BW and the
/// BF16 bit of cpuid leaf 7, sub-leaf 1. AMX needs that too, AMX-TILE and
/// AMX-BF16 (leaf 7 EDX bits 24 and 22), the tile state enabled in XCR0
/// (bits 17 and 18) and, on Linux, the OS's grant of the tile data.
#[cfg(all(target_arch = "x86_64", not(miri)))]
fn detect_bf16() -> Bf16Detection {
    use core::arch::x86_64::{__cpuid_count, _xgetbv};

    let portable = Bf16Detection {
        best: Bf16Unit::Portable,
        amx: AmxState::Absent,
    };
    if Backend::detected() != Backend::Avx512 {
        return portable;
    }
    // SAFETY: cpuid exists on every x86-64 CPU, and leaf 7 does on any CPU
    // with AVX-512 (detected above).
    #[allow(unused_unsafe)]
    let leaf7 = unsafe { __cpuid_count(7, 0) };
    let avx512bw = leaf7.ebx & (1 << 30) != 0;
    if !avx512bw || leaf7.eax < 1 {
        return portable;
    }
    // SAFETY: as above; sub-leaf 1 exists since leaf 7 reports it.
    #[allow(unused_unsafe)]
    let sub1 = unsafe { __cpuid_count(7, 1) };
    if sub1.eax & (1 << 5) == 0 {
        return portable;
    }
    let amx_cpu = leaf7.edx & (1 << 22) != 0 && leaf7.edx & (1 << 24) != 0;
    // SAFETY: the AVX-512 backend was detected, which required OSXSAVE, so
    // xgetbv is enabled and XCR0 readable.
    let xcr0 = unsafe { _xgetbv(0) };
    let amx_os = xcr0 & (0b11 << 17) == 0b11 << 17;
    let amx = if amx_cpu && amx_os {
        match request_tile_data() {
            0 => AmxState::Granted,
            errno => AmxState::Refused(errno),
        }
    } else {
        AmxState::Absent
    };
    Bf16Detection {
        best: if amx == AmxState::Granted {
            Bf16Unit::Amx
        } else {
            Bf16Unit::Avx512Bf16
        },
        amx,
    }
}

/// Asks Linux to let this process use the AMX tile data state
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, syscall 158):
/// without the grant the first tile instruction faults. Returns 0 when
/// granted, else the negated errno. A raw syscall keeps the crate free of
/// `std` and `libc`; it is made once, by detection.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[cfg_attr(miri, allow(dead_code))]
fn request_tile_data() -> i64 {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
    const XFEATURE_XTILEDATA: u64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM only changes which xsave
    // features the kernel lets this process use; it reads and writes no
    // memory of ours. The syscall instruction clobbers rcx and r11, which
    // are declared.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret
}

/// Other systems: no known way to request the tile data, so AMX stays off.
#[cfg(all(target_arch = "x86_64", not(target_os = "linux")))]
fn request_tile_data() -> i64 {
    -38 // ENOSYS
}

static DETECTED: spin::Once<Backend> = spin::Once::new();

// Miri cannot run cpuid: under it, as off x86-64, only the portable code
// (and the tests' emulated vectors) runs.
#[cfg(any(not(target_arch = "x86_64"), miri))]
fn detect() -> Backend {
    Backend::Scalar
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
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
