//! Reading and decoding checkpoint files, and the one way a checkpoint
//! error is made.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::Path;

use safetensors::tensor::{Dtype, Metadata};

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

/// The bytes of the small `file` (`config.json`) of the checkpoint
/// `dir`, refused unread past `most` bytes: a file grown by mistake would
/// otherwise be read whole into memory before it showed itself wrong.
pub fn read(dir: &Path, file: &str, most: u64) -> Result<Vec<u8>, Error> {
    let f = open(dir, file)?;
    let size = f
        .metadata()
        .map_err(|e| Error::io(dir.join(file), e))?
        .len();
    let too_large = |size: u64| {
        Error::checkpoint(
            dir,
            format!("{file} is {size} bytes, more than the {most} such a file takes"),
        )
    };
    if size > most {
        return Err(too_large(size));
    }
    let mut bytes = Vec::new();
    // `take`: the file may grow while it is read.
    f.take(most.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(dir.join(file), e))?;
    if bytes.len() as u64 > most {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// A safetensors file opened to be read tensor by tensor: its header
/// parsed and checked against the file's size when opened, each tensor
/// then read straight into the caller's buffer, so that loading a
/// checkpoint never holds the file beside the model (GPT-2's weights
/// would take 500 MB twice).
pub struct TensorFile<'a> {
    dir: &'a Path,
    name: &'a str,
    file: fs::File,
    header: Metadata,
    /// The tensors' names, in the order of their data.
    names: Vec<String>,
    /// Bytes read before they are converted, reused by every read.
    buffer: Vec<u8>,
    /// Where the tensors' data starts: after the 8-byte length and the
    /// header.
    data_start: u64,
}

impl<'a> TensorFile<'a> {
    /// The safetensors file `name` of the checkpoint `dir`, a sound one
    /// holding about `tensors` tensors, its header checked (no longer
    /// than such a file's, [`header_bound`]; tensors laid end to end,
    /// each as long as its type and shape say, covering the file exactly)
    /// before any tensor is read: cheap enough to check a checkpoint
    /// before any long work, whatever its size.
    pub fn open(dir: &'a Path, name: &'a str, tensors: usize) -> Result<TensorFile<'a>, Error> {
        let bad = |reason: String| corrupt(dir, name, reason);
        let mut file = open(dir, name)?;
        let size = file
            .metadata()
            .map_err(|e| Error::io(dir.join(name), e))?
            .len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .map_err(|_| bad("too short for a safetensors header".into()))?;
        let len = u64::from_le_bytes(len);
        if len > size.saturating_sub(8) {
            return Err(bad(format!(
                "a header of {len} bytes in a file of {size} bytes"
            )));
        }
        let most = header_bound(tensors);
        if len > most {
            return Err(bad(format!(
                "a header of {len} bytes, more than the {most} of a file of {tensors} tensors"
            )));
        }
        let mut text = vec![0u8; len as usize];
        file.read_exact(&mut text)
            .map_err(|_| bad("truncated inside its header".into()))?;
        // Deserializing checks the offsets against the types and shapes.
        let header: Metadata =
            serde_json::from_slice(&text).map_err(|e| bad(format!("header: {e}")))?;
        let data_start = 8 + len;
        let described = data_start.saturating_add(header.data_len() as u64);
        if described != size {
            return Err(bad(format!(
                "its header describes {described} bytes, the file holds {size}"
            )));
        }
        let names = header.offset_keys();
        Ok(TensorFile {
            dir,
            name,
            file,
            header,
            names,
            buffer: Vec::new(),
            data_start,
        })
    }

    /// The type and shape of the tensor `name`, if the file holds it.
    pub fn tensor(&self, name: &str) -> Option<(Dtype, &[usize])> {
        let info = self.header.info(name)?;
        Some((info.dtype, &info.shape))
    }

    /// The names of the tensors the file holds, in the order of their data.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The header's `__metadata__` (empty where it has none).
    pub fn metadata(&self) -> HashMap<String, String> {
        self.header.metadata().clone().unwrap_or_default()
    }

    /// Fills `out` with the elements of the tensor `name` from the
    /// `first` on, converted exactly to f32 (a tensor of another type than
    /// F32, BF16 or F16 is refused), reading a few MiB at a time.
    pub fn read_floats(&mut self, name: &str, first: usize, out: &mut [f32]) -> Result<(), Error> {
        let bad = |reason: String| corrupt(self.dir, self.name, reason);
        let Some(info) = self.header.info(name) else {
            return Err(bad(format!("lacks tensor {name}")));
        };
        let (dtype, (start, end)) = (info.dtype, info.data_offsets);
        let width = match dtype {
            Dtype::F32 => 4,
            Dtype::BF16 | Dtype::F16 => 2,
            _ => return Err(bad(format!("tensor {name} is {dtype:?}, not a float"))),
        };
        let from = start.checked_add(first.saturating_mul(width));
        let to = from.and_then(|from| from.checked_add(out.len().checked_mul(width)?));
        let (Some(from), Some(to)) = (from, to.filter(|&to| to <= end)) else {
            return Err(bad(format!("tensor {name} is shorter than read")));
        };
        let path = self.dir.join(self.name);
        self.file
            .seek(SeekFrom::Start(self.data_start + from as u64))
            .map_err(|e| Error::io(&path, e))?;
        let (file, buffer) = (&mut self.file, &mut self.buffer);
        buffer.resize(buffer.len().max(READ_CHUNK_BYTES.min(to - from)), 0);
        for chunk in out.chunks_mut(READ_CHUNK_BYTES / width) {
            let bytes = &mut buffer[..chunk.len() * width];
            // Its size was checked when opened: only a file changed since
            // ends early.
            file.read_exact(bytes).map_err(|e| match e.kind() {
                ErrorKind::UnexpectedEof => bad(format!("it ends inside tensor {name}")),
                _ => Error::io(&path, e),
            })?;
            floats_from(dtype, bytes, chunk);
        }
        Ok(())
    }
}

