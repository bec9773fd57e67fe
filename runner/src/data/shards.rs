//! Token shards in llm.c's format, so that data prepared by either tool
//! trains with the other: a header of 256 little-endian `i32` (`[0]` the
//! magic 20240520, `[1]` the version 1, `[2]` the token count, `[3]` the
//! vocabulary of the tokenizer that wrote them, the rest 0) followed by
//! that many little-endian `u16` tokens. llm.c leaves `[3]` 0 and ignores
//! it; where it is set, a model of another tokenizer is refused the
//! shard (byte ids are valid GPT-2 ids that spell another text). Shard 0
//! (`NAME_val_000000.bin`) holds validation tokens, the others
//! (`NAME_train_000001.bin`, ...) training tokens.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::data::tokenizer::Tokenizer;
use crate::error::Error;

/// `header[0]` of every shard.
pub const SHARD_MAGIC: i32 = 20240520;
/// `header[1]`: the version of the format.
pub const SHARD_VERSION: i32 = 1;
/// Bytes of the header (256 `i32`).
pub const HEADER_BYTES: usize = 256 * 4;
/// The header's `i32` that holds the writer's tokenizer vocabulary (0: not
/// recorded).
const TOKENIZER_VOCAB: usize = 3;

/// The header of a shard of `count` tokens of `tokenizer`.
fn header(count: usize, tokenizer: Tokenizer) -> Result<[u8; HEADER_BYTES], Error> {
    let count = i32::try_from(count).map_err(|_| {
        Error::Config(format!(
            "a shard of {count} tokens does not fit the i32 count of its header"
        ))
    })?;
    let vocab = i32::try_from(tokenizer.vocab_size()).expect("a vocabulary below 2^31");
    let mut bytes = [0u8; HEADER_BYTES];
    let values = [SHARD_MAGIC, SHARD_VERSION, count, vocab];
    debug_assert_eq!(values.len(), TOKENIZER_VOCAB + 1);
    for (i, value) in values.into_iter().enumerate() {
        bytes[4 * i..][..4].copy_from_slice(&value.to_le_bytes());
    }
    Ok(bytes)
}

/// The path of shard `index` of `name` in `dir`: index 0 is validation.
pub fn shard_path(dir: &Path, name: &str, index: usize) -> PathBuf {
    let split = if index == 0 { "val" } else { "train" };
    dir.join(format!("{name}_{split}_{index:06}.bin"))
}

/// The half of a data folder a shard belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Split {
    Train,
    Val,
}

/// What a shard file's name says, read from its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardName<'a> {
    /// The data set's name, before the split.
    pub name: &'a str,
    pub split: Split,
    /// Still under the temporary name `prepare` writes it under.
    pub unfinished: bool,
    /// Its number in the data set (`000003`: 3), if it has one.
    pub number: Option<u64>,
}

/// The shard a file's name names: `NAME_train.bin` or `NAME_val.bin`,
/// optionally numbered (`NAME_val_000000.bin`, as llm.c and `runner
/// prepare` name them), with `.tmp` after it while `prepare` writes it.
/// Only the end counts, so shards of an input named `news_valid` or
/// `my_train` still split by their own suffix.
pub fn parse_shard_name(file: &str) -> Option<ShardName<'_>> {
    let (file, unfinished) = match file.strip_suffix(".tmp") {
        Some(file) => (file, true),
        None => (file, false),
    };
    let stem = file.strip_suffix(".bin")?;
    let (unnumbered, number) = match stem.rsplit_once('_') {
        Some((head, index)) if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) => {
            (head, index.parse().ok())
        }
        _ => (stem, None),
    };
    let (name, split) = match unnumbered.rsplit_once('_')? {
        (name, "train") => (name, Split::Train),
        (name, "val") => (name, Split::Val),
        _ => return None,
    };
    Some(ShardName {
        name,
        split,
        unfinished,
        number,
    })
}

/// Where shard `path` is written until it is complete.
fn temporary_path(path: &Path) -> PathBuf {
    path.with_extension("bin.tmp")
}

