//! The one error type of this crate and the shape checks that produce it.

use core::fmt;

use crate::{Backend, Bf16Unit};

/// Why a routine refused its arguments. Nothing is written when a routine
/// returns an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelError {
    /// A slice has the wrong length for the shape implied by the others.
    LengthMismatch {
        /// The argument's name in the routine's signature.
        arg: &'static str,
        /// The length the shape needs.
        expected: usize,
        /// The length passed.
        actual: usize,
    },
    /// A shape or stride is inconsistent (e.g. a length that is not a whole
    /// number of rows, or a row stride shorter than the row).
    InvalidShape(&'static str),
    /// A scalar argument is out of its domain (e.g. an optimizer step of 0).
    InvalidArgument(&'static str),
    /// A shape's element count does not fit in `usize`.
    ShapeOverflow,
    /// A class index (e.g. a target token) is not below the number of classes.
    IndexOutOfRange {
        /// The row holding the bad index.
        row: usize,
        /// The index passed.
        index: usize,
        /// The number of classes.
        classes: usize,
    },
    /// The CPU or OS does not support the requested backend.
    UnsupportedBackend(Backend),
    /// The CPU, the OS or the handle's backend cannot run the requested bf16
    /// unit.
    UnsupportedBf16Unit(Bf16Unit),
    /// The CPU has AMX but the OS refused this process the tile data state
    /// (the error `arch_prctl` returned), so tile instructions would fault.
    AmxPermissionRefused(i64),
    /// A backend name that is none of `scalar`, `avx2`, `avx512`.
    UnknownBackend,
    /// A bf16 unit name that is none of `portable`, `avx512-bf16`, `amx`.
    UnknownBf16Unit,
    /// A caller-supplied workspace is smaller than the routine needs.
    WorkspaceTooSmall {
        /// Floats needed.
        needed: usize,
        /// Floats passed.
        actual: usize,
    },
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            KernelError::LengthMismatch {
                arg,
                expected,
                actual,
            } => write!(f, "`{arg}` has length {actual}, expected {expected}"),
            KernelError::InvalidShape(what) => write!(f, "invalid shape: {what}"),
            KernelError::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            KernelError::ShapeOverflow => f.write_str("shape overflows usize"),
            KernelError::IndexOutOfRange {
                row,
                index,
                classes,
            } => write!(f, "row {row}: index {index} is not below {classes}"),
            KernelError::UnsupportedBackend(b) => {
                write!(f, "backend `{b}` is not supported by this CPU")
            }
            KernelError::UnsupportedBf16Unit(u) => {
                write!(f, "bf16 unit `{u}` is not supported by this CPU or backend")
            }
            KernelError::AmxPermissionRefused(errno) => write!(
                f,
                "the CPU has AMX but the OS refused the tile data permission (arch_prctl returned {errno})"
            ),
            KernelError::UnknownBf16Unit => {
                f.write_str("unknown bf16 unit (expected portable, avx512-bf16 or amx)")
            }
            KernelError::UnknownBackend => {
                f.write_str("unknown backend (expected scalar, avx2 or avx512)")
            }
            KernelError::WorkspaceTooSmall { needed, actual } => {
                write!(f, "workspace holds {actual} floats, needs {needed}")
            }
        }
    }
}

impl core::error::Error for KernelError {}

/// `Ok` if `actual == expected`, else a [`KernelError::LengthMismatch`].
pub(crate) fn expect_len(
    arg: &'static str,
    actual: usize,
    expected: usize,
) -> Result<(), KernelError> {
    if actual == expected {
        Ok(())
    } else {
        Err(KernelError::LengthMismatch {
            arg,
            expected,
            actual,
        })
    }
}

/// The number of rows of a row-major matrix of `len` elements and `cols`
/// columns. Zero columns are only valid for an empty matrix.
pub(crate) fn rows_of(arg: &'static str, len: usize, cols: usize) -> Result<usize, KernelError> {
    if cols == 0 {
        return if len == 0 {
            Ok(0)
        } else {
            Err(KernelError::InvalidShape("zero columns but non-empty data"))
        };
    }
    if !len.is_multiple_of(cols) {
        return Err(KernelError::LengthMismatch {
            arg,
            expected: (len / cols + 1) * cols,
            actual: len,
        });
    }
    Ok(len / cols)
}

/// The minimum slice length holding `rows` rows of `cols` elements spaced
/// `stride` apart: `(rows - 1) * stride + cols`, or 0 when empty.
pub(crate) fn strided_len(rows: usize, cols: usize, stride: usize) -> Result<usize, KernelError> {
    if stride < cols && rows > 1 {
        return Err(KernelError::InvalidShape("row stride shorter than the row"));
    }
    if rows == 0 || cols == 0 {
        return Ok(0);
    }
    (rows - 1)
        .checked_mul(stride)
        .and_then(|n| n.checked_add(cols))
        .ok_or(KernelError::ShapeOverflow)
}
