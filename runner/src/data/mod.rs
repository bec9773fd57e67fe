//! Where training tokens come from and how they are cut into windows: the
//! data sources (a text file tokenized on loading, a token shard, a folder
//! of shards, or the embedded corpus of `corpus`), the tokenizers
//! (`tokenizer`), llm.c's shard format (`shards`) and `runner prepare`
//! (`prepare`), and the train / validation split with seeded random
//! windows.

pub mod corpus;
pub mod prepare;
pub mod shards;
pub mod tokenizer;

use shards::{parse_shard_name, Shard, ShardName, Split};
pub use tokenizer::Tokenizer;

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::memory::{size_text, usable_bytes};
use crate::rng::Rng;

/// How logs and errors name the embedded corpus.
pub const EMBEDDED_NAME: &str = "embedded arithmetic corpus";

/// What a source is read for: training reads both splits of a shard
/// folder, evaluation only its validation shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Training,
    Evaluation,
}

/// Where tokens come from: `--data` as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// The embedded arithmetic corpus.
    Embedded,
    /// A text file, tokenized on loading.
    Text(PathBuf),
    /// One token shard (`.bin`).
    Shard(PathBuf),
    /// A folder of shards: `*_train[_N].bin` train, `*_val[_N].bin` validate.
    Shards(PathBuf),
}

impl DataSource {
    /// What `--data PATH` (or none) names: a folder holds shards, a `.bin`
    /// file is a shard, anything else is text.
    pub fn of(path: Option<&Path>) -> DataSource {
        match path {
            None => DataSource::Embedded,
            Some(p) if p.is_dir() => DataSource::Shards(p.into()),
            Some(p) if p.extension().is_some_and(|e| e == "bin") => DataSource::Shard(p.into()),
            Some(p) => DataSource::Text(p.into()),
        }
    }

    /// Whether it holds token ids (of GPT-2's tokenizer, usually) rather
    /// than text.
    pub fn is_tokens(&self) -> bool {
        matches!(self, DataSource::Shard(_) | DataSource::Shards(_))
    }

    /// The tokenizer token shards were prepared with, where the first
    /// shard's header says (the others are checked against the model's
    /// tokenizer later): `None` for a text, llm.c's shards, or a shard
    /// that cannot be read (the check that follows says why).
    pub fn recorded_tokenizer(&self) -> Option<Tokenizer> {
        let first = match self {
            DataSource::Shard(path) => path.clone(),
            DataSource::Shards(dir) => DataSource::shard_files(dir, Purpose::Training)
                .ok()?
                .0
                .into_iter()
                .next()?,
            _ => return None,
        };
        Shard::open(&first).ok()?.tokenizer()
    }

    /// The path, or the embedded corpus's name, for logs and errors.
    pub fn origin(&self) -> PathBuf {
        match self {
            DataSource::Embedded => format!("<{EMBEDDED_NAME}>").into(),
            DataSource::Text(p) | DataSource::Shard(p) | DataSource::Shards(p) => p.clone(),
        }
    }

    /// A warning for a folder that holds the shards of several data sets
    /// (`prepare` writes each under its own name, several into one
    /// folder): `purpose` reads them all, as one.
    pub fn several_data_sets(&self, purpose: Purpose) -> Option<String> {
        let DataSource::Shards(dir) = self else {
            return None;
        };
        let (train, val) = DataSource::shard_files(dir, purpose).ok()?;
        let mut names: Vec<String> = train
            .iter()
            .chain(&val)
            .filter_map(|path| parse_shard_name(path.file_name()?.to_str()?))
            .map(|shard| shard.name.to_string())
            .collect();
        names.sort();
        names.dedup();
        (names.len() > 1).then(|| {
            format!(
                "{} holds the shards of {} data sets ({}): all of them are read, as one",
                dir.display(),
                names.len(),
                names.join(", ")
            )
        })
    }

