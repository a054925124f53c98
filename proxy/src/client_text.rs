//! Text a client sent, as it may appear in a log line or an error message: quoted, escaped and
//! bounded, so no value can forge a line, hide behind terminal or bidi controls, or make a
//! line as long as the value.

use std::fmt::{self, Write as _};

/// The most escaped text a client's value puts in a line (the quotes and the length marker
/// aside); the rest is replaced by `…(N bytes)`, N being the whole value's length.
pub const MAX_SHOWN: usize = 256;

/// Displays bytes a client sent inside double quotes: printable characters as they are; `"`,
/// `\`, control characters (C0, DEL, C1: newlines, ESC, BEL, NUL...), invisible formatting
/// and bidi controls (such as U+202E) escaped as `\n`, `\u{202e}`; bytes that are not UTF-8 as
/// `\xff`. At most [`MAX_SHOWN`] bytes of escaped text, then `…(N bytes)`.
#[derive(Clone, Copy)]
pub struct ClientText<'a>(pub &'a [u8]);

impl<'a> ClientText<'a> {
    /// A client's string.
    pub fn of(text: &'a str) -> Self {
        Self(text.as_bytes())
    }
}

impl fmt::Display for ClientText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        let mut shown = 0;
        let mut piece = String::new();
        for chunk in self.0.utf8_chunks() {
            let bytes = chunk.invalid().iter().map(|&b| Piece::Byte(b));
            for piece_of in chunk.valid().chars().map(Piece::Char).chain(bytes) {
                piece.clear();
                piece_of.write(&mut piece)?;
                if shown + piece.len() > MAX_SHOWN {
                    return write!(f, "\"…({} bytes)", self.0.len());
                }
                shown += piece.len();
                f.write_str(&piece)?;
            }
        }
        f.write_char('"')
    }
}

impl fmt::Debug for ClientText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One character, or one byte that is not part of any.
enum Piece {
    Char(char),
    Byte(u8),
}

impl Piece {
    fn write(self, out: &mut String) -> fmt::Result {
        match self {
            Self::Byte(b) => write!(out, "\\x{b:02x}"),
            Self::Char('\n') => out.write_str("\\n"),
            Self::Char('\r') => out.write_str("\\r"),
            Self::Char('\t') => out.write_str("\\t"),
            Self::Char('"') => out.write_str("\\\""),
            Self::Char('\\') => out.write_str("\\\\"),
            Self::Char(c) if c.is_control() || invisible(c) => write!(out, "\\u{{{:x}}}", c as u32),
            Self::Char(c) => out.write_char(c),
        }
    }
}

/// Characters that change how a line reads without showing themselves: bidi embeddings,
/// overrides and isolates, zero-width characters, line and paragraph separators, the BOM.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(bytes: &[u8]) -> String {
        ClientText(bytes).to_string()
    }

    #[test]
    fn plain_text_is_quoted_as_it_is() {
        assert_eq!(shown(b"0b1c2d3e-0000-4000"), "\"0b1c2d3e-0000-4000\"");
        assert_eq!(ClientText::of("é ü 中").to_string(), "\"é ü 中\"");
    }

    #[test]
    fn line_breaks_and_controls_are_escaped() {
        assert_eq!(
            shown(b"x\nFAKE level=ERROR connection routed evil=1\r\n"),
            r#""x\nFAKE level=ERROR connection routed evil=1\r\n""#
        );
        assert_eq!(
            shown(b"\x1b[31m\x07\0\x7f\t"),
            r#""\u{1b}[31m\u{7}\u{0}\u{7f}\t""#
        );
        assert_eq!(ClientText::of("\u{85}").to_string(), r#""\u{85}""#);
        assert_eq!(shown(br#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn bidi_and_invisible_characters_are_escaped() {
        let text = "admin\u{202e}txt.exe\u{2066}\u{200b}\u{2028}\u{feff}";
        assert_eq!(
            ClientText::of(text).to_string(),
            r#""admin\u{202e}txt.exe\u{2066}\u{200b}\u{2028}\u{feff}""#
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_hex() {
        assert_eq!(shown(&[b'a', 0xff, 0xfe, b'b']), r#""a\xff\xfeb""#);
        // A character cut short is its bytes, and what follows is read as text again.
        assert_eq!(shown(&[0xe4, 0xb8, b'z']), r#""\xe4\xb8z""#);
    }

    #[test]
    fn long_values_are_cut_at_the_bound_with_their_length() {
        let long = vec![b'a'; 15_000];
        let text = shown(&long);
        assert_eq!(text, format!("\"{}\"…(15000 bytes)", "a".repeat(MAX_SHOWN)));
        let exact = vec![b'a'; MAX_SHOWN];
        assert_eq!(shown(&exact), format!("\"{}\"", "a".repeat(MAX_SHOWN)));
        // Escapes count as what they take in the line, and are never cut in half.
        let newlines = vec![b'\n'; 1000];
        let text = shown(&newlines);
        assert_eq!(
            text,
            format!("\"{}\"…(1000 bytes)", "\\n".repeat(MAX_SHOWN / 2))
        );
        let controls = vec![0x1b; 1000];
        let text = shown(&controls);
        let escaped = text.trim_start_matches('"').split('"').next().unwrap();
        assert!(escaped.len() <= MAX_SHOWN, "{}", escaped.len());
        assert!(escaped.ends_with("\\u{1b}"), "{escaped}");
    }

    #[test]
    fn every_output_is_one_bounded_line_of_printable_text() {
        // Every byte value, and every character class the escaper names, in one value.
        let mut all: Vec<u8> = (0..=255).collect();
        all.extend("\u{202e}\u{2029}\u{85}é".as_bytes());
        for len in 0..all.len() {
            let text = shown(&all[..len]);
            assert!(text.len() <= MAX_SHOWN + 2 + "…(999 bytes)".len(), "{text}");
            assert!(
                text.chars().all(|c| !c.is_control() && !invisible(c)),
                "{text:?}"
            );
        }
    }
}
