//! The voice of `--dry-run`: each write the daemon would make is printed as one line on standard
//! output, `dry-run: would …`, by the seam that would have made it (registry, slots, update
//! events, unit control). Nothing else goes to standard output in a dry run, so the lines can be
//! read by a person or a script; logs stay on standard error or in the journal.

use std::fmt::Display;
use std::io::Write as _;

/// The prefix of every dry-run line.
pub const PREFIX: &str = "dry-run: would";
/// Longest dry-run line, in characters of what would be done.
const MAX_LINE_CHARS: usize = crate::terminal_text::MAX_LINE_CHARS;

/// Prints `dry-run: would {what}` as one line and flushes it.
pub fn would(what: impl Display) {
    let line = line(what);
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop the daemon: the line is lost, nothing else is.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The line [`would`] prints: values read from etcd are in it, so it goes through
/// [`crate::terminal_text`] (one line, no terminal escapes, capped).
pub fn line(what: impl Display) -> String {
    let what = crate::terminal_text::sanitize_to(&what.to_string(), MAX_LINE_CHARS);
    format!("{PREFIX} {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_from_etcd_cannot_break_the_line_or_drive_the_terminal() {
        let shown = line(format_args!(
            "delete key /services/web/web-1 (value {:?})",
            "x\n\u{1b}]0;owned\u{7}"
        ));
        assert!(shown.starts_with("dry-run: would delete key"), "{shown}");
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        let raw = line("put value \u{1b}[2J\u{202e}1.0.0\nsecond line");
        assert_eq!(
            raw,
            "dry-run: would put value \\u{1b}[2J\\u{202e}1.0.0\\u{a}second line"
        );
        assert!(line("x".repeat(100_000)).chars().count() < MAX_LINE_CHARS + 100);
    }
}
