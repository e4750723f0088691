//! The Omaha v3 wire format as Nebraska and CoreUpdate speak it: request building and tolerant
//! response classification. Pure: no I/O, no clock, no randomness.
//!
//! Byte-level facts (requests, events, responses) come from Nebraska's Omaha handler
//! (<https://github.com/flatcar/nebraska>), recorded in `tests/fixtures/omaha/`; the protocol itself is <https://github.com/google/omaha/blob/main/doc/ServerProtocolV3.md>.

mod request;
mod response;

pub use request::{event_request, update_check_request};
pub use response::{classify_check_response, response_app_status};

/// `version` and `updaterversion` of every request: `sidekick-<crate version>`.
pub const UPDATER_VERSION: &str = concat!("sidekick-", env!("CARGO_PKG_VERSION"));

/// The instance as the update service sees it: what goes on `<os>` and `<app>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppInstance {
    /// Omaha app id, sent exactly as configured.
    pub app_id: String,
    /// Nebraska group track.
    pub track: String,
    /// `<os arch>`, e.g. `x64`.
    pub arch: String,
    /// App-specific machine id: 32 lowercase hex, never braced (see [`crate::identity`]).
    pub machine_id: String,
    /// Boot id, braced: `{uuid}`.
    pub boot_id: String,
    /// The sidekick's instance name (`web-1`), sent as the `instancename` attribute of `<app>` so
    /// an operator can tell instances apart in the service (Nebraska ignores attributes it does
    /// not know; the example service lists it beside the machine id).
    pub name: String,
}

/// Why a check was made: `installsource` on the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallSource {
    /// A periodic poll (`scheduler`).
    Scheduler,
    /// A check an operator asked for (`ondemandupdate`).
    OnDemand,
}

impl InstallSource {
    /// The source for a check, interactive or not.
    pub fn from_interactive(interactive: bool) -> Self {
        if interactive {
            Self::OnDemand
        } else {
            Self::Scheduler
        }
    }

    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduler => "scheduler",
            Self::OnDemand => "ondemandupdate",
        }
    }
}

/// A progress event sidekick reports (the subset Nebraska records, reference §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// 13/1: pre-pull of the new image started.
    PrepullStarted,
    /// 14/1: pre-pull finished.
    PrepullFinished,
    /// 800/1: the unit swap started.
    SwapStarted,
    /// 3/1: the new version runs healthy; completes the update for a non-Flatcar app.
    UpdateComplete,
    /// 3/0 with an errorcode: the update failed or the offer was refused.
    Failed {
        /// One of [`error_code`].
        error_code: u32,
    },
}

impl Event {
    /// The `eventtype` attribute.
    pub fn event_type(self) -> u32 {
        match self {
            Self::PrepullStarted => 13,
            Self::PrepullFinished => 14,
            Self::SwapStarted => 800,
            Self::UpdateComplete | Self::Failed { .. } => 3,
        }
    }

    /// The `eventresult` attribute.
    pub fn event_result(self) -> u32 {
        match self {
            Self::Failed { .. } => 0,
            _ => 1,
        }
    }

    /// The `errorcode` attribute, present only when the result is not success.
    pub fn error_code(self) -> Option<u32> {
        match self {
            Self::Failed { error_code } => Some(error_code),
            _ => None,
        }
    }
}

/// `errorcode` values sidekick sends with a 3/0 event; numbers reuse update_engine's where one fits.
pub mod error_code {
    /// Generic failure, e.g. an in-flight update abandoned after a restart (update_engine `Error`).
    pub const GENERIC: u32 = 1;
    /// The unit swap (drop-in write or restart) failed (update_engine `PostinstallRunnerError`).
    pub const SWAP_FAILED: u32 = 5;
    /// Pre-pulling the new image failed (update_engine `DownloadTransferError`).
    pub const PREPULL_FAILED: u32 = 9;
    /// The registry names another manifest for the offered tag than the offer's `hash_sha256`
    /// (`update.verify_digest`; update_engine `PayloadHashMismatchError`).
    pub const DIGEST_MISMATCH: u32 = 10;
    /// The offer was refused: bad version, image reference or digest (update_engine `OmahaResponseInvalid`).
    pub const OFFER_REFUSED: u32 = 34;
    /// The new version did not turn healthy and was rolled back (sidekick-specific).
    pub const UNHEALTHY_AFTER_SWAP: u32 = 1001;
    /// The new version failed and the old one could not be brought back either: the instance
    /// stays deregistered and keeps its slot (sidekick-specific).
    pub const ROLLBACK_FAILED: u32 = 1002;
    /// The group's rollout was halted while this instance waited for a slot: it gives its grant
    /// back untried, so that after `slots resume` its next check can be offered a newer version
    /// (Nebraska answers a granted instance with the same package until it reports an end)
    /// (sidekick-specific).
    pub const ROLLOUT_HALTED: u32 = 1003;
    /// An operator stopped or restarted the unit during the swap: the attempt was given up and
    /// the version is not blamed (sidekick-specific).
    pub const OPERATOR_ACTION: u32 = 1004;
    /// The slot was lost (the fence found it gone) before the unit was touched: the attempt was
    /// given up, not the version's fault (sidekick-specific).
    pub const SLOT_LOST: u32 = 1005;
    /// The sidekick stopped (SIGTERM) before the instance was deregistered: the grant is given
    /// back untried (sidekick-specific).
    pub const INTERRUPTED: u32 = 1006;
    /// The offered version is on this instance's denylist (it failed here before): the grant is
    /// given back untried (sidekick-specific).
    pub const DENYLISTED: u32 = 1007;
    /// The new version passed verification but failed inside `rollout.min_healthy` (left active,
    /// restarted, or failed `fall` probes) and was rolled back (sidekick-specific).
    pub const MIN_HEALTHY_FAILED: u32 = 1008;
    /// A start found the update service holding a grant for this instance
    /// (`error-updateInProgressOnInstance`) with no swap journaled for it: the stale grant is
    /// ended so the instance can be offered updates again (sidekick-specific).
    pub const STALE_GRANT: u32 = 1009;
    /// An offer came back while the unit was not active and registered (it left `active` while
    /// the check was out): the swap cannot start, so the grant is given back untried
    /// (sidekick-specific).
    pub const NOT_SERVING: u32 = 1010;
    /// The new version failed inside `rollout.monitor`, after its 3/1 and the release, and was
    /// rolled back. Never sent: the update service has its 3/1 for the grant; the code is
    /// recorded in the swap's journal and the version's rollout state (sidekick-specific).
    pub const MONITOR_FAILED: u32 = 1011;
}

