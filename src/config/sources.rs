//! Finding and parsing configuration files: drop-in directories with systemd's masking rule, then
//! `--config` files, each parsed with key positions kept for error messages.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::ConfigError;
use super::fragments::Fragment;

/// Drop-in directories below the config root, lowest precedence first.
pub const DROPIN_DIRS: [&str; 3] = [
    "usr/lib/sidekick/config.d",
    "run/sidekick/config.d",
    "etc/sidekick/config.d",
];

/// The `*.toml` drop-ins that take effect, in the order they apply (by file name).
///
/// A file hides one of the same name in a lower directory; a symlink to `/dev/null` hides it and
/// contributes nothing, as systemd does for its own drop-ins.
pub fn dropin_files(root: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in DROPIN_DIRS {
        let dir = root.join(dir);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ConfigError::Read { path: dir, source }),
        };
        for entry in entries {
            let entry = entry.map_err(|source| ConfigError::Read {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".toml") && !name.starts_with('.') {
                by_name.insert(name, entry.path());
            }
        }
    }
    Ok(by_name
        .into_values()
        .filter(|path| !is_masked(path))
        .collect())
}

fn is_masked(path: &Path) -> bool {
    fs::read_link(path).is_ok_and(|target| target == Path::new("/dev/null"))
}

/// One parsed file: its fragment and the line of every key path it sets.
pub struct ParsedFile {
    pub fragment: Fragment,
    pub lines: BTreeMap<String, usize>,
}

/// Reads and parses one file; syntax, unknown keys, wrong types and bad durations all become
/// errors naming the file, line and key.
pub fn parse_file(path: &Path) -> Result<ParsedFile, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_text(path, &text)
}

pub(super) fn parse_text(path: &Path, text: &str) -> Result<ParsedFile, ConfigError> {
    let syntax_error = |err: toml::de::Error| {
        let offset = err.span().map_or(0, |span| span.start);
        ConfigError::Parse {
            path: path.to_path_buf(),
            line: line_of(text, offset),
            key: None,
            message: err.message().trim().to_string(),
        }
    };
    let table = DeTable::parse(text).map_err(syntax_error)?;
    let mut keys = Vec::new();
    collect_keys(table.get_ref(), "", &mut keys);
    let fragment: Fragment = toml::from_str(text).map_err(|err| {
        let offset = err.span().map_or(0, |span| span.start);
        ConfigError::Parse {
            path: path.to_path_buf(),
            line: line_of(text, offset),
            key: key_at(&keys, offset),
            message: err.message().trim().to_string(),
        }
    })?;
    let lines = keys
        .iter()
        .map(|key| (key.path.clone(), line_of(text, key.key_start)))
        .collect();
    Ok(ParsedFile { fragment, lines })
}

/// A key path with the byte ranges of its key and of its value.
struct KeySpan {
    path: String,
    key_start: usize,
    whole: std::ops::Range<usize>,
}

fn collect_keys(table: &DeTable<'_>, parent: &str, out: &mut Vec<KeySpan>) {
    for (key, value) in table {
        let path = if parent.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{parent}.{}", key.get_ref())
        };
        let key_span = key.span();
        let value_span = value.span();
        out.push(KeySpan {
            path: path.clone(),
            key_start: key_span.start,
            whole: key_span.start.min(value_span.start)..key_span.end.max(value_span.end),
        });
        if let DeValue::Table(inner) = value.get_ref() {
            collect_keys(inner, &path, out);
        }
        // Arrays of tables (`[[rollout.window]]`): each entry's keys as `path[i].key`.
        if let DeValue::Array(items) = value.get_ref() {
            for (i, item) in items.iter().enumerate() {
                if let DeValue::Table(inner) = item.get_ref() {
                    let entry = format!("{path}[{i}]");
                    let span = item.span();
                    out.push(KeySpan {
                        path: entry.clone(),
                        key_start: span.start,
                        whole: span,
                    });
                    collect_keys(inner, &entry, out);
                }
            }
        }
    }
}

/// The most specific key whose text contains `offset`.
fn key_at(keys: &[KeySpan], offset: usize) -> Option<String> {
    keys.iter()
        .filter(|key| key.whole.contains(&offset) || key.key_start == offset)
        .max_by_key(|key| key.path.matches('.').count())
        .map(|key| key.path.clone())
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
