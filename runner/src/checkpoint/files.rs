//! Reading and decoding checkpoint files, and the one way a checkpoint
//! error is made.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use safetensors::SafeTensors;

use crate::error::Error;

/// The bytes of `file` in the checkpoint `dir`.
pub fn read(dir: &Path, file: &str) -> Result<Vec<u8>, Error> {
    let path = dir.join(file);
    fs::read(&path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => corrupt(dir, format!("{file} is missing")),
        _ => Error::io(path, e),
    })
}

/// The parsed `file` of the checkpoint `dir`. The header's tensors cover
/// the file exactly (safetensors checks it), so tensors checked against it
/// are bounded by the file's size.
pub fn parse<'a>(dir: &Path, file: &str, bytes: &'a [u8]) -> Result<SafeTensors<'a>, Error> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| corrupt(dir, format!("{file} is corrupt or truncated: {e}")))
}

/// A checkpoint error: `dir`, and what is wrong with it.
pub fn corrupt(dir: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: dir.into(),
        reason: reason.into(),
    }
}

/// Little-endian bytes of `x`.
pub fn to_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Fills `out` from little-endian bytes.
pub fn from_bytes(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}
