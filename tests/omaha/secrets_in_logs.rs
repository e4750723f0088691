//! No secret reaches a log line or a printed report: the update URL carries a planted token in
//! its query string and a password in its userinfo, etcd a planted password in its password
//! file, and the real binary, at debug level, runs against a refused port, a failing, a slow
//! and a redirecting update service and a broken etcd endpoint. Every line it writes is
//! searched for the secrets.

use super::support;
use super::*;

/// Planted in the update URL's query string (`?token=`).
const TOKEN: &str = "tok3n-5ecret-in-the-query";
/// Planted as the update URL's userinfo password, and as etcd's password.
const PASSWORD: &str = "pa55word-5ecret-in-userinfo";
/// Planted as the userinfo's user name.
const USER: &str = "u5er-5ecret";

/// How one hostile update service behaves, per connection.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// Nothing listens on the port.
    Refused,
    /// HTTP 500 with a body that repeats what a proxy would echo.
    Failing,
    /// Headers, then one byte now and then: only the total timeout ends it.
    Slow,
    /// A 302 to a Location that carries the token again.
    Redirecting,
}

/// The base URL (`http://127.0.0.1:P`) of a server behaving as `hostile`.
async fn hostile_service(hostile: Hostile) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    if matches!(hostile, Hostile::Refused) {
        return base; // the listener is dropped: the port refuses
    }
    let location = format!("{base}/elsewhere/?token={TOKEN}");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let location = location.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                match hostile {
                    Hostile::Refused => {}
                    Hostile::Failing => {
                        let body = "upstream failed";
                        let head = format!(
                            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        let _ = socket.write_all(head.as_bytes()).await;
                        let _ = socket.write_all(body.as_bytes()).await;
                    }
                    Hostile::Slow => {
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\n\
                                    content-length: 100000\r\n\r\n";
                        if socket.write_all(head.as_bytes()).await.is_ok() {
                            while socket.write_all(b" ").await.is_ok() {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                            }
                        }
                    }
                    Hostile::Redirecting => {
                        let head = format!(
                            "HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n"
                        );
                        let _ = socket.write_all(head.as_bytes()).await;
                    }
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    base
}

/// The update URL with every secret planted, on `base`.
fn secret_url(base: &str) -> String {
    let authority = base.trim_start_matches("http://");
    format!("http://{USER}:{PASSWORD}@{authority}/v1/update/?token={TOKEN}&channel=stable")
}

/// The secrets `text` shows, if any.
fn leaked(text: &str) -> Vec<&'static str> {
    [TOKEN, PASSWORD, USER]
        .into_iter()
        .filter(|secret| text.contains(secret))
        .collect()
}

/// `sidekick update-check --standalone` at debug level against `base`; its whole output.
async fn update_check_output(dir: &std::path::Path, base: &str) -> (Option<i32>, String) {
    let config = dir.join("sidekick.toml");
    std::fs::write(
        &config,
        format!(
            "[instance]\nunit = \"web@1.service\"\n[registration]\nenabled = false\n\
             [health]\ncheck = \"none\"\n[update]\nserver = \"{}\"\napp_id = \"{APP}\"\n",
            secret_url(base)
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args([
            "update-check",
            "--standalone",
            "--log",
            "stderr",
            "--config",
        ])
        .arg(&config)
        .args(["--current-version", "1.0.0"])
        .env("SIDEKICK_CONFIG_ROOT", dir)
        .env("RUST_LOG", "trace")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test]
async fn no_planted_token_or_password_reaches_a_log_line_of_a_hostile_update_service() {
    let cases = [
        (Hostile::Refused, "connect"),
        (Hostile::Failing, "http-status"),
        (Hostile::Slow, "timeout"),
        (Hostile::Redirecting, "http-status"),
    ];
    let runs = cases.map(|(hostile, kind)| async move {
        let dir = support::temp_dir("secrets-update");
        let base = hostile_service(hostile).await;
        let (code, text) = update_check_output(dir.path(), &base).await;
        (hostile, kind, code, text)
    });
    for (hostile, kind, code, text) in futures_util::future::join_all(runs).await {
        // The run did reach the service and failed the way this case fails...
        assert_eq!(code, Some(1), "{hostile:?}: {text}");
        assert!(
            text.contains(&format!("\"kind\":\"{kind}\"")),
            "{hostile:?} ends as {kind}: {text}"
        );
        assert!(
            text.contains("sending update check"),
            "{hostile:?}: the debug line is there: {text}"
        );
        // ...and no line of it, log or report, shows a secret.
        assert_eq!(leaked(&text), Vec::<&str>::new(), "{hostile:?}: {text}");
    }
}

/// Accepts connections and closes them at once: an etcd endpoint that is there and broken.
async fn broken_etcd() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    endpoint
}

#[tokio::test]
async fn no_planted_etcd_password_reaches_a_log_line_of_a_broken_etcd() {
    let dir = support::temp_dir("secrets-etcd");
    let password_file = dir.path().join("etcd-password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    std::fs::set_permissions(
        &password_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = dir.path().join("sidekick.toml");
    std::fs::write(
        &config,
        format!(
            "[instance]\nunit = \"web@1.service\"\n[registration]\nport = 8080\n\
             [update]\nserver = \"{}\"\napp_id = \"{APP}\"\n\
             [etcd]\nendpoints = [\"{}\"]\nusername = \"sidekick\"\npassword_file = \"{}\"\n\
             timeout = \"1s\"\n",
            secret_url("http://127.0.0.1:9"),
            broken_etcd().await,
            password_file.display()
        ),
    )
    .unwrap();
    for args in [&["status"][..], &["slots", "resume"][..]] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidekick"))
            .args(args)
            .args(["--log", "stderr", "--config"])
            .arg(&config)
            .env("SIDEKICK_CONFIG_ROOT", dir.path())
            .env("RUST_LOG", "trace")
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_ne!(out.status.code(), Some(0), "{args:?} fails: {text}");
        assert!(!text.trim().is_empty(), "{args:?} says why it failed");
        assert_eq!(leaked(&text), Vec::<&str>::new(), "{args:?}: {text}");
    }
}

/// The daemon's unit: sleeps, running version 1.0.0.
const DAEMON_UNIT: &str = "[Service]\n\
    Environment=SIDEKICK_VERSION=1.0.0\n\
    Environment=SIDEKICK_IMAGE=registry.example.com/web:1.0.0\n\
    ExecStart=/usr/bin/sleep infinity\n";

/// Runs `sidekick run` at trace level on `config` against `systemd` until its log satisfies
/// `done`; returns the whole log.
async fn daemon_log(
    systemd: &super::support::systemd::Systemd,
    dir: &std::path::Path,
    name: &str,
    config: &str,
    done: fn(&str) -> bool,
) -> String {
    use super::support::{ProcessGuard, SignalTarget, poll_until};
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sidekick"));
    cmd.args(["run", "--log", "stderr", "--config"])
        .arg(&path)
        .env("DBUS_SYSTEM_BUS_ADDRESS", systemd.bus_address())
        .env("SIDEKICK_CONFIG_ROOT", dir)
        .env("RUST_LOG", "trace")
        .env_remove("NOTIFY_SOCKET");
    let log = dir.join(format!("{name}.log"));
    let mut daemon = ProcessGuard::spawn("sidekick", &mut cmd, &log, SignalTarget::Group);
    poll_until(Duration::from_secs(60), name, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move { if done(&text) { Ok(()) } else { Err("not yet") } }
    })
    .await
    .unwrap_or_else(|e| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let shown: Vec<&str> = text.lines().filter(|l| !l.contains("TRACE")).collect();
        panic!("{e}\n{}", shown.join("\n"))
    });
    daemon.stop();
    std::fs::read_to_string(&log).unwrap()
}