    /// The training and validation shards of a folder, in name order; for
    /// evaluation only the validation shards (the training list is empty).
    fn shard_files(dir: &Path, purpose: Purpose) -> Result<(Vec<PathBuf>, Vec<PathBuf>), Error> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            let shard = path
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(parse_shard_name);
            match shard {
                Some(ShardName {
                    unfinished: false,
                    split,
                    ..
                }) => files.push((path, split)),
                // `prepare` names its shards only once all are written.
                Some(_) => {
                    return Err(Error::Data {
                        path: path.clone(),
                        reason: "an unfinished shard: the `runner prepare` that wrote it stopped, so its data set is not whole; remove that run's shards and prepare them again".into(),
                    })
                }
                None => {}
            }
        }
        files.sort();
        // Evaluation reads the validation shards alone.
        files.retain(|(_, split)| purpose == Purpose::Training || *split == Split::Val);
        check_numbered_without_gaps(dir, &files)?;
        let named = |wanted: Split| -> Vec<PathBuf> {
            files
                .iter()
                .filter(|(_, split)| *split == wanted)
                .map(|(path, _)| path.clone())
                .collect()
        };
        let (train, val) = (named(Split::Train), named(Split::Val));
        match purpose {
            Purpose::Training if train.is_empty() || val.is_empty() => Err(Error::Data {
                path: dir.into(),
                reason: format!(
                    "a data folder for training needs `*_train[_N].bin` and `*_val[_N].bin` token shards (as `runner prepare` writes); it has {} and {}",
                    train.len(),
                    val.len()
                ),
            }),
            Purpose::Evaluation if val.is_empty() => Err(Error::Data {
                path: dir.into(),
                reason: format!(
                    "evaluation reads a data folder's `*_val[_N].bin` token shards (as `runner prepare` writes); it has none, and {} training shards",
                    train.len()
                ),
            }),
            Purpose::Training => Ok((train, val)),
            Purpose::Evaluation => Ok((Vec::new(), val)),
        }
    }

    /// Every token of the source, for evaluation: a text tokenized with
    /// `tokenizer` (from a pipe, as far as memory allows beside the
    /// `beside` bytes the run takes), a shard, or a folder's validation
    /// shards. Shards are checked against `vocab`.
    pub fn eval_tokens(
        &self,
        tokenizer: Option<Tokenizer>,
        vocab: usize,
        beside: u64,
    ) -> Result<Vec<u32>, Error> {
        let paths = match self {
            DataSource::Embedded | DataSource::Text(_) => {
                return self.text_tokens(tokenizer, beside)
            }
            DataSource::Shard(p) => vec![p.clone()],
            DataSource::Shards(dir) => DataSource::shard_files(dir, Purpose::Evaluation)?.1,
        };
        let mut shards = Vec::with_capacity(paths.len());
        for path in paths {
            let mut shard = Shard::open(&path)?;
            shard.check_tokens(vocab, FNV_OFFSET)?;
            shards.push(shard);
        }
        // Allocated once: a buffer grown shard by shard could reach twice
        // what [`DataSource::held_in_memory`] counts.
        let total = shards.iter().map(|shard| shard.len).sum();
        let mut tokens = Vec::with_capacity(total);
        for mut shard in shards {
            let start = tokens.len();
            tokens.resize(start + shard.len, 0);
            // A piece at a time: the bytes read beside the tokens stay
            // small ([`DataSource::held_in_memory`] counts the tokens).
            for (i, piece) in tokens[start..].chunks_mut(READ_PIECE).enumerate() {
                shard.read(i * READ_PIECE, piece)?;
            }
        }
        Ok(tokens)
    }

    /// Memory the data holds at its peak beside the model, from sizes
    /// alone, and what holds it: a text read whole and tokenized
    /// (5 bytes a byte), or for evaluation every token
    /// of its shards. `None` for shards that training reads a window at a
    /// time, the small embedded corpus, a pipe or a file of untold size
    /// (bounded as it is read) and a source that cannot
    /// be read (which [`DataSource::check`] refuses).
    pub fn held_in_memory(&self, purpose: Purpose) -> Option<(u64, String)> {
        match (self, purpose) {
            (DataSource::Text(path), _) => {
                // (A size of 0 is not told: read as a pipe is.)
                let size = std::fs::metadata(path).ok().filter(|m| m.is_file())?.len();
                if size == 0 {
                    return None;
                }
                let what = format!(
                    "the {} text {} read whole and tokenized; `runner prepare` streams a text into token shards",
                    size_text(size),
                    path.display()
                );
                Some((size.saturating_mul(TEXT_BYTES_IN_MEMORY), what))
            }
            (DataSource::Shard(_) | DataSource::Shards(_), Purpose::Evaluation) => {
                let n = self.eval_tokens_at_most().ok()??;
                let what = format!("{n} tokens of {} read whole", self.origin().display());
                Some(((n as u64).saturating_mul(4), what))
            }
            _ => None,
        }
    }

    /// Refuses, from names, file kinds and a shard's header (no tokens are
    /// read), a source that cannot work for a model with `tokenizer`: a
    /// text for a model without one, a missing path or one of the wrong
    /// kind, a folder without the splits `purpose` reads. Cheap enough to
    /// run before loading a checkpoint; reading the data checks the rest.
    pub fn check(&self, tokenizer: Option<Tokenizer>, purpose: Purpose) -> Result<(), Error> {
        match self {
            DataSource::Embedded => Ok(()),
            DataSource::Text(_) => self.text_tokenizer(tokenizer).map(drop),
            // Headers only: a shard's kind, magic, size and tokenizer.
            DataSource::Shard(path) => Shard::open(path)?.check_tokenizer(tokenizer),
            DataSource::Shards(dir) => {
                let (train, val) = DataSource::shard_files(dir, purpose)?;
                let mut first: Option<(Tokenizer, &PathBuf)> = None;
                for path in train.iter().chain(&val) {
                    let shard = Shard::open(path)?;
                    match (first, shard.tokenizer()) {
                        (Some((t, first)), Some(u)) if t != u => {
                            return Err(Error::Data {
                                path: dir.clone(),
                                reason: format!(
                                    "mixes shards of two tokenizers: {} is {}'s, {} is {}'s",
                                    first.display(),
                                    t.name(),
                                    path.display(),
                                    u.name()
                                ),
                            })
                        }
                        (None, Some(u)) => first = Some((u, path)),
                        _ => {}
                    }
                    shard.check_tokenizer(tokenizer)?;
                }
                Ok(())
            }
        }
    }

    /// The tokenizer a text is read with, once the text is known to be a
    /// file (or a pipe, which ends; a device such as /dev/zero may never),
    /// and whether it is a pipe.
    fn text_tokenizer(&self, tokenizer: Option<Tokenizer>) -> Result<(Tokenizer, bool), Error> {
        let Some(tokenizer) = tokenizer else {
            return Err(Error::Data {
                path: self.origin(),
                reason:
                    "the model names no tokenizer, so it cannot read text: give it token shards"
                        .into(),
            });
        };
        let mut pipe = false;
        if let DataSource::Text(path) = self {
            let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
            let kind = meta.file_type();
            pipe = crate::outputs::is_pipe(&kind);
            if !(kind.is_file() || pipe) {
                return Err(Error::Data {
                    path: path.clone(),
                    reason: "not a regular file".into(),
                });
            }
            // A size of 0 is an empty file, or one whose size is not told
            // (/proc's): it is read as a pipe is.
            if kind.is_file() && meta.len() == 0 && !has_a_byte(path)? {
                return Err(Error::Data {
                    path: path.clone(),
                    reason: "the file is empty".into(),
                });
            }
            if kind.is_file() && meta.len() > 0 {
                check_not_a_shard(path, "name it NAME.bin to read it as one")?;
            }
        }
        Ok((tokenizer, pipe))
    }

    /// At most how many tokens [`DataSource::eval_tokens`] gives, from
    /// sizes alone (a token is at least a byte; a shard's header counts
    /// its tokens): for sizing work before the tokens are read. `None` for
    /// a pipe, whose size is unknown, and for the small embedded corpus.
    pub fn eval_tokens_at_most(&self) -> Result<Option<usize>, Error> {
        let paths = match self {
            DataSource::Embedded => return Ok(None),
            DataSource::Text(path) => {
                let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
                let size = usize::try_from(meta.len()).unwrap_or(usize::MAX);
                // (A size of 0 that is not empty is not told: see above.)
                return Ok((meta.is_file() && size > 0).then_some(size));
            }
            DataSource::Shard(p) => vec![p.clone()],
            DataSource::Shards(dir) => DataSource::shard_files(dir, Purpose::Evaluation)?.1,
        };
        let mut most = 0usize;
        for path in paths {
            most = most.saturating_add(Shard::open(&path)?.len);
        }
        Ok(Some(most))
    }

    /// A text's tokens (non-empty), read beside a run that takes `beside`
    /// bytes of memory.
    fn text_tokens(&self, tokenizer: Option<Tokenizer>, beside: u64) -> Result<Vec<u32>, Error> {
        let (tokenizer, pipe) = self.text_tokenizer(tokenizer)?;
        let bytes = match self {
            DataSource::Text(path) => {
                if pipe {
                    // Opening a pipe waits for a writer: say why it waits.
                    log::info!(
                        "Reading {} (a pipe) until its writer closes it",
                        path.display()
                    );
                }
                read_text(path, beside)?
            }
            _ => corpus::text(),
        };
        if bytes.is_empty() {
            return Err(Error::Data {
                path: self.origin(),
                reason: "the file is empty".into(),
            });
        }
        Ok(tokenizer.encode(&bytes))
    }
}

