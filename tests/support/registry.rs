//! A local image registry: Debian's `docker-registry serve CONFIG` on a free 127.0.0.1 port with
//! filesystem storage in a temp dir. The Docker daemon treats 127.0.0.0/8 as insecure, so
//! `127.0.0.1:P/...` needs no TLS.

use std::process::Command;
use std::time::Duration;

use super::{Need, ProcessGuard, SignalTarget, free_port, temp_dir, wait_for_http_ok};

/// What registry tests need from the machine.
pub const NEEDS: &[Need] = &[Need::Binary("docker-registry")];

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running registry; stopped on drop (its storage goes with the temp dir).
pub struct Registry {
    process: ProcessGuard,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts the registry and waits until `GET /v2/` answers 200.
    pub async fn start() -> Registry {
        let dir = temp_dir("registry");
        let port = free_port();
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).expect("create storage dir");
        let config = dir.path().join("config.yml");
        let yaml = format!(
            "version: 0.1\n\
             log:\n  level: warn\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        std::fs::write(&config, yaml).expect("write registry config");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&config);
        let log = dir.path().join("registry.log");
        let process = ProcessGuard::spawn("docker-registry", &mut cmd, &log, SignalTarget::Group);
        let registry = Registry {
            process,
            port,
            _dir: dir,
        };
        let url = format!("http://{}/v2/", registry.address());
        let ready = wait_for_http_ok(&url, READY_TIMEOUT).await;
        if let Err(e) = ready {
            panic!(
                "{e}\n--- registry log ---\n{}",
                registry.process.log_tail(30)
            );
        }
        registry
    }

    /// `127.0.0.1:P`, the registry part of image references.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    /// Untags every image the host's Docker pulled from this registry (tests, pre-pulls), so
    /// runs do not leave `127.0.0.1:<port>/…` tags behind; the images stay under their own tags.
    fn drop(&mut self) {
        let prefix = format!("{}/", self.address());
        let Ok(out) = Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .output()
        else {
            return;
        };
        for tag in String::from_utf8_lossy(&out.stdout).lines() {
            if tag.starts_with(&prefix) {
                super::images::remove_tag(tag);
            }
        }
    }
}
