//! The environment-file handoff (`swap.handoff = "environment-file"`), the way a sidekick that
//! runs as a non-root user points its unit at a new version without any grant that amounts to
//! root (docs/systemd.md, "Non-root mode").
//!
//! The app unit reads `EnvironmentFile=-/var/lib/sidekick-versions/<instance>.env`. That file is
//! root's, in a directory only root writes: a file the `sidekick` user could write would let it
//! set `LD_PRELOAD=` or `PATH=` for the unit's root `ExecStart=`. So the sidekick writes its
//! request (the two values) into its own state directory, `<state_dir>/<instance>/version.request`,
//! and starts the root-owned template unit `sidekick-version@<escaped instance>.service`, whose
//! fixed command (`sidekick apply-version`) reads the request, refuses anything but
//! `SIDEKICK_IMAGE=<image reference>` and `SIDEKICK_VERSION=<semver>`, and writes the file. systemd
//! reads it at the next start of the unit, so a restart suffices: no `Reload()`.
//!
//! The pre-pull is the root-owned template `sidekick-prepull@<escaped image>.service`, whose fixed
//! command (`sidekick pull-image`) unescapes and validates the reference and runs `docker pull`
//! with it (no shell). The polkit rule (`units/50-sidekick.rules`) grants starting these two
//! templates and start/stop/restart of the app units; no transient unit, no reload.
//!
//! Instance strings use an escaping of this module's own ([`escape_instance`]), not
//! `systemd-escape`: its output has no `\`, which systemd would unescape in `ExecStart=` before the
//! program sees it, so the program gets exactly the instance string and decodes it itself.

use std::io::{self, Read as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::{ControlError, DropIn, dropin};
use crate::omaha::image::ImageReference;
use crate::systemd::environment::{IMAGE_VARIABLE, VERSION_VARIABLE};

pub mod control;

/// Where `sidekick-version@.service` writes `<instance>.env` (root's, read by the app unit).
pub const VERSIONS_DIR: &str = "/var/lib/sidekick-versions";
/// The request's file name inside `<state_dir>/<instance>/`.
pub const REQUEST_FILE: &str = "version.request";
/// The pre-pull template: `sidekick-prepull@<escaped image>.service`.
pub const PREPULL_TEMPLATE: &str = "sidekick-prepull";
/// The version template: `sidekick-version@<escaped instance>.service`.
pub const VERSION_TEMPLATE: &str = "sidekick-version";
/// Longest unit name systemd accepts.
const UNIT_NAME_MAX: usize = 255;
/// Longest request file read (two short lines).
const REQUEST_MAX: u64 = 4096;

/// Escapes `text` for a unit's instance string with characters systemd passes through
/// `ExecStart=` unchanged: `[A-Za-z0-9:.-]` stay, `_` becomes `__`, `/` `_s` and `@` `_a`.
/// Anything else (an image reference or instance name has nothing else) is refused.
pub fn escape_instance(text: &str) -> Result<String, ControlError> {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | ':' | '.' | '-' => out.push(c),
            '_' => out.push_str("__"),
            '/' => out.push_str("_s"),
            '@' => out.push_str("_a"),
            other => {
                return Err(ControlError::Invalid(format!(
                    "{text:?} has {other:?}, which no instance string may hold"
                )));
            }
        }
    }
    if out.is_empty() {
        return Err(ControlError::Invalid("an empty instance string".into()));
    }
    Ok(out)
}

/// Undoes [`escape_instance`]; anything it would not have written is refused.
pub fn unescape_instance(escaped: &str) -> Result<String, ControlError> {
    let bad = |why: &str| ControlError::Invalid(format!("instance string {escaped:?}: {why}"));
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | ':' | '.' | '-' => out.push(c),
            '_' => match chars.next() {
                Some('_') => out.push('_'),
                Some('s') => out.push('/'),
                Some('a') => out.push('@'),
                _ => return Err(bad("`_` not followed by `_`, `s` or `a`")),
            },
            _ => return Err(bad("a character outside [A-Za-z0-9:._-]")),
        }
    }
    if out.is_empty() {
        return Err(bad("empty"));
    }
    Ok(out)
}

/// `<template>@<escaped value>.service`, refused past systemd's 255 characters.
pub fn template_unit(template: &str, value: &str) -> Result<String, ControlError> {
    let name = format!("{template}@{}.service", escape_instance(value)?);
    if name.len() > UNIT_NAME_MAX {
        return Err(ControlError::Invalid(format!(
            "unit name for {value:?} would be {} characters, past systemd's {UNIT_NAME_MAX}",
            name.len()
        )));
    }
    Ok(name)
}

/// `<dir>/<instance>.env`.
pub fn env_path(dir: &Path, instance: &str) -> PathBuf {
    dir.join(format!("{instance}.env"))
}

/// `<state_dir>/<instance>/version.request`.
pub fn request_path(state_dir: &Path, instance: &str) -> PathBuf {
    crate::state_layout::instance_dir(state_dir, instance).join(REQUEST_FILE)
}

/// Refuses an instance name that could leave its directory or is not a plain name.
pub fn check_instance_name(name: &str) -> Result<(), ControlError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '-'));
    if plain {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "instance name {name:?} is not a plain name ([A-Za-z0-9_.:@-])"
        )))
    }
}