/// Refuses a folder whose numbered shards of one data set and split skip
/// a number (`_train_000001`, `_train_000003`): a shard deleted or never
/// copied would leave a data set that looks whole (`prepare` numbers its
/// shards without gaps, as llm.c's scripts do).
fn check_numbered_without_gaps(dir: &Path, files: &[(PathBuf, Split)]) -> Result<(), Error> {
    let mut numbered: Vec<(&str, Split, u64)> = files
        .iter()
        .filter_map(|(path, _)| parse_shard_name(path.file_name()?.to_str()?))
        .filter_map(|shard| Some((shard.name, shard.split, shard.number?)))
        .collect();
    numbered.sort_unstable_by_key(|&(name, split, number)| (name, split == Split::Val, number));
    for pair in numbered.windows(2) {
        let [(name, split, before), (next_name, next_split, after)] = [pair[0], pair[1]];
        if (name, split) == (next_name, next_split) && after > before.saturating_add(1) {
            let split = match split {
                Split::Train => "train",
                Split::Val => "val",
            };
            return Err(Error::Data {
                path: dir.into(),
                reason: format!(
                    "its {name}_{split} shards go from number {before} to {after}: the shards between are missing, so the data set is not whole; copy them in, or prepare the data again"
                ),
            });
        }
    }
    Ok(())
}

