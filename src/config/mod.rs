//! Configuration: TOML drop-ins, `--config` files and flags, turned into validated [`Settings`].
//!
//! Three stages, as in zincati: [`fragments`] (one file as written, every key optional, unknown keys
//! refused), [`inputs`] (fragments merged over the defaults in precedence order, with the origin of
//! every value), and [`settings`] (validated, typed). Precedence, lowest first: built-in defaults;
//! `*.toml` drop-ins from `/usr/lib`, `/run` and `/etc` under `sidekick/config.d`, applied in file
//! name order, where a file hides one of the same name in a lower directory and a symlink to
//! `/dev/null` hides it altogether; then the bound unit's own drop-ins from `<instance>/` in those
//! directories (see [`sources::dropin_files_for`]); each `--config FILE` in order; then flags.

pub mod bounds;
pub mod fragments;
pub mod inputs;
pub mod origin;
pub mod reload;
pub mod rollout;
pub mod secrets;
pub mod settings;
pub mod sources;
mod validate;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use inputs::Input;
pub use origin::{Origin, Origins};
pub use settings::*;
pub use validate::{Validated, etcd_insecure_warning, insecure_warning, valid_host};

/// A configuration that cannot be used, naming the file, line and key where it can.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("failed to read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {}{message}", path.display(), key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        line: usize,
        key: Option<String>,
        message: String,
    },
    #[error("{}key `{key}`: {message}", origin.as_ref().map(|o| format!("{o}: ")).unwrap_or_default())]
    Invalid {
        key: String,
        origin: Option<Origin>,
        message: String,
    },
    /// More than one of the above, in the order found.
    #[error("{} errors:{}", .0.len(), .0.iter().map(|e| format!("\n  {e}")).collect::<String>())]
    Many(Vec<ConfigError>),
}

impl ConfigError {
    /// One error as itself, several as [`ConfigError::Many`].
    pub fn from_all(mut errors: Vec<ConfigError>) -> ConfigError {
        match errors.len() {
            1 => errors.remove(0),
            _ => ConfigError::Many(errors),
        }
    }
}

/// Where to look for configuration: the root of the drop-in directories (`/` in production, a
/// temp dir in tests), explicit files, and flag values.
#[derive(Debug, Clone)]
pub struct ConfigSources {
    pub root: PathBuf,
    pub files: Vec<PathBuf>,
    pub unit: Option<String>,
}

/// The validated settings together with the merged input they came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub settings: Settings,
    pub input: Input,
    pub origins: Origins,
    /// Every file that contributed, in the order applied.
    pub files: Vec<PathBuf>,
}

/// Reads, merges and validates the whole configuration from `sources` (what the daemon and
/// `check-config` need).
pub fn load(sources: &ConfigSources) -> Result<LoadedConfig, ConfigError> {
    let (input, origins, files) = merge(sources)?;
    let settings = Settings::validate(input.clone(), &origins)?;
    Ok(LoadedConfig {
        settings,
        input,
        origins,
        files,
    })
}

/// Reads and merges the configuration from `sources` and validates only what `S` reads: every
/// file must still parse, with no unknown key, but a section `S` does not read may be incomplete.
pub fn load_as<S: Validated>(sources: &ConfigSources) -> Result<S, ConfigError> {
    let (input, origins, _) = merge(sources)?;
    S::validate(input, &origins)
}

/// Stages one and two: every file parsed and merged over the defaults in precedence order, then
/// the flags; with the origin of each value and the files applied.
fn merge(sources: &ConfigSources) -> Result<(Input, Origins, Vec<PathBuf>), ConfigError> {
    let shared = sources::dropin_files(&sources.root)?;
    // Every file is parsed before any error is returned, so one run names them all.
    let mut errors = Vec::new();
    let mut parse = |path: &Path| match sources::parse_file(path) {
        Ok(file) => Some((path.to_path_buf(), file)),
        Err(err) => {
            errors.push(err);
            None
        }
    };
    let mut parsed: Vec<_> = shared.iter().filter_map(|path| parse(path)).collect();
    // The instance's own drop-ins: of the unit the flag names, else the one the shared drop-ins
    // name (the last that sets it, as the merge would).
    let unit = sources.unit.clone().or_else(|| {
        parsed.iter().rev().find_map(|(_, file)| {
            let instance = file.fragment.instance.as_ref()?;
            instance.unit.clone()
        })
    });
    if let Some(unit) = &unit {
        let applied = sources::dropin_files_for(&sources.root, unit)?;
        parsed.retain(|(path, _)| applied.contains(path));
        for path in applied.iter().filter(|path| !shared.contains(path)) {
            parsed.extend(parse(path));
        }
    }
    for path in &sources.files {
        parsed.extend(parse(path));
    }
    if !errors.is_empty() {
        return Err(ConfigError::from_all(errors));
    }
    let mut input = Input::default();
    let mut origins = Origins::new();
    let mut files = Vec::with_capacity(parsed.len());
    for (path, file) in parsed {
        input.overlay(file.fragment, &path, &file.lines, &mut origins);
        files.push(path);
    }
    if let Some(unit) = &sources.unit {
        input.instance.unit = Some(unit.clone());
        origins.insert("instance.unit".into(), Origin::Flag("--unit"));
    }
    input.daemon.runtime_dir = settings::runtime_dir(&sources.root);
    Ok((input, origins, files))
}

