//! Following a unit's `LoadState` over the real systemd container's bus: a unit with no unit
//! file is `not-found`, a unit linked to `/dev/null` is `masked`; each is logged once as a WARN
//! naming the unit and carried in the `UnitState` (for `STATUS=` and `status`), and a unit that
//! gets its file later becomes `loaded`.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sidekick::systemd::{Bus, DbusUnits, LoadState, UnitManager, UnitState};
use support::systemd::{self, Systemd};
use support::{poll_until, prerequisites_met};

const FOLLOW_TIMEOUT: Duration = Duration::from_secs(20);

/// Log lines written by the code under test, kept for assertions.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut lines) = self.0.lock() {
            lines.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default()
    }
}

async fn state_where(units: &DbusUnits, what: &str, ok: impl Fn(&UnitState) -> bool) -> UnitState {
    let rx = units.unit_state();
    poll_until(FOLLOW_TIMEOUT, what, || {
        let state = rx.borrow().clone();
        let found = ok(&state).then_some(state.clone());
        async move { found.ok_or(format!("{state:?}")) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

const SERVICE: &str = "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n";

// Current-thread runtime: the watch task runs on this thread, so it logs to the subscriber below.
#[tokio::test(flavor = "current_thread")]
async fn not_found_and_masked_units_are_warned_once_and_surfaced_in_the_unit_state() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let systemd = Systemd::start().await;
    std::os::unix::fs::symlink("/dev/null", systemd.unit_dir().join("masked-app.service"))
        .expect("mask the unit");
    systemd.reload().await;

    let bus = Bus::Address(systemd.bus_address().to_string());
    let missing = DbusUnits::start(bus.clone(), "no-such-app@1.service".into());
    let masked = DbusUnits::start(bus, "masked-app.service".into());
    let state = state_where(&missing, "not-found", |s| s.load == LoadState::NotFound).await;
    assert!(!state.active.is_active(), "{state:?}");
    state_where(&masked, "masked", |s| s.load == LoadState::Masked).await;

    // Installing the unit file and reloading turns it into a loaded unit.
    systemd.write_unit("no-such-app@.service", SERVICE);
    systemd.reload().await;
    state_where(&missing, "loaded", |s| s.load == LoadState::Loaded).await;

    let text = logs.text();
    let warned = |needle: &str| {
        text.lines()
            .filter(|l| l.contains("WARN") && l.contains(needle))
            .count()
    };
    assert_eq!(
        warned("unit no-such-app@1.service is not-found"),
        1,
        "{text}"
    );
    assert_eq!(warned("unit masked-app.service is masked"), 1, "{text}");
}

/// `Restart=always`: a crashing service reads `failed` for an instant at most (never, with some
/// systemd versions), a state a watch may miss. Each automatic restart grows its `NRestarts`,
/// which the watch counts as a departure from `active` (issue 17: min-healthy).
#[tokio::test(flavor = "current_thread")]
async fn a_grown_n_restarts_counts_as_a_departure() {
    if !prerequisites_met(systemd::NEEDS) {
        return;
    }
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let systemd = Systemd::start().await;
    systemd.write_unit(
        "crashing-app.service",
        "[Unit]\nStartLimitIntervalSec=0\n\
         [Service]\nRestart=always\nRestartSec=300ms\nExecStart=/bin/sh -c 'sleep 1; exit 1'\n",
    );
    systemd.reload().await;
    let bus = Bus::Address(systemd.bus_address().to_string());
    let units = DbusUnits::start(bus, "crashing-app.service".into());
    state_where(&units, "loaded", |s| s.load == LoadState::Loaded).await;
    let mgr = systemd.manager().await;
    let started = systemd::run_job(&mgr, systemd::Job::Start, "crashing-app.service").await;
    assert_eq!(started, "done");
    state_where(&units, "two departures", |s| s.departures >= 2).await;
    let text = logs.text();
    assert!(
        text.contains("unit restarted automatically (NRestarts grew)"),
        "{text}"
    );
    systemd::run_job(&mgr, systemd::Job::Stop, "crashing-app.service").await;
}