/// Refuses a text that starts with a token shard's header: its tokens
/// would be read as bytes of text, a wrong answer without a word. `advice`
/// says what to do instead.
pub fn check_not_a_shard(path: &Path, advice: &str) -> Result<(), Error> {
    if shards::starts_as_shard(path)? {
        return Err(Error::Data {
            path: path.into(),
            reason: format!(
                "this is a token shard (its header starts with llm.c's magic), not text: {advice}"
            ),
        });
    }
    Ok(())
}

/// Whether the file `path` holds at least a byte (read, not its size;
/// the read waits where the file does, as a kernel's trace pipe would).
pub(crate) fn has_a_byte(path: &Path) -> Result<bool, Error> {
    let mut byte = [0u8];
    let read = std::fs::File::open(path).and_then(|mut file| file.read(&mut byte));
    Ok(read.map_err(|e| Error::io(path, e))? == 1)
}

/// The bytes of the text at `path`, read whole. A pipe, whose size was
/// not known before, is refused once it has given more than would fit in
/// memory tokenized, beside the `beside` bytes the run takes.
fn read_text(path: &Path, beside: u64) -> Result<Vec<u8>, Error> {
    let (usable, whose) = usable_bytes();
    let most = usable.saturating_sub(beside) / TEXT_BYTES_IN_MEMORY;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(most.saturating_add(1)).read_to_end(&mut bytes))
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > most {
        return Err(Error::Data {
            path: path.into(),
            reason: format!(
                "goes on past {}, more than fits in memory read whole and tokenized ({whose} {}, {} of them for the model); `runner prepare` streams a text into token shards",
                size_text(most),
                size_text(usable),
                size_text(beside)
            ),
        });
    }
    // Reading doubled the buffer as it went: its spare half would count
    // beside the tokens.
    bytes.shrink_to_fit();
    Ok(bytes)
}

