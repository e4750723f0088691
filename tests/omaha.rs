//! Integration tests of the Omaha client: response fixtures, request goldens, a request property,
//! offer injection, the example update service over real HTTP, and transport faults.

#[path = "../examples/omaha_server/service/mod.rs"]
mod service;

#[path = "omaha/ca_roots.rs"]
mod ca_roots;
#[path = "omaha/daemon_check.rs"]
mod daemon_check;
#[path = "omaha/example_service.rs"]
mod example_service;
#[path = "omaha/faults.rs"]
mod faults;
#[path = "omaha/https.rs"]
mod https;
#[path = "omaha/injection.rs"]
mod injection;
#[path = "omaha/requests.rs"]
mod requests;
#[path = "omaha/responses.rs"]
mod responses;
#[path = "omaha/secrets_in_logs.rs"]
mod secrets_in_logs;
#[path = "omaha/shipped_examples.rs"]
mod shipped_examples;
#[path = "omaha/update_check_cli.rs"]
mod update_check_cli;
#[path = "omaha/update_trust.rs"]
mod update_trust;
#[path = "omaha/verify_digest.rs"]
mod verify_digest;

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use semver::Version;
use sidekick::identity::app_machine_id;
use sidekick::omaha::protocol::{
    UPDATER_VERSION, classify_check_response, event_request, update_check_request,
};
use sidekick::omaha::{
    AppInstance, CheckOutcome, Event, HttpTimeouts, HttpUpdateSource, InMemoryUpdateSource,
    InstallSource, LocalRelease, ResponseErrorKind, UpdateOffer, UpdateSource, error_code,
    validate_offer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

const FLATCAR_APP: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";
const APP: &str = "6a6e5b4c-0000-4000-8000-00000000beef";
const HOST_ID: &str = "9ce7a919806c4f3785eb6d260345ac4a";

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/omaha")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn instance(app_id: &str, name: &str) -> AppInstance {
    AppInstance {
        app_id: app_id.into(),
        track: "stable".into(),
        arch: "x64".into(),
        machine_id: app_machine_id(HOST_ID, app_id, name).unwrap(),
        boot_id: "{965fb4c5-ad3e-4eb7-a4c2-ca0c0e31ec84}".into(),
        name: name.into(),
    }
}

fn golden_instance() -> AppInstance {
    AppInstance {
        machine_id: "0123456789abcdef0123456789abcdef".into(),
        ..instance(APP, "web-1")
    }
}

fn v(text: &str) -> Version {
    Version::parse(text).unwrap()
}

/// Timeouts short enough that a hanging server fails a test in about a second.
fn short_timeouts() -> HttpTimeouts {
    HttpTimeouts {
        connect: Duration::from_secs(1),
        read: Duration::from_millis(500),
        total: Duration::from_secs(2),
    }
}