/// An update as the service offered it, not yet validated (see [`crate::omaha::validate_offer`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpdateOffer {
    /// `manifest@version`, raw.
    pub version: String,
    /// First non-empty `url@codebase`.
    pub codebase: String,
    /// First `package@name`, possibly empty.
    pub name: String,
    /// `package@size`, when it parses.
    pub size: Option<u64>,
    /// `package@hash`: base64 SHA-1, when present.
    pub sha1: Option<String>,
    /// `package@hash_sha256` (hex or base64), else the postinstall action's `sha256`.
    pub sha256: Option<String>,
}

/// How a check response was classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The service granted an update.
    Update(UpdateOffer),
    /// Nothing newer for this instance.
    NoUpdate,
    /// A rollout refusal (rate limit, concurrency, disabled group): wait, not an error.
    OnHold {
        /// The app `status` string the server gave.
        reason: String,
    },
    /// The service answered, but not usefully.
    Error {
        /// What went wrong.
        kind: ResponseErrorKind,
        /// The server's status string or the parser's message.
        detail: String,
    },
}

/// Classes of an unusable check response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseErrorKind {
    /// Unknown app id, track or arch (`error-failedToRetrieveUpdatePackageInfo` and kin).
    UnknownApp,
    /// `error-instanceRegistrationFailed`: bad version or machine id.
    RegistrationFailed,
    /// An empty document: Nebraska's answer to a request it could not decode.
    EmptyDocument,
    /// Not well-formed XML.
    Parse,
    /// Well-formed, but without the parts a check answer needs.
    InvalidResponse,
    /// Any other status.
    ServerStatus,
}

impl ResponseErrorKind {
    /// A short stable label for logs, metrics and the `update-check` JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownApp => "unknown-app",
            Self::RegistrationFailed => "registration-failed",
            Self::EmptyDocument => "empty-document",
            Self::Parse => "parse",
            Self::InvalidResponse => "invalid-response",
            Self::ServerStatus => "server-status",
        }
    }
}

impl std::fmt::Display for ResponseErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares app ids the way Nebraska does: trimmed, one pair of braces stripped, case-insensitive.
pub fn same_app_id(a: &str, b: &str) -> bool {
    normalise_app_id(a) == normalise_app_id(b)
}

/// An app id trimmed, unbraced and lowercased.
pub fn normalise_app_id(id: &str) -> String {
    let id = id.trim();
    let id = id
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or(id);
    id.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_codes_match_the_nebraska_table() {
        let pairs: Vec<_> = [
            Event::PrepullStarted,
            Event::PrepullFinished,
            Event::SwapStarted,
            Event::UpdateComplete,
            Event::Failed { error_code: 34 },
        ]
        .iter()
        .map(|e| (e.event_type(), e.event_result(), e.error_code()))
        .collect();
        assert_eq!(
            pairs,
            [
                (13, 1, None),
                (14, 1, None),
                (800, 1, None),
                (3, 1, None),
                (3, 0, Some(34))
            ]
        );
    }

    #[test]
    fn app_ids_compare_without_braces_and_case() {
        assert!(same_app_id(
            "{6A6E5B4C-0000-4000-8000-00000000BEEF}",
            "6a6e5b4c-0000-4000-8000-00000000beef"
        ));
        assert!(!same_app_id("a", "b"));
    }
}