/// Writes tokens into consecutive shards of at most `per_shard` tokens:
/// the first `val_tokens` into shard 0, the rest into shards 1, 2, ...
/// Shards are written under temporary names and given theirs only when
/// the last is complete (the validation shard last, as training needs
/// it), so a stopped run leaves no set of shards that looks whole.
pub struct ShardWriter {
    dir: PathBuf,
    name: String,
    tokenizer: Tokenizer,
    per_shard: usize,
    val_tokens: usize,
    /// Tokens written to each finished shard, in order.
    finished: Vec<usize>,
    open: Option<OpenShard>,
    /// Whether the temporary file of the shard after the finished ones is
    /// this writer's (created), so `discard` may remove it.
    owns_temporary: bool,
    /// How many finished shards have their names, in [`naming_order`].
    named: usize,
    written: usize,
}

struct OpenShard {
    index: usize,
    file: BufWriter<File>,
    temporary: PathBuf,
    count: usize,
}

impl ShardWriter {
    /// A writer of shards `NAME_*.bin` of `tokenizer`'s tokens into `dir`,
    /// which must exist, be writable and hold no shard of that name yet
    /// (nothing a user made is replaced).
    pub fn new(
        dir: &Path,
        name: &str,
        tokenizer: Tokenizer,
        val_tokens: usize,
        per_shard: usize,
    ) -> Result<ShardWriter, Error> {
        ShardWriter::check_sizes(val_tokens, per_shard)?;
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut unfinished = 0;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let file = entry.file_name();
            let file = file.to_string_lossy();
            match parse_shard_name(&file).filter(|shard| shard.name == name) {
                Some(ShardName {
                    unfinished: false, ..
                }) => {
                    return Err(Error::Config(format!(
                        "{} already holds shards named {name}_*.bin; remove them or choose another --output",
                        dir.display()
                    )))
                }
                Some(_) => unfinished += 1,
                None => {}
            }
        }
        if unfinished > 0 {
            return Err(Error::Config(format!(
                "{} holds {unfinished} unfinished shard(s) {name}_*.bin.tmp (a stopped run's?); remove them or choose another --output",
                dir.display()
            )));
        }
        let mut writer = ShardWriter {
            dir: dir.into(),
            name: name.into(),
            tokenizer,
            per_shard,
            val_tokens,
            finished: Vec::new(),
            open: None,
            owns_temporary: false,
            named: 0,
            written: 0,
        };
        // The first shard's file now: a folder the user cannot write in is
        // refused before any input is tokenized.
        if let Err(e) = writer.shard() {
            let _ = writer.discard();
            return Err(e);
        }
        Ok(writer)
    }

    /// Refuses shard sizes no writer can use: empty ones, a validation
    /// shard too short for one token and its successor (training would
    /// refuse it), and ones whose count would not fit the header (refused
    /// now rather than when the first full shard closes).
    pub fn check_sizes(val_tokens: usize, per_shard: usize) -> Result<(), Error> {
        for (option, tokens, least) in [
            ("--val-tokens", val_tokens, 2),
            ("--shard-tokens", per_shard, 1),
        ] {
            if tokens < least {
                return Err(Error::Config(format!("{option} must be at least {least}")));
            }
            if i32::try_from(tokens).is_err() {
                return Err(Error::Config(format!(
                    "{option} {tokens} does not fit the i32 count of a shard's header (at most {})",
                    i32::MAX
                )));
            }
        }
        Ok(())
    }

    /// Appends `tokens` (each below 65536).
    pub fn write(&mut self, tokens: &[u32]) -> Result<(), Error> {
        let (val_tokens, per_shard) = (self.val_tokens, self.per_shard);
        let mut rest = tokens;
        while !rest.is_empty() {
            let shard = self.shard()?;
            let full = shard_capacity(shard.index, val_tokens, per_shard);
            let (now, later) = rest.split_at((full - shard.count).min(rest.len()));
            let mut bytes = Vec::with_capacity(2 * now.len());
            for &t in now {
                let t = u16::try_from(t)
                    .map_err(|_| Error::Config(format!("token {t} does not fit a u16 shard")))?;
                bytes.extend_from_slice(&t.to_le_bytes());
            }
            let io = |e| Error::io(&shard.temporary, e);
            shard.file.write_all(&bytes).map_err(io)?;
            shard.count += now.len();
            let is_full = shard.count == full;
            self.written += now.len();
            if is_full {
                self.close_shard()?;
            }
            rest = later;
        }
        Ok(())
    }

    /// Closes the last shard and names them all; returns the token count
    /// of every shard.
    pub fn finish(&mut self) -> Result<Vec<usize>, Error> {
        self.close_shard()?;
        for index in naming_order(self.finished.len()) {
            let path = shard_path(&self.dir, &self.name, index);
            std::fs::rename(temporary_path(&path), &path).map_err(|e| Error::io(&path, e))?;
            self.named += 1;
        }
        // The names themselves must survive a crash, as the contents do.
        crate::outputs::sync_dir(&self.dir)?;
        Ok(self.finished.clone())
    }

    /// Removes every shard this writer wrote, whole or not: what a failed
    /// run leaves would otherwise train as if it were the data set.
    pub fn discard(mut self) -> Result<(), Error> {
        drop(self.open.take());
        let last = self.finished.len();
        let path = |index| shard_path(&self.dir, &self.name, index);
        let named = naming_order(last).take(self.named).map(path);
        let unnamed = naming_order(last)
            .skip(self.named)
            .map(|index| temporary_path(&path(index)));
        // The shard after the finished ones is open, or failed to close:
        // its temporary file may be there either way.
        let open = self.owns_temporary.then(|| temporary_path(&path(last)));
        for path in named.chain(unnamed).chain(open) {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&path, e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Tokens written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    /// The shard being written, opened if none is.
    fn shard(&mut self) -> Result<&mut OpenShard, Error> {
        if self.open.is_none() {
            let index = self.finished.len();
            let path = shard_path(&self.dir, &self.name, index);
            let temporary = temporary_path(&path);
            // Never over a file of that name (or through a link): a user's.
            let file = File::options()
                .write(true)
                .create_new(true)
                .open(&temporary)
                .map_err(|e| Error::io(&temporary, e))?;
            self.owns_temporary = true;
            let mut file = BufWriter::new(file);
            // The count is written when the shard closes.
            file.write_all(&header(0, self.tokenizer)?)
                .map_err(|e| Error::io(&temporary, e))?;
            self.open = Some(OpenShard {
                index,
                file,
                temporary,
                count: 0,
            });
        }
        Ok(self.open.as_mut().expect("opened above"))
    }

    /// Writes the open shard's count into its header and syncs it.
    fn close_shard(&mut self) -> Result<(), Error> {
        let Some(shard) = self.open.take() else {
            return Ok(());
        };
        let io = |e| Error::io(&shard.temporary, e);
        let mut file = shard.file.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header(shard.count, self.tokenizer)?)
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        self.owns_temporary = false;
        self.finished.push(shard.count);
        Ok(())
    }
}

