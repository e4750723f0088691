//! Update slots against a real etcd: a crashed holder, idempotence and changing the limit here;
//! contention, etcd outages, FleetLock and the `status`/`slots` commands in the submodules, so
//! everything links into this one test binary.

mod support;

#[path = "slots/commands.rs"]
mod commands;
#[path = "slots/contention.rs"]
mod contention;
#[path = "slots/daemon_wait.rs"]
mod daemon_wait;
#[path = "slots/etcd_role.rs"]
mod etcd_role;
#[path = "slots/fleetlock.rs"]
mod fleetlock;
#[path = "slots/fleetlock_replay.rs"]
mod fleetlock_replay;
#[path = "slots/fleetlock_secrets.rs"]
mod fleetlock_secrets;
#[path = "slots/fleetlock_server.rs"]
mod fleetlock_server;
#[path = "slots/limit_cap.rs"]
mod limit_cap;
#[path = "slots/outage.rs"]
mod outage;
#[path = "slots/queue.rs"]
mod queue;
#[path = "slots/release.rs"]
mod release;
#[path = "slots/stale.rs"]
mod stale;

/// The example update service in-process, for the `sidekick run` of `stale`.
#[path = "../examples/omaha_server/service/mod.rs"]
mod service;
#[path = "rollout/update_service.rs"]
mod update_service;

use std::num::NonZeroU32;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::Client;
use sidekick::slot::etcd::read_group;
use sidekick::slot::{Acquisition, EtcdSlots, Holding, SlotHolder, SlotLock};
use support::etcd::{self, Etcd};
use support::{ProcessGuard, SignalTarget, poll_until, prerequisites_met, temp_dir};

/// The shortest slot TTL the configuration accepts.
pub const TTL: Duration = Duration::from_secs(5);
pub const GROUP: &str = "web/stable";

pub fn one() -> NonZeroU32 {
    NonZeroU32::MIN
}

pub fn max(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero")
}

pub fn who(id: &str) -> SlotHolder {
    SlotHolder {
        holder: id.to_string(),
        instance: format!("web-{id}"),
    }
}

pub fn slots(client: &Client, limit: NonZeroU32, id: &str) -> EtcdSlots {
    EtcdSlots::new(client.clone(), GROUP, limit, TTL, who(id))
}

pub async fn revision(client: &mut Client) -> i64 {
    let resp = client.get("revision-probe", None).await.expect("get");
    resp.header().expect("header").revision()
}

/// The `slot_holder` example binary, which cargo builds next to this test binary.
fn slot_holder_example() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = profile_dir.join("examples").join("slot_holder");
    assert!(
        path.exists(),
        "{} is missing: plain `cargo test` builds it (or `cargo build --examples`)",
        path.display()
    );
    path
}

#[tokio::test]
async fn holder_killed_with_sigkill_frees_its_slot_within_ttl() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let dir = temp_dir("slot-holder");
    let mut cmd = Command::new(slot_holder_example());
    cmd.arg(etcd.endpoint())
        .args([GROUP, "crasher"])
        .arg(TTL.as_secs().to_string());
    let mut holder = ProcessGuard::spawn(
        "slot holder",
        &mut cmd,
        &dir.path().join("holder.log"),
        SignalTarget::Group,
    );
    let held = poll_until(Duration::from_secs(20), "helper holds the slot", || {
        let mut c = client.clone();
        async move {
            let group = read_group(&mut c, GROUP).await.map_err(|e| e.to_string())?;
            match group.iter().any(|s| s.holder() == Some("crasher")) {
                true => Ok(()),
                false => Err("no slot held by crasher".to_string()),
            }
        }
    })
    .await;
    if let Err(e) = held {
        panic!("{e}\n--- holder log ---\n{}", holder.log_tail(20));
    }

    let waiter = slots(&client, one(), "waiter");
    assert!(matches!(
        waiter.acquire("2.0.0").await.unwrap(),
        Acquisition::Busy { .. }
    ));
    let waiting = tokio::spawn(async move {
        let got = waiter
            .acquire_within("2.0.0", Duration::from_secs(20))
            .await;
        (got.map_err(|e| e.to_string()), Instant::now(), waiter)
    });
    holder.kill();
    let killed = Instant::now();
    let (got, at, waiter) = waiting.await.expect("waiter task");
    assert_eq!(got.unwrap(), Acquisition::Acquired);
    let took = at.duration_since(killed);
    assert!(
        took <= TTL + Duration::from_secs(1),
        "slot freed after {took:?}"
    );
    assert_eq!(waiter.held().await.unwrap(), Holding::Held);
    let group = read_group(&mut client, GROUP).await.unwrap();
    assert_eq!(group.len(), 1);
    assert_eq!(group[0].holder(), Some("waiter"));
}