/// Memory a text takes read whole and tokenized, per byte of it: the byte
/// and, at most, a 4-byte token.
const TEXT_BYTES_IN_MEMORY: u64 = 5;

/// Tokens of a shard read at once for evaluation (4 MiB of them).
const READ_PIECE: usize = 1 << 20;

/// Training tokens: a text's, in memory, or windows read from shards on
/// demand.
pub enum TrainTokens {
    Memory(Vec<u32>),
    Shards(ShardWindows),
}

/// Windows drawn from parts of shards: each part is a range of one shard,
/// and a window never crosses from one part into the next.
pub struct ShardWindows {
    shards: Vec<Shard>,
    /// (shard, first token, tokens) of each part.
    parts: Vec<(usize, usize, usize)>,
    /// Tokens read for one window.
    window: Vec<u32>,
    /// [`hash_words`] over every training shard's tokens, whole, in order.
    hash: u64,
}

impl TrainTokens {
    /// Training tokens in all.
    pub fn len(&self) -> usize {
        match self {
            TrainTokens::Memory(tokens) => tokens.len(),
            TrainTokens::Shards(w) => w.parts.iter().map(|p| p.2).sum(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `inputs` and `targets` (`b·t` each) with `b` random windows of
    /// `t + 1` consecutive tokens, as [`sample_batch`] does; over shards, a
    /// window starts uniformly among the windows of every part.
    pub fn sample_batch(
        &mut self,
        b: usize,
        t: usize,
        rng: &mut Rng,
        inputs: &mut [u32],
        targets: &mut [u32],
    ) -> Result<(), Error> {
        let w = match self {
            TrainTokens::Memory(tokens) => {
                sample_batch(tokens, b, t, rng, inputs, targets);
                return Ok(());
            }
            TrainTokens::Shards(w) => w,
        };
        let starts = |len: usize| len.saturating_sub(t);
        let total: usize = w.parts.iter().map(|p| starts(p.2)).sum();
        w.window.resize(t + 1, 0);
        for (inp, tgt) in inputs
            .chunks_exact_mut(t)
            .zip(targets.chunks_exact_mut(t))
            .take(b)
        {
            let mut start = rng.below(total);
            let &(shard, first, _) = w
                .parts
                .iter()
                .find(|p| {
                    let fits = start < starts(p.2);
                    if !fits {
                        start -= starts(p.2);
                    }
                    fits
                })
                .expect("start is below the total");
            w.shards[shard].read(first + start, &mut w.window)?;
            inp.copy_from_slice(&w.window[..t]);
            tgt.copy_from_slice(&w.window[1..]);
        }
        Ok(())
    }
}

/// FNV-1a's starting value and multiplier (64-bit).
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x100_0000_01b3;

/// What tells one run's data from another's, so that a resumed run can
/// refuse other data: the number of training tokens and hashes of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFingerprint {
    pub train_tokens: u64,
    /// 64-bit FNV-1a over the little-endian bytes of the training tokens
    /// held in memory (a text's; shards are read on demand), then of the
    /// validation tokens.
    pub hash: u64,
    /// Shards: [`hash_words`] over every training shard's tokens, made as
    /// they are checked (`None` for a text, and in checkpoints saved
    /// before it was kept).
    pub shards_hash: Option<u64>,
    /// Shards: [`hash_words`] over the training shards' token counts, in
    /// order: windows never cross a shard's end, so the same tokens cut
    /// into other shards are other windows (`None` for a text, and in
    /// checkpoints saved before it was kept).
    pub shard_sizes_hash: Option<u64>,
}

impl std::fmt::Display for DataFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} training tokens (hash {:016x}",
            self.train_tokens, self.hash
        )?;
        if let Some(shards) = self.shards_hash {
            write!(f, ", shards {shards:016x}")?;
        }
        if let Some(sizes) = self.shard_sizes_hash {
            write!(f, ", shard sizes {sizes:016x}")?;
        }
        write!(f, ")")
    }
}

