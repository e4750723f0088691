//! The FleetLock backend against a test server that answers like the two real servers recorded
//! in `tests/fixtures/fleetlock/` (airlock and heathcliff26/fleetlock): recursive lock, per-group
//! slots, "busy" in both servers' shapes (airlock's 500 `failed_lock`, heathcliff26's 423),
//! errors in both shapes (airlock's 400 `unknown_group`, heathcliff26's 500 `error`), a capped
//! error body, and a halt that outlives a restart until `sidekick slots resume`.

use std::path::Path;
use std::time::{Duration, Instant};

use sidekick::slot::{Acquisition, FleetLockSlots, Holding, SlotError, SlotLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

use super::commands::{sidekick, stdout};
use super::fleetlock_server::{Flavour, Shared, serve};
use super::support::temp_dir;
use super::who;

fn client(base: &Url, group: &str, id: &str, state_dir: &Path) -> FleetLockSlots {
    FleetLockSlots::new(base, group, &who(id), state_dir).expect("FleetLock client")
}

fn holders(state: &Shared) -> Vec<String> {
    let s = state.lock().unwrap();
    s.groups["web"].1.iter().cloned().collect()
}

async fn busy_detail(slot: &FleetLockSlots) -> String {
    match slot.acquire("2.0.0").await.expect("request answered") {
        Acquisition::Busy { detail } => detail,
        other => panic!("expected busy, got {other:?}"),
    }
}

#[tokio::test]
async fn fleetlock_locks_recursively_and_unlocks_on_a_base_without_trailing_slash() {
    let (base, state) = serve(Flavour::Airlock).await;
    let dir = temp_dir("fleetlock");
    let a = client(&base, "web", "a", dir.path());
    let b = client(&base, "web", "b", dir.path());

    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    assert_eq!(holders(&state), ["a"]);
    // airlock's "slots full" is a 500 with kind failed_lock: not granted, not an error.
    let detail = busy_detail(&b).await;
    assert!(
        detail.contains("500") && detail.contains("failed_lock"),
        "{detail}"
    );

    a.release().await.unwrap();
    a.release().await.expect("unlocking twice succeeds");
    assert!(holders(&state).is_empty());
    assert_eq!(b.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    assert_eq!(holders(&state), ["b"]);
    assert_eq!(state.lock().unwrap().requests, 6);
}

#[tokio::test]
async fn fleetlock_fence_asks_the_server_and_sees_a_lock_freed_behind_its_back_and_taken() {
    for flavour in [Flavour::Airlock, Flavour::Heathcliff] {
        let (base, state) = serve(flavour).await;
        let dir = temp_dir("fleetlock-fence");
        let a = client(&base, "web", "a", dir.path());
        let b = client(&base, "web", "b", dir.path());
        assert_eq!(a.held().await.unwrap(), Holding::NotHeld);
        assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
        let before = state.lock().unwrap().requests;
        assert_eq!(a.held().await.unwrap(), Holding::Held);
        assert_eq!(
            state.lock().unwrap().requests,
            before + 1,
            "the fence asked the server"
        );
        // An operator frees a's lock (`slots release --holder a`) and b takes the only slot.
        client(&base, "web", "a", dir.path())
            .unlock()
            .await
            .unwrap();
        assert_eq!(b.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
        match a.held().await.unwrap() {
            Holding::Lost { reason } => assert!(
                reason.contains("id a") && reason.contains("group web"),
                "{reason}"
            ),
            other => panic!("{flavour:?}: the fence said {other:?} with b holding the slot"),
        }
        assert_eq!(holders(&state), ["b"], "the fence took nothing from b");
        assert_eq!(a.held().await.unwrap(), Holding::NotHeld, "lost stays lost");
    }
}

#[tokio::test]
async fn fleetlock_heathcliff_slots_full_as_423_all_slots_full_is_busy() {
    let (base, _state) = serve(Flavour::Heathcliff).await;
    let dir = temp_dir("fleetlock");
    let a = client(&base, "web", "a", dir.path());
    let b = client(&base, "web", "b", dir.path());
    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    assert_eq!(a.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
    let detail = busy_detail(&b).await;
    assert!(
        detail.contains("423") && detail.contains("all_slots_full"),
        "{detail}"
    );
    a.release()
        .await
        .expect("heathcliff26's 200 with a body is a grant");
    assert_eq!(b.acquire("2.0.0").await.unwrap(), Acquisition::Acquired);
}

/// A refusal that retrying cannot change is an error naming the server's kind and value, not
/// "busy" retried forever.
fn assert_refused(got: Result<Acquisition, SlotError>, status: u16, kind: &str, value: &str) {
    match got {
        Err(err @ SlotError::Refused { .. }) => {
            assert_eq!(err.kind(), "refused");
            let text = err.to_string();
            assert!(text.contains(&format!("HTTP {status}")), "{text}");
            assert!(text.contains(kind) && text.contains(value), "{text}");
        }
        other => panic!("expected a {status} {kind} error, got {other:?}"),
    }
}

#[tokio::test]
async fn fleetlock_airlock_unknown_group_400_and_bad_identity_are_errors_not_busy() {
    let (base, _state) = serve(Flavour::Airlock).await;
    let dir = temp_dir("fleetlock");
    let stray = client(&base, "no-such-group", "a", dir.path());
    let unknown = "unknown group \"no-such-group\"";
    assert_refused(stray.acquire("2.0.0").await, 400, "unknown_group", unknown);
    match stray.release_stale().await {
        Err(err @ SlotError::Refused { status: 400, .. }) => assert_eq!(err.kind(), "refused"),
        other => panic!("expected a 400 refusal, got {other:?}"),
    }
    let nameless = client(&base, "web", "", dir.path());
    let why = "empty client ID";
    assert_refused(
        nameless.acquire("2.0.0").await,
        400,
        "invalid_client_identity",
        why,
    );
}

#[tokio::test]
async fn fleetlock_heathcliff_unknown_group_500_error_is_an_error_not_busy() {
    let (base, _state) = serve(Flavour::Heathcliff).await;
    let dir = temp_dir("fleetlock");
    let stray = client(&base, "no-such-group", "a", dir.path());
    let why = "An unexpected error occured";
    assert_refused(stray.acquire("2.0.0").await, 500, "error", why);
    let nameless = client(&base, "web", "", dir.path());
    let why = "The value of id is empty";
    assert_refused(nameless.acquire("2.0.0").await, 400, "bad_request", why);
}

#[tokio::test]
async fn fleetlock_airlock_with_its_etcd_down_is_an_error_not_busy() {
    let (base, state) = serve(Flavour::Airlock).await;
    let dir = temp_dir("fleetlock");
    state.lock().unwrap().etcd_down = true;
    let a = client(&base, "web", "a", dir.path());
    let why = "failed to initialize semaphore manager";
    assert_refused(a.acquire("2.0.0").await, 500, "failed_sem_init", why);
}

/// A server that answers 500 with a body that never ends: 1 MiB of it, then silence.
async fn endless_error_server() -> Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request).await;
                let head = "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\n\r\n";
                let _ = conn.write_all(head.as_bytes()).await;
                let filler = vec![b'x'; 64 * 1024];
                for _ in 0..16 {
                    if conn.write_all(&filler).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap()
}

#[tokio::test]
async fn fleetlock_error_body_is_read_only_up_to_64_kib() {
    let base = endless_error_server().await;
    let dir = temp_dir("fleetlock");
    let started = Instant::now();
    let got = client(&base, "web", "a", dir.path()).acquire("2.0.0").await;
    // Reading to the end would wait for the 10 s request timeout and fail as "http".
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    match got {
        Err(SlotError::Refused {
            status: 500,
            kind,
            value,
            ..
        }) => {
            assert_eq!(kind, "");
            assert!(value.len() <= 200 && value.starts_with("xxx"), "{value}");
        }
        other => panic!("expected a 500 refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn fleetlock_client_refuses_a_group_the_protocol_does_not_allow() {
    let base = Url::parse("http://127.0.0.1:9/").unwrap();
    let dir = temp_dir("fleetlock");
    let err = FleetLockSlots::new(&base, "web/stable", &who("a"), dir.path()).unwrap_err();
    assert_eq!(err.kind(), "group", "{err}");
}

/// A configuration for the fleetlock backend at `base`, with its state under `dir`.
fn fleetlock_config(dir: &Path, base: &Url) -> String {
    let path = dir.join("sidekick.toml");
    let text = format!(
        "[instance]\nunit = \"web@1.service\"\n\n[registration]\nenabled = false\nport = 8080\n\n\
         [health]\ncheck = \"none\"\n\n[update]\nenabled = false\n\n[daemon]\nstate_dir = \"{}\"\n\n\
         [slot]\nbackend = \"fleetlock\"\nfleetlock_url = \"{base}\"\ngroup = \"web\"\n",
        dir.join("state").display()
    );
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

/// Runs `sidekick` off the runtime's threads, so the in-process server keeps answering it.
async fn run_sidekick(dir: &Path, args: &[&str]) -> std::process::Output {
    let (dir, args) = (
        dir.to_path_buf(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sidekick(&dir, &args)
    })
    .await
    .expect("sidekick runs")
}

#[tokio::test]
async fn fleetlock_halt_keeps_the_lock_across_a_restart_until_slots_resume() {
    let (base, state) = serve(Flavour::Airlock).await;
    let dir = temp_dir("fleetlock-halt");
    let cfg = fleetlock_config(dir.path(), &base);
    let state_dir = dir.path().join("state");
    let failed = client(&base, "web", "failed", &state_dir);
    let sibling = client(&base, "web", "sibling", &state_dir);
    let next = client(&base, "web", "next", &dir.path().join("other-host"));
    assert_eq!(
        failed.acquire("3.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    failed
        .halt("3.0.0", "not healthy within 60s")
        .await
        .unwrap();
    failed.release().await.unwrap();
    assert_eq!(holders(&state), ["failed"], "release gave up a halted lock");

    // The daemon restarts: the halt is still there, and the stale-slot release keeps the lock.
    let restarted = client(&base, "web", "failed", &state_dir);
    restarted.release_stale().await.unwrap();
    assert_eq!(
        holders(&state),
        ["failed"],
        "release_stale gave up a halted lock"
    );
    let halted = Acquisition::Halted {
        version: "3.0.0".into(),
        reason: "not healthy within 60s".into(),
    };
    assert_eq!(restarted.acquire("3.0.0").await.unwrap(), halted);
    // Another instance on this host is halted too; one elsewhere finds the slot taken.
    assert_eq!(sibling.acquire("3.0.0").await.unwrap(), halted);
    assert!(busy_detail(&next).await.contains("failed_lock"));

    // `slots release` of the halted holder points at resume instead of lifting the halt.
    let out = run_sidekick(
        dir.path(),
        &["slots", "release", "--holder", "failed", "--config", &cfg],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("slots resume"));
    assert_eq!(holders(&state), ["failed"]);

    let out = stdout(&run_sidekick(dir.path(), &["slots", "resume", "--config", &cfg]).await);
    assert_eq!(
        out.trim(),
        format!(
            "resumed FleetLock group web (was halted at version 3.0.0 by web-failed: \
             not healthy within 60s); unlocked failed at {base}"
        )
    );
    assert!(holders(&state).is_empty());
    assert_eq!(next.acquire("3.0.0").await.unwrap(), Acquisition::Acquired);
    let out = stdout(&run_sidekick(dir.path(), &["slots", "resume", "--config", &cfg]).await);
    assert!(out.contains("not halted"), "{out}");
}

#[tokio::test]
async fn fleetlock_server_that_is_down_is_an_error_not_a_refusal() {
    let base = Url::parse(&format!(
        "http://127.0.0.1:{}/",
        super::support::free_port()
    ))
    .unwrap();
    let dir = temp_dir("fleetlock");
    let err = client(&base, "web", "a", dir.path())
        .acquire("2.0.0")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "http", "{err}");
}
