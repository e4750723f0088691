//! The sidekick container image (`Dockerfile`, built by `scripts/image`): a statically linked
//! binary `FROM scratch`, built on this machine without pulling anything, and run as the seed's
//! "Docker sidekick container": on the host network, with the systemd container's bus directory
//! and the host's machine id bound in, it follows a unit over D-Bus and registers the app in etcd;
//! with the unit drop-in directory bound in too, it applies an update (`tests/image/swap.rs`).
//! The image is built once per test run (the first test to need it builds it).

mod support;

#[path = "../examples/omaha_server/service/mod.rs"]
mod service;

#[path = "rollout/rotation.rs"]
mod rotation;
#[path = "rollout/update_service.rs"]
mod update_service;

#[path = "image/swap.rs"]
mod swap;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use etcd_client::Client;
use support::etcd::{self, Etcd};
use support::systemd::{self, Job, Systemd};
use support::{Need, free_port, images, poll_until, prerequisites_met, run, temp_dir};

/// The tag the tests build; shared by the tests of one run.
const TAG: &str = "sidekick-test/sidekick:latest";
/// What building the image needs besides Docker.
const BUILD_NEEDS: &[Need] = &[Need::Binary("cargo")];
/// `docker stop`'s grace before SIGKILL; the daemon deregisters and exits well within it.
const STOP_GRACE_SECS: &str = "10";
/// The registration of `web@1.service` in the traefik layout.
const KEY: &str = "traefik/http/services/web/loadbalancer/servers/web-1/url";

/// Builds the image with `scripts/image` once per process; returns its tag.
fn image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/image");
        let out = run(Command::new(script).arg(TAG));
        // Straight to fd 2, so the size shows in the test output (libtest captures eprintln!).
        let _ = writeln!(std::io::stderr(), "scripts/image: {}", out.trim());
    });
    TAG
}

fn needs() -> Vec<Need> {
    [images::NEEDS, BUILD_NEEDS].concat()
}

/// Image `tag` run as the Docker sidekick of `unit`, removed on drop: host network, the systemd
/// container's bus at `/run/dbus`, the host's machine id, `config_dir` at `/etc/sidekick` and
/// `state_dir` at `/var/lib/sidekick`, plus `extra` `-v` bindings.
fn run_sidekick(
    tag: &str,
    systemd: &Systemd,
    config_dir: &Path,
    state_dir: &Path,
    extra: &[String],
    unit: &str,
) -> images::Container {
    let sidekick = images::Container::guard(&images::unique_name("sidekick"));
    let bind = |host: &Path, at: &str| format!("{}:{at}", host.display());
    let mut docker = Command::new("docker");
    docker
        .args(["run", "-d", "--network", "host", "--name", sidekick.name()])
        .args(["-v", &bind(&systemd.bus_dir(), "/run/dbus")])
        .args(["-v", "/etc/machine-id:/etc/machine-id:ro"])
        .args(["-v", &bind(config_dir, "/etc/sidekick:ro")])
        .args(["-v", &bind(state_dir, "/var/lib/sidekick")]);
    for binding in extra {
        docker.args(["-v", binding]);
    }
    run(docker
        .args(["-e", "COREOS_PUBLIC_IPV4=127.0.0.1"])
        .args([tag, "run", "--unit", unit]));
    sidekick
}

