//! Restarting an instance by hand, without the swap, for comparison with it: the seed's way
//! (`RestartUnit` while the instance is registered, as `fleetctl destroy/start` did) and drain
//! first (stop the sidekick, which deregisters; wait the drain; restart; start the sidekick).
//!
//! Shared by `tests/rollout.rs` and `examples/rollout_bench.rs`; not every item is used by each.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use super::fleet::{Fleet, SERVERS_PREFIX};
use super::rotation::count_keys;
use crate::support::{poll_until, wait_for_http_ok};

/// A restart and its re-registration must finish within this.
const RESTART_TIMEOUT: Duration = Duration::from_secs(60);

/// How the instance is taken out for its restart.
#[derive(Debug, Clone, Copy)]
pub enum Method {
    /// `RestartUnit` while registered: no deregistration, no drain.
    SeedsWay,
    /// Deregister (SIGTERM to the sidekick), wait this long, then restart.
    DrainFirst(Duration),
}

/// Restarts instance `i` (0-based) by `method` and waits until Traefik routes to it again;
/// returns the time from `RestartUnit` until the app answers on its port.
pub async fn restart_instance(fleet: &mut Fleet, i: usize, method: Method) -> Duration {
    let n = fleet.instances.len();
    let name = fleet.instances[i].name.clone();
    let served_before = fleet.served_by().get(&name).copied();
    if let Method::DrainFirst(drain) = method {
        fleet.stop_sidekick(i);
        let gone = poll_until(
            RESTART_TIMEOUT,
            "the stopped sidekick's key gone",
            || async {
                match count_keys(&fleet.client, SERVERS_PREFIX).await {
                    left if left < n => Ok(()),
                    left => Err(format!("{left} registered")),
                }
            },
        )
        .await;
        gone.unwrap_or_else(|e| panic!("{name}: {e}"));
        // The drain itself: the time the load balancer gets to stop routing here.
        tokio::time::sleep(drain).await;
    }
    let start = Instant::now();
    assert_eq!(fleet.restart_unit(i).await, "done", "RestartUnit {name}");
    let url = format!("http://127.0.0.1:{}/", fleet.instances[i].port);
    wait_for_http_ok(&url, RESTART_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let restart = start.elapsed();
    if let Method::DrainFirst(_) = method {
        fleet.start_sidekick(i);
    }
    fleet.wait_registered(n, RESTART_TIMEOUT).await;
    let routed = poll_until(RESTART_TIMEOUT, "Traefik routes to it again", || async {
        match fleet.served_by().get(&name).copied() > served_before {
            true => Ok(()),
            false => Err("no request answered by it yet"),
        }
    })
    .await;
    routed.unwrap_or_else(|e| panic!("{name}: {e}\n{}", fleet.logs(20)));
    restart
}
