//! An update source without a server: offers the release described by a local file (or set by a
//! test) and records the events it is sent. Used by `run --dry-run` and by unit tests.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use semver::Version;
use serde::Deserialize;

use super::UpdateSource;
use super::client::OmahaError;
use super::protocol::{CheckOutcome, Event, UpdateOffer};

/// The release a local file describes, e.g. `version = "2.0.0"` and `codebase = "example/web:2.0.0"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRelease {
    /// The offered version (validated later, like a server's).
    pub version: String,
    /// What `{codebase}` renders to.
    pub codebase: String,
    /// What `{name}` renders to.
    #[serde(default)]
    pub name: String,
    /// Package SHA-256, hex or base64.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Package size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
}

impl LocalRelease {
    /// Reads a release from a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, OmahaError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| OmahaError::ReleaseFile(format!("{}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| OmahaError::ReleaseFile(format!("{}: {e}", path.display())))
    }

    fn offer(&self) -> UpdateOffer {
        UpdateOffer {
            version: self.version.clone(),
            codebase: self.codebase.clone(),
            name: self.name.clone(),
            size: self.size,
            sha1: None,
            sha256: self.sha256.clone(),
        }
    }
}

/// A list of releases as `examples/releases.toml` writes it: `[[release]]` tables.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseList {
    pub release: Vec<LocalRelease>,
}

/// The release list compiled into the binary (`examples/releases.toml`).
pub const BUILT_IN_RELEASES: &str = include_str!("../../examples/releases.toml");

impl ReleaseList {
    /// The list compiled into the binary.
    pub fn built_in() -> Result<Self, OmahaError> {
        Self::parse(BUILT_IN_RELEASES, "the built-in release list")
    }

    /// Reads a list from a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, OmahaError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| OmahaError::ReleaseFile(format!("{}: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> Result<Self, OmahaError> {
        let list: ReleaseList =
            toml::from_str(text).map_err(|e| OmahaError::ReleaseFile(format!("{origin}: {e}")))?;
        if let Some(bad) = list
            .release
            .iter()
            .find(|r| Version::parse(&r.version).is_err())
        {
            return Err(OmahaError::ReleaseFile(format!(
                "{origin}: version `{}` is not a semantic version",
                bad.version
            )));
        }
        Ok(list)
    }

    /// The release with the highest version, if any.
    pub fn newest(&self) -> Option<&LocalRelease> {
        self.release
            .iter()
            .filter_map(|r| Version::parse(&r.version).ok().map(|v| (v, r)))
            .max_by(|(a, _), (b, _)| a.cmp_precedence(b))
            .map(|(_, r)| r)
    }
}

/// An event the in-memory source was sent, with the version the instance reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// The `version` the request carried.
    pub version: Version,
    /// The event.
    pub event: Event,
}

#[derive(Debug, Default)]
struct MemoryState {
    release: Option<LocalRelease>,
    scripted: VecDeque<CheckOutcome>,
    events: Vec<RecordedEvent>,
    checks: u64,
}

/// An update source held in memory; clones share it (a test keeps one to read the events).
#[derive(Debug, Default, Clone)]
pub struct InMemoryUpdateSource {
    state: Arc<Mutex<MemoryState>>,
    /// While true, checks wait: a service that is slow to answer.
    held: Arc<tokio::sync::watch::Sender<bool>>,
    /// While true, events wait (and are recorded only once let through).
    events_held: Arc<tokio::sync::watch::Sender<bool>>,
}

impl InMemoryUpdateSource {
    /// A source offering `release` to any instance running an older version.
    pub fn new(release: Option<LocalRelease>) -> Self {
        Self {
            state: Arc::new(Mutex::new(MemoryState {
                release,
                ..MemoryState::default()
            })),
            held: Arc::default(),
            events_held: Arc::default(),
        }
    }

    /// A source offering the release described in a TOML file.
    pub fn from_release_file(path: &Path) -> Result<Self, OmahaError> {
        Ok(Self::new(Some(LocalRelease::from_file(path)?)))
    }

    /// Replaces the offered release.
    pub fn set_release(&self, release: Option<LocalRelease>) {
        self.lock().release = release;
    }

    /// Queues an outcome returned by the next check instead of the release logic.
    pub fn push_outcome(&self, outcome: CheckOutcome) {
        self.lock().scripted.push_back(outcome);
    }

    /// The events sent so far, oldest first.
    pub fn events(&self) -> Vec<RecordedEvent> {
        self.lock().events.clone()
    }

    /// How many checks were sent so far (answered or not).
    pub fn checks(&self) -> u64 {
        self.lock().checks
    }

    /// Holds every check, from now until [`Self::answer_checks`], like a service that does not
    /// answer.
    pub fn hold_checks(&self) {
        self.held.send_replace(true);
    }

