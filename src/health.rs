//! Health probes of the app instance: HTTP (a GET that answers 2xx or 3xx within the timeout) and
//! TCP (a connect that succeeds within the timeout), behind the [`Probe`] seam, and the rise/fall
//! counting ([`HealthStreak`]) that turns single results into healthy/unhealthy.

use std::future::Future;
use std::num::NonZeroU32;
use std::time::Duration;

use thiserror::Error;
use url::Url;

/// The `[health]` settings, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    pub check: HealthCheck,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: NonZeroU32,
    pub fall: NonZeroU32,
}

/// The probe, with its target resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheck {
    Http { url: Url },
    Tcp { address: String },
    None,
}

/// Why one probe failed.
#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("GET {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: {detail}")]
    Http { url: String, detail: String },
    #[error("connect to {address}: {detail}")]
    Tcp { address: String, detail: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl ProbeError {
    /// The failure in a few words for a log line about a decision: the path rather than the
    /// whole URL (the URL is in the per-check line), e.g. `GET / answered 404`.
    pub fn reason(&self) -> String {
        let path = |url: &str| {
            url::Url::parse(url).map_or_else(|_| url.to_string(), |u| u.path().to_string())
        };
        match self {
            ProbeError::Status { url, status } => format!("GET {} answered {status}", path(url)),
            ProbeError::Http { url, detail } => format!("GET {}: {detail}", path(url)),
            ProbeError::Tcp { .. } => self.to_string(),
            ProbeError::Timeout(after) => {
                format!("no answer within {}", humantime::format_duration(*after))
            }
        }
    }

    /// Short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeError::Status { .. } => "status",
            ProbeError::Http { .. } => "http",
            ProbeError::Tcp { .. } => "tcp",
            ProbeError::Timeout(_) => "timeout",
        }
    }
}

/// One health check of the instance.
pub trait Probe: Send {
    /// Runs the check once.
    fn check(&mut self) -> impl Future<Output = Result<(), ProbeError>> + Send;

    /// Why the last check failed, in a few words (e.g. `GET / answered 404`); `None` after a
    /// pass or when the probe does not say.
    fn last_failure(&self) -> Option<String> {
        None
    }
}

/// The configured probe.
#[derive(Debug, Clone)]
pub enum HealthProbe {
    Http(HttpProbe),
    Tcp(TcpProbe),
    /// `health.check = "none"`: always passes.
    None,
}

impl HealthProbe {
    /// The probe `[health]` configures.
    pub fn from_settings(settings: &HealthSettings) -> anyhow::Result<HealthProbe> {
        Ok(match &settings.check {
            HealthCheck::Http { url } => HealthProbe::Http(HttpProbe::new(url, settings.timeout)?),
            HealthCheck::Tcp { address } => {
                HealthProbe::Tcp(TcpProbe::new(address.clone(), settings.timeout))
            }
            HealthCheck::None => HealthProbe::None,
        })
    }
}

impl Probe for HealthProbe {
    async fn check(&mut self) -> Result<(), ProbeError> {
        match self {
            HealthProbe::Http(probe) => probe.check().await,
            HealthProbe::Tcp(probe) => probe.check().await,
            HealthProbe::None => Ok(()),
        }
    }

    fn last_failure(&self) -> Option<String> {
        match self {
            HealthProbe::Http(probe) => probe.last_failure.clone(),
            HealthProbe::Tcp(probe) => probe.last_failure.clone(),
            HealthProbe::None => None,
        }
    }
}

/// GET a URL; 2xx and 3xx pass (redirects are not followed).
#[derive(Debug, Clone)]
pub struct HttpProbe {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
    /// [`Probe::last_failure`].
    last_failure: Option<String>,
}

