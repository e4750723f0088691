//! `docs/walkthrough.md`, run as written: every `sh` block, in order, as root in the systemd
//! container (systemd 252 as PID 1, the host's Docker through its socket), against a real etcd,
//! a local image registry holding the example-web versions, and the example update service.
//!
//! The test provides only what the walkthrough's "Before you start" asks of the machine: the
//! binary at `/usr/bin/sidekick`, the servers, the images, the shipped files under `$SRC`, and the
//! variables of the first block. After each section it checks, from outside and independently of
//! the block's own waits, what the section says happened.

mod support;

#[path = "../examples/omaha_server/service/mod.rs"]
mod service;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, GetOptions};
use serde_json::Value;

use support::etcd::{self, Etcd};
use support::registry::{self, Registry};
use support::systemd::{self, Systemd};
use support::{Need, images, prerequisites_met, run};

/// Where the container sees the host's `Systemd::bus_dir()`.
const SHARED: &str = "/run/dbus";
/// The longest one block may take: a rollout over three instances with 10 s polls.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(300);
/// The walkthrough's app id (`update.app_id` of `examples/config/web.toml`).
const APP_ID: &str = "6a6e5b4c-0000-4000-8000-00000000beef";
const INSTANCES: [&str; 3] = ["1", "2", "3"];
/// The files of this repository the walkthrough reads from `$SRC`.
const SHIPPED: &[&str] = &[
    "units/example-web@.service",
    "units/sidekick@.service",
    "examples/config/web.toml",
];

fn needs() -> Vec<Need> {
    [
        etcd::NEEDS,
        systemd::NEEDS,
        images::NEEDS,
        registry::NEEDS,
        &[
            Need::Binary("nsenter"),
            Need::Binary("bash"),
            Need::Binary("curl"),
            Need::Binary("jq"),
            Need::Binary("timeout"),
        ],
    ]
    .concat()
}

/// One `sh` block of the walkthrough and the section it stands in.
#[derive(Debug)]
struct Block {
    section: String,
    script: String,
}

/// The `sh` blocks of the document, in order, each with its `##` heading.
fn blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut section = String::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            Some(script) if line.trim_end() == "```" => {
                blocks.push(Block {
                    section: section.clone(),
                    script: std::mem::take(script),
                });
                current = None;
            }
            Some(script) => {
                script.push_str(line);
                script.push('\n');
            }
            None if line.trim_end() == "```sh" => current = Some(String::new()),
            None => {
                if let Some(heading) = line.strip_prefix("## ") {
                    section = heading.trim().to_string();
                }
            }
        }
    }
    assert!(current.is_none(), "an unclosed ```sh block");
    blocks
}

#[test]
fn the_walkthrough_has_a_variables_block_and_a_block_for_each_step() {
    let doc = shipped_text("docs/walkthrough.md");
    let blocks = blocks(&doc);
    assert!(
        blocks[0].section == "Before you start" && blocks[0].script.contains("PORT_BASE"),
        "{blocks:#?}"
    );
    for step in ["1.", "2.", "3.", "4.", "5.", "6."] {
        assert!(
            blocks.iter().any(|b| b.section.starts_with(step)),
            "no block in step {step}: {blocks:#?}"
        );
    }
}