/// What the container wrote on stderr (the daemon's log).
fn container_log(container: &images::Container) -> String {
    let out = Command::new("docker")
        .args(["logs", container.name()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls until `key` is in etcd; its value.
async fn registered(client: &Client, key: &str, timeout: Duration) -> Result<String, String> {
    poll_until(timeout, &format!("registration key {key}"), || {
        let mut client = client.clone();
        async move {
            let resp = client.get(key, None).await.map_err(|e| e.to_string())?;
            match resp.kvs().first() {
                Some(kv) => Ok(kv.value_str().unwrap_or_default().to_string()),
                None => Err("not registered".to_string()),
            }
        }
    })
    .await
}

/// `docker stop` sends SIGTERM to the daemon (PID 1 of the container); its exit code.
fn stop(container: &images::Container) -> String {
    run(Command::new("docker").args(["stop", "-t", STOP_GRACE_SECS, container.name()]));
    let exit = run(Command::new("docker").args([
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        container.name(),
    ]));
    exit.trim().to_string()
}

#[test]
fn docker_build_makes_a_single_layer_scratch_image_whose_static_binary_runs() {
    if !prerequisites_met(&needs()) {
        return;
    }
    let tag = image();
    let layers = run(Command::new("docker").args([
        "image",
        "inspect",
        "--format",
        "{{len .RootFS.Layers}} {{.Size}}",
        tag,
    ]));
    let mut fields = layers.split_whitespace();
    assert_eq!(
        fields.next(),
        Some("1"),
        "FROM scratch + one COPY: {layers}"
    );
    let size: u64 = fields.next().and_then(|s| s.parse().ok()).unwrap();
    let _ = writeln!(std::io::stderr(), "image {tag}: {size} bytes");
    // Nothing but the binary: no libc, no shell, so a dynamic binary could not even start.
    let version = run(Command::new("docker").args(["run", "--rm", tag, "--version"]));
    assert_eq!(
        version.trim(),
        format!("sidekick {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn the_image_follows_a_unit_over_the_systemd_containers_bus_and_registers_the_app() {
    let needs = [needs(), etcd::NEEDS.to_vec(), systemd::NEEDS.to_vec()].concat();
    if !prerequisites_met(&needs) {
        return;
    }
    let tag = image();
    let etcd = Etcd::start().await;
    let systemd = Systemd::start().await;
    // The app: a container serving HTTP on the host network, and a unit that is active.
    let port = free_port();
    let _app = images::run_app(&images::app_image("1.0.0"), port);
    systemd.write_unit(
        "web@.service",
        "[Service]\nExecStart=/usr/bin/sleep infinity\n",
    );
    systemd.reload().await;
    let mgr = systemd.manager().await;
    assert_eq!(
        systemd::run_job(&mgr, Job::Start, "web@1.service").await,
        "done"
    );

    // Plain-http probe in a root with no CA bundle: it must not need one.
    let dir = temp_dir("image");
    let config = dir.path().join("config.d");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        config.join("10-web.toml"),
        format!(
            "[etcd]\nendpoints = [\"{}\"]\n[registration]\nlayout = \"traefik\"\nport = {port}\n\
             [health]\ncheck = \"http\"\nurl = \"http://127.0.0.1:{port}/\"\ninterval = \"1s\"\n\
             [update]\nenabled = false\n",
            etcd.endpoint()
        ),
    )
    .unwrap();
    let sidekick = run_sidekick(tag, &systemd, dir.path(), &state, &[], "web@1.service");

    let client = etcd.client().await;
    let url = registered(&client, KEY, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n--- sidekick container log ---\n{}",
                container_log(&sidekick)
            )
        });
    assert_eq!(url, format!("http://127.0.0.1:{port}"));

    // SIGTERM: the daemon revokes the lease and exits 0.
    assert_eq!(stop(&sidekick), "0", "{}", container_log(&sidekick));
    let mut client = client.clone();
    let left = client.get(KEY, None).await.unwrap();
    assert!(left.kvs().is_empty(), "still registered after docker stop");
}

/// The instructions of the last stage of a Dockerfile, from its `FROM` on, without comments.
fn last_stage(dockerfile: &str) -> Vec<String> {
    let lines: Vec<String> = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    lines[from..].to_vec()
}

/// `docker build .` cannot run here (it pulls a Rust image, and nothing can be pulled), so this
/// checks its structure: a Rust build stage compiling as `scripts/image` does, and a last stage
/// equal to `Dockerfile.prebuilt`'s (the offline path the tests above build) but for where the
/// binary comes from; and every file the build stage copies is in the build context.
#[test]
fn docker_build_dot_compiles_in_a_rust_stage_into_the_image_scripts_image_builds_offline() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap();
    let (main, prebuilt, script, static_binary) = (
        read("Dockerfile"),
        read("Dockerfile.prebuilt"),
        read("scripts/image"),
        read("scripts/static-binary"),
    );
    assert!(main.contains("\nFROM rust:1-bookworm AS build\n"), "{main}");
    // scripts/image builds the binary through scripts/static-binary (scripts/package uses it
    // too): the build stage of Dockerfile compiles with the same flags.
    assert!(script.contains("scripts/static-binary"), "{script}");
    for flag in [
        "--locked",
        "--profile image",
        "+crt-static",
        "--bin sidekick",
    ] {
        assert!(
            main.contains(flag) && static_binary.contains(flag),
            "{flag}"
        );
    }
    assert!(script.contains("--file Dockerfile.prebuilt"), "{script}");
    let (built, offline) = (last_stage(&main), last_stage(&prebuilt));
    assert_eq!(built.len(), offline.len(), "{built:#?}\n{offline:#?}");
    for (b, o) in built.iter().zip(&offline) {
        if b.starts_with("COPY ") {
            assert_eq!(b, "COPY --from=build /sidekick /usr/bin/sidekick");
            assert!(o.ends_with("/image/sidekick /usr/bin/sidekick"), "{o}");
        } else {
            assert_eq!(b, o);
        }
    }
    let ignore = read(".dockerignore");
    let kept: Vec<&str> = ignore.lines().filter_map(|l| l.strip_prefix('!')).collect();
    for line in main
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        for source in &words[1..words.len() - 1] {
            assert!(
                root.join(source).exists(),
                "{source} is not in the repository"
            );
            let source = source.trim_end_matches('/');
            assert!(
                kept.iter().any(|k| k.trim_end_matches('/') == source),
                ".dockerignore leaves {source} out of the context"
            );
        }
    }
}
