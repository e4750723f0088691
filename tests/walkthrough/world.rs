//! The machine the walkthrough runs on: the systemd container with `/usr/bin/sidekick` and
//! `/usr/bin/traefik`, the example update service, the walkthrough's variables (free loopback
//! ports), and what the checks read from etcd, systemd and the update service.

use super::*;

/// Serialises walkthrough runs across worktrees and test binaries on this machine.
const MACHINE_LOCK: &str = "/tmp/sidekick-walkthrough.lock";

/// The walkthrough's `PORT_BASE`: instance n listens on base + n, so base + 1 … base + 3 are
/// handed out together (never to etcd or the registry, whose ports come from the same range).
fn free_port_base() -> u16 {
    support::free_ports(3) - 1
}

/// Everything the walkthrough runs against. Dropping it runs `prepare --stop` in the container
/// (the registry, etcd and the image tags), then stops the container.
pub(super) struct World {
    pub(super) systemd: Systemd,
    pub(super) etcd_endpoint: String,
    pub(super) registry: String,
    pub(super) updates: String,
    pub(super) env: Vec<(String, String)>,
    _containers: Vec<images::Container>,
    _service: tokio::task::JoinHandle<()>,
    /// Held for the whole test: the shipped unit names its containers `example-web-<n>` on the
    /// one Docker engine, so two walkthroughs at once would stop each other's apps.
    _machine_wide: std::fs::File,
}

impl World {
    pub(super) async fn start() -> World {
        let machine_wide = tokio::task::block_in_place(|| images::lock_file(MACHINE_LOCK));
        // The update service starts empty: the walkthrough's first step creates the app.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind update service");
        let updates = format!("http://{}", listener.local_addr().expect("local addr"));
        let state = Arc::new(service::ServerState::in_memory());
        let service_task = tokio::spawn(async move {
            let _ = service::serve(listener, state).await;
        });
        let systemd = Systemd::start().await;
        provide_the_machine(&systemd);
        let etcd_endpoint = format!("http://127.0.0.1:{}", support::free_port());
        let registry = format!("127.0.0.1:{}", support::free_port());
        let env = vec![
            ("ETCD".to_string(), etcd_endpoint.clone()),
            ("S".to_string(), updates.clone()),
            ("REGISTRY".to_string(), registry.clone()),
            ("PORT_BASE".to_string(), free_port_base().to_string()),
            (
                "LB".to_string(),
                format!("127.0.0.1:{}", support::free_port()),
            ),
            ("SRC".to_string(), format!("{SHARED}/src")),
            // Not the walkthrough's: where prepare puts what it starts, and a local image tag of
            // this process (the Docker engine is shared by concurrent test runs).
            (
                "ETCD_PEER_PORT".to_string(),
                support::free_port().to_string(),
            ),
            (
                "LOCAL_REPOSITORY".to_string(),
                format!("sidekick-test/walkthrough-{}", std::process::id()),
            ),
        ];
        World {
            systemd,
            etcd_endpoint,
            registry,
            updates,
            env,
            _containers: INSTANCES
                .iter()
                .map(|n| images::Container::guard(&format!("example-web-{n}")))
                .collect(),
            _service: service_task,
            _machine_wide: machine_wide,
        }
    }

    pub(super) fn var(&self, name: &str) -> &str {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no variable {name}"))
    }

    pub(super) async fn client(&self) -> Client {
        Client::connect([self.etcd_endpoint.as_str()], None)
            .await
            .expect("connect to the walkthrough's etcd")
    }

    /// Runs `script` in bash in the container with the walkthrough's variables set.
    pub(super) fn exec_with_env(&self, script: &str) -> std::process::Output {
        let mut argv = vec![
            "timeout".to_string(),
            BLOCK_TIMEOUT.as_secs().to_string(),
            "env".to_string(),
        ];
        argv.extend(self.env.iter().map(|(k, v)| format!("{k}={v}")));
        argv.extend(["bash", "-euo", "pipefail", "-c", script].map(String::from));
        Command::new("nsenter")
            .args(["--target", &self.systemd.init_pid().to_string()])
            .args(["--mount", "--pid", "--"])
            .args(&argv)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// Runs `prelude` and `block` in bash in the container; panics with its output on failure.
    pub(super) async fn run_block(&self, prelude: &str, block: &Block) -> String {
        let script = format!("{prelude}\n{}", block.script);
        let out = tokio::task::block_in_place(|| self.exec_with_env(&script));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            panic!(
                "walkthrough section {:?} failed ({}):\n{}\n--- output ---\n{text}\n--- journal ---\n{}",
                block.section,
                out.status,
                block.script,
                self.journal_tail()
            );
        }
        text
    }