/// The example configuration a dry run uses when there is none (`config/embedded.toml`).
pub const EMBEDDED: &str = include_str!("embedded.toml");
/// How the embedded configuration is named in messages.
pub const EMBEDDED_NAME: &str = "(embedded defaults)";

/// Whether `sources` name no configuration at all: no file, no drop-in, no `--unit`.
pub fn is_absent(sources: &ConfigSources) -> Result<bool, ConfigError> {
    Ok(sources.files.is_empty()
        && sources.unit.is_none()
        && sources::dropin_files(&sources.root)?.is_empty())
}

/// The embedded example configuration, validated like a file; its runtime directory is under
/// `root`, as a loaded one's is.
pub fn load_embedded(root: &Path) -> Result<LoadedConfig, ConfigError> {
    let path = PathBuf::from(EMBEDDED_NAME);
    let parsed = sources::parse_text(&path, EMBEDDED)?;
    let mut input = Input::default();
    input.daemon.runtime_dir = settings::runtime_dir(root);
    let mut origins = Origins::new();
    input.overlay(parsed.fragment, &path, &parsed.lines, &mut origins);
    let settings = Settings::validate(input.clone(), &origins)?;
    Ok(LoadedConfig {
        settings,
        input,
        origins,
        files: vec![path],
    })
}

impl LoadedConfig {
    /// The effective settings as TOML; a value set away from its default is followed by a comment
    /// naming where it was set, and derived values say so.
    pub fn render(&self) -> String {
        let mut shown = self.input.clone();
        // URLs are shown without userinfo and query, which may hold credentials.
        let hide = |url: &mut String| {
            if url.contains(['@', '?', '#']) {
                *url = crate::logging::redact_url_text(url);
            }
        };
        shown.etcd.endpoints.iter_mut().for_each(hide);
        hide(&mut shown.update.server);
        hide(&mut shown.slot.fleetlock_url);
        let mut derived = Vec::new();
        let mut derive = |slot: &mut String, key: &'static str, value: &str| {
            if slot.is_empty() && !value.is_empty() {
                *slot = value.to_string();
                derived.push(key);
            }
        };
        let mut name = shown.instance.name.take().unwrap_or_default();
        derive(&mut name, "instance.name", &self.settings.instance.name);
        shown.instance.name = Some(name);
        let mut service = shown.instance.service.take().unwrap_or_default();
        derive(
            &mut service,
            "instance.service",
            &self.settings.instance.service,
        );
        shown.instance.service = Some(service);
        shown.instance.unit = Some(self.settings.instance.unit.clone());
        derive(
            &mut shown.registration.prefix,
            "registration.prefix",
            &self.settings.registration.keys.prefix,
        );
        derive(
            &mut shown.slot.group,
            "slot.group",
            &self.settings.slot.group,
        );
        if shown.daemon.control_socket.is_none() {
            let socket = self.settings.daemon.control_socket.clone();
            shown.daemon.control_socket = Some(socket.unwrap_or_default());
            derived.push("daemon.control_socket");
        }

        let defaults = toml::Table::try_from(Input::default()).unwrap_or_default();
        let body = toml::to_string(&shown).unwrap_or_default();
        let mut out = String::from("# sidekick effective configuration\n");
        if self.files.is_empty() {
            out.push_str("# no configuration files were read\n");
        }
        for file in &self.files {
            let _ = writeln!(out, "# read {}", file.display());
        }
        let mut section = String::new();
        for line in body.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
                out.push('\n');
            }
            out.push_str(line);
            if let Some((key, value)) = line.split_once(" = ") {
                let path = format!("{section}.{key}");
                let default = defaults
                    .get(&section)
                    .and_then(|table| table.get(key))
                    .map(|value| value.to_string());
                let is_default = default.as_deref() == Some(value);
                if let Some(origin) = self.origins.get(&path).filter(|_| !is_default) {
                    let _ = write!(out, "  # from {origin}");
                } else if derived.contains(&path.as_str()) {
                    out.push_str("  # derived");
                }
            }
            out.push('\n');
        }
        out
    }
}

/// The production config root.
pub fn system_root() -> &'static Path {
    Path::new("/")
}

#[cfg(test)]
mod duration_props;
#[cfg(test)]
mod tests;
