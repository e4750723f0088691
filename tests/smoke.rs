//! Smoke tests: each part of the test environment (etcd, systemd in its container, Docker app
//! images, Traefik, the image registry) starts, answers and stops again.

mod support;

use etcd_client::PutOptions;
use support::etcd::{self, Etcd};
use support::prerequisites_met;

#[tokio::test]
async fn etcd_grants_a_lease_and_serves_a_key_put_with_it() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;

    let lease = client.lease_grant(10, None).await.expect("lease grant");
    assert!(lease.ttl() > 0, "lease granted with ttl {}", lease.ttl());
    let put = PutOptions::new().with_lease(lease.id());
    client
        .put("smoke/key", "value", Some(put))
        .await
        .expect("put with lease");

    let got = client.get("smoke/key", None).await.expect("get");
    let kv = &got.kvs()[0];
    assert_eq!(kv.value_str().unwrap(), "value");
    assert_eq!(kv.lease(), lease.id());
}

#[tokio::test]
async fn etcd_three_member_cluster_replicates_a_key_to_every_member() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start_cluster(3).await;
    let endpoints = etcd.endpoints();
    assert_eq!(endpoints.len(), 3);

    let mut first = etcd::connect(&endpoints[..1]).await.unwrap();
    first
        .put("smoke/cluster", "replicated", None)
        .await
        .unwrap();
    for endpoint in &endpoints {
        let mut c = etcd::connect(std::slice::from_ref(endpoint)).await.unwrap();
        let got = c
            .get("smoke/cluster", None)
            .await
            .expect("linearizable get");
        assert_eq!(
            got.kvs()[0].value_str().unwrap(),
            "replicated",
            "on {endpoint}"
        );
    }
    let members = first.member_list().await.unwrap();
    assert_eq!(members.members().len(), 3);
}

#[tokio::test]
async fn etcd_member_restarted_on_its_data_dir_keeps_its_keys() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let mut etcd = Etcd::start().await;
    etcd.client()
        .await
        .put("smoke/durable", "kept", None)
        .await
        .unwrap();

    etcd.stop();
    assert!(!etcd.member(0).is_running());
    etcd.restart().await;

    let got = etcd
        .client()
        .await
        .get("smoke/durable", None)
        .await
        .unwrap();
    assert_eq!(got.kvs()[0].value_str().unwrap(), "kept");
}
