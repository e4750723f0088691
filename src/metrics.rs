//! Prometheus metrics of one sidekick (`daemon.metrics`, e.g. `127.0.0.1:9527`): the agent's
//! phase, whether the instance is registered, lease keepalive failures and re-grants, update checks
//! and swaps by result, swap step durations, slot wait time and the running version. Encoded by the
//! `prometheus-client` crate as OpenMetrics text, served at `GET /metrics` over HTTP/1.1 by hyper.
//! A scraper that does not ask for OpenMetrics (`Accept`) gets the classic Prometheus text format,
//! which differs only in how counters are named in `# HELP`/`# TYPE` and in having no `# EOF`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// The content type of OpenMetrics text, which Prometheus asks for.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for everyone else (curl, `promtool check metrics`).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// How long one connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog (a scraper needs one).
pub const MAX_CONNECTIONS: usize = 16;
/// Longest life of one connection, keep-alive included, so idle ones cannot hold every slot.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

type StepHistograms = Family<StepLabel, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    // 0.1 s .. ~27 min: drains and restarts take seconds, slot waits up to many minutes.
    Histogram::new(exponential_buckets(0.1, 2.0, 15))
}

/// The metrics of this process. Cheap to clone; every clone updates the same values.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    phase: Family<PhaseLabel, Gauge>,
    current_phase: Arc<Mutex<Option<String>>>,
    registered: Gauge,
    keepalive_failures: Counter,
    lease_regrants: Counter,
    update_checks: Family<ResultLabel, Counter>,
    swaps: Family<ResultLabel, Counter>,
    swap_step_seconds: StepHistograms,
    slot_wait_seconds: Histogram,
    version: Family<VersionLabel, Gauge>,
    current_version: Arc<Mutex<Option<String>>>,
    step_started: Family<StepLabel, Gauge>,
    current_step: Arc<Mutex<Option<String>>>,
    slot_attempts: Family<ResultLabel, Counter>,
}

impl Metrics {
    /// All metrics, registered under the `sidekick_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sidekick");
        let phase = Family::<PhaseLabel, Gauge>::default();
        registry.register("phase", "1 for the phase the agent is in", phase.clone());
        let registered = Gauge::default();
        registry.register(
            "registered",
            "1 while the instance is registered in etcd",
            registered.clone(),
        );
        let keepalive_failures = Counter::default();
        registry.register(
            "lease_keepalive_failures",
            "Lease keepalives that failed or came back late",
            keepalive_failures.clone(),
        );
        let lease_regrants = Counter::default();
        registry.register(
            "lease_regrants",
            "Registration leases granted again after one was lost",
            lease_regrants.clone(),
        );
        let update_checks = Family::<ResultLabel, Counter>::default();
        registry.register(
            "update_checks",
            "Update checks by result",
            update_checks.clone(),
        );
        let swaps = Family::<ResultLabel, Counter>::default();
        registry.register("swaps", "Swaps by result", swaps.clone());
        let swap_step_seconds: StepHistograms =
            Family::new_with_constructor(seconds_histogram as fn() -> Histogram);
        registry.register(
            "swap_step_seconds",
            "How long each step of a swap took",
            swap_step_seconds.clone(),
        );
        let slot_wait_seconds = seconds_histogram();
        registry.register(
            "slot_wait_seconds",
            "Time from asking for an update slot to holding one",
            slot_wait_seconds.clone(),
        );
        let version = Family::<VersionLabel, Gauge>::default();
        registry.register(
            "version_info",
            "1 for the version the unit runs",
            version.clone(),
        );
        let step_started = Family::<StepLabel, Gauge>::default();
        registry.register(
            "swap_step_started_timestamp_seconds",
            "Unix time the swap's current step began (only the current step has a series): a wait \
             with no bound, for a slot or for etcd, shows as a time that stays in the past",
            step_started.clone(),
        );
        let slot_attempts = Family::<ResultLabel, Counter>::default();
        registry.register(
            "slot_attempts",
            "Update slot acquire attempts by answer (acquired, busy, halted, failed)",
            slot_attempts.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            phase,
            current_phase: Arc::default(),
            registered,
            keepalive_failures,
            lease_regrants,
            update_checks,
            swaps,
            swap_step_seconds,
            slot_wait_seconds,
            version,
            current_version: Arc::default(),
            step_started,
            current_step: Arc::default(),
            slot_attempts,
        }
    }

    /// The agent entered `phase` (e.g. `serving`, `draining`).
    pub fn set_phase(&self, phase: &str) {
        swap_label(&self.current_phase, phase, |name, on| {
            self.phase
                .get_or_create(&PhaseLabel { phase: name.into() })
                .set(i64::from(on));
        });
    }

    /// The instance is registered now, or not.
    pub fn set_registered(&self, registered: bool) {
        self.registered.set(i64::from(registered));
    }

    /// A lease keepalive failed or came back late.
    pub fn keepalive_failed(&self) {
        self.keepalive_failures.inc();
    }

    /// A lost lease was granted again.
    pub fn lease_regranted(&self) {
        self.lease_regrants.inc();
    }

    /// An update check ended with `result` (e.g. `update`, `no-update`, `on-hold`, `error`).
    pub fn update_checked(&self, result: &str) {
        self.update_checks
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// A swap ended with `result` (the results are listed in `docs/swap.md`).
    pub fn swap_finished(&self, result: &str) {
        self.swaps
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// One step of a swap took `took`.
    pub fn swap_step(&self, step: &str, took: Duration) {
        self.swap_step_seconds
            .get_or_create(&StepLabel { step: step.into() })
            .observe(took.as_secs_f64());
    }

    /// Waited `took` for an update slot.
    pub fn slot_waited(&self, took: Duration) {
        self.slot_wait_seconds.observe(took.as_secs_f64());
    }

    /// The swap entered `step` at Unix time `since` (seconds); `None`: no swap in progress.
    pub fn set_step_started(&self, step: Option<(&str, u64)>) {
        let mut current = self
            .current_step
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = current.take() {
            self.step_started.remove(&StepLabel { step: old });
        }
        if let Some((step, since)) = step {
            self.step_started
                .get_or_create(&StepLabel { step: step.into() })
                .set(i64::try_from(since).unwrap_or(i64::MAX));
            *current = Some(step.to_string());
        }
    }

    /// One slot acquire attempt was answered `answer` (`acquired`, `busy`, `halted`, `failed`).
    pub fn slot_attempted(&self, answer: &str) {
        self.slot_attempts
            .get_or_create(&ResultLabel {
                result: answer.into(),
            })
            .inc();
    }

    /// The unit runs `version` now.
    pub fn set_version(&self, version: &str) {
        let mut current = self
            .current_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = current.take() {
            self.version.remove(&VersionLabel { version: old });
        }
        self.version
            .get_or_create(&VersionLabel {
                version: version.into(),
            })
            .set(1);
        *current = Some(version.to_string());
    }

    /// The metrics as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            warn!(error = %err, "failed to encode the metrics");
        }
        text
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Moves the single `1` of a one-hot labelled gauge from the old label to `new`.
fn swap_label(current: &Mutex<Option<String>>, new: &str, set: impl Fn(&str, bool)) {
    let mut current = current.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(old) = current.as_deref()
        && old != new
    {
        set(old, false);
    }
    set(new, true);
    *current = Some(new.to_string());
}

/// Serves `GET /metrics` on `listen` until the returned task is aborted; the bound address is
/// returned too (port 0 picks one).
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    if let Some(warning) = exposure_warning(listen) {
        warn!("{warning}");
    }
    let listener = TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(error = %err, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(respond(&metrics, &request)) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .header_read_timeout(REQUEST_TIMEOUT)
                    .timer(hyper_util::rt::TokioTimer::new())
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        debug!(peer = %peer, error = %err, "metrics connection ended with an error")
                    }
                    Err(_) => debug!(peer = %peer, "metrics connection closed at its lifetime"),
                }
                drop(slot);
            });
        }
    });
    Ok((bound, task))
}

