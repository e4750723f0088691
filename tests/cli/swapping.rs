//! The instance being swapped stays in the fleet view: deregistered for the swap, its record
//! (phase `swapping`, target and step) is held on a lease of its own under
//! `/sidekick/instances/`, which no load balancer reads, while the load balancer's key is gone;
//! `sidekick status` shows it; when the registration comes back, the record is on the
//! registration's lease again and the held lease is gone.

use std::time::Duration;

use sidekick::config::EtcdOptions;
use sidekick::registry::record::{self, InstanceRecord};
use sidekick::registry::{EtcdRegistry, Published, Registry};

use super::sidekick as run_sidekick;
use super::support::etcd::{self, Etcd};
use super::support::{poll_until, prerequisites_met};

const LB_KEY: &str = "traefik/http/services/web/loadbalancer/servers/web-1/url";
const GROUP: &str = "app/stable";

fn record(phase: &str, target: Option<&str>, step: Option<&str>) -> (String, String) {
    record::entry(
        GROUP,
        "web-1",
        &InstanceRecord {
            version: "2.0.0".into(),
            phase: phase.into(),
            since: "2026-01-01T00:00:00Z".into(),
            last_check: None,
            result: None,
            host: "127.0.0.1".into(),
            target: target.map(String::from),
            step: step.map(String::from),
            policy: None,
        },
    )
}

/// The key's value and lease, or `None` when absent.
async fn get(client: &mut etcd_client::Client, key: &str) -> Option<(String, i64)> {
    let resp = client.get(key, None).await.unwrap();
    resp.kvs()
        .first()
        .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease()))
}

#[tokio::test]
async fn the_swapping_instance_keeps_its_record_on_its_own_lease_and_status_shows_it() {
    if !prerequisites_met(etcd::NEEDS) {
        return;
    }
    let etcd = Etcd::start().await;
    let mut client = etcd.client().await;
    let options = EtcdOptions {
        endpoints: vec![etcd.endpoint().parse().unwrap()],
        timeout: Duration::from_secs(2),
        auth: None,
        ca_file: None,
        client_cert: None,
    };
    let mut registry = EtcdRegistry::start(options, "web-1".into(), Duration::from_secs(10));
    let serving = record("serving", None, None);
    let lb = (LB_KEY.to_string(), "http://127.0.0.1:8080".to_string());
    registry.register(vec![lb.clone(), serving.clone()]);
    let mut published = registry.published();
    let registered = poll_until(Duration::from_secs(10), "registered", || {
        let now = published.borrow_and_update().clone();
        async move {
            match now {
                Published::Registered { lease } => Ok(lease),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
    .unwrap();

    // The swap: deregistered, the record held apart.
    registry.deregister();
    let swapping = record("swapping", Some("3.0.0"), Some("draining"));
    registry.hold(Some(swapping.clone()));
    let key = swapping.0.clone();
    let (value, lease) = poll_until(Duration::from_secs(10), "the swapping record", || {
        let (mut client, key) = (client.clone(), key.clone());
        async move {
            match get(&mut client, &key).await {
                Some((value, lease)) if value.contains("swapping") => Ok((value, lease)),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
    .unwrap();
    assert_ne!(lease, 0);
    assert_ne!(lease, registered, "on a lease of its own");
    assert!(value.contains(r#""target":"3.0.0""#), "{value}");
    assert_eq!(
        get(&mut client, LB_KEY).await,
        None,
        "the load balancer's key is gone"
    );

    // `status` shows it, with its step and target, and no registration.
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("status.toml");
    std::fs::write(
        &config,
        format!(
            "[etcd]\nendpoints = [\"{}\"]\n[registration]\nlayout = \"traefik\"\n",
            etcd.endpoint()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let out = run_sidekick(root.path(), &["status", "--config", &config]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains("web-1") && l.contains(GROUP) && l.contains("swapping"))
        .unwrap_or_else(|| panic!("no swapping row:\n{table}"));
    assert!(row.contains("swapping (draining to 3.0.0)"), "{row}");
    assert!(table.contains("REGISTRATIONS\n  (none)"), "{table}");

    // Back: the registration's write takes the key; the held lease goes without it.
    registry.register(vec![lb.clone(), serving.clone()]);
    poll_until(Duration::from_secs(10), "registered again", || {
        let now = published.borrow_and_update().clone();
        async move {
            match now {
                Published::Registered { .. } => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
    .unwrap();
    registry.hold(None);
    poll_until(Duration::from_secs(10), "the held lease revoked", || {
        let mut client = client.clone();
        async move {
            let leases = client.leases().await.map_err(|e| e.to_string())?;
            match leases.leases().iter().any(|l| l.id() == lease) {
                true => Err("still there".to_string()),
                false => Ok(()),
            }
        }
    })
    .await
    .unwrap();
    let (value, now) = get(&mut client, &key).await.expect("the record stays");
    assert!(value.contains(r#""phase":"serving""#), "{value}");
    assert_ne!(now, lease);
    assert!(get(&mut client, LB_KEY).await.is_some());
    registry.shutdown(Duration::from_secs(2)).await;
}
