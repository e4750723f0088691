//! Text from etcd, an update service or another daemon made safe to print on a terminal: control
//! characters (ESC, CR, BEL, …), Unicode format characters (bidi overrides and isolates that
//! reorder what is shown, zero-width characters) and line separators are shown as `\u{…}`
//! escapes, and the length is capped, so a stored value can neither drive the terminal, hide or
//! reorder text, nor flood the screen. Every command that prints such a string passes it here.

use std::fmt::Write as _;

/// Characters kept of one value by default (a table cell, a reason, a name).
pub const MAX_VALUE_CHARS: usize = 256;
/// Characters kept of one whole printed line (a `--dry-run` line, which embeds several values).
pub const MAX_LINE_CHARS: usize = 4096;

/// `text` with every unsafe character escaped, cut to [`MAX_VALUE_CHARS`].
pub fn sanitize(text: &str) -> String {
    sanitize_to(text, MAX_VALUE_CHARS)
}

/// `text` with every unsafe character escaped, cut to `max_chars` characters of the original
/// (a cut says how many were left out).
pub fn sanitize_to(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 2));
    for (kept, c) in text.chars().enumerate() {
        if kept == max_chars {
            let left = text.chars().count() - kept;
            let _ = write!(out, "…[{left} more characters]");
            break;
        }
        if is_unsafe(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// Control characters (Cc), format characters (Cf) and the line and paragraph separators.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            u32::from(c),
            0x00AD
                | 0x0600..=0x0605
                | 0x061C
                | 0x06DD
                | 0x070F
                | 0x0890..=0x0891
                | 0x08E2
                | 0x180E
                | 0x200B..=0x200F
                | 0x2028..=0x202E
                | 0x2060..=0x2064
                | 0x2066..=0x206F
                | 0xFEFF
                | 0xFFF9..=0xFFFB
                | 0x110BD
                | 0x110CD
                | 0x13430..=0x1343F
                | 0x1BCA0..=0x1BCA3
                | 0x1D173..=0x1D17A
                | 0xE0001
                | 0xE0020..=0xE007F
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_and_controls_are_shown_escaped() {
        let shown = sanitize("web\u{1b}[2J\r\u{7}\u{9b}31m-1\n");
        assert_eq!(shown, "web\\u{1b}[2J\\u{d}\\u{7}\\u{9b}31m-1\\u{a}");
        assert!(!shown.chars().any(|c| c.is_control()));
    }

    #[test]
    fn bidi_overrides_isolates_and_zero_width_characters_are_escaped() {
        // "Trojan Source": RLO makes `1.0.0` read as `0.0.1`; isolates and zero-width characters
        // hide text.
        let shown = sanitize("v\u{202e}1.0.0\u{202c} \u{2066}x\u{2069}\u{200b}\u{feff}\u{2028}");
        assert_eq!(
            shown,
            "v\\u{202e}1.0.0\\u{202c} \\u{2066}x\\u{2069}\\u{200b}\\u{feff}\\u{2028}"
        );
    }

    #[test]
    fn plain_text_and_other_scripts_pass_unchanged() {
        for text in [
            "web-1",
            "10.0.0.5:8080",
            "rollout halted: 3.0.0 failed",
            "Grüße, 東京 ✓",
        ] {
            assert_eq!(sanitize(text), text);
        }
    }

    #[test]
    fn long_values_are_cut_and_say_how_much_is_missing() {
        let long = "x".repeat(MAX_VALUE_CHARS + 10);
        let shown = sanitize(&long);
        assert!(shown.starts_with(&"x".repeat(MAX_VALUE_CHARS)));
        assert!(shown.ends_with("…[10 more characters]"), "{shown}");
        assert_eq!(
            sanitize(&"x".repeat(MAX_VALUE_CHARS)),
            "x".repeat(MAX_VALUE_CHARS)
        );
        assert_eq!(sanitize_to("abcdef", 3), "abc…[3 more characters]");
    }
}
