//! etcd 3.4 serving TLS only, requiring client certificates (`--client-cert-auth`) and with auth
//! enabled (user `root`), and the certificates for it, made with the `openssl` CLI.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

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
        let (client_port, peer_port) = (free_port(), free_port());
        let endpoint = format!("https://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new("etcd");
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
            .arg("--client-cert-auth");
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

    /// The value of `key` ("" when absent), read as root.
    pub fn get(&self, key: &str) -> Result<String, String> {
        self.etcdctl(&["get", "--print-value-only", key], true)
    }
}
