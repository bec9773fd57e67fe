//! The embedded default corpus: lines of integer arithmetic such as
//! `417+96=513` and `88-305=-217`, generated in code (seeded, so always the
//! same text). It is a small language whose continuations can be checked:
//! a model first learns the format (digits, one operator, `=`, newline),
//! then the carries and borrows of the answers, so the loss visibly falls
//! within minutes and a sample shows how much it has learned.

use crate::rng::Rng;

/// Lines in the corpus (about 330 KB of text).
const LINES: usize = 30_000;

/// The corpus text.
pub fn text() -> Vec<u8> {
    let mut rng = Rng::new(2024);
    let mut text = Vec::with_capacity(LINES * 12);
    for _ in 0..LINES {
        let (a, b) = (rng.below(1000) as i64, rng.below(1000) as i64);
        let line = if rng.below(2) == 0 {
            format!("{a}+{b}={}\n", a + b)
        } else {
            format!("{a}-{b}={}\n", a - b)
        };
        text.extend_from_slice(line.as_bytes());
    }
    text
}

/// Whether a line of the corpus's language is arithmetically right
/// (`None` when it is not a well-formed `a+b=c` / `a-b=c` line).
pub fn check_line(line: &str) -> Option<bool> {
    let (lhs, rhs) = line.split_once('=')?;
    let (op_at, op) = lhs
        .char_indices()
        .skip(1)
        .find(|&(_, ch)| ch == '+' || ch == '-')?;
    let a: i64 = lhs[..op_at].parse().ok()?;
    let b: i64 = lhs[op_at + 1..].parse().ok()?;
    let c: i64 = rhs.trim().parse().ok()?;
    Some(if op == '+' { a + b == c } else { a - b == c })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_line_is_correct_arithmetic() {
        let lines = String::from_utf8(text()).unwrap();
        assert_eq!(lines.lines().count(), LINES);
        assert!(lines.lines().all(|l| check_line(l) == Some(true)));
        assert_eq!(text(), text(), "the corpus is deterministic");
        assert_eq!(check_line("2+2=5"), Some(false));
        assert_eq!(check_line("7-9=-2"), Some(true));
        assert_eq!(check_line("banana"), None);
    }
}
