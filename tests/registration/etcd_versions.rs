//! The etcd behaviours the sidekick rests on, pinned on the version under test
//! (`SIDEKICK_ETCD_VERSION`; `scripts/test` runs this suite on 3.4.23, 3.5.16 and 3.5.30). Each test
//! names the behaviour; where versions differ, the expectation says which does what.

use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};

use super::support::etcd::{self, Etcd};
use super::support::prerequisites_met;

/// One RPC's answer on a loaded 2-core machine.
const ANSWER: Duration = Duration::from_secs(10);

async fn started() -> Option<(Etcd, Client)> {
    if !prerequisites_met(etcd::NEEDS) {
        return None;
    }
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    Some((etcd, client))
}

#[tokio::test]
async fn the_member_reports_the_etcd_version_the_suite_was_asked_to_run_on() {
    let Some((_etcd, mut client)) = started().await else {
        return;
    };
    let status = client.status().await.expect("status");
    assert_eq!(
        status.version(),
        etcd::version(),
        "SIDEKICK_ETCD_VERSION not honoured"
    );
}

/// The registry's duplicate check and its suspect-lease check read a gone lease as "TTL ≤ 0",
/// not as an error (`src/registry/lease/write.rs`, `src/registry/lease.rs`).
#[tokio::test]
async fn lease_time_to_live_of_a_revoked_lease_answers_ttl_minus_one_not_an_error() {
    let Some((_etcd, mut client)) = started().await else {
        return;
    };
    let id = client.lease_grant(30, None).await.expect("grant").id();
    client.lease_revoke(id).await.expect("revoke");
    let answer = client
        .lease_time_to_live(id, None)
        .await
        .expect("time-to-live of a gone lease");
    assert_eq!(answer.ttl(), -1, "gone lease");
}

/// The lease keeper treats a keepalive answer with TTL 0 as "lease lost" (`src/etcd/lease.rs`).
#[tokio::test]
async fn keepalive_of_a_revoked_lease_answers_ttl_zero_on_the_open_stream() {
    let Some((_etcd, mut client)) = started().await else {
        return;
    };
    let id = client.lease_grant(30, None).await.expect("grant").id();
    let (mut keeper, mut answers) = client.lease_keep_alive(id).await.expect("keepalive stream");
    keeper.keep_alive().await.expect("first keepalive");
    let first = tokio::time::timeout(ANSWER, answers.message())
        .await
        .expect("answer in time");
    assert!(
        first.expect("answer").expect("stream open").ttl() > 0,
        "live lease"
    );
    client.lease_revoke(id).await.expect("revoke");
    keeper.keep_alive().await.expect("keepalive after revoke");
    let after = tokio::time::timeout(ANSWER, answers.message())
        .await
        .expect("answer in time");
    assert_eq!(
        after.expect("answer").expect("stream open").ttl(),
        0,
        "revoked lease"
    );
}

/// Revoking twice (a shutdown racing the lease's expiry) is refused, with the same message on
/// every version: the sidekick logs it and exits 0 either way.
#[tokio::test]
async fn revoking_a_revoked_lease_is_refused_as_lease_not_found() {
    let Some((_etcd, mut client)) = started().await else {
        return;
    };
    let id = client.lease_grant(30, None).await.expect("grant").id();
    client.lease_revoke(id).await.expect("first revoke");
    let err = client.lease_revoke(id).await.expect_err("second revoke");
    assert!(
        err.to_string().contains("requested lease not found"),
        "{err}"
    );
}

/// A revoked lease's keys go in one revision, seen by a watcher as deletes (how Traefik and the
/// slot queue learn that an instance or a holder is gone).
#[tokio::test]
async fn revoking_a_lease_deletes_its_keys_as_watch_delete_events() {
    let Some((_etcd, mut client)) = started().await else {
        return;
    };
    let id = client.lease_grant(30, None).await.expect("grant").id();
    for key in ["/v/a", "/v/b"] {
        let opts = etcd_client::PutOptions::new().with_lease(id);
        client.put(key, "x", Some(opts)).await.expect("put");
    }
    let mut stream = client
        .watch("/v/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    client.lease_revoke(id).await.expect("revoke");
    let mut deleted = Vec::new();
    let mut revisions = Vec::new();
    while deleted.len() < 2 {
        let msg = tokio::time::timeout(ANSWER, stream.message())
            .await
            .expect("in time");
        let msg = msg.expect("watch answer").expect("stream open");
        for ev in msg.events() {
            assert_eq!(ev.event_type(), EventType::Delete);
            let kv = ev.kv().expect("kv");
            deleted.push(kv.key_str().unwrap_or("?").to_string());
            revisions.push(kv.mod_revision());
        }
    }
    deleted.sort();
    assert_eq!(deleted, ["/v/a", "/v/b"]);
    assert_eq!(revisions[0], revisions[1], "one revision for both deletes");
}

/// Watch progress notify on request: answered with the store's current revision and no
/// events, on 3.4 as on 3.5 (the request exists since 3.4).
#[tokio::test]
async fn watch_progress_request_answers_with_the_current_revision_and_no_events() {
    let Some((_etcd, mut client)) = started().await else {
        return;
    };
    let put = client.put("/p/other", "x", None).await.expect("put");
    let current = put.header().expect("header").revision();
    let mut stream = client.watch("/p/watched", None).await.expect("watch");
    stream.request_progress().await.expect("progress request");
    let progress = loop {
        let msg = tokio::time::timeout(ANSWER, stream.message())
            .await
            .expect("in time");
        let msg = msg.expect("watch answer").expect("stream open");
        if !msg.created() {
            break msg;
        }
    };
    assert!(progress.events().is_empty(), "{:?}", progress.events());
    assert_eq!(progress.header().expect("header").revision(), current);
}

/// `status` and the fleet reports read prefixes a page at a time (`src/etcd/paged.rs`): a range
/// with a limit answers `more` while keys remain, and the next page starts past the last key.
#[tokio::test]
async fn a_prefix_read_two_keys_at_a_time_comes_back_whole_in_order_and_nothing_beside_it() {
    let Some((_etcd, mut client)) = started().await else {
        return;
    };
    let prefix = "/sidekick/paged/";
    let inside: Vec<String> = (0..7).map(|i| format!("{prefix}k{i}")).collect();
    // Beside the prefix: its parent, a sibling whose name extends it, and the range end itself.
    let beside = ["/sidekick/paged", "/sidekick/paged0", "/sidekick/pagedz/k"];
    for key in inside.iter().map(String::as_str).chain(beside) {
        client.put(key, "v", None).await.expect("put");
    }
    let read = tokio::time::timeout(
        ANSWER,
        sidekick::etcd::paged::get_prefix_in_pages(&mut client, prefix.as_bytes(), 2),
    )
    .await
    .expect("paged read answered")
    .expect("paged read");
    let keys: Vec<String> = read
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    assert_eq!(keys, inside);
    let empty = sidekick::etcd::paged::get_prefix(&mut client, "/sidekick/nothing-here/")
        .await
        .expect("empty prefix");
    assert!(
        empty.is_empty(),
        "{} keys under an empty prefix",
        empty.len()
    );
}
