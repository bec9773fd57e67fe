//! Benchmarks of `kernels` (see `benches/`); this library only holds shared
//! helpers for them.

pub mod cblas;
pub mod mkl;
pub mod peak;
pub mod report;
pub mod shapes;

use kernels::{Backend, Kernels};

/// Every backend this CPU runs, slowest first, so that reports show the
/// scalar reference beside the SIMD versions. `KERNELS_BACKENDS=scalar,avx2`
/// restricts the list.
pub fn backends() -> Vec<Kernels> {
    let wanted = std::env::var("KERNELS_BACKENDS").ok();
    Backend::ALL
        .into_iter()
        .filter(|b| {
            wanted
                .as_deref()
                .is_none_or(|w| w.split(',').any(|name| name.trim() == b.name()))
        })
        .filter_map(|b| match Kernels::new(b) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("notice: skipping {b}: {e}");
                None
            }
        })
        .collect()
}

/// Values stored from the first 64-byte line of their buffer, as
/// PyTorch's allocator places a tensor and the runner its arenas (a `Vec`
/// starts only as aligned as its element, and AMX tiles load a row that
/// straddles two lines at half the speed).
pub struct OnLine<T> {
    buf: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy + Default> OnLine<T> {
    pub fn new(values: &[T]) -> OnLine<T> {
        let len = values.len();
        let mut buf = vec![T::default(); len + 64 / std::mem::size_of::<T>().max(1)];
        let start = buf.as_ptr().align_offset(64);
        buf[start..start + len].copy_from_slice(values);
        OnLine { buf, start, len }
    }
}

impl<T> std::ops::Deref for OnLine<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl<T> std::ops::DerefMut for OnLine<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// A blocking to time beside the one derived from the caches:
/// `KERNELS_GEMM_BLOCKING=MC,KC,NC[,LINES,MIN_N[,SWEEP[,STREAM]]]`, for
/// example the former hand-tuned `192,384,4096`, `168,384,4096,0,0` to
/// pack A always ([`kernels::Kernels::with_gemm_a_packing`]),
/// `336,384,4096,9,512,1` to hold each B panel in L1 over the A panels
/// ([`kernels::Kernels::with_gemm_b_sweep`]), or
/// `336,384,4096,9,512,10,0` to store every C written once past the
/// caches ([`kernels::Kernels::with_gemm_stream_c`]; a huge STREAM never
/// does).
#[derive(Debug, Clone, Copy)]
pub struct BlockingOverride {
    pub mc: usize,
    pub kc: usize,
    pub nc: usize,
    /// Lines per L1 set past which A is packed, and the narrowest product
    /// that packs it, transposed or not.
    pub a_packing: Option<(usize, usize)>,
    /// B panels each A panel sweeps.
    pub b_sweep: Option<usize>,
    /// The smallest C, in bytes, stored past the caches.
    pub stream_c_min_bytes: Option<usize>,
}

impl BlockingOverride {
    /// `k` blocked this way.
    pub fn apply(&self, k: Kernels) -> Result<Kernels, kernels::KernelError> {
        let k = k.with_gemm_blocking(self.mc, self.kc, self.nc)?;
        let k = match self.a_packing {
            Some((lines, min_n)) => k.with_gemm_a_packing(lines, min_n),
            None => k,
        };
        let k = match self.b_sweep {
            Some(panels) => k.with_gemm_b_sweep(panels),
            None => k,
        };
        Ok(match self.stream_c_min_bytes {
            Some(bytes) => k.with_gemm_stream_c(bytes),
            None => k,
        })
    }
}

impl std::fmt::Display for BlockingOverride {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MC {}, KC {}, NC {}", self.mc, self.kc, self.nc)?;
        match self.a_packing {
            Some((lines, min_n)) => {
                write!(f, ", A packed past {lines} lines per L1 set from n {min_n}")
            }
            None => Ok(()),
        }?;
        match self.b_sweep {
            Some(panels) => write!(f, ", {panels} B panels per A panel"),
            None => Ok(()),
        }?;
        match self.stream_c_min_bytes {
            Some(bytes) => write!(f, ", C streamed from {bytes} bytes"),
            None => Ok(()),
        }
    }
}

/// The `KERNELS_GEMM_BLOCKING` override, or `None`.
pub fn blocking_override() -> Option<BlockingOverride> {
    let text = std::env::var("KERNELS_GEMM_BLOCKING").ok()?;
    let values: Vec<usize> = text
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let (mc, kc, nc) = match values[..] {
        [mc, kc, nc, ..] if values.len() != 4 && values.len() <= 7 => (mc, kc, nc),
        _ => {
            eprintln!(
                "warning: KERNELS_GEMM_BLOCKING={text} is not MC,KC,NC[,LINES,MIN_N[,SWEEP[,STREAM]]]; ignored"
            );
            return None;
        }
    };
    Some(BlockingOverride {
        mc,
        kc,
        nc,
        a_packing: values.get(3).zip(values.get(4)).map(|(&l, &n)| (l, n)),
        b_sweep: values.get(5).copied(),
        stream_c_min_bytes: values.get(6).copied(),
    })
}

/// Deterministic pseudo-random data in `[-2, 2)`.
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 22) as f32 - 2.0
        })
        .collect()
}
