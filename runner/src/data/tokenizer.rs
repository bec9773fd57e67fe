//! The tokenizers: `byte` (each byte is a token; vocabulary 256) and `gpt2`
//! (GPT-2's byte-level BPE, r50k: vocabulary 50257, `<|endoftext|>` is
//! 50256), the latter through `tiktoken-rs`, which carries the ranks in the
//! crate (no download).

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use crate::error::Error;

/// How text becomes tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Tokenizer {
    /// One token per byte (vocabulary 256): any file round-trips.
    #[default]
    Byte,
    /// GPT-2's BPE (r50k, vocabulary 50257).
    Gpt2,
}

/// GPT-2's end-of-text token, which starts every document of a shard.
pub const GPT2_END_OF_TEXT: u32 = 50256;

/// Bytes of text GPT-2's encoder is given at once, at most (unless a
/// text has no place to cut it sooner).
const ENCODE_PIECE: usize = 1 << 20;

impl Tokenizer {
    /// `byte` or `gpt2`.
    pub fn name(self) -> &'static str {
        match self {
            Tokenizer::Byte => "byte",
            Tokenizer::Gpt2 => "gpt2",
        }
    }

    /// Token ids are below this.
    pub fn vocab_size(self) -> usize {
        match self {
            Tokenizer::Byte => 256,
            Tokenizer::Gpt2 => 50257,
        }
    }

    /// The tokenizer whose ids are below `vocab` exactly, if any.
    pub fn with_vocab(vocab: usize) -> Option<Tokenizer> {
        [Tokenizer::Gpt2, Tokenizer::Byte]
            .into_iter()
            .find(|t| t.vocab_size() == vocab)
    }

    /// The token that separates documents, if the vocabulary has one.
    pub fn end_of_text(self) -> Option<u32> {
        match self {
            Tokenizer::Byte => None,
            Tokenizer::Gpt2 => Some(GPT2_END_OF_TEXT),
        }
    }

    /// The tokens of `bytes`. For `gpt2`, valid UTF-8 is encoded as GPT-2
    /// does (special tokens are ordinary text), and each byte of an invalid
    /// sequence becomes GPT-2's token for that single byte, so every input
    /// round-trips through [`Tokenizer::decode`].
    pub fn encode(self, bytes: &[u8]) -> Vec<u32> {
        match self {
            Tokenizer::Byte => bytes.iter().map(|&b| u32::from(b)).collect(),
            Tokenizer::Gpt2 => {
                let gpt2 = gpt2();
                // A token is at least a byte: reserved once, the tokens
                // take 4 bytes a byte at most, and never a second buffer
                // as they grow (what a text read whole counts).
                let mut tokens = Vec::with_capacity(bytes.len());
                let mut rest = bytes;
                while !rest.is_empty() {
                    // Pieces cut where the pre-tokenizer always cuts: the
                    // same tokens as the whole, with the encoder's own
                    // buffers a piece's size.
                    let piece = match rest.len() > ENCODE_PIECE {
                        true => gpt2_split_point(&rest[..ENCODE_PIECE], 0)
                            .filter(|&cut| cut > 0)
                            .unwrap_or(rest.len()),
                        false => rest.len(),
                    };
                    for chunk in rest[..piece].utf8_chunks() {
                        tokens.extend(gpt2.bpe.encode_ordinary(chunk.valid()));
                        tokens.extend(
                            chunk
                                .invalid()
                                .iter()
                                .map(|&b| gpt2.byte_tokens[usize::from(b)]),
                        );
                    }
                    rest = &rest[piece..];
                }
                tokens.shrink_to_fit();
                tokens
            }
        }
    }

    /// The bytes of `tokens` (a token may end inside a UTF-8 character:
    /// the bytes are exact, not text). A token not in the vocabulary is an
    /// error.
    pub fn decode(self, tokens: &[u32]) -> Result<Vec<u8>, Error> {
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.vocab_size()) {
            return Err(Error::Input(format!(
                "token {bad} is not in the {} vocabulary (size {})",
                self.name(),
                self.vocab_size()
            )));
        }
        Ok(match self {
            // Each is below 256: checked above.
            Tokenizer::Byte => tokens.iter().map(|&t| t as u8).collect(),
            Tokenizer::Gpt2 => gpt2()
                .bpe
                .decode_bytes(tokens)
                .map_err(|e| Error::Input(format!("cannot decode GPT-2 tokens: {e}")))?,
        })
    }
}

/// The GPT-2 BPE and its token for each single byte.
struct Gpt2 {
    bpe: &'static CoreBPE,
    byte_tokens: [u32; 256],
}

/// Built once (parsing the 50k ranks takes tens of milliseconds).
fn gpt2() -> &'static Gpt2 {
    static GPT2: OnceLock<Gpt2> = OnceLock::new();
    GPT2.get_or_init(|| {
        let bpe = tiktoken_rs::r50k_base_singleton();
        // GPT-2's first 256 ranks are the 256 single bytes, in its own order.
        let mut byte_tokens = [0u32; 256];
        for rank in 0..256u32 {
            if let Ok(bytes) = bpe.decode_bytes(&[rank]) {
                if let [b] = bytes[..] {
                    byte_tokens[usize::from(b)] = rank;
                }
            }
        }
        Gpt2 { bpe, byte_tokens }
    })
}