    pub(super) fn journal_tail(&self) -> String {
        let out = self.systemd.exec(&[
            "journalctl",
            "--no-pager",
            "-n",
            "60",
            "-u",
            "sidekick@*",
            "-u",
            "example-web@*",
            "-u",
            "example-web-lb",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Instance name to registered URL, under the traefik layout's prefix.
    pub(super) async fn registrations(&self) -> BTreeMap<String, String> {
        let prefix = "traefik/http/services/example-web/loadbalancer/servers/";
        let resp = self
            .client()
            .await
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .expect("read registrations");
        resp.kvs()
            .iter()
            .map(|kv| {
                let key = kv.key_str().unwrap_or_default();
                let instance = key[prefix.len()..].split('/').next().unwrap_or_default();
                (
                    instance.to_string(),
                    kv.value_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    pub(super) async fn count(&self, prefix: &str) -> usize {
        let resp = self
            .client()
            .await
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .expect("count keys");
        usize::try_from(resp.count()).unwrap_or(usize::MAX)
    }

    /// The `SIDEKICK_VERSION` systemd reports for each app unit.
    pub(super) async fn versions(&self) -> Vec<String> {
        let conn = self.systemd.connection().await;
        let mut versions = Vec::new();
        for n in INSTANCES {
            let env =
                systemd::service_environment(&conn, &format!("example-web@{n}.service")).await;
            let version = env
                .iter()
                .rev()
                .find_map(|e| e.strip_prefix("SIDEKICK_VERSION="))
                .unwrap_or("none");
            versions.push(version.to_string());
        }
        versions
    }

    /// Each instance's `(type, result, errorcode)` events as the update service recorded them
    /// (errorcode 0 when none).
    pub(super) async fn events(&self) -> Vec<Vec<(i64, i64, i64)>> {
        let url = format!("{}/api/apps/{APP_ID}/instances", self.updates);
        let text = support::http_get(&url).await.expect("list instances").1;
        let listing: Vec<Value> = serde_json::from_str(&text).expect("instances JSON");
        listing
            .iter()
            .map(|i| {
                i["last_events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        let n = |k: &str| e[k].as_i64().unwrap_or(-1);
                        let code = e["error_code"].as_i64().unwrap_or(0);
                        (n("event_type"), n("event_result"), code)
                    })
                    .collect()
            })
            .collect()
    }
}

impl Drop for World {
    /// What `prepare` started goes with the container; this removes its image tags too (after
    /// the app containers, which would keep a tag in use).
    fn drop(&mut self) {
        // A running app container (a failed run) would keep its image tag from being removed.
        for n in INSTANCES {
            let _ = Command::new("docker")
                .args(["rm", "-f", &format!("example-web-{n}")])
                .output();
        }
        let stop = self.exec_with_env(&format!("{SHARED}/src/examples/walkthrough/prepare --stop"));
        if !stop.status.success() {
            eprintln!(
                "walkthrough: prepare --stop failed: {}",
                String::from_utf8_lossy(&stop.stderr)
            );
        }
    }
}

/// What the walkthrough expects the machine to have: `/usr/bin/sidekick` and `/usr/bin/traefik`
/// (a read-only overlay on the container's `/usr/bin`; the host's `/usr` is not touched), Docker's
/// unit (the engine itself is the host's, through the bound socket), and the repository's shipped
/// files.
fn provide_the_machine(systemd: &Systemd) {
    let shared = systemd.bus_dir();
    let bin = shared.join("bin");
    std::fs::create_dir_all(&bin).expect("create bin dir");
    std::fs::copy(env!("CARGO_BIN_EXE_sidekick"), bin.join("sidekick")).expect("copy sidekick");
    // setup links /usr/local/bin/traefik to pip's copy, which may live outside /usr (invisible in
    // the container): link the real file (185 MB) where the container sees it, copy if need be.
    // (On PATH there may be a pyenv shim first: a script that works only outside the container.)
    let traefik = Some(PathBuf::from("/usr/local/bin/traefik"))
        .filter(|p| p.exists())
        .or_else(|| support::find_binary("traefik"))
        .expect("traefik at /usr/local/bin/traefik (scripts/setup) or on PATH");
    let traefik = std::fs::canonicalize(&traefik).expect("resolve traefik");
    if std::fs::hard_link(&traefik, bin.join("traefik")).is_err() {
        std::fs::copy(&traefik, bin.join("traefik")).expect("copy traefik");
    }
    let lower = format!("lowerdir={SHARED}/bin:/usr/bin");
    let mounted = systemd.exec(&[
        "mount", "-t", "overlay", "overlay", "-o", &lower, "/usr/bin",
    ]);
    assert!(mounted.status.success(), "overlay on /usr/bin: {mounted:?}");
    systemd.write_unit(
        "docker.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
    );
    for file in SHIPPED {
        let to = shared.join("src").join(file);
        std::fs::create_dir_all(to.parent().unwrap_or(Path::new("."))).expect("create src dir");
        let from = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file);
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}