/// Checks both values: the image against the reference grammar, the version as semver, both as
/// [`dropin::check_value`] does for a unit file.
pub fn check(values: &DropIn) -> Result<(), ControlError> {
    dropin::check_value(IMAGE_VARIABLE, &values.image)?;
    dropin::check_value(VERSION_VARIABLE, &values.version)?;
    ImageReference::parse(&values.image).map_err(|err| {
        ControlError::Invalid(format!("{IMAGE_VARIABLE} {:?}: {err}", values.image))
    })?;
    semver::Version::parse(&values.version).map_err(|err| {
        ControlError::Invalid(format!("{VERSION_VARIABLE} {:?}: {err}", values.version))
    })?;
    Ok(())
}

/// The file's text (the request's and the environment file's are the same), after [`check`].
pub fn render(values: &DropIn) -> Result<String, ControlError> {
    check(values)?;
    Ok(format!(
        "{IMAGE_VARIABLE}={}\n{VERSION_VARIABLE}={}\n",
        values.image, values.version
    ))
}

/// Reads the text strictly: nothing at all (the file is to be removed), or exactly one
/// `SIDEKICK_IMAGE=` and one `SIDEKICK_VERSION=` line, passing [`check`]. Errors name the line
/// but never echo it: the root side may have been pointed at a file that is not a request.
pub fn parse(text: &str) -> Result<Option<DropIn>, ControlError> {
    if text.is_empty() {
        return Ok(None);
    }
    let (mut image, mut version) = (None, None);
    for (n, line) in text.lines().enumerate() {
        let slot = match line.split_once('=') {
            Some((IMAGE_VARIABLE, value)) => (&mut image, value),
            Some((VERSION_VARIABLE, value)) => (&mut version, value),
            _ => {
                return Err(ControlError::Invalid(format!(
                    "line {} is not {IMAGE_VARIABLE}=… or {VERSION_VARIABLE}=…",
                    n + 1
                )));
            }
        };
        if slot.0.replace(slot.1.to_string()).is_some() {
            return Err(ControlError::Invalid(format!(
                "line {}: a variable set twice",
                n + 1
            )));
        }
    }
    match (image, version) {
        (Some(image), Some(version)) => {
            let values = DropIn { image, version };
            check(&values)?;
            Ok(Some(values))
        }
        _ => Err(ControlError::Invalid(format!(
            "not both {IMAGE_VARIABLE} and {VERSION_VARIABLE} are set"
        ))),
    }
}

/// What a rollback puts back from a journaled previous file: its values when [`parse`] takes the
/// text, else nothing (the file is removed and the unit's own defaults apply), with why.
pub fn restorable(text: &str) -> (Option<DropIn>, Option<String>) {
    match parse(text) {
        Ok(values) => (values, None),
        Err(err) => (None, Some(err.to_string())),
    }
}

/// The values of `<dir>/<instance>.env` (what the unit runs in environment-file mode, over its
/// `Environment=`); `None` when there is no file, or it holds anything else (logged).
pub fn file_values(dir: &Path, instance: &str) -> Option<DropIn> {
    let path = env_path(dir, instance);
    let text = match crate::atomic_file::read(&path) {
        Ok(Some(bytes)) => String::from_utf8(bytes).ok()?,
        Ok(None) => return None,
        Err(err) => {
            tracing::warn!(path = %path.display(), "cannot read the environment file: {err}");
            return None;
        }
    };
    parse(&text)
        .map_err(|err| {
            tracing::warn!(path = %path.display(),
                "the environment file is not one sidekick-version@ writes ({err})");
        })
        .ok()
        .flatten()
}

/// The root side (`sidekick apply-version`): reads `<state_dir>/<instance>/version.request` for
/// the instance `escaped` names, without following a symlink, and writes `<into>/<instance>.env`
/// (or removes it for an empty request). Returns what it did, for the log.
pub fn apply_request(state_dir: &Path, into: &Path, escaped: &str) -> Result<String, ControlError> {
    let instance = unescape_instance(escaped)?;
    check_instance_name(&instance)?;
    let dir = crate::state_layout::instance_dir(state_dir, &instance);
    let file_error = |path: &Path, source: io::Error| ControlError::File {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| file_error(&dir, e))?;
    if !meta.is_dir() {
        return Err(ControlError::Invalid(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let path = dir.join(REQUEST_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| file_error(&path, e))?;
    if !file.metadata().map_err(|e| file_error(&path, e))?.is_file() {
        return Err(ControlError::Invalid(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    file.take(REQUEST_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_error(&path, e))?;
    if bytes.len() as u64 > REQUEST_MAX {
        return Err(ControlError::Invalid(format!(
            "{} is longer than {REQUEST_MAX} bytes",
            path.display()
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| ControlError::Invalid(format!("{} is not UTF-8", path.display())))?;
    let values =
        parse(&text).map_err(|err| ControlError::Invalid(format!("{}: {err}", path.display())))?;
    let target = env_path(into, &instance);
    match values {
        None => {
            crate::atomic_file::remove(&target).map_err(|e| file_error(&target, e))?;
            Ok(format!("removed {}", target.display()))
        }
        Some(values) => {
            let text = render(&values)?;
            crate::atomic_file::write(&target, text.as_bytes())
                .map_err(|e| file_error(&target, e))?;
            Ok(format!(
                "wrote {}: {IMAGE_VARIABLE}={} {VERSION_VARIABLE}={}",
                target.display(),
                values.image,
                values.version
            ))
        }
    }
}

/// The root side of the pre-pull (`sidekick pull-image`): the image reference `escaped` names,
/// validated.
pub fn image_of_instance(escaped: &str) -> Result<ImageReference, ControlError> {
    let text = unescape_instance(escaped)?;
    ImageReference::parse(&text)
        .map_err(|err| ControlError::Invalid(format!("image reference {text:?}: {err}")))
}

#[cfg(test)]
mod tests;
