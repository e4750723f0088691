//! The update source the configuration asks for, as one type (enum dispatch), and what a dry run
//! does with it: checks an in-memory release list, but never sends a check to a real service (in
//! Nebraska an answered offer is a grant that counts against the group's rollout limits) and
//! never sends an event.

use semver::Version;

use super::{
    CheckOutcome, Event, HttpUpdateSource, InMemoryUpdateSource, OmahaError, UpdateSource,
};
use crate::dry_run::would;

/// Where checks go.
// One per process: the size of the HTTP client next to a shared in-memory handle costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum UpdateBackend {
    /// An Omaha service over HTTP(S).
    Http(HttpUpdateSource),
    /// A release list held in memory (`--dry-run` with no server, tests).
    Memory(InMemoryUpdateSource),
}

/// The configured update source; in a dry run, events are printed instead of sent.
pub struct AnyUpdateSource {
    backend: UpdateBackend,
    dry_run: bool,
}

impl AnyUpdateSource {
    /// Wraps `backend`; `dry_run` prints events instead of sending them.
    pub fn new(backend: UpdateBackend, dry_run: bool) -> AnyUpdateSource {
        AnyUpdateSource { backend, dry_run }
    }

    /// Whether a check may be sent: always, except to a real service in a dry run.
    pub fn may_check(&self) -> bool {
        !(self.dry_run && matches!(self.backend, UpdateBackend::Http(_)))
    }

    /// The backend, for tests that read what an in-memory source recorded.
    #[cfg(test)]
    pub fn backend_for_tests(&self) -> &UpdateBackend {
        &self.backend
    }

    /// Whether this is a dry run's source.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Where checks go, for log lines (an HTTP URL without its query string).
    pub fn describe(&self) -> String {
        match &self.backend {
            UpdateBackend::Http(s) => s.redacted_url(),
            UpdateBackend::Memory(_) => "the in-memory release list".to_string(),
        }
    }
}

impl UpdateSource for AnyUpdateSource {
    async fn check(
        &self,
        current: &Version,
        interactive: bool,
    ) -> Result<CheckOutcome, OmahaError> {
        match &self.backend {
            UpdateBackend::Http(s) => s.check(current, interactive).await,
            UpdateBackend::Memory(s) => s.check(current, interactive).await,
        }
    }

    async fn send_event(&self, current: &Version, event: Event) -> Result<(), OmahaError> {
        if self.dry_run {
            would(format_args!(
                "send event {}/{}{} to {} (running {current})",
                event.event_type(),
                event.event_result(),
                event
                    .error_code()
                    .map(|code| format!(" errorcode {code}"))
                    .unwrap_or_default(),
                self.describe()
            ));
            return Ok(());
        }
        match &self.backend {
            UpdateBackend::Http(s) => s.send_event(current, event).await,
            UpdateBackend::Memory(s) => s.send_event(current, event).await,
        }
    }
}
