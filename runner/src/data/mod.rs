//! Byte-level tokenization (every byte is a token, so any file round-trips
//! exactly), the embedded default corpus (`corpus`), and the train /
//! validation split with seeded random windows.

pub mod corpus;
pub mod prepare;
pub mod shards;
pub mod tokenizer;

pub use tokenizer::Tokenizer;

use std::path::Path;

use crate::error::Error;
use crate::rng::Rng;

/// The vocabulary of the byte-level tokenizer.
pub const VOCAB_SIZE: usize = 256;

/// Tokens of `bytes`: one per byte.
pub fn encode(bytes: &[u8]) -> Vec<u32> {
    bytes.iter().map(|&b| u32::from(b)).collect()
}

/// Bytes of `tokens` (each below 256).
pub fn decode(tokens: &[u32]) -> Vec<u8> {
    tokens.iter().map(|&t| t as u8).collect()
}

/// Reads a non-empty text file as tokens.
pub fn read_tokens(path: &Path) -> Result<Vec<u32>, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.is_empty() {
        return Err(Error::Data {
            path: path.into(),
            reason: "the file is empty".into(),
        });
    }
    Ok(encode(&bytes))
}

/// How logs and errors name the embedded corpus.
pub const EMBEDDED_NAME: &str = "embedded arithmetic corpus";

/// The tokens of the file at `path`, or of the embedded corpus.
pub fn tokens_of(path: Option<&Path>) -> Result<Vec<u32>, Error> {
    match path {
        Some(path) => read_tokens(path),
        None => Ok(encode(&corpus::text())),
    }
}

/// A text split 90 / 10 into training and validation tokens.
pub struct Dataset {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl Dataset {
    /// The file at `path` (or the embedded corpus) split for `block_size`.
    pub fn load(path: Option<&Path>, block_size: usize) -> Result<Dataset, Error> {
        let origin = path.map_or(format!("<{EMBEDDED_NAME}>").into(), Path::to_path_buf);
        Dataset::split(tokens_of(path)?, block_size, &origin)
    }

    /// The shortest text [`Dataset::split`] accepts for `block_size`.
    pub fn min_len(block_size: usize) -> usize {
        let mut n = (block_size + 1).max(20);
        while n - n / 10 < block_size + 1 {
            n += 1;
        }
        n
    }

    /// Splits `tokens` (from `origin`, named in errors): the first 90 % train,
    /// the rest validates. Training needs at least `block_size + 1` tokens,
    /// validation 2.
    pub fn split(tokens: Vec<u32>, block_size: usize, origin: &Path) -> Result<Dataset, Error> {
        if tokens.len() < Dataset::min_len(block_size) {
            return Err(Error::Data {
                path: origin.into(),
                reason: format!(
                    "{} bytes is too short for block size {block_size}: it needs at least {} (90 % for one training window of {} tokens, 10 % for 2 validation tokens)",
                    tokens.len(),
                    Dataset::min_len(block_size),
                    block_size + 1,
                ),
            });
        }
        let train_len = tokens.len() - tokens.len() / 10;
        let mut train = tokens;
        let val = train.split_off(train_len);
        Ok(Dataset { train, val })
    }
}

/// Fills `inputs` and `targets` (`b·t` each) with `b` random windows of
/// `t + 1` consecutive tokens of `tokens` (at least `t + 1` long): inputs
/// are tokens `0..t` of each window, targets `1..=t`.
pub fn sample_batch(
    tokens: &[u32],
    b: usize,
    t: usize,
    rng: &mut Rng,
    inputs: &mut [u32],
    targets: &mut [u32],
) {
    let starts = tokens.len() - t;
    for (inp, tgt) in inputs
        .chunks_exact_mut(t)
        .zip(targets.chunks_exact_mut(t))
        .take(b)
    {
        let start = rng.below(starts);
        inp.copy_from_slice(&tokens[start..start + t]);
        tgt.copy_from_slice(&tokens[start + 1..start + t + 1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_bytes_round_trip() {
        let bytes: Vec<u8> = (0..=255).chain([0, 10, 255]).collect();
        assert_eq!(decode(&encode(&bytes)), bytes);
    }

    #[test]
    fn windows_are_consecutive_and_shifted_by_one() {
        let tokens: Vec<u32> = (0..100).collect();
        let (mut x, mut y) = (vec![0; 12], vec![0; 12]);
        sample_batch(&tokens, 3, 4, &mut Rng::new(1), &mut x, &mut y);
        for (x, y) in x.chunks(4).zip(y.chunks(4)) {
            for i in 0..4 {
                assert_eq!(y[i], x[i] + 1);
                if i > 0 {
                    assert_eq!(x[i], x[i - 1] + 1);
                }
            }
        }
    }

    #[test]
    fn split_refuses_short_texts() {
        let origin = Path::new("x.txt");
        assert!(Dataset::split(encode(b"short"), 8, origin).is_err());
        let d = Dataset::split((0..100).collect(), 8, origin).unwrap();
        assert_eq!((d.train.len(), d.val.len()), (90, 10));
        // The stated minimum is exact: one token less is refused.
        for t in [1, 8, 17, 32, 100, 256] {
            let min = Dataset::min_len(t);
            let d = Dataset::split(vec![0; min], t, origin).unwrap();
            assert!(d.train.len() > t && d.val.len() >= 2, "t {t}");
            assert!(
                Dataset::split(vec![0; min - 1], t, origin).is_err(),
                "t {t}"
            );
        }
    }
}
