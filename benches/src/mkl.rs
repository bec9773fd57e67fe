//! Intel MKL's `cblas_sgemm` as a peer in the GEMM comparison, loaded at
//! run time from the library `MKL_RT` names (for example the PyPI wheel
//! `mkl`'s `lib/libmkl_rt.so.3`), so that nothing links MKL unless a run
//! asks for it. MKL runs single-threaded (its sequential layer).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;

use crate::cblas::{self, Sgemm};
use crate::shapes::Shape;

/// `MKL_THREADING_SEQUENTIAL` of `mkl_service.h`.
const THREADING_SEQUENTIAL: c_int = 1;
/// `RTLD_NOW` of `dlfcn.h`: resolve every symbol at load, so a broken
/// library fails here rather than in the middle of a benchmark.
const RTLD_NOW: c_int = 2;

extern "C" {
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlerror() -> *mut c_char;
}

/// A loaded MKL: its `cblas_sgemm` and its version line.
pub struct Mkl {
    sgemm: Sgemm,
    /// MKL's own version string, for the report's header.
    pub version: String,
}

/// The last `dlopen`/`dlsym` error as text.
fn last_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string that stays
    // valid until the next dl* call on this thread; it is copied at once.
    unsafe {
        let e = dlerror();
        if e.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

impl Mkl {
    /// Loads the library `MKL_RT` names; `None` when the variable is unset,
    /// an error when it names something that is not a usable MKL.
    pub fn from_env() -> Option<Result<Mkl, String>> {
        let path = std::env::var_os("MKL_RT")?;
        Some(Self::load(path.as_bytes()).map_err(|e| {
            format!(
                "MKL_RT={}: {e}",
                std::path::Path::new(&path).to_string_lossy()
            )
        }))
    }

    fn load(path: &[u8]) -> Result<Mkl, String> {
        let path = CString::new(path).map_err(|_| "a path with a NUL byte".to_string())?;
        // SAFETY: `path` is NUL-terminated. Loading runs the library's
        // initialisers, which is what loading MKL is for.
        let handle = unsafe { dlopen(path.as_ptr(), RTLD_NOW) };
        if handle.is_null() {
            return Err(last_error());
        }
        let symbol = |name: &CStr| {
            // SAFETY: `handle` is a live handle from dlopen (never closed)
            // and `name` is NUL-terminated.
            let p = unsafe { dlsym(handle, name.as_ptr()) };
            if p.is_null() {
                Err(format!("{}: {}", name.to_string_lossy(), last_error()))
            } else {
                Ok(p)
            }
        };
        let set_layer = symbol(c"MKL_Set_Threading_Layer")?;
        let version = symbol(c"mkl_get_version_string")?;
        let sgemm = symbol(c"cblas_sgemm")?;
        // SAFETY: the three symbols have these C signatures in MKL's
        // headers (`mkl_service.h`, `mkl_cblas.h`); the threading layer is
        // set before any other MKL call, as MKL requires.
        unsafe {
            let set_layer: unsafe extern "C" fn(c_int) -> c_int = std::mem::transmute(set_layer);
            set_layer(THREADING_SEQUENTIAL);
            let version_fn: unsafe extern "C" fn(*mut c_char, c_int) = std::mem::transmute(version);
            let mut text = [0 as c_char; 256];
            version_fn(text.as_mut_ptr(), text.len() as c_int - 1);
            let version = CStr::from_ptr(text.as_ptr())
                .to_string_lossy()
                .trim()
                .to_string();
            Ok(Mkl {
                sgemm: std::mem::transmute::<*mut c_void, Sgemm>(sgemm),
                version,
            })
        }
    }

    /// `C = op(A)·op(B)` for one benchmark shape.
    pub fn sgemm(&self, s: &Shape, a: &[f32], b: &[f32], c: &mut [f32]) {
        // SAFETY: `self.sgemm` is MKL's cblas_sgemm.
        unsafe { cblas::sgemm(self.sgemm, s, a, b, c) }
    }
}