    /// Lets the held checks, and later ones, be answered.
    pub fn answer_checks(&self) {
        self.held.send_replace(false);
    }

    /// Holds every event from now on, like a service that does not answer them.
    pub fn hold_events(&self) {
        self.events_held.send_replace(true);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // The state stays consistent under panics: every mutation is a single assignment or push.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn decide(&self, current: &Version) -> CheckOutcome {
        let mut state = self.lock();
        if let Some(outcome) = state.scripted.pop_front() {
            return outcome;
        }
        match &state.release {
            // A release that is not semver is still offered, so the caller's validation refuses it.
            Some(release) => match Version::parse(&release.version) {
                Ok(v) if v.cmp_precedence(current).is_le() => CheckOutcome::NoUpdate,
                _ => CheckOutcome::Update(release.offer()),
            },
            None => CheckOutcome::NoUpdate,
        }
    }
}

impl UpdateSource for InMemoryUpdateSource {
    async fn check(
        &self,
        current: &Version,
        _interactive: bool,
    ) -> Result<CheckOutcome, OmahaError> {
        self.lock().checks += 1;
        let mut held = self.held.subscribe();
        // The sender lives as long as `self`.
        let _ = held.wait_for(|held| !*held).await;
        Ok(self.decide(current))
    }

    async fn send_event(&self, current: &Version, event: Event) -> Result<(), OmahaError> {
        let mut held = self.events_held.subscribe();
        let _ = held.wait_for(|held| !*held).await;
        self.lock().events.push(RecordedEvent {
            version: current.clone(),
            event,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str) -> LocalRelease {
        LocalRelease {
            version: version.into(),
            codebase: "example/web:2.0.0".into(),
            name: String::new(),
            sha256: None,
            size: None,
        }
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn offers_a_newer_release_and_nothing_otherwise() {
        let source = InMemoryUpdateSource::new(Some(release("2.0.0")));
        let older = block_on(source.check(&Version::new(1, 0, 0), false)).unwrap();
        assert!(matches!(older, CheckOutcome::Update(ref o) if o.version == "2.0.0"));
        let same = block_on(source.check(&Version::new(2, 0, 0), false)).unwrap();
        assert_eq!(same, CheckOutcome::NoUpdate);
        source.set_release(None);
        let none = block_on(source.check(&Version::new(1, 0, 0), false)).unwrap();
        assert_eq!(none, CheckOutcome::NoUpdate);
    }

    #[test]
    fn scripted_outcomes_come_first_and_events_are_recorded() {
        let source = InMemoryUpdateSource::new(None);
        let hold = CheckOutcome::OnHold {
            reason: "error-updatesDisabled".into(),
        };
        source.push_outcome(hold.clone());
        assert_eq!(
            block_on(source.check(&Version::new(1, 0, 0), true)).unwrap(),
            hold
        );
        block_on(source.send_event(&Version::new(1, 0, 0), Event::PrepullStarted)).unwrap();
        assert_eq!(source.events()[0].event, Event::PrepullStarted);
    }

    #[test]
    fn reads_a_release_file_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("release.toml");
        std::fs::write(
            &good,
            "version = \"2.0.0\"\ncodebase = \"example/web:2.0.0\"\n",
        )
        .unwrap();
        assert_eq!(LocalRelease::from_file(&good).unwrap(), release("2.0.0"));
        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            "version = \"2.0.0\"\ncodebase = \"x\"\nimage = \"y\"\n",
        )
        .unwrap();
        assert_eq!(
            LocalRelease::from_file(&bad).unwrap_err().kind(),
            "release-file"
        );
    }

    #[test]
    fn the_built_in_list_offers_its_newest_release() {
        let list = ReleaseList::built_in().unwrap();
        assert!(list.release.len() >= 2);
        assert_eq!(list.newest().unwrap().version, "2.0.0");
    }

    #[test]
    fn a_release_list_picks_by_semver_and_refuses_a_bad_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("releases.toml");
        let entry = |v: &str| format!("[[release]]\nversion = \"{v}\"\ncodebase = \"c\"\n");
        std::fs::write(&path, [entry("1.10.0"), entry("1.9.0")].concat()).unwrap();
        let list = ReleaseList::from_file(&path).unwrap();
        assert_eq!(list.newest().unwrap().version, "1.10.0");
        std::fs::write(&path, entry("latest")).unwrap();
        let err = ReleaseList::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("`latest` is not a semantic version"), "{err}");
        assert!(err.contains("releases.toml"), "{err}");
        std::fs::write(&path, "").unwrap();
        assert!(
            ReleaseList::from_file(&path).is_err(),
            "no [[release]] at all"
        );
    }
}
