//! `runner prepare`: text files into token shards (`shards`), streamed
//! through bounded memory (GPT-2's tokens cut where its pre-tokenizer
//! always cuts; see `tokenize_file`). Each input file is one document;
//! with `gpt2` each starts with the end-of-text token, as llm.c's shards
//! do.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::shards::{ShardWriter, HEADER_BYTES};
use super::tokenizer::{gpt2_split_point, Tokenizer};
use crate::error::Error;
use crate::metrics::mib;
use crate::outputs;

/// What to prepare.
pub struct PrepareSettings {
    pub tokenizer: Tokenizer,
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    /// Shards are named `NAME_val_000000.bin`, `NAME_train_000001.bin`, ...
    pub name: String,
    /// Tokens of shard 0, the validation split.
    pub val_tokens: usize,
    /// Tokens per training shard.
    pub shard_tokens: usize,
    /// Bytes read and tokenized at a time (more when a line is longer).
    pub chunk_bytes: usize,
}

/// What was written.
pub struct PrepareReport {
    pub bytes: u64,
    pub tokens: usize,
    /// Tokens of each shard, validation first.
    pub shards: Vec<usize>,
    pub seconds: f64,
}

/// Tokenizes the inputs into shards. Every input and the output are
/// checked first; then `started(total bytes)` is called, and
/// `progress(bytes)` as input bytes are done: an error it returns (an
/// interrupt) stops the run, which removes what it made. The shards' size
/// is known after the first chunk (exactly with the byte tokenizer, which
/// refuses a run the disk cannot hold there; GPT-2's estimate is a
/// warning).
pub fn prepare(
    s: &PrepareSettings,
    started: impl FnOnce(u64),
    mut progress: impl FnMut(u64) -> Result<(), Error>,
) -> Result<PrepareReport, Error> {
    let start = Instant::now();
    let mut total = 0;
    // A file of the kernel's (`/proc`) says 0 bytes and holds some.
    let mut sizes_known = true;
    let mut seen = std::collections::HashSet::new();
    // Warned of once the run is accepted: a refused run prints its error
    // line alone.
    let mut repeated = Vec::new();
    for input in &s.inputs {
        if let Ok(path) = input.canonicalize() {
            if !seen.insert(path) {
                repeated.push(input);
            }
        }
        let refuse = |reason: &str| {
            Err(Error::Data {
                path: input.clone(),
                reason: reason.into(),
            })
        };
        let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
        if !meta.is_file() {
            return refuse("not a regular file");
        }
        if meta.len() == 0 {
            if !super::has_a_byte(input)? {
                return refuse("the file is empty");
            }
            sizes_known = false;
        }
        File::open(input).map_err(|e| Error::io(input, e))?;
        super::check_not_a_shard(input, "it is tokenized already; train on it with --data")?;
        total += meta.len();
    }
    ShardWriter::check_sizes(s.val_tokens, s.shard_tokens)?;
    // The output, or the nearest of its folders that exists, must be a
    // folder.
    if let Some(existing) = s.output.ancestors().find(|a| a.exists()) {
        if !existing.is_dir() {
            return Err(Error::Config(format!(
                "--output {}: {} exists and is not a folder",
                s.output.display(),
                existing.display()
            )));
        }
    }
    // A token is at least one byte, plus an end-of-text per input where
    // the tokenizer has one: at most this many tokens (exactly, for bytes),
    // so a --val-tokens that takes them all is refused before any is made
    // (where the sizes are known; else once the tokens are counted).
    let ends = if s.tokenizer.end_of_text().is_some() {
        s.inputs.len()
    } else {
        0
    };
    let most = total.saturating_add(ends as u64);
    if sizes_known && s.val_tokens as u64 >= most {
        return Err(Error::Config(format!(
            "the inputs give at most {most} tokens, none left for training after the {} of validation; lower --val-tokens",
            s.val_tokens
        )));
    }
    // The folders this run makes, from the outermost, each recorded so
    // that a failed run removes them again (when empty), innermost first.
    let mut made: Vec<&Path> = Vec::new();
    let remove_new_folders = |made: &[&Path]| {
        for dir in made.iter().rev() {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
    };
    // Rebuilt from its components: `new/.` has no `new` among its
    // ancestors otherwise.
    let output: PathBuf = s.output.components().collect();
    let levels: Vec<&Path> = output.ancestors().collect();
    for dir in levels
        .into_iter()
        .rev()
        .filter(|d| !d.as_os_str().is_empty())
    {
        match std::fs::create_dir(dir) {
            Ok(()) => made.push(dir),
            // `a/..` and `a/.` exist once `a` does.
            Err(_) if dir.is_dir() => {}
            Err(e) => {
                remove_new_folders(&made);
                return Err(Error::io(dir, e));
            }
        }
    }
    let remove_new_folders = || remove_new_folders(&made);
    let mut writer = match ShardWriter::new(
        &s.output,
        &s.name,
        s.tokenizer,
        s.val_tokens,
        s.shard_tokens,
    ) {
        Ok(writer) => writer,
        Err(e) => {
            remove_new_folders();
            return Err(e);
        }
    };
    for input in repeated {
        log::warn!(
            "{} is given more than once: its tokens are written each time",
            input.display()
        );
    }
    started(total);
    let mut bytes = 0u64;
    let mut tokenize_all = || {
        for input in &s.inputs {
            if let Some(eot) = s.tokenizer.end_of_text() {
                writer.write(&[eot])?;
            }
            tokenize_file(input, s.tokenizer, s.chunk_bytes.max(1), |part, tokens| {
                let first = bytes == 0;
                bytes += part as u64;
                progress(bytes)?;
                // (Sizes the files do not tell give no estimate: the
                // disk's room is then found when it runs out.)
                if first && sizes_known {
                    let estimate = estimated_tokens(total, part, tokens.len(), ends);
                    check_room(
                        &s.output,
                        s.tokenizer,
                        estimate,
                        s.val_tokens,
                        s.shard_tokens,
                    )?;
                }
                writer.write(&tokens)
            })?;
        }
        match writer.written() {
            n if n <= s.val_tokens => Err(Error::Config(format!(
                "the inputs give {n} tokens, none left for training after the {} of validation; lower --val-tokens",
                s.val_tokens
            ))),
            _ => writer.finish(),
        }
    };
    let shards = match tokenize_all() {
        Ok(shards) => shards,
        Err(e) => {
            // Nothing half-made is left to be mistaken for a data set; the
            // error that stopped the run is the one to report.
            if let Err(cleanup) = writer.discard() {
                log::warn!("could not remove the partial shards: {cleanup}");
            }
            remove_new_folders();
            return Err(e);
        }
    };
    let tokens = writer.written();
    Ok(PrepareReport {
        bytes,
        tokens,
        shards,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The tokens of `total` input bytes, of which the first `part` gave
/// `tokens`, plus `ends` end-of-text tokens: exact for the byte tokenizer
/// (a token a byte), an estimate at that rate for GPT-2's.
fn estimated_tokens(total: u64, part: usize, tokens: usize, ends: usize) -> u64 {
    let rate = tokens as f64 / part.max(1) as f64;
    (total as f64 * rate).ceil() as u64 + ends as u64
}

/// Refuses shards of `tokens` tokens that the file system of `output`
/// has no room for, before they fill it (a header per shard and two bytes
/// a token). Only the byte tokenizer's count is exact: for GPT-2's, an
/// estimate from a first chunk (a small file of code before a large one
/// of prose) can be several times too large, so it is a warning there.
fn check_room(
    output: &Path,
    tokenizer: Tokenizer,
    tokens: u64,
    val_tokens: usize,
    shard_tokens: usize,
) -> Result<(), Error> {
    let train = tokens.saturating_sub(val_tokens as u64);
    let shards = 1 + train.div_ceil(shard_tokens.max(1) as u64);
    let bytes = tokens
        .saturating_mul(2)
        .saturating_add(shards.saturating_mul(HEADER_BYTES as u64));
    let Some(lack) = outputs::lacks_room(output, bytes) else {
        return Ok(());
    };
    let size = mib(bytes as f64);
    match tokenizer {
        Tokenizer::Byte => Err(Error::Config(format!(
            "the shards take {size:.1} MiB ({tokens} tokens), but {lack}"
        ))),
        Tokenizer::Gpt2 => {
            log::warn!(
                "the shards may take about {size:.1} MiB (about {tokens} tokens at the first chunk's rate), but {lack}"
            );
            Ok(())
        }
    }
}

/// Reads `path` in chunks of about `chunk` bytes and hands each chunk's
/// length and tokens to `emit`, in order. With GPT-2's tokenizer chunks
/// end where its pre-tokenizer always cuts ([`gpt2_split_point`]: after a line
/// break with a non-space on each side, failing that before a space
/// between words), so the tokens are those of the whole file; a file with
/// no such cut in [`max_uncut`] bytes is refused. Bytes are tokens of
/// their own, so those chunks end anywhere.
fn tokenize_file(
    path: &Path,
    tokenizer: Tokenizer,
    chunk: usize,
    mut emit: impl FnMut(usize, Vec<u32>) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buffer: Vec<u8> = Vec::new();
    let mut done = false;
    while !done {
        let before = buffer.len();
        buffer.resize(before + chunk, 0);
        let read = read_full(&mut file, &mut buffer[before..]).map_err(|e| Error::io(path, e))?;
        buffer.truncate(before + read);
        done = read == 0;
        let cut = match tokenizer {
            _ if done => Some(buffer.len()),
            Tokenizer::Byte => Some(buffer.len()),
            // The bytes before `before` hold no cut (else the last one
            // would have been taken): only the new ones are searched.
            Tokenizer::Gpt2 => gpt2_split_point(&buffer, before),
        };
        if cut.is_none() && buffer.len() >= max_uncut(chunk) {
            return Err(Error::Data {
                path: path.into(),
                reason: format!(
                    "{} bytes without a line break or a space between words: GPT-2's tokenizer would have to read it whole; use --tokenizer byte",
                    buffer.len()
                ),
            });
        }
        if let Some(cut) = cut.filter(|&c| c > 0) {
            emit(cut, tokenizer.encode(&buffer[..cut]))?;
            buffer.drain(..cut);
        }
    }
    Ok(())
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Bytes a text may pile up, for want of a place to cut it, before it is
/// refused rather than read whole: 16 chunks, and at least 1 MiB.
fn max_uncut(chunk: usize) -> usize {
    chunk.saturating_mul(16).max(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run stopped by its progress callback (as Ctrl-C stops it) leaves
    /// neither a shard nor a folder it made; the byte tokenizer's size is
    /// exact, and one that no disk holds is refused.
    #[test]
    fn a_stopped_run_leaves_nothing_and_the_size_is_checked() {
        let dir = std::env::temp_dir().join(format!("runner-prepare-stop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("t.txt");
        std::fs::write(&input, b"to be or not to be\n".repeat(1000)).unwrap();
        let settings = PrepareSettings {
            tokenizer: Tokenizer::Byte,
            inputs: vec![input],
            output: dir.join("new/shards"),
            name: "t".into(),
            val_tokens: 100,
            shard_tokens: 1000,
            chunk_bytes: 1000,
        };
        let mut calls = 0;
        let stopped = prepare(
            &settings,
            |_| {},
            |_| {
                calls += 1;
                match calls {
                    3 => Err(Error::Interrupted("stopped".to_string())),
                    _ => Ok(()),
                }
            },
        );
        assert!(matches!(stopped, Err(Error::Interrupted(_))));
        assert!(!dir.join("new").exists());
        let done = prepare(&settings, |_| {}, |_| Ok(())).unwrap();
        assert_eq!(done.tokens, 19_000);

        let room = |tokenizer, tokens| check_room(&dir, tokenizer, tokens, 100, 1000);
        room(Tokenizer::Byte, 19_000).unwrap();
        // GPT-2's count is an estimate: only warned of.
        room(Tokenizer::Gpt2, u64::MAX / 4).unwrap();
        if cfg!(unix) {
            let err = room(Tokenizer::Byte, u64::MAX / 4).unwrap_err().to_string();
            assert!(err.contains("MiB is free in"), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A kernel's file (`/proc`) says 0 bytes but holds some: it is read,
    /// and --val-tokens is checked against its tokens, not its size.
    #[test]
    fn a_file_that_says_it_is_empty_but_is_not_is_read() {
        let input = PathBuf::from("/proc/self/status");
        if !std::fs::metadata(&input).is_ok_and(|m| m.len() == 0) {
            println!("skipped: no /proc/self/status of size 0 here");
            return;
        }
        let dir = std::env::temp_dir().join(format!("runner-prepare-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let settings = |val_tokens| PrepareSettings {
            tokenizer: Tokenizer::Byte,
            inputs: vec![input.clone()],
            output: dir.clone(),
            name: "status".into(),
            val_tokens,
            shard_tokens: 1 << 20,
            chunk_bytes: 1 << 20,
        };
        let done = prepare(&settings(10), |_| {}, |_| Ok(())).unwrap();
        assert!(done.tokens > 10, "{}", done.tokens);
        std::fs::remove_dir_all(&dir).unwrap();
        let Err(err) = prepare(&settings(1 << 20), |_| {}, |_| Ok(())) else {
            panic!("all tokens taken for validation, and accepted");
        };
        let err = err.to_string();
        assert!(err.contains("tokens, none left for training"), "{err}");
        assert!(!err.contains("at most"), "{err}");
        assert!(!dir.exists());
    }

    #[test]
    fn chunked_tokens_are_the_whole_file_s() {
        let text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n  Speak, speak.\n\n\nFirst Citizen:\tYou are all resolved rather to die than to famish?\n's 'll\n日本語\n🙂x\n \nWindows:\r\nline\r\n\r\nbreaks.\r\n \r\n\r\r\nno break a \u{a0}b c\u{a0} d e \u{3000}f 2 3 . , it's x 'll\n\u{a0}y z\u{a0}\nw\n\u{a0} y\u{3000}\n\u{2029}v\n".repeat(7);
        let dir = std::env::temp_dir().join(format!("runner-prepare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.txt");
        std::fs::write(&path, &text).unwrap();
        for tokenizer in [Tokenizer::Gpt2, Tokenizer::Byte] {
            let whole = tokenizer.encode(text.as_bytes());
            for chunk in [1, 7, 64, 1000, 1 << 20] {
                let (mut tokens, mut bytes) = (Vec::new(), 0);
                tokenize_file(&path, tokenizer, chunk, |n, t| {
                    bytes += n;
                    tokens.extend(t);
                    Ok(())
                })
                .unwrap();
                assert_eq!(bytes, text.len());
                assert_eq!(tokens, whole, "{tokenizer:?}, chunks of {chunk}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn text_without_line_breaks_is_cut_at_spaces_or_refused() {
        let dir = std::env::temp_dir().join(format!("runner-nobreak-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.txt");
        let text = "words, and no line break at all; ".repeat(200);
        std::fs::write(&path, &text).unwrap();
        let (mut largest, mut tokens) = (0, Vec::new());
        tokenize_file(&path, Tokenizer::Gpt2, 64, |n, t| {
            largest = largest.max(n);
            tokens.extend(t);
            Ok(())
        })
        .unwrap();
        assert!(largest < 64 + 16, "{largest}");
        assert_eq!(tokens, Tokenizer::Gpt2.encode(text.as_bytes()));
        // No space nor line break: refused once the chunks run out, not
        // read whole.
        std::fs::write(&path, "x".repeat(max_uncut(64) + 1)).unwrap();
        let err = tokenize_file(&path, Tokenizer::Gpt2, 64, |_, _| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("without a line break or a space"), "{err}");
        // Double spaces offer no cut, so the search walks a whole chunk
        // back, looking at every space (each in constant time: this took
        // minutes when it was not).
        let text = "x  ".repeat(350_000);
        std::fs::write(&path, &text).unwrap();
        let mut tokens = Vec::new();
        tokenize_file(&path, Tokenizer::Gpt2, 1 << 20, |_, t| {
            tokens.extend(t);
            Ok(())
        })
        .unwrap();
        assert_eq!(tokens, Tokenizer::Gpt2.encode(text.as_bytes()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn windows_line_breaks_still_cut_a_file_into_chunks() {
        let line = "A line of text, ended the Windows way.\r\n";
        let text = line.repeat(500);
        let dir = std::env::temp_dir().join(format!("runner-crlf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.txt");
        std::fs::write(&path, &text).unwrap();
        for tokenizer in [Tokenizer::Gpt2, Tokenizer::Byte] {
            let (mut largest, mut tokens) = (0, Vec::new());
            tokenize_file(&path, tokenizer, 256, |n, t| {
                largest = largest.max(n);
                tokens.extend(t);
                Ok(())
            })
            .unwrap();
            // Each chunk is what was read plus less than a line kept over.
            assert!(largest < 256 + line.len(), "{tokenizer:?}: {largest}");
            assert_eq!(tokens, tokenizer.encode(text.as_bytes()));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn chunked_shakespeare_is_tokenized_as_a_whole() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/tinyshakespeare.txt");
        let Ok(text) = std::fs::read(&path) else {
            println!(
                "notice: {} is absent; the check on real text is skipped",
                path.display()
            );
            return;
        };
        let whole = Tokenizer::Gpt2.encode(&text);
        let mut tokens = Vec::new();
        tokenize_file(&path, Tokenizer::Gpt2, 4096, |_, t| {
            tokens.extend(t);
            Ok(())
        })
        .unwrap();
        assert_eq!(tokens, whole);
    }
}
