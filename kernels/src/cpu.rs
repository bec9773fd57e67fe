//! What the CPU says about itself: its model name and its data caches,
//! read once with cpuid (no `std`), so that benchmarks and logs name the
//! machine a figure comes from and the blocking can be checked against the
//! caches it was chosen for.

use core::fmt;

/// Sizes in bytes of the data caches one core sees, and the L1's ways (0
/// where the CPU does not say). L1 and L2 are per core on every CPU this
/// crate targets; L3 is the whole shared cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caches {
    /// Level 1 data cache.
    pub l1d: usize,
    /// Ways of the L1 data cache (its associativity): addresses `l1d /
    /// l1d_ways` bytes apart compete for these.
    pub l1d_ways: usize,
    /// Level 2 (unified).
    pub l2: usize,
    /// Level 3 (unified, shared), 0 if none.
    pub l3: usize,
}

impl fmt::Display for Caches {
    /// `L1d 32 KiB 8-way, L2 1 MiB, L3 32 MiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let size = |f: &mut fmt::Formatter<'_>, name: &str, bytes: usize| match bytes {
            0 => write!(f, "{name} ?"),
            b if b % (1 << 20) == 0 => write!(f, "{name} {} MiB", b >> 20),
            b => write!(f, "{name} {} KiB", b >> 10),
        };
        size(f, "L1d", self.l1d)?;
        if self.l1d_ways > 0 {
            write!(f, " {}-way", self.l1d_ways)?;
        }
        f.write_str(", ")?;
        size(f, "L2", self.l2)?;
        f.write_str(", ")?;
        size(f, "L3", self.l3)
    }
}

/// The CPU's model name and caches.
///
/// ```
/// let cpu = kernels::Cpu::detected();
/// println!("{} ({})", cpu.model(), cpu.caches());
/// assert!(!cpu.model().is_empty());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    /// The brand string, NUL-padded ASCII.
    brand: [u8; 48],
    caches: Caches,
}

static DETECTED: spin::Once<Cpu> = spin::Once::new();

impl Cpu {
    /// This machine's CPU, read once.
    pub fn detected() -> &'static Cpu {
        DETECTED.call_once(detect)
    }

    /// The model name as the CPU reports it (e.g. `AMD EPYC 9R14
    /// 96-Core Processor`), or `unknown CPU`.
    pub fn model(&self) -> &str {
        let end = self.brand.iter().position(|&b| b == 0).unwrap_or(48);
        match core::str::from_utf8(&self.brand[..end]) {
            Ok(s) if !s.trim().is_empty() => s.trim(),
            _ => "unknown CPU",
        }
    }

    /// The data caches one core sees.
    pub fn caches(&self) -> Caches {
        self.caches
    }
}

// Miri cannot run cpuid: under it, as off x86-64, nothing is detected.
#[cfg(any(not(target_arch = "x86_64"), miri))]
fn detect() -> Cpu {
    Cpu {
        brand: [0; 48],
        caches: Caches::default(),
    }
}

#[cfg(all(target_arch = "x86_64", not(miri)))]
fn detect() -> Cpu {
    use core::arch::x86_64::{__cpuid, __cpuid_count};

    // SAFETY (every cpuid below): the instruction exists on every x86-64
    // CPU; each leaf is read only after the maximum leaf says it exists.
    #[allow(unused_unsafe)]
    let max_extended = unsafe { __cpuid(0x8000_0000) }.eax;
    let mut brand = [0u8; 48];
    if max_extended >= 0x8000_0004 {
        for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
            #[allow(unused_unsafe)]
            let r = unsafe { __cpuid(leaf) };
            for (j, word) in [r.eax, r.ebx, r.ecx, r.edx].into_iter().enumerate() {
                brand[16 * i + 4 * j..][..4].copy_from_slice(&word.to_le_bytes());
            }
        }
    }
    #[allow(unused_unsafe)]
    let vendor = unsafe { __cpuid(0) };
    let amd = vendor.ebx == u32::from_le_bytes(*b"Auth");
    // Intel's leaf 4 and AMD's 0x8000001D list the caches in one format.
    let cache_leaf = if amd {
        #[allow(unused_unsafe)]
        let topology =
            max_extended >= 0x8000_0001 && unsafe { __cpuid(0x8000_0001) }.ecx & (1 << 22) != 0;
        (topology && max_extended >= 0x8000_001D).then_some(0x8000_001D)
    } else {
        (vendor.eax >= 4).then_some(4)
    };
    let mut caches = Caches::default();
    if let Some(leaf) = cache_leaf {
        for sub in 0..16 {
            #[allow(unused_unsafe)]
            let r = unsafe { __cpuid_count(leaf, sub) };
            let kind = r.eax & 0x1F; // 0: no more caches, 1: data, 2: instruction, 3: unified
            if kind == 0 {
                break;
            }
            if kind == 2 {
                continue;
            }
            let ways = ((r.ebx >> 22) & 0x3FF) as usize + 1;
            let partitions = ((r.ebx >> 12) & 0x3FF) as usize + 1;
            let line = (r.ebx & 0xFFF) as usize + 1;
            let sets = r.ecx as usize + 1;
            // Saturating: a hypervisor may report anything.
            let bytes = ways
                .saturating_mul(partitions)
                .saturating_mul(line)
                .saturating_mul(sets);
            match (r.eax >> 5) & 0x7 {
                1 => (caches.l1d, caches.l1d_ways) = (bytes, ways),
                2 => caches.l2 = bytes,
                3 => caches.l3 = bytes,
                _ => {}
            }
        }
    }
    Cpu { brand, caches }
}
