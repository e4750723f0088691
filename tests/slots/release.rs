//! Releases that always release, the halted re-acquire, and duplicate holders, against real etcd.

use std::sync::Arc;
use std::time::Duration;

use sidekick::config::EtcdOptions;
use sidekick::etcd::EtcdConnection;
use sidekick::slot::etcd::read_group;
use sidekick::slot::{Acquisition, EtcdSlots, Holding, SlotHost, SlotLock};

use super::support::etcd::{self, Etcd};
use super::support::proxy::HoldingProxy;
use super::support::{poll_until, prerequisites_met};
use super::{GROUP, TTL, one, slots, who};

fn host(name: &str) -> SlotHost {
    SlotHost {
        hostname: name.to_string(),
        boot_id: format!("boot-of-{name}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_delete_fails_still_revokes_the_lease_and_frees_the_slot() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let proxy = HoldingProxy::start(etcd.endpoint().trim_start_matches("http://")).await;
    let settings = EtcdOptions {
        endpoints: vec![proxy.endpoint().parse().unwrap()],
        timeout: Duration::from_secs(1),
        auth: None,
        ca_file: None,
        client_cert: None,
    };
    let holder = Arc::new(EtcdSlots::new(
        EtcdConnection::new(settings),
        GROUP,
        one(),
        TTL,
        who("h"),
    ));
    assert_eq!(
        holder.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    let before = holder.requests();

    // The release's read gets no answer in time; its revoke, sent after that, does.
    proxy.hold();
    let releasing = {
        let holder = holder.clone();
        tokio::spawn(async move { holder.release().await })
    };
    // The holder counts each request before sending it: the revoke is the second one.
    poll_until(
        Duration::from_secs(5),
        "release moved on to the revoke",
        || {
            let sent = holder.requests();
            async move {
                if sent >= before + 2 {
                    Ok(())
                } else {
                    Err(format!("{} requests", sent - before))
                }
            }
        },
    )
    .await
    .unwrap();
    proxy.release();
    let released = releasing.await.unwrap();
    assert!(released.is_err(), "the delete did fail: {released:?}");
    poll_until(Duration::from_secs(2), "the slot key is gone", || {
        let mut client = client.clone();
        async move {
            match read_group(&mut client, GROUP).await {
                Ok(keys) if keys.is_empty() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(holder.held().await.unwrap(), Holding::NotHeld);
    assert!(read_group(&mut client, GROUP).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_holder_re_acquiring_after_a_halt_is_told_acquired_and_others_halted() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let holder = slots(&client, super::max(2), "h");
    let other = slots(&client, super::max(2), "o");
    assert_eq!(
        holder.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    other.halt("2.0.0", "rolled back elsewhere").await.unwrap();
    assert_eq!(
        holder.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    assert!(matches!(
        other.acquire("2.0.0").await.unwrap(),
        Acquisition::Halted { .. }
    ));
    assert_eq!(holder.held().await.unwrap(), Holding::Held);
}

#[tokio::test]
async fn a_clone_with_the_same_holder_id_on_another_host_does_not_take_over_the_slot() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let first = slots(&client, super::max(2), "same-id").with_host(host("node-a"));
    let clone = slots(&client, super::max(2), "same-id").with_host(host("node-b"));
    assert_eq!(first.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    let got = clone.acquire("2.0.0").await.unwrap();
    let Acquisition::Busy { detail } = got else {
        panic!("the clone was answered {got:?}");
    };
    assert!(
        detail.contains("duplicate holder") && detail.contains("node-a"),
        "{detail}"
    );
    let keys = read_group(&mut client, GROUP).await.unwrap();
    assert_eq!(keys.len(), 1);
    let value = keys[0].value.clone().unwrap();
    assert_eq!(
        value.host,
        Some(host("node-a")),
        "the first host's value stays"
    );
    assert_eq!(first.held().await.unwrap(), Holding::Held);
    // `sidekick status` shows the refused clone among the duplicate instances.
    let records = sidekick::registry::duplicate::list(&mut client)
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].key, keys[0].key, "{records:?}");
    assert!(
        records[0].host.contains("node-b") && records[0].held_by.contains("node-a"),
        "{records:?}"
    );

    // The same host after a restart (a new process, no lease) re-binds its slot.
    let restarted = slots(&client, super::max(2), "same-id").with_host(host("node-a"));
    assert_eq!(
        restarted.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    assert_eq!(read_group(&mut client, GROUP).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_clones_release_leaves_the_slot_another_host_holds() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let first = slots(&client, super::max(2), "same-id").with_host(host("node-a"));
    let clone = slots(&client, super::max(2), "same-id").with_host(host("node-b"));
    assert_eq!(first.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    // A clone that holds nothing (refused as a duplicate, or never asked) releases.
    let got = clone.acquire("2.0.0").await.unwrap();
    assert!(matches!(got, Acquisition::Busy { .. }), "{got:?}");
    clone.release().await.unwrap();
    let keys = read_group(&mut client, GROUP).await.unwrap();
    assert_eq!(keys.len(), 1, "the other host's slot stays: {keys:?}");
    assert_eq!(keys[0].value.clone().unwrap().host, Some(host("node-a")));
    assert_eq!(first.held().await.unwrap(), Holding::Held);
    // Its own release still frees it.
    first.release().await.unwrap();
    assert!(read_group(&mut client, GROUP).await.unwrap().is_empty());
}
