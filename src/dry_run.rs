//! The voice of `--dry-run`: each write the daemon would make is printed as one line on standard
//! output, `dry-run: would …`, by the seam that would have made it (registry, slots, update
//! events, unit control). Nothing else goes to standard output in a dry run, so the lines can be
//! read by a person or a script; logs stay on standard error or in the journal.

use std::fmt::Display;
use std::io::Write as _;

/// The prefix of every dry-run line.
pub const PREFIX: &str = "dry-run: would";

/// Prints `dry-run: would {what}` as one line and flushes it.
pub fn would(what: impl Display) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop the daemon: the line is lost, nothing else is.
    let _ = writeln!(out, "{PREFIX} {what}");
    let _ = out.flush();
}
