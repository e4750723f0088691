//! The local denylist: versions that failed on this instance and were rolled back, persisted at
//! `<daemon.state_dir>/<instance>/denylist.json` so a restart does not retry them. A denied version
//! is skipped; a newer offer is not on the list and goes ahead.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use semver::Version;
use serde::{Deserialize, Serialize};

use super::policy::PollError;

/// Denied versions kept at most; the oldest are forgotten first (a newer one superseded them).
const MAX_ENTRIES: usize = 32;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    versions: Vec<String>,
}

/// Versions not to update to again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denylist {
    path: PathBuf,
    versions: BTreeSet<Version>,
}

impl Denylist {
    /// The denylist of `instance` under `state_dir`; empty when the file does not exist.
    pub fn load(state_dir: &Path, instance: &str) -> Result<Denylist, PollError> {
        let path = crate::state_layout::instance_dir(state_dir, instance)
            .join(crate::state_layout::DENYLIST);
        let io = |source| PollError::DenylistIo {
            path: path.clone(),
            source,
        };
        let malformed = |detail: String| PollError::DenylistMalformed {
            path: path.clone(),
            detail,
        };
        let record: Record = match crate::atomic_file::read(&path).map_err(io)? {
            None => Record::default(),
            Some(text) => serde_json::from_slice(&text).map_err(|e| malformed(e.to_string()))?,
        };
        let versions = record
            .versions
            .iter()
            .map(|raw| Version::parse(raw).map_err(|e| malformed(format!("{raw:?}: {e}"))))
            .collect::<Result<_, _>>()?;
        Ok(Denylist { path, versions })
    }

    /// Whether `version` failed here before.
    pub fn contains(&self, version: &Version) -> bool {
        self.versions.contains(version)
    }

    /// Denies `version` and persists the list atomically.
    pub fn add(&mut self, version: &Version) -> Result<(), PollError> {
        self.insert(version);
        self.save()
    }

    /// Denies `version` in memory only; [`Self::save`] persists it (the update pass has it saved
    /// off the driver's task).
    pub fn insert(&mut self, version: &Version) {
        self.versions.insert(version.clone());
        while self.versions.len() > MAX_ENTRIES {
            self.versions.pop_first();
        }
    }

    /// Persists the list atomically.
    pub fn save(&self) -> Result<(), PollError> {
        let record = Record {
            versions: self.versions.iter().map(Version::to_string).collect(),
        };
        let mut text =
            serde_json::to_vec_pretty(&record).map_err(|e| PollError::DenylistMalformed {
                path: self.path.clone(),
                detail: e.to_string(),
            })?;
        text.push(b'\n');
        crate::atomic_file::write(&self.path, &text).map_err(|source| PollError::DenylistIo {
            path: self.path.clone(),
            source,
        })
    }

    /// Where the list lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
