//! The version drop-in on disk: `<dropin_dir>/<unit>.d/50-sidekick.conf`, its rendering, the
//! check that refuses values which could break the unit file, and its crash-safe write and
//! restore through [`crate::atomic_file`].

use std::io;
use std::path::{Path, PathBuf};

use super::{ControlError, DropIn, PreviousDropIn};
use crate::atomic_file;
use crate::systemd::environment::{IMAGE_VARIABLE, VERSION_VARIABLE};

/// File name of the sidekick's drop-in inside `<unit>.d/`.
pub const DROPIN_FILE: &str = "50-sidekick.conf";

/// `<dropin_dir>/<unit>.d/50-sidekick.conf`.
pub fn dropin_path(dropin_dir: &Path, unit: &str) -> PathBuf {
    dropin_dir.join(format!("{unit}.d")).join(DROPIN_FILE)
}

/// The drop-in's text, after checking both values with [`check_value`].
pub fn render(dropin: &DropIn) -> Result<String, ControlError> {
    check_value(IMAGE_VARIABLE, &dropin.image)?;
    check_value(VERSION_VARIABLE, &dropin.version)?;
    Ok(format!(
        "[Service]\nEnvironment={IMAGE_VARIABLE}={}\nEnvironment={VERSION_VARIABLE}={}\n",
        dropin.image, dropin.version
    ))
}

/// Refuses a value that systemd would not take literally in `Environment=NAME=value`: empty,
/// non-ASCII, whitespace or control characters (a newline would start a new directive), quotes
/// (systemd unquotes them), `\` (escapes) and `%` (specifiers). The offer's validation already
/// keeps such values out; this is the second line of defence at the file.
pub fn check_value(name: &str, value: &str) -> Result<(), ControlError> {
    if value.is_empty() {
        return Err(ControlError::Invalid(format!(
            "drop-in value for {name} is empty"
        )));
    }
    let bad = value.char_indices().find_map(|(at, c)| {
        let what = match c {
            '%' => "a `%` (a unit-file specifier)",
            '"' | '\'' => "a quote",
            '\\' => "a backslash",
            c if c.is_ascii_control() => "a control character",
            c if c.is_whitespace() => "whitespace",
            c if !c.is_ascii() => "a non-ASCII character",
            _ => return None,
        };
        Some((at, what))
    });
    match bad {
        None => Ok(()),
        Some((at, what)) => Err(ControlError::Invalid(format!(
            "drop-in value for {name} {value:?} has {what} at byte {at}; \
             only printable ASCII without quotes, `%` or `\\` is written to a unit file"
        ))),
    }
}

/// Writes `contents` to `path` atomically; returns what was there before.
pub fn replace(path: &Path, contents: &str) -> Result<PreviousDropIn, ControlError> {
    replace_with(path, contents, atomic_file::write)
}

/// [`replace`] through `write`. A failed write may have failed after its rename (the directory's
/// fsync): the file is read again to decide. Holding `contents`, the write took effect and is
/// reported so, since systemd reads what is there and the swap must restore it on a rollback;
/// holding what was there before, nothing changed; anything else is an error saying the drop-in
/// is in an unknown state.
fn replace_with(
    path: &Path,
    contents: &str,
    write: impl FnOnce(&Path, &[u8]) -> io::Result<()>,
) -> Result<PreviousDropIn, ControlError> {
    let file_error = |source: io::Error| ControlError::File {
        path: path.to_path_buf(),
        source,
    };
    let previous = match atomic_file::read(path).map_err(file_error)? {
        None => PreviousDropIn::Absent,
        Some(bytes) => PreviousDropIn::Contents(String::from_utf8(bytes).map_err(|_| {
            file_error(io::Error::new(
                io::ErrorKind::InvalidData,
                "the existing drop-in is not UTF-8",
            ))
        })?),
    };
    let Err(err) = write(path, contents.as_bytes()) else {
        return Ok(previous);
    };
    let there = atomic_file::read(path);
    let before = match &previous {
        PreviousDropIn::Absent => None,
        PreviousDropIn::Contents(text) => Some(text.as_bytes()),
    };
    match there {
        Ok(Some(now)) if now == contents.as_bytes() => {
            tracing::warn!(path = %path.display(), error = %err,
                "the drop-in write failed after its rename: the new drop-in is in place (its durability is not confirmed)");
            Ok(previous)
        }
        Ok(now) if now.as_deref() == before => Err(file_error(err)),
        other => {
            let what = match other {
                Ok(_) => "neither the old nor the new contents".to_string(),
                Err(read) => format!("unreadable ({read})"),
            };
            Err(file_error(io::Error::new(
                err.kind(),
                format!("{err}; the drop-in is now {what}: check it before the unit restarts"),
            )))
        }
    }
}

