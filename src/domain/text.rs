//! Text that came from someone else (a producer, a vendor, a caller of the
//! callback endpoint), made safe before it reaches a dead letter, a log
//! line or a stored record.

/// How many characters of a vendor's own words a message keeps.
pub const VENDOR_TEXT_CHARS: usize = 200;
/// The longest whole message about a vendor answer (our words around the
/// vendor's).
pub const VENDOR_MESSAGE_CHARS: usize = 1000;
/// The longest vendor error code kept.
pub const VENDOR_CODE_CHARS: usize = 64;

/// For dead letters and records: control characters (newlines, tabs,
/// escape sequences, NUL) become spaces, runs of whitespace one space, the
/// ends are trimmed, and the result is cut to `max_chars` characters, an
/// ellipsis marking a cut.
pub fn clean(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars * 4));
    let mut n = 0;
    let mut space = false;
    for c in s.chars() {
        if c.is_whitespace() || c.is_control() {
            space = !out.is_empty();
            continue;
        }
        let need = usize::from(space) + 1;
        if n + need > max_chars {
            out.push('…');
            return out;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
        n += need;
    }
    out
}

/// For text log lines: control characters, quotes and backslashes escaped
/// (Rust's `escape_debug`), so a value can neither forge a log line nor
/// hide in one, and cut to `max_chars` characters of the escaped form, an
/// ellipsis marking a cut (an escape is never cut in half).
pub fn log_text(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    let mut n = 0;
    for c in s.chars() {
        let escaped = c.escape_debug();
        let len = escaped.len();
        if n + len > max_chars {
            out.push('…');
            return out;
        }
        out.extend(escaped);
        n += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_drops_controls_collapses_whitespace_and_caps() {
        assert_eq!(
            clean("  a\r\n\tb \u{1b}[31m c\u{0}d  ", 100),
            "a b [31m c d"
        );
        assert_eq!(clean("abcdef", 3), "abc…");
        assert_eq!(clean("ab cd", 3), "ab…");
        assert_eq!(clean("", 3), "");
        assert_eq!(clean("\n\n", 3), "");
        let long = format!("x\n{}", "é ".repeat(100_000));
        let c = clean(&long, VENDOR_TEXT_CHARS);
        assert!(c.chars().count() <= VENDOR_TEXT_CHARS + 1);
        assert!(!c.chars().any(char::is_control));
    }

    #[test]
    fn log_text_escapes_and_never_cuts_an_escape() {
        assert_eq!(log_text("a\"b\nc", 100), r#"a\"b\nc"#);
        assert_eq!(log_text("ab\ncd", 3), "ab…");
        assert_eq!(log_text("ab\ncd", 4), "ab\\n…");
        assert_eq!(log_text("plain", 128), "plain");
        assert_eq!(log_text("\u{1b}[2J", 100), "\\u{1b}[2J");
    }
}