/// The last position `p` in `text` whose cut is new since `from` bytes
/// and where GPT-2's pre-tokenizer always cuts, if any: after a line break
/// (`\n`, or `\r\n`) with a non-space character before it and at `p`;
/// failing that, before a space with a non-space character before it and
/// an ASCII non-space after it. Spaces are Unicode's (the regex's `\s`):
/// a no-break space beside the cut would join the run of spaces across it.
pub fn gpt2_split_point(text: &[u8], from: usize) -> Option<usize> {
    let after_break = (from.max(2)..text.len()).rev().find(|&p| {
        let before_break = || match text[p - 2] {
            b'\r' => p >= 3 && non_space_ends_at(text, p - 3),
            _ => non_space_ends_at(text, p - 2),
        };
        text[p - 1] == b'\n' && before_break() && non_space_starts_at(text, p)
    });
    // A space that ended the old bytes is decided by the first new one.
    let before_space = || {
        (from.saturating_sub(1).max(1)..text.len().saturating_sub(1))
            .rev()
            .find(|&p| {
                text[p] == b' ' && non_space_ends_at(text, p - 1) && text[p + 1].is_ascii_graphic()
            })
    };
    after_break.or_else(before_space)
}

/// Whether a character that is not a space starts at byte `p` of `text`
/// (bytes that are not UTF-8, or a character the text cuts short, count
/// as spaces: no cut is made beside them).
fn non_space_starts_at(text: &[u8], p: usize) -> bool {
    // A character is at most 4 bytes: reading no further keeps the scan
    // for a cut linear in the chunk.
    let valid = text[p..text.len().min(p + 4)]
        .utf8_chunks()
        .next()
        .map_or("", |chunk| chunk.valid());
    valid.chars().next().is_some_and(|c| !c.is_whitespace())
}

/// Whether a character that is not a space ends at byte `i` of `text`
/// (inclusive), read back over at most three continuation bytes.
fn non_space_ends_at(text: &[u8], i: usize) -> bool {
    let start = (i.saturating_sub(3)..=i)
        .rev()
        .find(|&j| text[j] & 0b1100_0000 != 0b1000_0000)
        .unwrap_or(i);
    let valid = text[start..=i]
        .utf8_chunks()
        .next()
        .map_or("", |chunk| chunk.valid());
    // The character must end exactly at `i`, not merely start the slice.
    valid.len() == i + 1 - start && valid.chars().count() == 1 && non_space_starts_at(text, start)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A text longer than a piece is encoded piece by piece into the
    /// tokens the encoder gives the whole (lines of words, numbers and
    /// Unicode spaces beside the breaks, so that some places are no cut).
    #[test]
    fn gpt2_pieces_give_the_tokens_of_the_whole() {
        let mut text = String::new();
        let mut i = 0u32;
        while text.len() < 2 * ENCODE_PIECE + 12345 {
            let line = match i % 5 {
                0 => format!("ROMEO {i}: But soft, what light through yonder window breaks?\n"),
                1 => format!("  indented {i}\u{a0}\n"),
                2 => format!("\u{a0}word{i} and more words\r\n"),
                3 => "\n\n".to_string(),
                _ => format!("{i} {i} {i},{i}.{i}\t!\n"),
            };
            text.push_str(&line);
            i += 1;
        }
        let whole: Vec<u32> = gpt2().bpe.encode_ordinary(&text).into_iter().collect();
        assert_eq!(Tokenizer::Gpt2.encode(text.as_bytes()), whole);
        // One line with no place to cut: encoded whole.
        let uncut = "x".repeat(ENCODE_PIECE + 7);
        let whole: Vec<u32> = gpt2().bpe.encode_ordinary(&uncut).into_iter().collect();
        assert_eq!(Tokenizer::Gpt2.encode(uncut.as_bytes()), whole);
    }

    #[test]
    fn gpt2_gives_the_known_ids() {
        let t = Tokenizer::Gpt2;
        assert_eq!(t.encode(b"Hello world"), [15496, 995]);
        assert_eq!(t.encode(b" the"), [262]);
        assert_eq!(t.decode(&[GPT2_END_OF_TEXT]).unwrap(), b"<|endoftext|>");
        // Special tokens in text are ordinary text.
        assert_ne!(t.encode(b"<|endoftext|>"), [GPT2_END_OF_TEXT]);
        assert!(t.decode(&[50257]).is_err());
        assert!(Tokenizer::Byte.decode(&[256]).is_err());
    }

    #[test]
    fn every_input_round_trips() {
        let mut texts: Vec<Vec<u8>> = vec![
            "ROMEO: héllo, wörld — ✓ 日本語 🙂\n\n  tabs\tand spaces  ".into(),
            vec![0xff, b'a', 0xc3, b'b', 0xe2, 0x82, b' ', 0xf0, 0x9f],
            (0..=255u8).collect(),
        ];
        let mut rng = crate::rng::Rng::new(4);
        texts.push((0..2000).map(|_| (rng.next_u64() % 256) as u8).collect());
        for tokenizer in [Tokenizer::Byte, Tokenizer::Gpt2] {
            for text in &texts {
                let tokens = tokenizer.encode(text);
                assert!(tokens
                    .iter()
                    .all(|&t| (t as usize) < tokenizer.vocab_size()));
                assert_eq!(&tokenizer.decode(&tokens).unwrap(), text, "{tokenizer:?}");
            }
        }
    }
}
