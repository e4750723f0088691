//! The store against etcd: compare-and-swap from concurrent writers, pruning to the newest 50,
//! and malformed values refused naming their key.

use jiff::Timestamp;
use sidekick::rollout::state::VersionState;
use sidekick::rollout::store::{self, KEPT_VERSIONS};

use super::{GROUP, put_state, start};

#[tokio::test]
async fn concurrent_compare_and_swap_writers_lose_no_canary() {
    let Some((_etcd, client)) = start().await else {
        return;
    };
    let now = Timestamp::now();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let mut c = client.clone();
            tokio::spawn(async move {
                store::update_version(&mut c, GROUP, "2.0.0", |current| {
                    let mut s = current
                        .cloned()
                        .unwrap_or_else(|| VersionState::new("2.0.0", now));
                    s.add_canary(&format!("web-{i}"), None, now);
                    Some(s)
                })
                .await
                .expect("update")
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let mut c = client.clone();
    let (state, _) = store::get_version(&mut c, GROUP, "2.0.0")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(state.canaries.len(), 8, "{state:?}");
    assert_eq!(state.started, now);
}

#[tokio::test]
async fn a_new_version_prunes_the_group_to_its_newest_fifty() {
    let Some((_etcd, mut client)) = start().await else {
        return;
    };
    let base = Timestamp::now();
    for i in 0..KEPT_VERSIONS + 2 {
        let started = base + jiff::SignedDuration::from_secs(i as i64);
        put_state(
            &mut client,
            &VersionState::new(&format!("1.0.{i}"), started),
        )
        .await;
    }
    // A nested group's state is not this group's to prune.
    client
        .put("/sidekick/rollouts/web/stable/canary/1.0.0", "{}", None)
        .await
        .expect("put");
    let newest = base + jiff::SignedDuration::from_secs(1000);
    store::update_version(&mut client, GROUP, "2.0.0", |_| {
        Some(VersionState::new("2.0.0", newest))
    })
    .await
    .expect("update");
    let snap = store::read_group(&mut client, GROUP).await.expect("read");
    assert_eq!(snap.versions.len(), KEPT_VERSIONS);
    assert_eq!(snap.versions[0].version, "2.0.0");
    assert_eq!(
        snap.versions.last().map(|v| v.version.as_str()),
        Some("1.0.3")
    );
    let nested = client
        .get("/sidekick/rollouts/web/stable/canary/1.0.0", None)
        .await
        .expect("get");
    assert_eq!(nested.kvs().len(), 1);
}

#[tokio::test]
async fn malformed_values_in_etcd_are_errors_naming_their_key() {
    let Some((_etcd, mut client)) = start().await else {
        return;
    };
    let cases = [
        (store::policy_key(GROUP), "{\"canary\": \"many\"}"),
        (store::paused_key(GROUP), "yes"),
        (
            store::version_key(GROUP, "2.0.0"),
            "{\"version\":\"9.9.9\",\"started\":\"2026-01-01T00:00:00Z\"}",
        ),
    ];
    for (key, value) in cases {
        client.put(key.as_str(), value, None).await.expect("put");
        let err = store::read_group(&mut client, GROUP)
            .await
            .expect_err("refused")
            .to_string();
        assert!(err.contains(&key), "{err}");
        client.delete(key.as_str(), None).await.expect("delete");
    }
    store::read_group(&mut client, GROUP)
        .await
        .expect("clean again");
}

#[tokio::test]
async fn the_gate_read_leaves_the_groups_instance_records_out_and_the_full_read_has_them() {
    let Some((_etcd, mut client)) = start().await else {
        return;
    };
    let record = sidekick::registry::record::InstanceRecord {
        version: "1.0.0".into(),
        phase: "serving".into(),
        since: "2026-12-07T00:00:00Z".into(),
        last_check: None,
        result: None,
        host: "10.0.0.1".into(),
        target: None,
        step: None,
        policy: None,
    };
    let value = serde_json::to_string(&record).expect("json");
    client
        .put(sidekick::registry::record::key(GROUP, "web-1"), value, None)
        .await
        .expect("put");
    put_state(&mut client, &VersionState::new("2.0.0", Timestamp::now())).await;
    let full = store::read_group(&mut client, GROUP).await.expect("read");
    assert_eq!(full.instances, vec![("web-1".to_string(), record)]);
    let gate = store::read_gate(&mut client, GROUP).await.expect("read");
    assert!(gate.instances.is_empty(), "{:?}", gate.instances);
    // Everything else is the same read.
    assert_eq!(gate.versions, full.versions);
    assert_eq!(gate.revision, full.revision);
}
