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
                let mut tokens = Vec::with_capacity(bytes.len() / 3);
                for chunk in bytes.utf8_chunks() {
                    tokens.extend(gpt2.bpe.encode_ordinary(chunk.valid()));
                    tokens.extend(
                        chunk
                            .invalid()
                            .iter()
                            .map(|&b| gpt2.byte_tokens[usize::from(b)]),
                    );
                }
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

#[cfg(test)]
mod tests {
    use super::*;

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
