//! `docs/walkthrough.md`, run as written, twice in a row: every `sh` block, in order, as root in
//! the systemd container (systemd 252 as PID 1, the host's Docker through its socket). The
//! document's own `examples/walkthrough/prepare` builds the images and starts the registry and
//! etcd; the document starts Traefik and sends load through it during each rolling step.
//!
//! The test provides only what the walkthrough's "Before you start" asks of the machine: the
//! binaries at `/usr/bin/sidekick` and `/usr/bin/traefik`, the example update service, the shipped
//! files under `$SRC`, and the variables of the first block (free loopback ports). After each
//! section it checks, from outside and independently of the block's own waits, what the section
//! says happened; in each rolling step the load must have seen 0 failed requests.

mod support;

#[path = "../examples/omaha_server/service/mod.rs"]
mod service;
#[path = "walkthrough/world.rs"]
mod world;

use world::World;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use serde_json::Value;

use support::systemd::{self, Systemd};
use support::{Need, etcd, images, prerequisites_met, registry, traefik};

/// Where the container sees the host's `Systemd::bus_dir()`.
const SHARED: &str = "/run/dbus";
/// The longest one block may take: longer than the document's own waits (at most 300 s), so
/// that they time out first and print `sidekick status` and their hint.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(420);
/// How many times the whole document runs, on the same machine.
const RUNS: usize = 2;
/// The walkthrough's app id (`update.app_id` of `examples/config/web.toml`).
const APP_ID: &str = "6a6e5b4c-0000-4000-8000-00000000beef";
const INSTANCES: [&str; 3] = ["1", "2", "3"];
/// The files of this repository the walkthrough reads from `$SRC`.
const SHIPPED: &[&str] = &[
    "units/example-web@.service",
    "units/sidekick@.service",
    "examples/config/web.toml",
    "examples/walkthrough/prepare",
    "examples/walkthrough/load",
    "examples/walkthrough/image/Dockerfile",
    "examples/walkthrough/image/entrypoint.sh",
    "examples/walkthrough/image/context",
];

