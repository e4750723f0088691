//! Rendering `status` sections as aligned text tables, with values from etcd made printable.

use std::fmt::Write as _;

/// A titled table of rows.
pub struct Section {
    pub title: &'static str,
    pub headers: &'static [&'static str],
    pub rows: Vec<Vec<String>>,
}

impl Section {
    /// The title, then the header and rows with columns padded to their widest cell.
    pub fn render(&self) -> String {
        let mut out = format!("{}\n", self.title);
        if self.rows.is_empty() {
            out.push_str("  (none)\n");
            return out;
        }
        let headers: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        // Values come from etcd: no escape sequence of theirs reaches the terminal.
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| row.iter().map(|cell| printable(cell)).collect())
            .collect();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&headers).chain(&rows) {
            let mut line = String::from(" ");
            for (cell, w) in row.iter().zip(&widths) {
                let _ = write!(line, " {cell:<w$} ");
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// One cell as the terminal may show it: see [`crate::terminal_text`] (control, format and bidi
/// characters escaped, length capped).
pub fn printable(text: &str) -> String {
    crate::terminal_text::sanitize(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let section = Section {
            title: "T",
            headers: &["A", "LONG HEADER"],
            rows: vec![vec!["wide cell".into(), "x".into()]],
        };
        assert_eq!(
            section.render(),
            "T\n  A          LONG HEADER\n  wide cell  x\n"
        );
    }

    #[test]
    fn control_characters_from_etcd_never_reach_the_terminal() {
        let section = Section {
            title: "T",
            headers: &["A"],
            rows: vec![vec!["web\u{1b}[2J\r\u{7}-1".into()]],
        };
        let text = section.render();
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("web\\u{1b}[2J\\u{d}\\u{7}-1"), "{text:?}");
    }

    #[test]
    fn bidi_characters_are_escaped_and_cells_are_capped() {
        let section = Section {
            title: "T",
            headers: &["A", "B"],
            rows: vec![vec!["1.0.0\u{202e}evil".into(), "x".repeat(10_000)]],
        };
        let text = section.render();
        assert!(text.contains("1.0.0\\u{202e}evil"), "{text:?}");
        assert!(
            text.lines().all(|line| line.chars().count() < 400),
            "{text:?}"
        );
        assert!(text.contains("more characters]"), "{text:?}");
    }
}