impl HttpProbe {
    /// A probe of `url` that gives up after `timeout`.
    pub fn new(url: &Url, timeout: Duration) -> anyhow::Result<HttpProbe> {
        let client = crate::http_tls::client_builder(url, Vec::new())
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .pool_max_idle_per_host(0)
            .user_agent(concat!("sidekick/", env!("CARGO_PKG_VERSION"), " health"))
            .build()
            .map_err(|e| anyhow::anyhow!(crate::http_tls::explain(error_chain(&e))))?;
        Ok(HttpProbe {
            client,
            url: url.to_string(),
            timeout,
            last_failure: None,
        })
    }
}

impl Probe for HttpProbe {
    async fn check(&mut self) -> Result<(), ProbeError> {
        let result = self.get().await;
        self.last_failure = result.as_ref().err().map(ProbeError::reason);
        result
    }

    fn last_failure(&self) -> Option<String> {
        self.last_failure.clone()
    }
}

impl HttpProbe {
    async fn get(&self) -> Result<(), ProbeError> {
        let response = self.client.get(&self.url).send().await.map_err(|e| {
            if e.is_timeout() {
                ProbeError::Timeout(self.timeout)
            } else {
                ProbeError::Http {
                    url: self.url.clone(),
                    detail: error_chain(&e),
                }
            }
        })?;
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(ProbeError::Status {
                url: self.url.clone(),
                status: status.as_u16(),
            })
        }
    }
}

/// Connect to `host:port`.
#[derive(Debug, Clone)]
pub struct TcpProbe {
    address: String,
    timeout: Duration,
    /// [`Probe::last_failure`].
    last_failure: Option<String>,
}

impl TcpProbe {
    /// A probe of `address` (`host:port`) that gives up after `timeout`.
    pub fn new(address: String, timeout: Duration) -> TcpProbe {
        TcpProbe {
            address,
            timeout,
            last_failure: None,
        }
    }
}

impl Probe for TcpProbe {
    async fn check(&mut self) -> Result<(), ProbeError> {
        let result = self.connect().await;
        self.last_failure = result.as_ref().err().map(ProbeError::reason);
        result
    }

    fn last_failure(&self) -> Option<String> {
        self.last_failure.clone()
    }
}

impl TcpProbe {
    async fn connect(&self) -> Result<(), ProbeError> {
        let connect = tokio::net::TcpStream::connect(self.address.as_str());
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(_stream)) => Ok(()),
            Ok(Err(e)) => Err(ProbeError::Tcp {
                address: self.address.clone(),
                detail: e.to_string(),
            }),
            Err(_) => Err(ProbeError::Timeout(self.timeout)),
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Consecutive passes and failures against the rise/fall thresholds. Starts unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthStreak {
    rise: NonZeroU32,
    fall: NonZeroU32,
    passes: u32,
    failures: u32,
    healthy: bool,
}

impl HealthStreak {
    /// An unhealthy streak that turns healthy after `rise` passes in a row and back after `fall`
    /// failures in a row.
    pub fn new(rise: NonZeroU32, fall: NonZeroU32) -> HealthStreak {
        HealthStreak {
            rise,
            fall,
            passes: 0,
            failures: 0,
            healthy: false,
        }
    }

    /// Counts one result; returns whether the instance is healthy now.
    pub fn record(&mut self, passed: bool) -> bool {
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            if self.passes >= self.rise.get() {
                self.healthy = true;
            }
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.fall.get() {
                self.healthy = false;
            }
        }
        self.healthy
    }

    /// Forgets all results: unhealthy until `rise` passes again (after the unit restarts).
    pub fn reset(&mut self) {
        *self = HealthStreak::new(self.rise, self.fall);
    }

    /// The same streak judged by new thresholds (a reloaded configuration): the counts so far
    /// stay, and a count that meets a new threshold turns the streak at once.
    pub fn with_thresholds(self, rise: NonZeroU32, fall: NonZeroU32) -> HealthStreak {
        let mut streak = HealthStreak { rise, fall, ..self };
        if streak.passes >= rise.get() {
            streak.healthy = true;
        }
        if streak.failures >= fall.get() {
            streak.healthy = false;
        }
        streak
    }

