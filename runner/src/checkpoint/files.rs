//! Reading and decoding checkpoint files, and the one way a checkpoint
//! error is made.

use std::borrow::Cow;
use std::fs;
use std::io::{ErrorKind, Read};
use std::path::Path;

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

use crate::error::Error;

/// `file` in the checkpoint `dir`, opened for reading. Only a regular
/// file is opened: a named pipe nobody writes would block the open, a
/// device such as `/dev/zero` never end.
pub fn open(dir: &Path, file: &str) -> Result<fs::File, Error> {
    let path = dir.join(file);
    let missing_or = |e: std::io::Error| match e.kind() {
        ErrorKind::NotFound => Error::checkpoint(dir, format!("{file} is missing")),
        _ => Error::io(&path, e),
    };
    if !fs::metadata(&path).map_err(missing_or)?.is_file() {
        return Err(Error::checkpoint(
            dir,
            format!("{file} is not a regular file"),
        ));
    }
    fs::File::open(&path).map_err(missing_or)
}

/// The bytes of `file` in the checkpoint `dir`, refused unread past
/// `most` bytes (what the file can hold for the model at hand): a file
/// grown by mistake would otherwise be read whole into memory before its
/// header showed it wrong.
pub fn read(dir: &Path, file: &str, most: u64) -> Result<Vec<u8>, Error> {
    let f = open(dir, file)?;
    let size = f
        .metadata()
        .map_err(|e| Error::io(dir.join(file), e))?
        .len();
    let too_large = |size: u64| {
        Error::checkpoint(
            dir,
            format!("{file} is {size} bytes, more than the {most} it can hold for this model"),
        )
    };
    if size > most {
        return Err(too_large(size));
    }
    // Sized once: grown by doubling, the buffer would map up to twice
    // the file (the memory check counts it once).
    let mut bytes = Vec::new();
    let room = usize::try_from(size).map_or(usize::MAX, |size| size.saturating_add(1));
    bytes.try_reserve_exact(room).map_err(|_| {
        Error::checkpoint(dir, format!("{file} ({size} bytes) does not fit in memory"))
    })?;
    // `take`: the file may grow while it is read.
    f.take(most.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(dir.join(file), e))?;
    if bytes.len() as u64 > most {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The most bytes a safetensors file of `floats` parameters in f32 takes,
/// with room for a header and tensors the loader ignores (Hugging Face's
/// older GPT-2 files carry each layer's attention mask, 4 MiB a layer at
/// T 1024): twice the weights and 64 MiB.
pub fn safetensors_bound(floats: usize) -> u64 {
    (floats as u64).saturating_mul(8).saturating_add(64 << 20)
}

/// The JSON header of the safetensors `file` in the checkpoint `dir` (its
/// tensors' names, types, shapes and `__metadata__`), read alone: cheap
/// enough to check a checkpoint before any long work, whatever its size.
/// [`parse`] checks the rest.
pub fn header(dir: &Path, file: &str) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
    let bad = |reason: String| {
        Error::checkpoint(dir, format!("{file} is corrupt or truncated: {reason}"))
    };
    let mut f = open(dir, file)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad("too short for a safetensors header".into()))?;
    let len = u64::from_le_bytes(len);
    let size = f
        .metadata()
        .map_err(|e| Error::io(dir.join(file), e))?
        .len();
    if len > size - 8 {
        return Err(bad(format!(
            "a header of {len} bytes in a file of {size} bytes"
        )));
    }
    if len > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "a header of {len} bytes is not a safetensors header"
        )));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|_| bad("truncated inside its header".into()))?;
    match serde_json::from_slice(&header) {
        Ok(serde_json::Value::Object(header)) => Ok(header),
        Ok(_) => Err(bad("its header is not a JSON object".into())),
        Err(e) => Err(bad(format!("header: {e}"))),
    }
}

/// safetensors' own bound on a header.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The parsed `file` of the checkpoint `dir`. The header's tensors cover
/// the file exactly (safetensors checks it), so tensors checked against it
/// are bounded by the file's size.
pub fn parse<'a>(dir: &Path, file: &str, bytes: &'a [u8]) -> Result<SafeTensors<'a>, Error> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| Error::checkpoint(dir, format!("{file} is corrupt or truncated: {e}")))
}

/// Little-endian bytes of `x`: `x`'s own memory on a little-endian CPU,
/// so that saving a model does not hold a second copy of it.
pub fn to_bytes(x: &[f32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        Cow::Borrowed(bytemuck::cast_slice(x))
    } else {
        Cow::Owned(x.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// Fills `out` from little-endian bytes.
pub fn from_bytes(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// Fills `out` from little-endian values of `dtype` (F32, BF16 or F16; the
/// caller checked which), converted exactly to f32.
pub fn floats_from(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
    let halves = || {
        bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    match dtype {
        Dtype::BF16 => {
            for (o, h) in out.iter_mut().zip(halves()) {
                *o = f32::from_bits(u32::from(h) << 16);
            }
        }
        Dtype::F16 => {
            for (o, h) in out.iter_mut().zip(halves()) {
                *o = f16_to_f32(h);
            }
        }
        _ => from_bytes(bytes, out),
    }
}

/// IEEE half precision to f32 (every half is exactly an f32).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let (exp, mantissa) = (u32::from(h >> 10) & 0x1f, u32::from(h & 0x3ff));
    let bits = match exp {
        // Zero or subnormal: mantissa · 2^-24.
        0 => {
            let magnitude = mantissa as f32 * 2f32.powi(-24);
            return if sign == 0 { magnitude } else { -magnitude };
        }
        // Infinity or NaN.
        0x1f => sign | 0x7f80_0000 | mantissa << 13,
        _ => sign | (exp + 112) << 23 | mantissa << 13,
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_convert_exactly() {
        let cases: [(u16, f32); 8] = [
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x7bff, 65504.0),
            (0x0001, 5.960_464_5e-8),
            (0x8000, -0.0),
            (0x7c00, f32::INFINITY),
            (0xfc00, f32::NEG_INFINITY),
        ];
        for (h, x) in cases {
            assert_eq!(f16_to_f32(h).to_bits(), x.to_bits(), "{h:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
        let mut out = [0.0; 2];
        floats_from(Dtype::BF16, &[0x80, 0x3f, 0x00, 0xc0], &mut out);
        assert_eq!(out, [1.0, -2.0]);
    }
}