fn needs() -> Vec<Need> {
    [
        etcd::NEEDS,
        systemd::NEEDS,
        images::NEEDS,
        registry::NEEDS,
        traefik::NEEDS,
        &[
            Need::Binary("etcdctl"),
            Need::Binary("setsid"),
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

/// `(sent, failed)` of the load loop's `load: N requests, M failed` line in a block's output.
fn load_count(output: &str) -> Option<(u64, u64)> {
    let line = output.lines().find(|l| l.starts_with("load: "))?;
    let mut numbers = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse::<u64>().ok());
    Some((numbers.next()??, numbers.next()??))
}

#[test]
fn the_load_count_is_read_from_the_load_loops_summary() {
    let output = "VERSIONS\n...\nload: 812 requests, 3 failed\n  +4s: 502\n";
    assert_eq!(load_count(output), Some((812, 3)));
    assert_eq!(load_count("no load here"), None);
}

/// The load's `(sent, failed)` requests in one section.
type LoadCount = Option<(u64, u64)>;

/// One run's figures: each section's time, and the load's count in rolling steps.
#[derive(Default)]
struct RunReport {
    sections: Vec<(String, Duration, LoadCount)>,
}

impl RunReport {
    fn total(&self) -> Duration {
        self.sections.iter().map(|s| s.1).sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_of_the_walkthrough_runs_twice_and_does_what_it_says() {
    if !prerequisites_met(&needs()) {
        return;
    }
    let doc = shipped_text("docs/walkthrough.md");
    let blocks = blocks(&doc);
    let (prelude, steps) = blocks.split_first().expect("a variables block");
    let world = World::start().await;

    let mut reports = Vec::new();
    for run in 1..=RUNS {
        let mut report = RunReport::default();
        let mut started = Instant::now();
        let mut output = String::new();
        for (i, block) in steps.iter().enumerate() {
            let out = world.run_block(&prelude.script, block).await;
            eprintln!("--- run {run}: {} ---\n{out}", block.section);
            output.push_str(&out);
            // Checked once the section's last block ran.
            let is_last = steps.get(i + 1).is_none_or(|b| b.section != block.section);
            if !is_last {
                continue;
            }
            let load = check_section(&world, &block.section, &output).await;
            report
                .sections
                .push((block.section.clone(), started.elapsed(), load));
            started = Instant::now();
            output.clear();
        }
        let last = report
            .sections
            .last()
            .map(|s| s.0.clone())
            .unwrap_or_default();
        assert!(last.starts_with("6."), "{last}");
        reports.push(report);
    }
    for (run, report) in reports.iter().enumerate() {
        eprintln!("walkthrough run {}: {:.0?} in all", run + 1, report.total());
        for (section, took, load) in &report.sections {
            let load = load.map_or(String::new(), |(sent, failed)| {
                format!(", load {sent} requests, {failed} failed")
            });
            eprintln!("  {took:>8.1?}  {section}{load}");
        }
    }
}

/// What each section says happened, seen from outside; the load's count in a rolling step.
async fn check_section(world: &World, section: &str, output: &str) -> Option<(u64, u64)> {
    let step = section.split('.').next().unwrap_or_default();
    if step == "Before you start" {
        check_prepared(world).await;
        return None;
    }
    let (versions, registered) = (world.versions().await, world.registrations().await);
    let base: u16 = world.var("PORT_BASE").parse().expect("PORT_BASE");
    let all = |v: &str| vec![v.to_string(); INSTANCES.len()];
    let load = load_count(output);
    if ["3", "4", "5"].contains(&step) {
        let (sent, failed) = load.unwrap_or_else(|| panic!("no load count in {output}"));
        assert!(sent > 0, "the load sent nothing: {output}");
        assert_eq!(failed, 0, "requests failed during step {step}: {output}");
    }
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
            // check-config --unit shows the port instance 2's daemon registered with.
            let shown = format!("port = {}", base + 2);
            assert!(
                output.lines().any(|l| l.starts_with(&shown)),
                "check-config --unit example-web@2.service does not show {shown:?}: {output}"
            );
            let environment = world.systemd.exec(&["cat", "/etc/environment"]);
            let environment = String::from_utf8_lossy(&environment.stdout);
            assert!(!environment.contains("COREOS_PUBLIC_IPV4"), "{environment}");
            // The app unit publishes on loopback only, as its default BIND_ADDRESS says.
            let published = images::docker_port("example-web-1");
            assert!(published.starts_with("80/tcp -> 127.0.0.1:"), "{published}");
            // Traefik answers with an instance's page.
            assert!(output.contains("<h1>example-web 1.0.0</h1>"), "{output}");
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
            assert_eq!(world.count("traefik/http/routers/").await, 0);
            let url = format!("{}/api/apps/{APP_ID}/instances", world.updates);
            let listing = support::http_get(&url).await.expect("list instances");
            assert_eq!(listing.0, 404, "the app is still there: {listing:?}");
            let left = world.systemd.exec(&[
                "sh",
                "-c",
                "ls -d /etc/systemd/system/example-web@* /etc/systemd/system/sidekick@* \
                 /etc/sidekick/config.d/* /var/lib/sidekick/example-web-* 2>/dev/null; true",
            ]);
            let left = String::from_utf8_lossy(&left.stdout);
            assert!(left.trim().is_empty(), "left behind:\n{left}");
        }
        other => panic!("a section the test does not know: {other:?}"),
    }
    load
}

/// After `prepare`: the registry holds the four versions and etcd answers.
async fn check_prepared(world: &World) {
    let url = format!("http://{}/v2/example-web/tags/list", world.registry);
    let (status, tags) = support::http_get(&url).await.expect("list tags");
    assert_eq!(status, 200, "{tags}");
    for version in ["1.0.0", "2.0.0", "3.0.0", "3.0.1"] {
        assert!(tags.contains(&format!("\"{version}\"")), "{tags}");
    }
    let health = format!("{}/health", world.etcd_endpoint);
    let (status, body) = support::http_get(&health).await.expect("etcd health");
    assert_eq!(status, 200, "{body}");
}
