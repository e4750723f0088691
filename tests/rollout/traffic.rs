//! Traffic through Traefik: waiting until it routes to the fleet, counting from its access log
//! which instance answered, and the load generator aimed at the fleet's router.
//!
//! Shared by `tests/rollout.rs` and `examples/rollout_bench.rs`; not every item is used by each.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use super::fleet::{Fleet, HOST};
use super::load::{Load, LoadSpec};
use crate::support::poll_until;

impl Fleet {
    /// Waits until Traefik answers 200 through its router.
    pub async fn wait_routed(&self, timeout: Duration) {
        let http = crate::support::http_client();
        let routed = poll_until(timeout, "Traefik routes to the app", || async {
            let response = http
                .get(self.traefik.url())
                .header("Host", HOST)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match response.status().as_u16() {
                200 => Ok(()),
                status => Err(format!("status {status}")),
            }
        })
        .await;
        if let Err(e) = routed {
            panic!("{e}\n{}", self.traefik.log_tail(20));
        }
    }

    /// Waits until Traefik has sent a request to every instance (it follows etcd within seconds).
    pub async fn wait_all_routed(&self, timeout: Duration) {
        let http = crate::support::http_client();
        let n = self.instances.len();
        let all = poll_until(timeout, "Traefik routes to every instance", || async {
            for _ in 0..n * 2 {
                let _ = http
                    .get(self.traefik.url())
                    .header("Host", HOST)
                    .send()
                    .await;
            }
            match self.served_by().len() {
                served if served == n => Ok(()),
                served => Err(format!("{served} of {n} instances answered")),
            }
        })
        .await;
        if let Err(e) = all {
            panic!("{e}\n{}", self.traefik.log_tail(20));
        }
    }

    /// How many 200s each instance answered through Traefik so far, from its access log.
    pub fn served_by(&self) -> BTreeMap<String, u64> {
        let log = std::fs::read_to_string(self.traefik.access_log()).unwrap_or_default();
        let mut out = BTreeMap::new();
        for line in log.lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if entry["DownstreamStatus"].as_u64() != Some(200) {
                continue;
            }
            let addr = entry["ServiceAddr"].as_str().unwrap_or_default();
            let instance = self
                .instances
                .iter()
                .find(|i| addr == format!("127.0.0.1:{}", i.port));
            if let Some(instance) = instance {
                *out.entry(instance.name.clone()).or_default() += 1;
            }
        }
        out
    }

    /// Starts the load generator through Traefik at `rate` requests/s for at most `max`.
    pub fn load(&self, rate: u32, max: Duration) -> Load {
        Load::start(LoadSpec {
            url: format!("{}/", self.traefik.url()),
            host: HOST.to_string(),
            rate,
            max_requests: u64::from(rate) * max.as_secs().max(1),
            max_duration: max,
            request_timeout: Duration::from_secs(5),
        })
    }
}
