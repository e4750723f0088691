//! etcd auth tokens expire (`--auth-token-ttl`): registration, slots and `status` keep working
//! past several token lifetimes, because the etcd layer re-authenticates.

use std::process::Command;
use std::time::Duration;

use sidekick::config::{ClientCert, EtcdAuth, EtcdOptions};
use sidekick::etcd::EtcdConnection;
use sidekick::slot::{Acquisition, EtcdSlots, SlotHolder, SlotLock};

use super::REGISTER_TIMEOUT;
use super::harness::{SLEEP_UNIT, Sidekick, start_unit};
use super::secure::{Pki, ROOT_PASSWORD, SecureEtcd};
use super::support::etcd;
use super::support::systemd::{self, Systemd};
use super::support::{Need, poll_until, prerequisites_met, temp_dir};

/// Tokens live this long; the test runs past three of them.
const TOKEN_TTL: &str = "--auth-token-ttl=5";
const PAST_TOKENS: Duration = Duration::from_secs(16);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_slots_and_status_keep_working_after_auth_tokens_expire() {
    let needs = [
        etcd::NEEDS,
        systemd::NEEDS,
        &[Need::Binary("openssl"), Need::Binary("etcdctl")],
    ]
    .concat();
    if !prerequisites_met(&needs) {
        return;
    }
    let dir = temp_dir("reg-auth-ttl");
    let pki = Pki::generate(dir.path());
    let etcd = SecureEtcd::start_with(&pki, dir.path(), &[TOKEN_TTL]).await;
    let systemd = Systemd::start().await;
    start_unit(&systemd, SLEEP_UNIT).await;
    let password_file = dir.path().join("root.password");
    std::fs::write(&password_file, format!("{ROOT_PASSWORD}\n")).unwrap();
    let config = format!(
        "[instance]\nunit = \"web@1.service\"\n\
         [etcd]\nendpoints = [\"{}\"]\ntimeout = \"2s\"\nusername = \"root\"\n\
         password_file = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         [registration]\nhost = \"127.0.0.1\"\nport = 8080\nttl = \"6s\"\n\
         [health]\ncheck = \"none\"\n[update]\nenabled = false\n[slot]\ngroup = \"web/stable\"\n",
        etcd.endpoint(),
        password_file.display(),
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display(),
    );
    let sidekick = Sidekick::start(&systemd, dir.path(), "sk", &config);
    poll_until(REGISTER_TIMEOUT, "registered", || async {
        match etcd.get("/services/web/web-1")? {
            v if v.contains("127.0.0.1") => Ok(v),
            v => Err(format!("value {v:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", sidekick.log()));
    // A slot holder whose connection (and token) is made now, before the tokens expire.
    let settings = EtcdOptions {
        endpoints: vec![etcd.endpoint().parse().unwrap()],
        timeout: Duration::from_secs(2),
        auth: Some(EtcdAuth {
            username: "root".into(),
            password_file: password_file.clone(),
        }),
        ca_file: Some(pki.ca.clone()),
        client_cert: Some(ClientCert {
            cert_file: pki.client_cert.clone(),
            key_file: pki.client_key.clone(),
        }),
    };
    let who = SlotHolder {
        holder: "holder-auth".into(),
        instance: "web-1".into(),
    };
    let slots = EtcdSlots::new(
        EtcdConnection::new(settings),
        "web/stable",
        std::num::NonZeroU32::MIN,
        Duration::from_secs(5),
        who,
    );
    assert_eq!(slots.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    slots.release().await.unwrap();

    // The scenario is the passage of time: three token lifetimes.
    tokio::time::sleep(PAST_TOKENS).await;

    let value = etcd.get("/services/web/web-1").expect("etcdctl get");
    assert!(
        value.contains("127.0.0.1"),
        "registration gone: {value:?}\n{}",
        sidekick.log()
    );
    assert!(
        !sidekick.log().contains("invalid auth token"),
        "{}",
        sidekick.log()
    );
    assert_eq!(slots.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    slots.release().await.unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args(["status", "--config"])
        .arg(dir.path().join("sk.toml"))
        .env("SIDEKICK_CONFIG_ROOT", dir.path().join("sk-root"))
        .output()
        .expect("sidekick status");
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(table.contains("web-1"), "{table}");
    // Keepalives still renew the lease: its remaining TTL is close to the full 6 s.
    let lease = poll_until(Duration::from_secs(6), "the lease is renewed", || async {
        let out = etcd.lease_ttl(lease_of(&etcd)?)?;
        let remaining: i64 = out
            .split("remaining(")
            .nth(1)
            .and_then(|r| r.split('s').next())
            .and_then(|n| n.parse().ok())
            .ok_or(format!("unreadable: {out}"))?;
        if remaining >= 4 {
            Ok(remaining)
        } else {
            Err(format!("remaining {remaining}s"))
        }
    })
    .await;
    lease.unwrap_or_else(|e| panic!("{e}\n{}", sidekick.log()));
}

/// The lease id of the registration key, via `etcdctl get -w json`.
fn lease_of(etcd: &SecureEtcd) -> Result<i64, String> {
    let json = etcd.get_json("/services/web/web-1")?;
    let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
    v["kvs"][0]["lease"]
        .as_i64()
        .ok_or_else(|| format!("no lease in {json}"))
}