/// The order in which `count` finished shards are given their names: the
/// training shards, then the validation shard, without which a folder is
/// not taken for a data set.
fn naming_order(count: usize) -> impl Iterator<Item = usize> {
    (1..count).chain((count > 0).then_some(0))
}

/// Tokens shard `index` holds when full.
fn shard_capacity(index: usize, val_tokens: usize, per_shard: usize) -> usize {
    if index == 0 {
        val_tokens
    } else {
        per_shard
    }
}

/// An open shard whose header was checked: the magic, the version, and a
/// file size that matches the count. Tokens are read by range, so shards
/// larger than memory train.
pub struct Shard {
    path: PathBuf,
    file: File,
    /// Tokens the shard holds.
    pub len: usize,
    /// The vocabulary of the tokenizer that wrote it, where recorded.
    tokenizer_vocab: Option<usize>,
    /// The bytes of the last [`Shard::read`], kept so that drawing a
    /// window allocates nothing.
    bytes: Vec<u8>,
}

/// Raises this process's soft limit on open files, as far as its hard
/// limit allows, so that `count` shards can be held open beside the
/// run's other files (the soft limit is often 1024; the hard one far
/// more). Where it cannot, opening a shard fails with a clear error.
pub fn allow_open_files(count: usize) {
    // Checkpoint files, the log, MPI's sockets and what the runtime holds.
    const OTHERS: libc::rlim_t = 64;
    let wanted = libc::rlim_t::try_from(count)
        .unwrap_or(libc::RLIM_INFINITY)
        .saturating_add(OTHERS);
    let mut limit = std::mem::MaybeUninit::<libc::rlimit>::uninit();
    // SAFETY: `getrlimit` writes one `rlimit` through a valid pointer to
    // one, which is read only where the call says it succeeded; `setrlimit`
    // reads one through a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, limit.as_mut_ptr()) != 0 {
            return;
        }
        let mut limit = limit.assume_init();
        if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= wanted {
            return;
        }
        limit.rlim_cur = wanted.min(limit.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// Whether the file at `path` begins with a shard's magic number, whatever
/// its name and the rest of its header.
pub fn starts_as_shard(path: &Path) -> Result<bool, Error> {
    let mut magic = [0u8; 4];
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(file.read_exact(&mut magic).is_ok() && i32::from_le_bytes(magic) == SHARD_MAGIC)
}

impl Shard {
    /// Opens the shard at `path` and checks its header against its size.
    pub fn open(path: &Path) -> Result<Shard, Error> {
        let bad = |reason: String| Error::Data {
            path: path.into(),
            reason,
        };
        // Only a regular file: windows are read at random offsets, which a
        // pipe cannot serve (and opening one blocks until it is written).
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut header = [0u8; HEADER_BYTES];
        if size < HEADER_BYTES as u64 {
            return Err(bad(format!(
                "{size} bytes is shorter than a shard's {HEADER_BYTES}-byte header"
            )));
        }
        file.read_exact(&mut header)
            .map_err(|e| Error::io(path, e))?;
        let int = |i: usize| i32::from_le_bytes(header[4 * i..][..4].try_into().expect("4 bytes"));
        if int(0) != SHARD_MAGIC {
            return Err(bad(format!(
                "not a token shard (magic {}, expected {SHARD_MAGIC})",
                int(0)
            )));
        }
        if int(1) != SHARD_VERSION {
            return Err(bad(format!(
                "shard version {} is not {SHARD_VERSION}",
                int(1)
            )));
        }
        let len =
            usize::try_from(int(2)).map_err(|_| bad(format!("negative token count {}", int(2))))?;
        let vocab = usize::try_from(int(TOKENIZER_VOCAB)).map_err(|_| {
            bad(format!(
                "negative tokenizer vocabulary {}",
                int(TOKENIZER_VOCAB)
            ))
        })?;
        let body = size - HEADER_BYTES as u64;
        if body != 2 * len as u64 {
            return Err(bad(format!(
                "the header says {len} tokens but the file holds {body} bytes of tokens ({} expected)",
                2 * len
            )));
        }
        Ok(Shard {
            path: path.into(),
            file,
            len,
            tokenizer_vocab: (vocab != 0).then_some(vocab),
            bytes: Vec::new(),
        })
    }

    /// Fills `out` with the tokens from `start` (`start + out.len() <=
    /// len`).
    pub fn read(&mut self, start: usize, out: &mut [u32]) -> Result<(), Error> {
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.resize(2 * out.len(), 0);
        let read = self.read_bytes(start, &mut bytes);
        if read.is_ok() {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = u32::from(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        self.bytes = bytes;
        read
    }

    fn read_bytes(&mut self, start: usize, bytes: &mut [u8]) -> Result<(), Error> {
        let io = |e: std::io::Error| match e.kind() {
            // Its header's count was checked against its size on opening.
            std::io::ErrorKind::UnexpectedEof => Error::Data {
                path: self.path.clone(),
                reason:
                    "ends before its header's token count: it was cut short since the run opened it"
                        .into(),
            },
            _ => Error::io(&self.path, e),
        };
        self.file
            .seek(SeekFrom::Start((HEADER_BYTES + 2 * start) as u64))
            .map_err(io)?;
        self.file.read_exact(bytes).map_err(io)
    }

    /// The tokenizer the shard was written with, where its header says.
    pub fn tokenizer(&self) -> Option<Tokenizer> {
        Tokenizer::with_vocab(self.tokenizer_vocab?)
    }

    /// Refuses a shard written by another tokenizer than `tokenizer`,
    /// where both are known: its ids would spell another text.
    pub fn check_tokenizer(&self, tokenizer: Option<Tokenizer>) -> Result<(), Error> {
        let (Some(model), Some(vocab)) = (tokenizer, self.tokenizer_vocab) else {
            return Ok(());
        };
        if vocab == model.vocab_size() {
            return Ok(());
        }
        let (writer, fix) = match self.tokenizer() {
            Some(t) => (
                format!("the {} tokenizer", t.name()),
                format!("a model of the {} tokenizer, or ", t.name()),
            ),
            None => (format!("a tokenizer of {vocab} tokens"), String::new()),
        };
        Err(Error::Data {
            path: self.path.clone(),
            reason: format!(
                "its tokens are of {writer}, but the model reads the {} tokenizer's: use {fix}shards prepared with --tokenizer {}",
                model.name(),
                model.name()
            ),
        })
    }

    /// Refuses the shard if a token in it is not below `vocab`: the whole
    /// shard is read through a bounded buffer. Returns `hash` continued
    /// over the shard's tokens ([`super::hash_words`]), which tells this
    /// shard from any other for the price of the read already made.
    pub fn check_tokens(&mut self, vocab: usize, mut hash: u64) -> Result<u64, Error> {
        // A multiple of 4 tokens, so that every chunk but the last hashes
        // whole 8-byte words.
        const CHUNK: usize = 1 << 20;
        let mut bytes = vec![0u8; 2 * CHUNK];
        for start in (0..self.len).step_by(CHUNK) {
            let n = CHUNK.min(self.len - start);
            self.read_bytes(start, &mut bytes[..2 * n])?;
            hash = super::hash_words(hash, &bytes[..2 * n]);
            let tokens = bytes[..2 * n]
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]));
            if let Some((i, token)) = tokens.enumerate().find(|&(_, t)| usize::from(t) >= vocab) {
                return Err(self.token_error(u32::from(token), start + i, vocab));
            }
        }
        Ok(hash)
    }

    /// Fills `out` with the first tokens of the shard, refusing any not
    /// below `vocab`: what is read is checked, and nothing else is read.
    pub fn read_checked(&mut self, out: &mut [u32], vocab: usize) -> Result<(), Error> {
        self.read(0, out)?;
        match out.iter().position(|&t| t as usize >= vocab) {
            Some(i) => Err(self.token_error(out[i], i, vocab)),
            None => Ok(()),
        }
    }

    fn token_error(&self, token: u32, position: usize, vocab: usize) -> Error {
        Error::Data {
            path: self.path.clone(),
            reason: format!(
                "token {token} at position {position} is not below the model's vocabulary of {vocab}"
            ),
        }
    }
}