/// The warning for a metrics address others can reach: the metrics carry no secret, but they
/// show versions and rollout state, and anyone who reaches the port can use up its connections.
pub fn exposure_warning(listen: SocketAddr) -> Option<String> {
    (!listen.ip().is_loopback()).then(|| {
        format!(
            "daemon.metrics listens on {listen}, which is not loopback: anyone who reaches it can \
             read the instance's version and rollout state; bind 127.0.0.1 and let the scraper \
             come through a local agent, or firewall the port"
        )
    })
}

fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    let openmetrics = request
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .any(|accept| {
            accept
                .to_str()
                .is_ok_and(|a| a.contains("application/openmetrics-text"))
        });
    match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") if openmetrics => {
            reply(StatusCode::OK, OPENMETRICS, metrics.encode())
        }
        (&Method::GET | &Method::HEAD, "/metrics") => reply(
            StatusCode::OK,
            PROMETHEUS_TEXT,
            prometheus_text(&metrics.encode()),
        ),
        (_, "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics\n".into(),
        ),
    }
}

/// OpenMetrics text as the classic Prometheus text format: a counter's `# HELP` and `# TYPE` name
/// its samples' `_total` name, and there is no `# EOF` (nor `# UNIT`).
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[path = "metrics/serve_tests.rs"]
mod serve_tests;
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_and_version_are_one_hot() {
        let metrics = Metrics::new();
        metrics.set_phase("serving");
        metrics.set_phase("draining");
        metrics.set_version("1.0.0");
        metrics.set_version("2.0.0");
        let text = metrics.encode();
        assert!(
            text.contains("sidekick_phase{phase=\"serving\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("sidekick_phase{phase=\"draining\"} 1"),
            "{text}"
        );
        assert!(!text.contains("version=\"1.0.0\""), "{text}");
        assert!(
            text.contains("sidekick_version_info{version=\"2.0.0\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn counters_and_histograms_are_encoded_with_their_labels() {
        let metrics = Metrics::new();
        metrics.set_registered(true);
        metrics.keepalive_failed();
        metrics.lease_regranted();
        metrics.update_checked("no-update");
        metrics.update_checked("no-update");
        metrics.swap_finished("updated");
        metrics.swap_step("drain", Duration::from_secs(5));
        metrics.slot_waited(Duration::from_millis(300));
        let text = metrics.encode();
        for line in [
            "sidekick_registered 1",
            "sidekick_lease_keepalive_failures_total 1",
            "sidekick_lease_regrants_total 1",
            "sidekick_update_checks_total{result=\"no-update\"} 2",
            "sidekick_swaps_total{result=\"updated\"} 1",
            "sidekick_swap_step_seconds_count{step=\"drain\"} 1",
            "sidekick_slot_wait_seconds_count 1",
            "# EOF",
        ] {
            assert!(text.contains(line), "missing `{line}` in\n{text}");
        }
    }

    #[test]
    fn classic_text_names_counters_by_their_samples_and_has_no_eof() {
        let metrics = Metrics::new();
        metrics.update_checked("update");
        metrics.set_phase("serving");
        let text = prometheus_text(&metrics.encode());
        assert!(
            text.contains("# TYPE sidekick_update_checks_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP sidekick_update_checks_total Update checks"),
            "{text}"
        );
        assert!(text.contains("# TYPE sidekick_phase gauge\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }
}