fn shipped_text(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Three consecutive free loopback ports after the returned base.
fn free_port_base() -> u16 {
    for _ in 0..50 {
        let base = support::free_port().saturating_sub(4).max(1024);
        let free = (1..=3).all(|n| std::net::TcpListener::bind(("127.0.0.1", base + n)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no three consecutive free ports found");
}

/// Everything the walkthrough runs against.
struct World {
    systemd: Systemd,
    etcd: Etcd,
    client: Client,
    updates: String,
    env: Vec<(String, String)>,
    _registry: Registry,
    _containers: Vec<images::Container>,
    _service: tokio::task::JoinHandle<()>,
}

impl World {
    async fn start() -> World {
        let etcd = Etcd::start().await;
        let client = etcd.client().await;
        let registry = Registry::start().await;
        for version in ["1.0.0", "2.0.0", "3.0.0", "3.0.1"] {
            push_as_example_web(&images::app_image(version), &registry.address(), version);
        }
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
        let env = vec![
            ("ETCD".to_string(), etcd.endpoint()),
            ("S".to_string(), updates.clone()),
            ("REGISTRY".to_string(), registry.address()),
            ("PORT_BASE".to_string(), free_port_base().to_string()),
            ("SRC".to_string(), format!("{SHARED}/src")),
        ];
        World {
            systemd,
            etcd,
            client,
            updates,
            env,
            _registry: registry,
            _containers: INSTANCES
                .iter()
                .map(|n| images::Container::guard(&format!("example-web-{n}")))
                .collect(),
            _service: service_task,
        }
    }

    /// Runs `prelude` and `block` in bash in the container; panics with its output on failure.
    async fn run_block(&self, prelude: &str, block: &Block) -> String {
        let script = format!("{prelude}\n{}", block.script);
        let mut argv = vec![
            "timeout".to_string(),
            BLOCK_TIMEOUT.as_secs().to_string(),
            "env".to_string(),
        ];
        argv.extend(self.env.iter().map(|(k, v)| format!("{k}={v}")));
        argv.extend(["bash", "-euo", "pipefail", "-c", &script].map(String::from));
        let target = self.systemd.init_pid().to_string();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("nsenter")
                .args(["--target", &target, "--mount", "--pid", "--"])
                .args(&argv)
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run nsenter")
        })
        .await
        .expect("join the block");
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

    fn journal_tail(&self) -> String {
        let out = self.systemd.exec(&[
            "journalctl",
            "--no-pager",
            "-n",
            "60",
            "-u",
            "sidekick@*",
            "-u",
            "example-web@*",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Instance name to registered URL, under the traefik layout's prefix.
    async fn registrations(&self) -> BTreeMap<String, String> {
        let prefix = "traefik/http/services/example-web/loadbalancer/servers/";
        let resp = self
            .client
            .clone()
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

    async fn count(&self, prefix: &str) -> usize {
        let resp = self
            .client
            .clone()
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .expect("count keys");
        usize::try_from(resp.count()).unwrap_or(usize::MAX)
    }

    /// The `SIDEKICK_VERSION` systemd reports for each app unit.
    async fn versions(&self) -> Vec<String> {
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
    async fn events(&self) -> Vec<Vec<(i64, i64, i64)>> {
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

/// Tags the test app image of `version` as `<registry>/example-web:<version>` and pushes it.
fn push_as_example_web(local: &str, registry: &str, version: &str) {
    let remote = format!("{registry}/example-web:{version}");
    run(Command::new("docker").args(["tag", local, &remote]));
    run(Command::new("docker").args(["push", &remote]));
    images::remove_tag(&remote);
}

/// What the walkthrough expects the machine to have: `/usr/bin/sidekick` (a read-only overlay
/// on the container's `/usr/bin`; the host's `/usr` is not touched), Docker's unit (the engine
/// itself is the host's, through the bound socket), and the repository's shipped files.
fn provide_the_machine(systemd: &Systemd) {
    let shared = systemd.bus_dir();
    let bin = shared.join("bin");
    std::fs::create_dir_all(&bin).expect("create bin dir");
    std::fs::copy(env!("CARGO_BIN_EXE_sidekick"), bin.join("sidekick")).expect("copy sidekick");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_walkthrough_runs_and_does_what_it_says() {
    if !prerequisites_met(&needs()) {
        return;
    }
    let doc = shipped_text("docs/walkthrough.md");
    let blocks = blocks(&doc);
    let (prelude, steps) = blocks.split_first().expect("a variables block");
    let world = World::start().await;

    let mut last_section = String::new();
    for block in steps {
        let output = world.run_block(&prelude.script, block).await;
        eprintln!("--- {} ---\n{output}", block.section);
        // Checked once the section's last block ran.
        let is_last = steps
            .iter()
            .rev()
            .find(|b| b.section == block.section)
            .is_some_and(|b| std::ptr::eq(b, block));
        if !is_last {
            continue;
        }
        check_section(&world, &block.section, &output).await;
        last_section = block.section.clone();
    }
    assert!(last_section.starts_with("6."), "{last_section}");
    drop(world.etcd);
}

/// What each section says happened, seen from outside.
async fn check_section(world: &World, section: &str, output: &str) {
    let step = section.split('.').next().unwrap_or_default();
    let (versions, registered) = (world.versions().await, world.registrations().await);
    let base: u16 = world.env[3].1.parse().expect("PORT_BASE");
    let all = |v: &str| vec![v.to_string(); INSTANCES.len()];
    match step {
        "1" => {
            let url = format!("{}/api/apps/{APP_ID}/instances", world.updates);
            let listing = support::http_get(&url).await.expect("list instances");
            assert_eq!(listing.0, 200, "{listing:?}");
        }
        "2" => {
            let expected: BTreeMap<String, String> = INSTANCES
                .iter()
                .zip(1u16..)
                .map(|(n, i)| {
                    (
                        format!("example-web-{n}"),
                        format!("http://127.0.0.1:{}", base + i),
                    )
                })
                .collect();
            assert_eq!(registered, expected);
            assert_eq!(versions, all("1.0.0"));
            assert!(output.contains("VERSIONS"), "{output}");
        }
        "3" => {
            assert_eq!(versions, all("2.0.0"), "{}", world.journal_tail());
            assert_eq!(registered.len(), INSTANCES.len(), "{registered:?}");
            assert_eq!(world.count("/sidekick/slots/").await, 0, "a slot is held");
            for events in world.events().await {
                for wanted in [(13, 1, 0), (14, 1, 0), (800, 1, 0), (3, 1, 0)] {
                    assert!(events.contains(&wanted), "no {wanted:?} in {events:?}");
                }
            }
        }
        "4" => {
            assert_eq!(versions, all("2.0.0"), "{}", world.journal_tail());
            assert_eq!(registered.len(), INSTANCES.len(), "{registered:?}");
            assert_eq!(world.count("/sidekick/halt/").await, 1, "no halt marker");
            assert!(output.contains("3.0.0"), "status names no halt: {output}");
            // One instance tried 3.0.0 and failed it (errorcode 1001); any other that had been
            // granted 3.0.0 gave the grant back untried when it met the halt (1003).
            let events = world.events().await;
            let failures: Vec<i64> = events
                .iter()
                .flatten()
                .filter(|(t, r, _)| (*t, *r) == (3, 0))
                .map(|e| e.2)
                .collect();
            let tried = failures.iter().filter(|c| **c == 1001).count();
            assert_eq!(tried, 1, "{events:?}");
            assert!(
                failures.iter().all(|c| [1001, 1003].contains(c)),
                "{events:?}"
            );
        }
        "5" => {
            assert_eq!(versions, all("3.0.1"), "{}", world.journal_tail());
            assert_eq!(registered.len(), INSTANCES.len(), "{registered:?}");
            assert_eq!(world.count("/sidekick/halt/").await, 0, "still halted");
            assert_eq!(world.count("/sidekick/slots/").await, 0, "a slot is held");
        }
        "6" => {
            assert!(registered.is_empty(), "still registered: {registered:?}");
            assert_eq!(world.count("/sidekick/instances/").await, 0);
        }
        other => panic!("a section the test does not know: {other:?}"),
    }
}
