//! Update checks against an Omaha v3 update service — CoreUpdate's protocol, served today by
//! Nebraska (<https://github.com/flatcar/nebraska>); wire format per
//! <https://github.com/google/omaha/blob/main/doc/ServerProtocolV3.md> with the CoreOS extensions
//! described in `docs/protocol-omaha.md`.
//!
//! [`protocol`] builds requests and classifies responses without I/O; [`client`] speaks HTTP;
//! [`memory`] is the server-less source for `--dry-run` and tests; [`offer`] and [`image`] validate
//! an offer before anything acts on it, [`repository_policy`] keeps it to the repositories the
//! unit may run; [`schedule`] paces the polls. This module never decides
//! policy: the agent does.

pub mod any;
pub mod client;
pub mod image;
pub mod memory;
pub mod offer;
pub mod protocol;
pub mod repository_policy;
pub mod schedule;

use std::future::Future;

use semver::Version;

pub use any::{AnyUpdateSource, UpdateBackend};
pub use client::{HttpTimeouts, HttpUpdateSource, MAX_RESPONSE_BYTES, OmahaError};
pub use image::{ImageReference, ImageReferenceError};
pub use memory::{InMemoryUpdateSource, LocalRelease, RecordedEvent, ReleaseList};
pub use offer::{OfferRefusal, ValidatedUpdate, validate_offer};
pub use protocol::{
    AppInstance, CheckOutcome, Event, InstallSource, ResponseErrorKind, UpdateOffer, error_code,
};
pub use repository_policy::check_repository;
pub use schedule::{PollResult, PollSchedule};

/// Where update offers come from and progress events go.
pub trait UpdateSource {
    /// Asks for an update for an instance running `current`; `interactive` marks an operator's check.
    fn check(
        &self,
        current: &Version,
        interactive: bool,
    ) -> impl Future<Output = Result<CheckOutcome, OmahaError>> + Send;

    /// Reports one progress event for an instance running `current`.
    fn send_event(
        &self,
        current: &Version,
        event: Event,
    ) -> impl Future<Output = Result<(), OmahaError>> + Send;
}