#[tokio::test]
async fn acquire_and_release_are_idempotent_and_a_non_holder_cannot_release() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let a = slots(&client, one(), "a");
    let b = slots(&client, one(), "b");

    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    let before = revision(&mut client).await;
    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    assert_eq!(revision(&mut client).await, before, "second acquire wrote");

    b.release().await.expect("release by a non-holder succeeds");
    let group = read_group(&mut client, GROUP).await.unwrap();
    assert_eq!(group.len(), 1);
    assert_eq!(group[0].holder(), Some("a"));
    assert!(matches!(
        b.acquire("2.0.0").await.unwrap(),
        Acquisition::Busy { .. }
    ));

    a.release().await.unwrap();
    a.release().await.expect("second release succeeds");
    assert!(read_group(&mut client, GROUP).await.unwrap().is_empty());
    assert_eq!(a.held().await.unwrap(), Holding::NotHeld);

    // A restarted instance (same holder id, new process) adopts its old slot without a second
    // one, and release_stale clears it in one call.
    a.acquire("2.0.0").await.unwrap();
    let restarted = slots(&client, one(), "a");
    assert_eq!(
        restarted.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    let group = read_group(&mut client, GROUP).await.unwrap();
    assert_eq!(group.len(), 1, "adoption must not take a second slot");
    restarted.release_stale().await.unwrap();
    assert!(read_group(&mut client, GROUP).await.unwrap().is_empty());
}

#[tokio::test]
async fn lowering_max_evicts_nobody_and_raising_it_admits_a_waiter_at_once() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let holders: Vec<EtcdSlots> = ["h1", "h2", "h3"]
        .iter()
        .map(|id| slots(&client, max(3), id))
        .collect();
    for h in &holders {
        assert_eq!(h.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    }
    // The newcomer runs with max = 1 (the lowered limit).
    let newcomer = slots(&client, one(), "new");
    for (i, h) in holders.iter().enumerate() {
        assert!(
            matches!(
                newcomer.acquire("2.0.0").await.unwrap(),
                Acquisition::Busy { .. }
            ),
            "admitted with {} holders left",
            3 - i
        );
        for still in &holders[i..] {
            assert_eq!(still.held().await.unwrap(), Holding::Held, "evicted");
        }
        h.release().await.unwrap();
    }
    assert_eq!(
        newcomer.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );

    // Raised from 1 to 2 while waiting: the waiter is admitted at once.
    let waiter = Arc::new(slots(&client, one(), "waiter"));
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move {
            waiter
                .acquire_within("2.0.0", Duration::from_secs(60))
                .await
        })
    };
    poll_until(Duration::from_secs(5), "waiter tried once", || {
        let waiter = waiter.clone();
        async move {
            match waiter.requests() > 0 {
                true => Ok(()),
                false => Err("no request yet"),
            }
        }
    })
    .await
    .unwrap();
    let raised = Instant::now();
    waiter.set_max(max(2));
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got, Acquisition::Acquired);
    assert!(
        raised.elapsed() < Duration::from_secs(2),
        "{:?}",
        raised.elapsed()
    );
    assert_eq!(read_group(&mut client, GROUP).await.unwrap().len(), 2);
}
