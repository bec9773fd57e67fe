//! The embedded default corpus: lines of two-digit addition such as
//! `74+71=145` and `8+71=79`, generated in code (seeded, so always the
//! same text). It is a small language whose continuations can be checked:
//! a model first learns the format (digits, `+`, `=`, newline), then the
//! carries of the answers. One pair in 16 is held out of the corpus,
//! so that the default run can ask the model sums it has never seen.

use crate::rng::Rng;

/// Bytes of corpus text (about 21 500 lines).
const BYTES: usize = 200_000;

/// Operands are below this.
const OPERANDS: u32 = 100;

/// Whether the sum `a + b` is held out of the corpus: one pair in 16,
/// picked by a multiplicative hash so that no kind of sum (doubles,
/// carries, one operand) is left out as a whole.
pub fn is_held_out(a: u32, b: u32) -> bool {
    (a * OPERANDS + b).wrapping_mul(0x9E37_79B1) >> 28 == 0
}

/// The corpus text: random pairs of operands below 100 that are not held
/// out, one `a+b=c` line each.
pub fn text() -> Vec<u8> {
    let mut rng = Rng::new(2024);
    let mut text = Vec::with_capacity(BYTES + 16);
    while text.len() < BYTES {
        let a = rng.below(OPERANDS as usize) as u32;
        let b = rng.below(OPERANDS as usize) as u32;
        if !is_held_out(a, b) {
            text.extend_from_slice(format!("{a}+{b}={}\n", a + b).as_bytes());
        }
    }
    text
}

/// `n` held-out sums as (question `a+b=`, answer), spread over the
/// held-out pairs in a fixed order.
pub fn held_out_questions(n: usize) -> Vec<(String, String)> {
    (0..OPERANDS * OPERANDS)
        .map(|i| (i / OPERANDS, i % OPERANDS))
        .filter(|&(a, b)| is_held_out(a, b))
        .step_by(6)
        .take(n)
        .map(|(a, b)| (format!("{a}+{b}="), (a + b).to_string()))
        .collect()
}

/// Whether a line of the corpus's language is arithmetically right
/// (`None` when it is not a well-formed `a+b=c` line).
pub fn check_line(line: &str) -> Option<bool> {
    let (lhs, rhs) = line.split_once('=')?;
    let (a, b) = lhs.split_once('+')?;
    let number = |s: &str| -> Option<u32> {
        let digits = !s.is_empty() && s.len() <= 3 && s.bytes().all(|c| c.is_ascii_digit());
        digits.then(|| s.parse().ok()).flatten()
    };
    let (a, b, c) = (number(a)?, number(b)?, number(rhs)?);
    Some(a + b == c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_is_a_correct_sum_that_is_not_held_out() {
        let corpus = String::from_utf8(text()).unwrap();
        assert!(corpus.len() >= BYTES && corpus.lines().count() > 20_000);
        for line in corpus.lines() {
            assert_eq!(check_line(line), Some(true), "{line}");
            let (a, b) = line.split_once('=').unwrap().0.split_once('+').unwrap();
            assert!(
                !is_held_out(a.parse().unwrap(), b.parse().unwrap()),
                "{line}"
            );
        }
        assert_eq!(text(), text(), "the corpus is deterministic");
    }

    #[test]
    fn held_out_questions_are_unseen_and_answered_by_their_sum() {
        let corpus = String::from_utf8(text()).unwrap();
        let questions = held_out_questions(100);
        assert_eq!(questions.len(), 100);
        for (question, answer) in &questions {
            let line = format!("\n{question}{answer}\n");
            assert!(!corpus.starts_with(&line[1..]));
            assert!(!corpus.contains(&line), "{question} is in the corpus");
            assert_eq!(check_line(&format!("{question}{answer}")), Some(true));
        }
    }

    #[test]
    fn lines_are_checked_for_form_and_sum() {
        assert_eq!(check_line("2+2=5"), Some(false));
        assert_eq!(check_line("74+71=145"), Some(true));
        for malformed in [
            "banana", "7-9=-2", "+2=2", "2+=2", "1+2=", "1+2=3x", "1++2=3",
        ] {
            assert_eq!(check_line(malformed), None, "{malformed}");
        }
    }
}
