//! The stored limit is bounded: a value above `MAX_STORED_LIMIT` planted in etcd (by anyone who
//! can write the key) admits nobody instead of opening the group to every instance, and
//! `sidekick slots set-max` refuses to store one.

use super::commands::sidekick;
use super::*;
use sidekick::slot::limit::MAX_STORED_LIMIT;

#[tokio::test]
async fn a_stored_limit_above_the_cap_admits_nobody_and_set_max_refuses_it() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let key = format!("/sidekick/limits/{GROUP}");
    client.put(key.as_str(), "4294967295", None).await.unwrap();
    let a = slots(&client, max(3), "a");
    match a.acquire("2.0.0").await.unwrap() {
        Acquisition::Busy { detail } => assert!(detail.contains("of 0 slots"), "{detail}"),
        other => panic!("a planted limit must admit nobody: {other:?}"),
    }
    assert!(read_group(&mut client, GROUP).await.unwrap().is_empty());

    // At the cap it is a limit like any other.
    client
        .put(key.as_str(), MAX_STORED_LIMIT.to_string(), None)
        .await
        .unwrap();
    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    a.release().await.unwrap();

    let dir = temp_dir("slots-limit-cap");
    let path = dir.path().join("sidekick.toml");
    let text = format!(
        "[instance]\nunit = \"web@1.service\"\n[etcd]\nendpoints = [\"{}\"]\n\
         [registration]\nenabled = false\nport = 8080\n[health]\ncheck = \"none\"\n\
         [update]\nenabled = false\n[slot]\ngroup = \"{GROUP}\"\n",
        etcd.endpoint()
    );
    std::fs::write(&path, text).unwrap();
    let too_many = (MAX_STORED_LIMIT + 1).to_string();
    let out = sidekick(
        dir.path(),
        &[
            "slots",
            "set-max",
            &too_many,
            "--config",
            path.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&MAX_STORED_LIMIT.to_string()), "{stderr}");
    let stored = client.get(key.as_str(), None).await.unwrap();
    assert_eq!(
        stored.kvs()[0].value(),
        MAX_STORED_LIMIT.to_string().as_bytes(),
        "nothing stored"
    );
}
