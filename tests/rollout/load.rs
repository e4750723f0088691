//! The load generator: requests through Traefik at a fixed rate, bounded in count and time, to a
//! loopback URL only. Every answer is kept: the version a 200 named, any other status, any
//! connection error or timeout, with the second it was sent in, for a per-second timeline.
//!
//! Shared by `tests/rollout.rs` and `examples/rollout_bench.rs`; not every item is used by each.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What to send, how fast and for at most how long.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The entrypoint, e.g. `http://127.0.0.1:43210/` (must be loopback).
    pub url: String,
    /// The `Host` header the router matches.
    pub host: String,
    /// Requests started per second.
    pub rate: u32,
    /// Hard bound on the number of requests.
    pub max_requests: u64,
    /// Hard bound on how long the generator runs.
    pub max_duration: Duration,
    /// How long one request may take before it counts as failed.
    pub request_timeout: Duration,
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200, and the version the page named (`?` when it named none).
    Answered(String),
    /// Any status other than 200.
    Status(u16),
    /// The connection failed or broke.
    ConnectionError(String),
    /// No answer within the request timeout.
    Timeout,
}

impl Outcome {
    pub fn failed(&self) -> bool {
        !matches!(self, Outcome::Answered(_))
    }
}

/// One request: when it was sent (from the start of the run) and how it ended.
#[derive(Debug, Clone)]
pub struct Sample {
    pub sent_at: Duration,
    pub outcome: Outcome,
}

/// A running generator; [`Load::finish`] stops it and returns what it saw.
pub struct Load {
    stop: watch::Sender<bool>,
    task: JoinHandle<LoadReport>,
}

impl Load {
    /// Starts sending at once. Panics when the URL is not on loopback.
    pub fn start(spec: LoadSpec) -> Load {
        let parsed = url::Url::parse(&spec.url).expect("load URL");
        let host = parsed.host_str().unwrap_or_default();
        let loopback = host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
        assert!(loopback, "load generator targets loopback only, not {host}");
        assert!(spec.rate > 0, "rate must be positive");
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(spec, stopped));
        Load { stop, task }
    }

    /// Runs to the spec's bounds, waits for the requests in flight and returns the report.
    pub async fn wait(self) -> LoadReport {
        self.task.await.expect("load generator task")
    }

    /// Stops sending, waits for the requests in flight and returns the report.
    pub async fn finish(self) -> LoadReport {
        let _ = self.stop.send(true);
        self.task.await.expect("load generator task")
    }
}

async fn run(spec: LoadSpec, mut stopped: watch::Receiver<bool>) -> LoadReport {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(spec.request_timeout)
        .pool_max_idle_per_host(64)
        .build()
        .expect("load client");
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / spec.rate);
    // A starved runtime catches up on missed ticks, so the rate holds on a busy machine.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight = JoinSet::new();
    let mut samples = Vec::new();
    let mut sent = 0u64;
    while sent < spec.max_requests && started.elapsed() < spec.max_duration {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.changed() => break,
        }
        let request = client.get(&spec.url).header("Host", &spec.host);
        let sent_at = started.elapsed();
        in_flight.spawn(async move {
            Sample {
                sent_at,
                outcome: send(request).await,
            }
        });
        sent += 1;
        while let Some(done) = in_flight.try_join_next() {
            samples.extend(done.ok());
        }
    }
    while let Some(done) = in_flight.join_next().await {
        samples.extend(done.ok());
    }
    samples.sort_by_key(|s| s.sent_at);
    LoadReport {
        samples,
        duration: started.elapsed(),
        rate: spec.rate,
    }
}

async fn send(request: reqwest::RequestBuilder) -> Outcome {
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Outcome::Timeout,
        Err(e) => return Outcome::ConnectionError(error_chain(&e)),
    };
    let status = response.status().as_u16();
    let body = match response.text().await {
        Ok(body) => body,
        Err(e) if e.is_timeout() => return Outcome::Timeout,
        Err(e) => return Outcome::ConnectionError(error_chain(&e)),
    };
    match status {
        200 => Outcome::Answered(page_version(&body).unwrap_or("?").to_string()),
        other => Outcome::Status(other),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}

/// The version a test app page names: `<h1>example-web 2.0.0</h1>` (the page
/// `examples/walkthrough/image/context` writes for every image the tests build).
pub fn page_version(body: &str) -> Option<&str> {
    let rest = body.split("<h1>example-web ").nth(1)?;
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))?;
    Some(&rest[..end]).filter(|v| !v.is_empty())
}

/// Everything one run saw.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub samples: Vec<Sample>,
    pub duration: Duration,
    pub rate: u32,
}

/// One second of the timeline.
#[derive(Debug, Default, Clone)]
pub struct Second {
    pub sent: u64,
    pub failed: u64,
    pub versions: BTreeMap<String, u64>,
}

impl LoadReport {
    pub fn sent(&self) -> u64 {
        self.samples.len() as u64
    }

    pub fn failures(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.outcome.failed()).collect()
    }

    pub fn failed(&self) -> u64 {
        self.failures().len() as u64
    }

    /// Requests actually started per second over the run.
    pub fn achieved_rate(&self) -> f64 {
        self.sent() as f64 / self.duration.as_secs_f64().max(1e-9)
    }

    /// How many 200s each version answered.
    pub fn versions(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for s in &self.samples {
            if let Outcome::Answered(v) = &s.outcome {
                *out.entry(v.clone()).or_default() += 1;
            }
        }
        out
    }

    /// How many 200s each version answered to requests sent at or after `from`.
    pub fn versions_after(&self, from: Duration) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.sent_at >= from) {
            if let Outcome::Answered(v) = &s.outcome {
                *out.entry(v.clone()).or_default() += 1;
            }
        }
        out
    }

    /// Per-second counts, by the second each request was sent in.
    pub fn timeline(&self) -> Vec<Second> {
        let seconds = self.duration.as_secs() as usize + 1;
        let mut out = vec![Second::default(); seconds];
        for s in &self.samples {
            let slot = &mut out[(s.sent_at.as_secs() as usize).min(seconds - 1)];
            slot.sent += 1;
            match &s.outcome {
                Outcome::Answered(v) => *slot.versions.entry(v.clone()).or_default() += 1,
                _ => slot.failed += 1,
            }
        }
        out
    }

    /// The timeline as a table, one line per second.
    pub fn render_timeline(&self) -> String {
        let mut out =
            String::from("| s | sent | failed | 200s by version |\n| --- | --- | --- | --- |\n");
        for (i, second) in self.timeline().iter().enumerate() {
            let versions: Vec<String> = second
                .versions
                .iter()
                .map(|(v, n)| format!("{v}:{n}"))
                .collect();
            let _ = writeln!(
                out,
                "| {i} | {} | {} | {} |",
                second.sent,
                second.failed,
                versions.join(" ")
            );
        }
        out
    }

    /// The first few failures, for assertion messages.
    pub fn describe_failures(&self, limit: usize) -> String {
        let failures = self.failures();
        let mut out = format!("{} of {} requests failed", failures.len(), self.sent());
        for s in failures.iter().take(limit) {
            let _ = write!(
                out,
                "\n  at {:.3}s: {:?}",
                s.sent_at.as_secs_f64(),
                s.outcome
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_version_reads_the_version_the_test_app_names() {
        let page = "<html><body><h1>example-web 3.0.1</h1></body></html>\n";
        assert_eq!(page_version(page), Some("3.0.1"));
        assert_eq!(page_version("<h1>example-web 1.0.0</h1>\n"), Some("1.0.0"));
        assert_eq!(page_version("hello"), None);
    }
}
