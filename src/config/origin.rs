//! Where each configuration value was set: a file's line or a flag, so errors and
//! `check-config` can name it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Where a configuration value was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A key in a file, with its 1-based line.
    File { path: PathBuf, line: usize },
    /// A command-line flag.
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// Key path (`section.key`) to the origin of its effective value; keys absent here are defaults.
pub type Origins = BTreeMap<String, Origin>;