/// Puts `previous` back at `path`, or removes the file for `Absent` (durably). The contents
/// come from the swap journal, a file in the state directory: they are put back only as far as
/// [`restorable`] lets them, so a journal edited by someone who can write there cannot make
/// systemd run anything (each line left out is logged).
pub fn restore(path: &Path, previous: &PreviousDropIn) -> Result<(), ControlError> {
    restore_under(path, previous, &SERVICE_RULE)
}

/// [`restore`] keeping what `rule` allows.
pub fn restore_under(
    path: &Path,
    previous: &PreviousDropIn,
    rule: &RestoreRule,
) -> Result<(), ControlError> {
    let file_error = |source: io::Error| ControlError::File {
        path: path.to_path_buf(),
        source,
    };
    match previous {
        PreviousDropIn::Absent => atomic_file::remove(path).map(|_| ()),
        PreviousDropIn::Contents(text) => {
            let (kept, dropped) = restorable_under(text, rule);
            for (line, why) in &dropped {
                tracing::warn!(path = %path.display(), line, "the previous drop-in's line {line} \
                    is not put back: {why} (a restored drop-in holds only {}, comments \
                    and assignments of plain values)", rule.describe());
            }
            atomic_file::write(path, kept.as_bytes())
        }
    }
    .map_err(file_error)
}

/// What a restored drop-in may hold: per section, the directives kept. Lines before the first
/// section header count as in the first section.
#[derive(Debug)]
pub struct RestoreRule {
    pub sections: &'static [(&'static str, &'static [&'static str])],
}

/// A service unit's drop-in: `[Service]` with `Environment=` only.
pub const SERVICE_RULE: RestoreRule = RestoreRule {
    sections: &[("[Service]", &["Environment"])],
};

impl RestoreRule {
    /// `[Service]` with `Environment=`, for log lines.
    fn describe(&self) -> String {
        let sections: Vec<String> = self
            .sections
            .iter()
            .map(|(name, keys)| format!("`{name}` with {}", keys_list(keys)))
            .collect();
        sections.join(", ")
    }

    fn section_names(&self) -> String {
        let names: Vec<&str> = self.sections.iter().map(|(name, _)| *name).collect();
        names.join(" or ")
    }
}

/// `Image=` or `Environment=`.
fn keys_list(keys: &[&str]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("{k}=")).collect();
    keys.join(" or ")
}

/// What of a previous drop-in's `text` a restore writes: blank lines, comments, `[Service]`
/// and `Environment=` lines whose every assignment is `NAME=value` with a value
/// [`check_value`] accepts (or an empty `Environment=`, which resets the list), each exactly
/// as it was; the sidekick's own drop-in and an operator's pinned version pass unchanged.
/// Everything else is left out, with its line number (from 1) and why: another directive
/// (`ExecStartPre=`, `User=` …), another section and all its lines, a continued line (ending
/// in `\`) and the line it continues, a quoted or escaped value.
pub fn restorable(text: &str) -> (String, Vec<(usize, String)>) {
    restorable_under(text, &SERVICE_RULE)
}

/// [`restorable`] under `rule`: the sections and directives it names, with the same checks of
/// each value (an `Environment=` as above, any other directive one value [`check_value`]
/// accepts).
pub fn restorable_under(text: &str, rule: &RestoreRule) -> (String, Vec<(usize, String)>) {
    let mut kept = String::new();
    let mut dropped = Vec::new();
    let mut section = rule.sections.first().map(|(_, keys)| *keys);
    let mut continued = false;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        let why = if continued {
            Some("it continues the line before it".to_string())
        } else if trimmed.ends_with('\\') {
            Some("it is continued on the next line".to_string())
        } else if trimmed.starts_with('[') {
            section = rule
                .sections
                .iter()
                .find(|(name, _)| *name == trimmed)
                .map(|(_, keys)| *keys);
            section.is_none().then(|| {
                format!(
                    "section {} is not {}",
                    excerpt(trimmed),
                    rule.section_names()
                )
            })
        } else if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            None
        } else {
            match section {
                None => Some(format!("it is outside {}", rule.section_names())),
                Some(keys) => directive_line(trimmed, keys).err(),
            }
        };
        continued = trimmed.ends_with('\\');
        match why {
            None => {
                kept.push_str(line);
                kept.push('\n');
            }
            Some(why) => dropped.push((n + 1, why)),
        }
    }
    (kept, dropped)
}