#[tokio::test]
async fn the_daemon_logs_no_planted_secret_against_a_failing_update_service_and_a_broken_etcd() {
    use super::support::systemd::{self as container, Job, Systemd};
    if !super::support::prerequisites_met(container::NEEDS) {
        return;
    }
    let systemd = Systemd::start().await;
    systemd.write_unit("web@1.service", DAEMON_UNIT);
    systemd.reload().await;
    let started = container::run_job(&systemd.manager().await, Job::Start, "web@1.service").await;
    assert_eq!(started, "done");

    let dir = support::temp_dir("secrets-daemon");
    let password_file = dir.path().join("etcd-password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    std::fs::set_permissions(
        &password_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let (state, dropins) = (dir.path().join("state"), dir.path().join("dropins"));
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&dropins).unwrap();
    let common = format!(
        "[instance]\nunit = \"web@1.service\"\n[health]\ncheck = \"none\"\n\
         [etcd]\nendpoints = [\"{}\"]\nusername = \"sidekick\"\npassword_file = \"{}\"\n\
         timeout = \"1s\"\n[slot]\nbackend = \"none\"\n\
         [swap]\nprepull = []\ndropin_dir = \"{}\"\n[daemon]\nstate_dir = \"{}\"\n",
        broken_etcd().await,
        password_file.display(),
        dropins.display(),
        state.display()
    );
    let server = secret_url(&hostile_service(Hostile::Failing).await);
    // Updates only: the first check is answered 500 (the pass runs once registration is settled,
    // so this daemon registers nothing).
    let updates = format!(
        "{common}[registration]\nenabled = false\n\
         [update]\nserver = \"{server}\"\napp_id = \"{APP}\"\ninterval = \"10s\"\n"
    );
    let update_log = daemon_log(&systemd, dir.path(), "updates", &updates, |text| {
        text.contains("update service unreachable (http-status)")
    })
    .await;
    assert!(update_log.contains("sending update check"), "{update_log}");
    // Registration against the broken etcd, with the secret update URL configured too.
    let registration = format!(
        "{common}[registration]\nport = 8080\nhost = \"127.0.0.1\"\n\
         [update]\nserver = \"{server}\"\napp_id = \"{APP}\"\n"
    );
    let etcd_log = daemon_log(&systemd, dir.path(), "etcd", &registration, |text| {
        text.matches("etcd registration failed").count() >= 2
    })
    .await;
    for (name, log) in [("updates", &update_log), ("etcd", &etcd_log)] {
        for (n, line) in log.lines().enumerate() {
            assert_eq!(
                leaked(line),
                Vec::<&str>::new(),
                "{name} line {}: {line}",
                n + 1
            );
        }
    }
}
