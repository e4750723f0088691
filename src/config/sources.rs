//! Finding and parsing configuration files: drop-in directories with systemd's masking rule, the
//! bound unit's own drop-in directory after them, then `--config` files, each parsed with key
//! positions kept for error messages.

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
    Ok(visible(dropins_by_name(root, "")?))
}

/// The per-instance drop-ins of `unit` (`example-web@2.service` or `example-web@2`): the
/// `*.toml` files of `<dir>/<instance>/` in the same three directories, where `<instance>` is the
/// unit name without `.service` (the sidekick unit's `%i`). They apply after every shared drop-in,
/// in file-name order, with the same masking among themselves; the names they use also hide the
/// shared drop-ins of those names (as an instance's systemd drop-in hides its template's).
/// Returns the shared files that still apply, then the instance files.
pub fn dropin_files_for(root: &Path, unit: &str) -> Result<Vec<PathBuf>, ConfigError> {
    let instance = instance_dir_name(unit);
    let shared = dropins_by_name(root, "")?;
    let Some(instance) = instance else {
        return Ok(visible(shared));
    };
    let own = dropins_by_name(root, instance)?;
    let mut files: Vec<PathBuf> = visible(
        shared
            .into_iter()
            .filter(|(name, _)| !own.contains_key(name))
            .collect(),
    );
    files.extend(visible(own));
    Ok(files)
}

/// The per-instance directory name of `unit`, or `None` for a name that cannot be one (empty,
/// `.`/`..`, or with a `/`): such a unit is refused later by validation with its own message.
pub fn instance_dir_name(unit: &str) -> Option<&str> {
    let name = unit.strip_suffix(".service").unwrap_or(unit);
    let usable = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
    usable.then_some(name)
}

/// Every `*.toml` in `<dir>/<sub>` of the three directories by file name, a higher directory's
/// file replacing a lower one's.
fn dropins_by_name(root: &Path, sub: &str) -> Result<BTreeMap<String, PathBuf>, ConfigError> {
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in DROPIN_DIRS {
        let dir = root.join(dir).join(sub);
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
    Ok(by_name)
}

/// The files of `by_name` in name order, without those masked by a `/dev/null` link.
fn visible(by_name: BTreeMap<String, PathBuf>) -> Vec<PathBuf> {
    by_name
        .into_values()
        .filter(|path| !is_masked(path))
        .collect()
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
    let lines = keys
        .iter()
        .map(|key| (key.path.clone(), line_of(text, key.key_start)))
        .collect();
    // serde stops at the first bad value: each one found is blanked out (its line kept) and
    // the file read again, so one run names every bad key of the file.
    let mut errors = Vec::new();
    let mut masked = text.to_string();
    while errors.len() < MAX_ERRORS_PER_FILE {
        let err = match toml::from_str::<Fragment>(&masked) {
            Ok(fragment) if errors.is_empty() => return Ok(ParsedFile { fragment, lines }),
            Ok(_) => break,
            Err(err) => err,
        };
        let offset = err.span().map_or(0, |span| span.start);
        let key = key_at(&keys, offset);
        errors.push(ConfigError::Parse {
            path: path.to_path_buf(),
            line: line_of(text, offset),
            key: key.clone(),
            message: with_hint(
                err.message().trim(),
                &text[span_text(&keys, key.as_deref())],
            ),
        });
        let Some(key) = key else {
            break;
        };
        // A table goes with its keys: an unknown section's keys would otherwise fall into the
        // section above it.
        let nested = format!("{key}.");
        let spans: Vec<_> = keys
            .iter()
            .filter(|k| k.path == key || k.path.starts_with(&nested))
            .map(|k| k.whole.clone())
            .collect();
        let blanked = spans
            .into_iter()
            .fold(false, |any, span| blank(&mut masked, span) | any);
        if !blanked {
            break;
        }
    }
    errors.sort_by_key(|err| match err {
        ConfigError::Parse { line, .. } => *line,
        _ => 0,
    });
    Err(ConfigError::from_all(errors))
}

/// How many errors one file reports at most (past that, the file is likely not sidekick's).
const MAX_ERRORS_PER_FILE: usize = 20;

/// The text of `key`'s value and key, for the hint; empty when unknown.
fn span_text(keys: &[KeySpan], key: Option<&str>) -> std::ops::Range<usize> {
    keys.iter()
        .find(|k| Some(k.path.as_str()) == key)
        .map_or(0..0, |k| k.whole.clone())
}

/// Replaces `span` of `text` with spaces, keeping line breaks (so lines and offsets stay);
/// false when there was nothing left to blank.
fn blank(text: &mut String, span: std::ops::Range<usize>) -> bool {
    let Some(part) = text.get(span.clone()) else {
        return false;
    };
    if part.chars().all(char::is_whitespace) {
        return false;
    }
    // One space per byte, so every offset (and the keys' spans) stays as in the original.
    let spaces: String = part
        .bytes()
        .map(|b| if b == b'\n' { '\n' } else { ' ' })
        .collect();
    text.replace_range(span, &spaces);
    true
}

/// The parser's message, with an example when a duration was given without its unit.
fn with_hint(message: &str, written: &str) -> String {
    if !message.contains("expected a duration") {
        return message.to_string();
    }
    let value = written
        .split_once('=')
        .map_or(written, |(_, value)| value)
        .trim()
        .trim_matches('"');
    match value.parse::<u64>() {
        Ok(n) => format!("{message}: a duration needs a unit, e.g. \"{n}s\""),
        Err(_) => format!("{message}: e.g. \"15s\", \"500ms\" or \"5m\""),
    }
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