/// 64-bit FNV-1a, continued from `hash`, over `tokens`' little-endian bytes.
fn fnv1a(hash: u64, tokens: &[u32]) -> u64 {
    tokens
        .iter()
        .flat_map(|t| t.to_le_bytes())
        .fold(hash, |h, byte| {
            (h ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
        })
}

/// FNV-1a's step over 8-byte little-endian words (the last zero-padded)
/// rather than bytes, continued from `hash`: shards of billions of tokens
/// hash at memory speed.
pub fn hash_words(hash: u64, bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(hash, |h, word| {
        let mut padded = [0u8; 8];
        padded[..word.len()].copy_from_slice(word);
        (h ^ u64::from_le_bytes(padded)).wrapping_mul(FNV_PRIME)
    })
}

/// Training windows and validation tokens.
pub struct Dataset {
    pub train: TrainTokens,
    pub val: Vec<u32>,
}

impl Dataset {
    /// The data of `source` for a model of `vocab` tokens (with
    /// `tokenizer`, for text) trained on windows of `t + 1` tokens, with
    /// at most `max_val` validation tokens. A text or a single shard is
    /// split 90 / 10 into training and validation; a folder has its own
    /// validation shards. Every shard is checked (header, size, tokens
    /// below `vocab`) before this returns; a text from a pipe is read as
    /// far as memory allows beside the `beside` bytes the run takes.
    pub fn load(
        source: &DataSource,
        tokenizer: Option<Tokenizer>,
        vocab: usize,
        (t, max_val): (usize, usize),
        beside: u64,
    ) -> Result<Dataset, Error> {
        let origin = source.origin();
        let too_short = |have: usize, need: String| Error::Data {
            path: origin.clone(),
            reason: format!(
                "{have} tokens is too short for windows of {} tokens: {need}",
                t + 1
            ),
        };
        let (train_paths, val_paths) = match source {
            DataSource::Embedded | DataSource::Text(_) => {
                let tokens = source.text_tokens(tokenizer, beside)?;
                let mut data = Dataset::split(tokens, t, &origin)?;
                data.val.truncate(max_val);
                return Ok(data);
            }
            DataSource::Shard(path) => (vec![path.clone()], Vec::new()),
            DataSource::Shards(dir) => DataSource::shard_files(dir, Purpose::Training)?,
        };
        // Every training shard stays open, as windows are drawn from any.
        shards::allow_open_files(train_paths.len());
        let mut shards = Vec::with_capacity(train_paths.len());
        let mut hash = FNV_OFFSET;
        for path in &train_paths {
            let mut shard = Shard::open(path)?;
            hash = shard.check_tokens(vocab, hash)?;
            shards.push(shard);
        }
        let mut val = Vec::new();
        let parts = if val_paths.is_empty() {
            // One shard: its first 90 % train, the rest validates.
            let len = shards[0].len;
            if len < Dataset::min_len(t) {
                return Err(too_short(
                    len,
                    format!(
                        "a shard split 90 / 10 needs at least {}",
                        Dataset::min_len(t)
                    ),
                ));
            }
            let train_len = len - len / 10;
            val.resize((len - train_len).min(max_val), 0);
            shards[0].read(train_len, &mut val)?;
            vec![(0, 0, train_len)]
        } else {
            // Only the tokens validation scores are read (and checked).
            for path in &val_paths {
                let mut shard = Shard::open(path)?;
                let start = val.len();
                let n = shard.len.min(max_val - start);
                val.resize(start + n, 0);
                shard.read_checked(&mut val[start..], vocab)?;
            }
            (0..shards.len())
                .map(|i| (i, 0, shards[i].len))
                .collect::<Vec<_>>()
        };
        if parts.iter().all(|p| p.2 <= t) {
            let longest = parts.iter().map(|p| p.2).max().unwrap_or(0);
            return Err(too_short(
                longest,
                "no training shard holds one window".into(),
            ));
        }
        if val.len() < 2 {
            return Err(too_short(
                val.len(),
                "validation needs at least 2 tokens".into(),
            ));
        }
        let train = TrainTokens::Shards(ShardWindows {
            shards,
            parts,
            window: Vec::new(),
            hash,
        });
        Ok(Dataset { train, val })
    }

    /// What identifies this data (see [`DataFingerprint`]).
    pub fn fingerprint(&self) -> DataFingerprint {
        let (train, shards_hash, shard_sizes_hash) = match &self.train {
            TrainTokens::Memory(tokens) => (tokens.as_slice(), None, None),
            TrainTokens::Shards(w) => {
                let sizes = w.shards.iter().fold(FNV_OFFSET, |h, shard| {
                    hash_words(h, &(shard.len as u64).to_le_bytes())
                });
                (&[][..], Some(w.hash), Some(sizes))
            }
        };
        DataFingerprint {
            train_tokens: self.train.len() as u64,
            hash: fnv1a(fnv1a(FNV_OFFSET, train), &self.val),
            shards_hash,
            shard_sizes_hash,
        }
    }

    /// The shortest text [`Dataset::split`] accepts for windows of `t`
    /// tokens (`--seq-len`).
    pub fn min_len(t: usize) -> usize {
        let mut n = (t + 1).max(20);
        while n - n / 10 < t + 1 {
            n += 1;
        }
        n
    }

    /// Splits `tokens` (from `origin`, named in errors): the first 90 % train,
    /// the rest validates. Training needs at least `t + 1` tokens (one
    /// window of `t` and its targets), validation 2.
    pub fn split(tokens: Vec<u32>, t: usize, origin: &Path) -> Result<Dataset, Error> {
        if tokens.len() < Dataset::min_len(t) {
            return Err(Error::Data {
                path: origin.into(),
                reason: format!(
                    "{} tokens is too short for windows of {t} tokens: it needs at least {} (90 % for one training window of {} tokens, 10 % for 2 validation tokens)",
                    tokens.len(),
                    Dataset::min_len(t),
                    t + 1,
                ),
            });
        }
        let train_len = tokens.len() - tokens.len() / 10;
        let mut train = tokens;
        let val = train.split_off(train_len);
        Ok(Dataset {
            train: TrainTokens::Memory(train),
            val,
        })
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
    fn shards_of_another_tokenizer_are_refused_from_their_headers() {
        let dir = std::env::temp_dir().join(format!("runner-tokenizer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut writer = shards::ShardWriter::new(&dir, "b", Tokenizer::Byte, 10, 100).unwrap();
        writer.write(&[104; 50]).unwrap();
        writer.finish().unwrap();
        let folder = DataSource::Shards(dir.clone());
        let one = DataSource::Shard(shards::shard_path(&dir, "b", 1));
        for source in [&folder, &one] {
            assert_eq!(source.recorded_tokenizer(), Some(Tokenizer::Byte));
            source
                .check(Some(Tokenizer::Byte), Purpose::Training)
                .unwrap();
            // A checkpoint that names no tokenizer reads any shard.
            source.check(None, Purpose::Training).unwrap();
            let err = source
                .check(Some(Tokenizer::Gpt2), Purpose::Training)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("of the byte tokenizer, but the model reads the gpt2"),
                "{err}"
            );
        }
        // A folder that mixes the two says so.
        let mut writer = shards::ShardWriter::new(&dir, "g", Tokenizer::Gpt2, 10, 100).unwrap();
        writer.write(&[15496; 50]).unwrap();
        writer.finish().unwrap();
        let err = folder
            .check(Some(Tokenizer::Byte), Purpose::Training)
            .unwrap_err()
            .to_string();
        assert!(err.contains("mixes shards of two tokenizers"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_shard_gives_the_windows_of_its_tokens_in_memory() {
        let dir = std::env::temp_dir().join(format!("runner-windows-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let tokens: Vec<u32> = (0..5000u32).map(|i| (i * 7919) % 50257).collect();
        let mut writer = shards::ShardWriter::new(&dir, "w", Tokenizer::Gpt2, 2, 10_000).unwrap();
        writer.write(&tokens).unwrap();
        writer.finish().unwrap();
        let shard = Shard::open(&shards::shard_path(&dir, "w", 1)).unwrap();
        let n = shard.len;
        let mut from_shard = TrainTokens::Shards(ShardWindows {
            shards: vec![shard],
            parts: vec![(0, 0, n)],
            window: Vec::new(),
            hash: 0,
        });
        let mut in_memory = TrainTokens::Memory(tokens[2..].to_vec());
        assert_eq!(from_shard.len(), in_memory.len());
        let (b, t) = (6, 17);
        let (mut rng_a, mut rng_b) = (Rng::new(5), Rng::new(5));
        for _ in 0..20 {
            let mut a = (vec![0; b * t], vec![0; b * t]);
            let mut m = (vec![1; b * t], vec![1; b * t]);
            from_shard
                .sample_batch(b, t, &mut rng_a, &mut a.0, &mut a.1)
                .unwrap();
            in_memory
                .sample_batch(b, t, &mut rng_b, &mut m.0, &mut m.1)
                .unwrap();
            assert_eq!(a, m);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_same_tokens_cut_into_other_shards_are_other_data() {
        let base = std::env::temp_dir().join(format!("runner-cuts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let tokens: Vec<u32> = (0..610u32).map(|i| i % 251).collect();
        let fingerprint = |per_shard: usize, folder: &str| {
            let dir = base.join(folder);
            std::fs::create_dir_all(&dir).unwrap();
            let mut writer =
                shards::ShardWriter::new(&dir, "d", Tokenizer::Byte, 10, per_shard).unwrap();
            writer.write(&tokens).unwrap();
            writer.finish().unwrap();
            let source = DataSource::Shards(dir);
            let data = Dataset::load(&source, Some(Tokenizer::Byte), 256, (8, 10), 0).unwrap();
            data.fingerprint()
        };
        // 600 training tokens in shards of 300 or 200: the same tokens in
        // the same order, and the same count.
        let (a, b) = (fingerprint(300, "a"), fingerprint(200, "b"));
        assert_eq!((a.train_tokens, a.hash), (b.train_tokens, b.hash));
        assert_eq!(a.shards_hash, b.shards_hash);
        assert_ne!(a.shard_sizes_hash, b.shard_sizes_hash);
        assert_eq!(a, fingerprint(300, "c"));
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// A numbered shard missing from the middle of a split is refused
    /// where the split is read (training reads both, evaluation the
    /// validation shards); the splits' own runs (val 0, train 1..) and
    /// another data set's numbers are no gap.
    #[test]
    fn a_folder_missing_a_numbered_shard_is_refused() {
        let dir = std::env::temp_dir().join(format!("runner-gap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, per_shard: usize| {
            let mut writer =
                shards::ShardWriter::new(&dir, name, Tokenizer::Byte, 10, per_shard).unwrap();
            writer.write(&[104; 100]).unwrap();
            writer.finish().unwrap();
        };
        write("a", 30);
        write("b", 90);
        let folder = DataSource::Shards(dir.clone());
        let load = |purpose| DataSource::shard_files(&dir, purpose);
        assert_eq!(load(Purpose::Training).unwrap().0.len(), 3 + 1);
        std::fs::remove_file(shards::shard_path(&dir, "a", 2)).unwrap();
        let err = load(Purpose::Training).unwrap_err().to_string();
        assert!(
            err.contains("its a_train shards go from number 1 to 3"),
            "{err}"
        );
        let err = folder.check(Some(Tokenizer::Byte), Purpose::Training);
        assert!(err.is_err());
        // Evaluation, which reads the validation shards alone, goes on.
        assert_eq!(load(Purpose::Evaluation).unwrap().1.len(), 2);
        // Numbers that are not a run of one split: the gap in a_val.
        std::fs::rename(
            shards::shard_path(&dir, "a", 3),
            dir.join("a_val_000002.bin"),
        )
        .unwrap();
        let err = load(Purpose::Evaluation).unwrap_err().to_string();
        assert!(
            err.contains("its a_val shards go from number 0 to 2"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn split_refuses_short_texts() {
        let origin = Path::new("x.txt");
        assert!(Dataset::split(Tokenizer::Byte.encode(b"short"), 8, origin).is_err());
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
