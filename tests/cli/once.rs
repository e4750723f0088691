//! `sidekick run --once` is one pass: against a live unit it ends only once the registration is
//! decided (here: after `rise` passing checks, registered in etcd); with no system bus it exits 1
//! at once with one line naming the bus; the dry run on embedded defaults names the version it
//! reads in its instance record and leaves no runtime directory behind.

use std::io::{Read as _, Write as _};
use std::process::Command;
use std::time::{Duration, Instant};

use super::sidekick;
use super::support::etcd::{self, Etcd};
use super::support::systemd::{self, Job, Systemd};
use super::support::{prerequisites_met, temp_dir};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A config for `web@1.service` registering on `port` with etcd at `etcd`, checking
/// `http://127.0.0.1:<port>/` every 300 ms and needing `rise` passes.
fn config(etcd: &str, port: u16, rise: u32) -> String {
    format!(
        "[instance]\nunit = \"web@1.service\"\n\
         [etcd]\nendpoints = [\"{etcd}\"]\ntimeout = \"2s\"\n\
         [registration]\nhost = \"127.0.0.1\"\nport = {port}\nttl = \"10s\"\n\
         [health]\ninterval = \"300ms\"\ntimeout = \"200ms\"\nrise = {rise}\nfall = 2\n\
         [update]\nenabled = false\n[daemon]\ncontrol_socket = \"\"\n"
    )
}

#[test]
fn once_with_no_system_bus_exits_1_at_once_with_one_line_naming_the_bus() {
    let dir = temp_dir("once-no-bus");
    let file = dir.path().join("web.toml");
    std::fs::write(&file, config("http://127.0.0.1:9", 8080, 2)).unwrap();
    let bus = dir.path().join("no-bus-here");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args(["run", "--once", "--log", "stderr", "--config"])
        .arg(&file)
        .env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            format!("unix:path={}", bus.display()),
        )
        .env("SIDEKICK_CONFIG_ROOT", dir.path())
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Within etcd.timeout (2 s) and a margin, not retrying for ever.
    assert!(took < Duration::from_secs(5), "took {took:?}: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(&format!("system bus at unix:path={}", bus.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("retrying"), "{stderr}");
}

#[test]
fn dry_run_once_names_the_units_version_in_its_record_and_leaves_no_runtime_directory() {
    let root = tempfile::tempdir().unwrap();
    let out = sidekick(root.path(), &["run", "--dry-run", "--once"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let first_record = stdout
        .lines()
        .find(|l| l.contains("would register /sidekick/instances/"))
        .unwrap_or_else(|| panic!("no instance record in:\n{stdout}"));
    assert!(
        first_record.contains(r#""version":"1.0.0""#),
        "{first_record}"
    );
    assert!(!stdout.contains(r#""version":"unknown""#), "{stdout}");
    // The control socket's directory (run/sidekick/web@1 under the root) is gone with it.
    let left: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A page server on loopback answering 200 to every request; counts the requests.
fn serve_ok() -> (u16, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = hits.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
            );
        }
    });
    (port, hits)
}

#[tokio::test]
async fn once_against_a_live_unit_waits_for_rise_passes_and_registers_before_it_exits() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    let dir = temp_dir("once-live");
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let systemd = Systemd::start().await;
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
    let (port, hits) = serve_ok();
    let file = dir.path().join("web.toml");
    std::fs::write(&file, config(&etcd.endpoint(), port, 3)).unwrap();
    let started = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args(["run", "--once", "--log", "stderr", "--config"])
        .arg(&file)
        .env("DBUS_SYSTEM_BUS_ADDRESS", systemd.bus_address())
        .env("SIDEKICK_CONFIG_ROOT", dir.path())
        .env_remove("NOTIFY_SOCKET")
        .env("RUST_LOG", "info")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("run --once ends")
        .unwrap();
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Three checks 300 ms apart: it cannot have decided sooner than the rise took.
    assert!(
        hits.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "{stderr}"
    );
    assert!(
        took >= Duration::from_millis(600),
        "took {took:?}: {stderr}"
    );
    let registered = stderr
        .find(" registered")
        .unwrap_or_else(|| panic!("{stderr}"));
    let stopped = stderr
        .find("deregistered")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(registered < stopped, "{stderr}");
    // It withdrew its registration on the way out.
    let mut client = client;
    let left = client.get("/services/web/web-1", None).await.unwrap();
    assert!(left.kvs().is_empty(), "{stderr}");
}
