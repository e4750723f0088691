//! etcd 3.4 serving TLS only, requiring client certificates (`--client-cert-auth`) and with auth
//! enabled (user `root`), the certificates for it, made with the `openssl` CLI, and the test that
//! registers against it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::REGISTER_TIMEOUT;
use super::harness::{SLEEP_UNIT, Sidekick, start_unit};
use super::support::etcd;
use super::support::systemd::{self, Systemd};
use super::support::{Need, prerequisites_met, temp_dir};
pub use crate::support::pki::Pki;
use crate::support::{ProcessGuard, SignalTarget, free_port, poll_until};

/// The root user's password once auth is enabled.
pub const ROOT_PASSWORD: &str = "s3cret-root";

/// A TLS-only etcd with auth enabled; stopped on drop.
pub struct SecureEtcd {
    _process: ProcessGuard,
    endpoint: String,
    tls_args: Vec<String>,
}

impl SecureEtcd {
    /// Starts etcd in `dir`, waits until it answers, adds `root` and enables auth.
    pub async fn start(pki: &Pki, dir: &Path) -> SecureEtcd {
        SecureEtcd::start_with(pki, dir, &[]).await
    }

    /// [`SecureEtcd::start`] with `extra` etcd flags (e.g. `--auth-token-ttl=5`).
    pub async fn start_with(pki: &Pki, dir: &Path, extra: &[&str]) -> SecureEtcd {
        let (client_port, peer_port) = (free_port(), free_port());
        let endpoint = format!("https://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(etcd::binary().unwrap_or_else(|e| panic!("{e}")));
        cmd.args(["--name", "tls", "--data-dir"])
            .arg(dir.join("etcd-data"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("tls={peer}")])
            .arg("--cert-file")
            .arg(&pki.server_cert)
            .arg("--key-file")
            .arg(&pki.server_key)
            .arg("--trusted-ca-file")
            .arg(&pki.ca)
            .arg("--client-cert-auth")
            .args(extra);
        let process = ProcessGuard::spawn(
            "etcd tls",
            &mut cmd,
            &dir.join("etcd.log"),
            SignalTarget::Group,
        );
        let tls_args = vec![
            format!("--endpoints={endpoint}"),
            format!("--cacert={}", pki.ca.display()),
            format!("--cert={}", pki.client_cert.display()),
            format!("--key={}", pki.client_key.display()),
        ];
        let etcd = SecureEtcd {
            _process: process,
            endpoint,
            tls_args,
        };
        let ready = poll_until(Duration::from_secs(30), "TLS etcd healthy", || async {
            etcd.etcdctl(&["endpoint", "health"], false)
        })
        .await;
        if let Err(e) = ready {
            panic!("{e}\n{}", etcd._process.log_tail(20));
        }
        etcd.etcdctl(&["user", "add", &format!("root:{ROOT_PASSWORD}")], false)
            .expect("user add root");
        etcd.etcdctl(&["auth", "enable"], false)
            .expect("auth enable");
        etcd
    }

    /// The client URL, `https://127.0.0.1:P`.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// Runs etcdctl with the client certificate (and the root password when `auth`).
    fn etcdctl(&self, args: &[&str], auth: bool) -> Result<String, String> {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3").args(&self.tls_args);
        if auth {
            cmd.arg(format!("--user=root:{ROOT_PASSWORD}"));
        }
        let out = cmd.args(args).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// The remaining TTL of `lease`, read as root.
    pub fn lease_ttl(&self, lease: i64) -> Result<String, String> {
        self.etcdctl(&["lease", "timetolive", &format!("{lease:x}")], true)
    }

    /// `etcdctl get -w json key`, read as root.
    pub fn get_json(&self, key: &str) -> Result<String, String> {
        self.etcdctl(&["get", "-w", "json", key], true)
    }

    /// The value of `key` ("" when absent), read as root.
    pub fn get(&self, key: &str) -> Result<String, String> {
        self.etcdctl(&["get", "--print-value-only", key], true)
    }
}

#[tokio::test]
async fn tls_client_cert_and_auth_register_and_a_wrong_ca_or_password_keeps_retrying() {
    let needs = [
        etcd::NEEDS,
        systemd::NEEDS,
        &[Need::Binary("openssl"), Need::Binary("etcdctl")],
    ]
    .concat();
    if !prerequisites_met(&needs) {
        return;
    }
    let dir = temp_dir("reg-tls");
    let pki = Pki::generate(dir.path());
    let etcd = SecureEtcd::start(&pki, dir.path()).await;
    let systemd = Systemd::start().await;
    start_unit(&systemd, SLEEP_UNIT).await;

    let sidekick = |name: &str, ca: &Path, password: &str| {
        let password_file = dir.path().join(format!("{name}.password"));
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        let config = format!(
            "[instance]\nunit = \"web@1.service\"\nname = \"{name}\"\n\
             [etcd]\nendpoints = [\"{}\"]\ntimeout = \"2s\"\nusername = \"root\"\n\
             password_file = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             [registration]\nhost = \"127.0.0.1\"\nport = 8080\nttl = \"10s\"\n\
             [health]\ncheck = \"none\"\n[update]\nenabled = false\n",
            etcd.endpoint(),
            password_file.display(),
            ca.display(),
            pki.client_cert.display(),
            pki.client_key.display(),
        );
        Sidekick::start(&systemd, dir.path(), name, &config)
    };
    let mut good = sidekick("web-good", &pki.ca, ROOT_PASSWORD);
    let mut bad_ca = sidekick("web-badca", &pki.other_ca, ROOT_PASSWORD);
    let mut bad_password = sidekick("web-badpw", &pki.ca, "not-the-password");

    let registered = poll_until(REGISTER_TIMEOUT, "good sidekick registered", || async {
        let value = etcd.get("/services/web/web-good")?;
        if value.contains("127.0.0.1") {
            Ok(value)
        } else {
            Err(format!("value {value:?}"))
        }
    })
    .await;
    registered.unwrap_or_else(|e| panic!("{e}\n{}", good.log()));
    // An etcdctl that fails is a failed test, not an absent key.
    assert_eq!(
        etcd.get("/services/web/web-badca").expect("etcdctl get"),
        ""
    );

    for (sk, clear) in [
        (&mut bad_ca, "certificate"),
        (&mut bad_password, "authentication failed"),
    ] {
        let retried = poll_until(REGISTER_TIMEOUT, "three failures logged", || {
            let log = sk.log();
            async move {
                let failures = log.matches("etcd registration failed").count();
                if failures >= 3 {
                    Ok(log)
                } else {
                    Err(format!("{failures} failures so far"))
                }
            }
        })
        .await;
        let log = retried.unwrap_or_else(|e| panic!("{e}\n{}", sk.log()));
        let line = log
            .lines()
            .find(|l| l.contains("etcd registration failed"))
            .unwrap_or_default();
        assert!(line.to_lowercase().contains(clear), "unclear error: {line}");
        assert!(line.contains(&etcd.endpoint()), "no endpoint: {line}");
        assert!(line.contains("instance=web-bad"), "no instance: {line}");
        assert!(sk.is_running(), "gave up:\n{log}");
    }
    assert!(good.is_running());
    assert_eq!(
        etcd.get("/services/web/web-badpw").expect("etcdctl get"),
        ""
    );
}