/// The one error for a checkpoint file that does not hold what it says.
fn corrupt(dir: &Path, file: &str, reason: String) -> Error {
    Error::checkpoint(dir, format!("{file} is corrupt or truncated: {reason}"))
}

/// How much of a tensor [`TensorFile::read_floats`] reads at a time.
const READ_CHUNK_BYTES: usize = 4 << 20;

/// The longest header [`TensorFile::open`] parses for a file of
/// `tensors` tensors. An entry (a name, a type, a shape, two offsets)
/// takes about 100 bytes: 4 KiB each, and 1 MiB for the metadata and the
/// tensors a file holds beside the model's (Hugging Face's GPT-2 files
/// hold each layer's attention mask), leave room for any sound file.
/// Parsing builds a tree of tens of bytes per JSON value first: a header
/// of 100 MB (safetensors' own bound) listing one shape's zeros took 2 GB
/// before it was refused.
fn header_bound(tensors: usize) -> u64 {
    let per_tensor = (tensors as u64).saturating_mul(4 << 10);
    per_tensor.saturating_add(1 << 20).min(100_000_000)
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

/// Fills `out` from little-endian values of `dtype` (F32, BF16 or F16),
/// converted exactly to f32.
fn floats_from(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
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
        _ => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
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
    use safetensors::tensor::TensorView;

    /// A safetensors file in a fresh directory: an f32 tensor longer than
    /// one read, and a bf16 one.
    fn tensor_file(name: &str, long: &[f32], halves: &[u16]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("runner-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let long_bytes = to_bytes(long);
        let half_bytes: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
        let views = [
            (
                "long",
                TensorView::new(Dtype::F32, vec![long.len()], &long_bytes).unwrap(),
            ),
            (
                "half",
                TensorView::new(Dtype::BF16, vec![halves.len()], &half_bytes).unwrap(),
            ),
        ];
        safetensors::serialize_to_file(views, None, &dir.join("t.safetensors")).unwrap();
        dir
    }

    #[test]
    fn tensors_are_read_in_pieces_from_anywhere_in_them() {
        // Past one read of 4 MiB, and not a whole number of them.
        let long: Vec<f32> = (0..(READ_CHUNK_BYTES / 4 * 2 + 7))
            .map(|i| i as f32)
            .collect();
        let dir = tensor_file("tensor-file", &long, &[0x3f80, 0xc000, 0x7fc0]);
        let mut file = TensorFile::open(&dir, "t.safetensors", 2).unwrap();
        assert_eq!(file.names(), ["long", "half"]);
        assert_eq!(file.tensor("half"), Some((Dtype::BF16, &[3usize][..])));
        let mut all = vec![f32::NAN; long.len()];
        file.read_floats("long", 0, &mut all).unwrap();
        assert_eq!(all, long);
        let mut middle = vec![f32::NAN; READ_CHUNK_BYTES / 4 + 3];
        file.read_floats("long", 5, &mut middle).unwrap();
        assert_eq!(middle, long[5..5 + middle.len()]);
        let mut half = [f32::NAN; 2];
        file.read_floats("half", 0, &mut half).unwrap();
        assert_eq!(half, [1.0, -2.0]);
        // Past a tensor's end, or a tensor the file lacks: refused.
        let past = file.read_floats("half", 2, &mut half).unwrap_err();
        assert!(past.to_string().contains("shorter than read"), "{past}");
        assert!(file.read_floats("none", 0, &mut half).is_err());

        // Cut short after it was opened: the read says where it ended.
        let path = dir.join("t.safetensors");
        let size = fs::metadata(&path).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(size - 100)
            .unwrap();
        let cut = file.read_floats("half", 0, &mut half).unwrap_err();
        assert!(cut.to_string().contains("ends inside tensor half"), "{cut}");
        // And opened again, refused before any tensor is read.
        let refused = TensorFile::open(&dir, "t.safetensors", 2)
            .err()
            .unwrap()
            .to_string();
        let holds = format!("describes {size} bytes, the file holds {}", size - 100);
        assert!(refused.contains(&holds), "{refused}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_header_longer_than_its_tensors_take_is_refused_unparsed() {
        let dir = std::env::temp_dir().join(format!("runner-header-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // An empty header (no tensors, valid JSON) padded past the bound
        // for two tensors.
        let len = header_bound(2) + 1;
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend(b"{}");
        bytes.resize(8 + len as usize, b' ');
        fs::write(dir.join("t.safetensors"), bytes).unwrap();
        let refused = TensorFile::open(&dir, "t.safetensors", 2)
            .err()
            .unwrap()
            .to_string();
        let more = format!("a header of {len} bytes, more than the {}", len - 1);
        assert!(refused.contains(&more), "{refused}");
        // Within the bound of a file of more tensors, it is read.
        let file = TensorFile::open(&dir, "t.safetensors", 3).unwrap();
        assert!(file.names().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

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