/// The tokens of the shard at `path`, checked as [`Shard::open`] does.
pub fn read_shard(path: &Path) -> Result<Vec<u16>, Error> {
    let mut shard = Shard::open(path)?;
    let mut tokens = vec![0u32; shard.len];
    shard.read(0, &mut tokens)?;
    Ok(tokens.into_iter().map(|t| t as u16).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("runner-shards-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn written_shards_read_back_with_their_counts() {
        let dir = scratch("roundtrip");
        let tokens: Vec<u32> = (0..1000u32).map(|i| (i * 7919) % 50257).collect();
        let mut writer = ShardWriter::new(&dir, "data", Tokenizer::Gpt2, 100, 300).unwrap();
        writer.write(&tokens[..450]).unwrap();
        writer.write(&tokens[450..]).unwrap();
        assert_eq!(writer.written(), 1000);
        // Until the last is complete, no shard has its name: a run stopped
        // now leaves nothing that trains as the data set.
        let names = || {
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert!(
            names().iter().all(|n| n.ends_with(".bin.tmp")),
            "{:?}",
            names()
        );
        assert_eq!(names().len(), 4);
        assert_eq!(writer.finish().unwrap(), [100, 300, 300, 300]);
        assert!(names().iter().all(|n| n.ends_with(".bin")), "{:?}", names());
        let mut read = Vec::new();
        for index in 0..4 {
            read.extend(read_shard(&shard_path(&dir, "data", index)).unwrap());
        }
        assert_eq!(
            read.iter().map(|&t| u32::from(t)).collect::<Vec<_>>(),
            tokens
        );
        assert!(!shard_path(&dir, "data", 4).exists());
        // One cut short after it was opened says so when read past its end.
        let last = shard_path(&dir, "data", 3);
        let mut shard = Shard::open(&last).unwrap();
        let size = std::fs::metadata(&last).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&last)
            .and_then(|f| f.set_len(size - 2))
            .unwrap();
        let err = shard.read(0, &mut [0; 300]).unwrap_err().to_string();
        assert!(err.contains("cut short since the run opened it"), "{err}");
        // A second writer refuses to replace them; one of a name that only
        // starts like theirs writes beside them.
        assert!(ShardWriter::new(&dir, "data", Tokenizer::Gpt2, 100, 300).is_err());
        let writer = ShardWriter::new(&dir, "dat", Tokenizer::Gpt2, 100, 300).unwrap();
        writer.discard().unwrap();
        assert_eq!(names().len(), 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_shard_is_named_by_the_end_of_its_file_name() {
        use Split::{Train, Val};
        for (file, want) in [
            ("play_val_000000.bin", Some(("play", Val, false))),
            ("play_train_000001.bin", Some(("play", Train, false))),
            ("play_train_000012.bin.tmp", Some(("play", Train, true))),
            (
                "tiny_shakespeare_val.bin",
                Some(("tiny_shakespeare", Val, false)),
            ),
            (
                "tiny_shakespeare_train.bin",
                Some(("tiny_shakespeare", Train, false)),
            ),
            // Input names that contain a split's word elsewhere.
            (
                "news_valid_train_000003.bin",
                Some(("news_valid", Train, false)),
            ),
            ("my_train_val_000000.bin", Some(("my_train", Val, false))),
            (
                "train_set_train_000001.bin",
                Some(("train_set", Train, false)),
            ),
            ("a_b_train_000001.bin", Some(("a_b", Train, false))),
            // Not shards of either split.
            ("play_valid_000000.bin", None),
            ("play_train_000001.txt", None),
            ("play_train_00a1.bin", None),
            ("play_train_.bin", None),
            ("play_test_000001.bin", None),
            ("train.bin", None),
            ("notes.bin", None),
            ("play_val_000000.tmp", None),
        ] {
            let got = parse_shard_name(file).map(|s| (s.name, s.split, s.unfinished));
            assert_eq!(got, want, "{file}");
        }
    }

    #[test]
    fn a_hand_made_llm_c_shard_reads_and_bad_ones_are_refused() {
        let dir = scratch("bad");
        let path = dir.join("x.bin");
        let mut bytes = vec![0u8; HEADER_BYTES];
        bytes[..4].copy_from_slice(&20240520i32.to_le_bytes());
        bytes[4..8].copy_from_slice(&1i32.to_le_bytes());
        bytes[8..12].copy_from_slice(&3i32.to_le_bytes());
        for t in [50256u16, 15496, 995] {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_shard(&path).unwrap(), [50256, 15496, 995]);
        // llm.c records no tokenizer: any model may read its shards.
        for tokenizer in [Tokenizer::Byte, Tokenizer::Gpt2] {
            Shard::open(&path)
                .unwrap()
                .check_tokenizer(Some(tokenizer))
                .unwrap();
        }
        type Spoil = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: [(&str, Spoil); 5] = [
            ("magic", Box::new(|b| b[0] ^= 1)),
            (
                "negative tokenizer vocabulary -5",
                Box::new(|b| b[12..16].copy_from_slice(&(-5i32).to_le_bytes())),
            ),
            ("version", Box::new(|b| b[4] = 2)),
            ("header says", Box::new(|b| b.truncate(b.len() - 2))),
            ("shorter than", Box::new(|b| b.truncate(100))),
        ];
        for (what, spoil) in cases {
            let mut spoiled = bytes.clone();
            spoil(&mut spoiled);
            std::fs::write(&path, &spoiled).unwrap();
            let err = read_shard(&path).unwrap_err().to_string();
            assert!(err.contains(what), "{what}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