/// Accepts one of `keys`: `Environment=` with plain `NAME=value` assignments, any other a single
/// plain value; else why not.
fn directive_line(line: &str, keys: &[&str]) -> Result<(), String> {
    let Some((key, value)) = line.split_once('=') else {
        return Err(format!("{} is no assignment", excerpt(line)));
    };
    let key = key.trim();
    if !keys.contains(&key) {
        return Err(format!("{}= is not {}", excerpt(key), keys_list(keys)));
    }
    match key {
        "Environment" => environment_assignments(value),
        _ => check_value(key, value.trim()).map_err(|e| e.to_string()),
    }
}

/// Accepts plain `NAME=value` assignments (none resets the list); else why not.
fn environment_assignments(assignments: &str) -> Result<(), String> {
    for assignment in assignments.split_whitespace() {
        let Some((name, value)) = assignment.split_once('=') else {
            return Err(format!("{} is no NAME=value", excerpt(assignment)));
        };
        let plain_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain_name {
            return Err(format!("{} is not a variable name", excerpt(name)));
        }
        check_value(name, value).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// At most 40 characters of `text`, quoted, for a log line.
fn excerpt(text: &str) -> String {
    format!("{:?}", text.chars().take(40).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dropin(image: &str, version: &str) -> DropIn {
        DropIn {
            image: image.into(),
            version: version.into(),
        }
    }

    #[test]
    fn renders_a_service_section_with_both_variables() {
        let text = render(&dropin("127.0.0.1:5000/web@sha256:ab", "2.0.0-rc.1+b7")).unwrap();
        assert_eq!(
            text,
            "[Service]\nEnvironment=SIDEKICK_IMAGE=127.0.0.1:5000/web@sha256:ab\n\
             Environment=SIDEKICK_VERSION=2.0.0-rc.1+b7\n"
        );
    }

    #[test]
    fn refuses_values_that_could_break_the_unit_file_naming_variable_and_value() {
        let cases = [
            ("web:2\nExecStartPre=/bin/rm", "a control character"),
            ("web:2\r", "a control character"),
            ("web:2\u{7f}", "a control character"),
            ("web:%n", "a `%`"),
            ("web:\"2\"", "a quote"),
            ("web:'2'", "a quote"),
            ("web: 2", "whitespace"),
            ("web:\t2", "a control character"),
            ("web:\\x41", "a backslash"),
            ("web:2\u{e9}", "a non-ASCII character"),
            ("web:2\u{a0}", "whitespace"),
            ("", "is empty"),
        ];
        for (image, what) in cases {
            let err = render(&dropin(image, "2.0.0")).unwrap_err();
            assert_eq!(err.kind(), "invalid", "{image:?}");
            let text = err.to_string();
            assert!(text.contains("SIDEKICK_IMAGE"), "{text}");
            assert!(text.contains(what), "{image:?}: {text}");
            if !image.is_empty() {
                assert!(text.contains(&format!("{image:?}")), "{text}");
            }
        }
        let err = render(&dropin("web:2", "2.0.0 ")).unwrap_err();
        assert!(err.to_string().contains("SIDEKICK_VERSION"), "{err}");
    }

    #[test]
    fn a_write_that_failed_after_its_rename_is_decided_by_what_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dropin_path(dir.path(), "web@1.service");
        replace(&path, "one\n").unwrap();
        // The rename happened, the directory's fsync failed: the new drop-in is what systemd
        // reads, so the write counts, with what it replaced for a rollback.
        let renamed_then_failed = |path: &Path, bytes: &[u8]| {
            atomic_file::write(path, bytes)?;
            Err(io::Error::other("fsync of the directory failed"))
        };
        let previous = replace_with(&path, "two\n", renamed_then_failed).unwrap();
        assert_eq!(previous, PreviousDropIn::Contents("one\n".into()));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        // Failed before the rename: nothing changed, the error is the write's.
        let failed_before = |_: &Path, _: &[u8]| Err(io::Error::other("disk full"));
        let err = replace_with(&path, "three\n", failed_before).unwrap_err();
        assert_eq!(err.kind(), "file");
        assert!(err.to_string().contains("disk full"), "{err}");
        assert!(!err.to_string().contains("unknown"), "{err}");
        // Something else ended up there: an error saying so, naming the file.
        let other = |path: &Path, _: &[u8]| {
            atomic_file::write(path, b"garbage\n")?;
            Err(io::Error::other("torn"))
        };
        let err = replace_with(&path, "four\n", other).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("neither the old nor the new contents")
                && text.contains("50-sidekick.conf"),
            "{text}"
        );
    }

    #[test]
    fn replace_returns_the_previous_contents_and_restore_puts_them_back_or_removes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dropin_path(dir.path(), "web@1.service");
        assert!(path.ends_with("web@1.service.d/50-sidekick.conf"));
        let one = "[Service]\nEnvironment=SIDEKICK_VERSION=1.0.0\n";
        assert_eq!(replace(&path, one).unwrap(), PreviousDropIn::Absent);
        let previous = replace(&path, "two\n").unwrap();
        assert_eq!(previous, PreviousDropIn::Contents(one.into()));
        restore(&path, &previous).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), one);
        restore(&path, &PreviousDropIn::Absent).unwrap();
        assert!(!path.exists());
        // Restoring an absent file that is already gone is fine (a retried rollback).
        restore(&path, &PreviousDropIn::Absent).unwrap();
    }

    #[test]
    fn a_restore_puts_back_the_sidekicks_own_dropin_and_an_operators_pinned_one_unchanged() {
        let own = render(&dropin("registry.example.com/web:2.0.0", "2.0.0")).unwrap();
        assert_eq!(restorable(&own), (own.clone(), vec![]));
        let operator = "# pinned by hand\n\n[Service]\n; why: see ticket 42\n\
                        Environment=SIDEKICK_VERSION=2.0.0 OTHER=x\n\
                        Environment=\nEnvironment=SIDEKICK_IMAGE=app:2.0.0\n";
        assert_eq!(restorable(operator), (operator.to_string(), vec![]));
    }

    #[test]
    fn a_restore_leaves_out_every_line_that_could_make_systemd_run_something_naming_it() {
        let journaled = "[Service]\n\
                         Environment=SIDEKICK_VERSION=1.0.0\n\
                         ExecStartPre=+/bin/sh -c id\n\
                         User=root\n\
                         Environment=SIDEKICK_IMAGE=app:1 PATH=\"/tmp\"\n\
                         Environment=X=%H\n\
                         Environment=1X=a\n\
                         Environment=lonely\n\
                         # a comment that goes on \\\n\
                         ExecStart=/bin/true\n\
                         [Unit]\n\
                         Environment=SIDEKICK_VERSION=9.9.9\n\
                         [Service]\n\
                         Environment=SIDEKICK_IMAGE=app:1.0.0\n\
                         garbage\n";
        let (kept, dropped) = restorable(journaled);
        assert_eq!(
            kept,
            "[Service]\nEnvironment=SIDEKICK_VERSION=1.0.0\n[Service]\n\
             Environment=SIDEKICK_IMAGE=app:1.0.0\n"
        );
        let lines: Vec<usize> = dropped.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, vec![3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15]);
        let why = |n: usize| &dropped.iter().find(|(l, _)| *l == n).unwrap().1;
        assert!(
            why(3).contains("\"ExecStartPre\"= is not Environment="),
            "{}",
            why(3)
        );
        assert!(why(5).contains("a quote"), "{}", why(5));
        assert!(why(6).contains("specifier"), "{}", why(6));
        assert!(
            why(7).contains("\"1X\" is not a variable name"),
            "{}",
            why(7)
        );
        assert!(why(8).contains("\"lonely\" is no NAME=value"), "{}", why(8));
        assert!(why(9).contains("continued on the next line"), "{}", why(9));
        assert!(
            why(10).contains("continues the line before it"),
            "{}",
            why(10)
        );
        assert!(
            why(11).contains("section \"[Unit]\" is not [Service]"),
            "{}",
            why(11)
        );
        assert!(why(12).contains("outside [Service]"), "{}", why(12));
        assert!(
            why(15).contains("\"garbage\" is no assignment"),
            "{}",
            why(15)
        );
    }

    #[test]
    fn restore_writes_only_what_is_restorable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web@1.service.d").join(DROPIN_FILE);
        let journaled =
            "[Service]\nExecStartPre=+/bin/sh -c id\nEnvironment=SIDEKICK_VERSION=1.0.0\n";
        restore(&path, &PreviousDropIn::Contents(journaled.into())).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[Service]\nEnvironment=SIDEKICK_VERSION=1.0.0\n"
        );
    }
}