    /// Healthy until `fall` failures in a row: for an instance that served without a check
    /// when one is added.
    pub fn assume_healthy(&mut self) {
        self.healthy = true;
        self.failures = 0;
    }

    /// Healthy by the thresholds.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Unhealthy by `fall` failures in a row (not merely not yet healthy after a start).
    pub fn known_unhealthy(&self) -> bool {
        !self.healthy && self.failures >= self.fall.get()
    }

    /// Passes in a row so far and the number needed, e.g. for a status line `1/2`.
    pub fn progress(&self) -> (u32, u32) {
        (self.passes, self.rise.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streak(rise: u32, fall: u32) -> HealthStreak {
        HealthStreak::new(
            NonZeroU32::new(rise).unwrap(),
            NonZeroU32::new(fall).unwrap(),
        )
    }

    #[test]
    fn turns_healthy_after_rise_passes_in_a_row_and_unhealthy_after_fall_failures() {
        let mut s = streak(2, 3);
        assert!(!s.record(true));
        assert!(!s.record(false), "a failure restarts the rise count");
        assert!(!s.record(true));
        assert!(s.record(true));
        assert!(s.record(false));
        assert!(s.record(false));
        assert!(s.record(true), "a pass restarts the fall count");
        assert!(s.record(false) && s.record(false));
        assert!(!s.record(false));
    }

    #[test]
    fn new_thresholds_keep_the_counts_and_turn_a_streak_that_meets_them() {
        let n = |v| NonZeroU32::new(v).unwrap();
        let mut s = streak(3, 3);
        s.record(true);
        s.record(true);
        assert!(!s.is_healthy());
        let mut s = s.with_thresholds(n(2), n(3));
        assert!(s.is_healthy(), "two passes meet a rise of 2");
        s.record(false);
        s.record(false);
        assert!(s.is_healthy());
        assert!(
            !s.with_thresholds(n(2), n(2)).is_healthy(),
            "two failures meet a fall of 2"
        );
        let mut s = streak(3, 2);
        s.assume_healthy();
        assert!(s.record(false), "one failure of two");
        assert!(!s.record(false));
    }

    #[tokio::test]
    async fn tcp_probe_passes_on_a_listener_and_fails_on_a_closed_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let mut probe = TcpProbe::new(address.clone(), Duration::from_secs(1));
        assert!(probe.check().await.is_ok());
        drop(listener);
        let err = probe.check().await.unwrap_err();
        assert_eq!(err.kind(), "tcp", "{err}");
    }

    #[tokio::test]
    async fn http_probe_passes_on_2xx_and_3xx_and_fails_on_4xx_and_timeouts() {
        use axum::http::StatusCode;
        use axum::routing::get;
        let app = axum::Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/moved",
                get(|| async { (StatusCode::FOUND, [("location", "/gone")]) }),
            )
            .route("/gone", get(|| async { StatusCode::NOT_FOUND }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let probe = |path: &str| {
            let url = Url::parse(&format!("{base}{path}")).unwrap();
            HttpProbe::new(&url, Duration::from_millis(300))
        };
        assert!(probe("/ok").unwrap().check().await.is_ok());
        assert!(probe("/moved").unwrap().check().await.is_ok());
        let mut gone_probe = probe("/gone").unwrap();
        let gone = gone_probe.check().await.unwrap_err();
        assert!(
            matches!(gone, ProbeError::Status { status: 404, .. }),
            "{gone}"
        );
        // The decision lines say it in a few words: the path, not the whole URL.
        assert_eq!(
            gone_probe.last_failure().as_deref(),
            Some("GET /gone answered 404")
        );
        let slow = probe("/slow").unwrap().check().await.unwrap_err();
        assert_eq!(slow.kind(), "timeout", "{slow}");
    }
}
