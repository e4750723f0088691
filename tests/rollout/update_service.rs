//! `examples/omaha_server` in-process on a free loopback port, driven through its admin API over
//! real HTTP: one app whose group `g1` follows track `stable` from channel `stable`, with a
//! rollout policy, and packages whose URL is the image reference in the local registry.
//!
//! Shared by `tests/rollout.rs` and `examples/rollout_bench.rs`; not every item is used by each.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::service;

/// The app id the fleet's sidekicks ask for.
pub const APP_ID: &str = "6a6e5b4c-0000-4000-8000-0000000e2e00";
/// The track (and channel) the fleet follows.
pub const TRACK: &str = "stable";
/// The group serving that track.
pub const GROUP: &str = "g1";

/// The running service; stopped when dropped.
pub struct UpdateService {
    base: String,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for UpdateService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UpdateService {
    /// Starts the service with the app, `version` published at `image`, group `g1` and a policy
    /// of at most one update per `period`.
    pub async fn start(version: &str, image: &str, period: Duration) -> UpdateService {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind update service");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        let state = Arc::new(service::ServerState::in_memory());
        let task = tokio::spawn(async move {
            let _ = service::serve(listener, state).await;
        });
        let service = UpdateService {
            base,
            http: crate::support::http_client(),
            task,
        };
        service
            .admin(
                reqwest::Method::PUT,
                &format!("/api/apps/{APP_ID}"),
                json!({"name": "web"}),
            )
            .await;
        service.publish(version, image).await;
        service
            .admin(
                reqwest::Method::PUT,
                &format!("/api/apps/{APP_ID}/groups/{GROUP}"),
                json!({"track": TRACK, "channel": TRACK}),
            )
            .await;
        let period = humantime::format_duration(period).to_string();
        let policy = json!({
            "updates_enabled": true,
            "max_updates_per_period": 1,
            "period_interval": period,
            "update_timeout": "10m",
        });
        service
            .admin(
                reqwest::Method::PUT,
                &format!("/api/apps/{APP_ID}/groups/{GROUP}/policy"),
                policy,
            )
            .await;
        service
    }

    /// The Omaha endpoint for `update.server`.
    pub fn endpoint(&self) -> String {
        format!("{}/v1/update/", self.base)
    }

    /// Publishes `version` (image reference `image`) on the channel.
    pub async fn publish(&self, version: &str, image: &str) {
        let package = json!({
            "version": version,
            "url": image,
            "filename": "image.tar",
            // Any well-formed hashes: `update.pin_digest` is off, the image is pulled by tag.
            "hash": "2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
            "hash_sha256": "3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043",
            "size": 23,
        });
        self.admin(
            reqwest::Method::POST,
            &format!("/api/apps/{APP_ID}/channels/{TRACK}/publish"),
            package,
        )
        .await;
    }

    /// The instance listing: machine id, version, status and last events of each.
    pub async fn instances(&self) -> Vec<Value> {
        let url = format!("{}/api/apps/{APP_ID}/instances", self.base);
        let response = self.http.get(&url).send().await.expect("GET instances");
        let text = response.text().await.expect("instances body");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("instances {text}: {e}"))
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

/// The `(type, result)` pairs of an instance's recorded events, oldest first.
pub fn events(instance: &Value) -> Vec<(i64, i64)> {
    instance["last_events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    let n = |k: &str| e[k].as_i64().unwrap_or(-1);
                    (n("event_type"), n("event_result"))
                })
                .collect()
        })
        .unwrap_or_default()
}
