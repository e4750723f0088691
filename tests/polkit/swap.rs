//! The daemon still swaps as user `sidekick`: the shipped `sidekick@.service` with a
//! `User=sidekick` drop-in and `swap.handoff = "environment-file"`, under the shipped polkit rule,
//! pre-pulls through `sidekick-prepull@.service`, hands the new version over through
//! `sidekick-version@.service` and restarts the shipped example app unit, which serves the new
//! version; no drop-in is written and systemd is never reloaded. A version that fails its health
//! check is rolled back through the same file.

use std::time::Duration;

use super::support::etcd::{self, Etcd};
use super::support::registry::{self, Registry};
use super::support::systemd::{self, Job};
use super::support::{
    free_port, http_get, images, poll_until, prerequisites_met, wait_for_http_ok,
};
use super::update_service::{APP_ID, TRACK, UpdateService, events};
use super::{NEEDS, SHARED, non_root_host, shipped};

const FIRST_VERSION: &str = "1.0.0";
const NEW_VERSION: &str = "2.0.0";
/// Starts, but its `/` answers 404: the swap to it is rolled back.
const BROKEN_VERSION: &str = images::BROKEN_VERSION;
/// Starting the app container and the first health checks, on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// A poll (10 s ± 10 %), the pre-pull, the slot, the drain, the restart and the verification.
const SWAP_TIMEOUT: Duration = Duration::from_secs(180);
/// What the service hears from a swap that succeeded, in this order.
const SUCCESS_EVENTS: [(i64, i64); 4] = [(13, 1), (14, 1), (800, 1), (3, 1)];

/// Whether `wanted` occurs in `seen` in order (other events may come between).
fn in_order(seen: &[(i64, i64)], wanted: &[(i64, i64)]) -> bool {
    let mut rest = seen.iter();
    wanted.iter().all(|w| rest.any(|s| s == w))
}

#[tokio::test]
async fn the_shipped_sidekick_unit_run_as_user_sidekick_swaps_its_app_through_the_environment_file()
{
    let needs = [
        systemd::NEEDS,
        NEEDS,
        etcd::NEEDS,
        images::NEEDS,
        registry::NEEDS,
    ]
    .concat();
    if !prerequisites_met(&needs) {
        return;
    }
    let etcd = Etcd::start().await;
    let registry = Registry::start().await;
    let first = images::push(&images::app_image(FIRST_VERSION), &registry.address());
    let new = images::push(&images::app_image(NEW_VERSION), &registry.address());
    let broken = images::push(&images::app_image(BROKEN_VERSION), &registry.address());
    // The unit pulls the first image, the pre-pulls the others, into the host's Docker.
    let _pulled = images::LocalTags(vec![first.clone(), new.clone(), broken.clone()]);
    let updates = UpdateService::start(FIRST_VERSION, &first, Duration::from_secs(5)).await;
    let systemd = non_root_host(None).await;
    let mgr = systemd.manager().await;

    // A free port as the instance string keeps container names unique on a shared Docker host;
    // the rule's APP_UNITS pattern takes it.
    let port = free_port();
    let app = format!("example-web@{port}.service");
    let name = format!("example-web-{port}");
    let sidekick = format!("sidekick@example-web@{port}.service");
    let _container = images::Container::guard(&name);
    systemd.write_dropin(
        &app,
        "10-test.conf",
        &format!("[Service]\nEnvironment=SIDEKICK_IMAGE={first}\nEnvironment=PORT={port}\n"),
    );
    // The operator's part of non-root mode: the user, and the handoff in the configuration.
    systemd.write_dropin(&sidekick, "10-user.conf", "[Service]\nUser=sidekick\n");
    let config = systemd.bus_dir().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("10-web.toml"),
        shipped("examples/config/web.toml"),
    )
    .unwrap();
    std::fs::write(
        config.join("20-test.toml"),
        format!(
            "[etcd]\nendpoints = [\"{}\"]\ntimeout = \"2s\"\n\
             [registration]\nhost = \"127.0.0.1\"\nport = {port}\nttl = \"10s\"\n\
             [health]\nurl = \"http://127.0.0.1:{port}/\"\ninterval = \"250ms\"\n\
             [update]\nserver = \"{}\"\napp_id = \"{APP_ID}\"\ntrack = \"{TRACK}\"\n\
             interval = \"10s\"\n\
             [slot]\nttl = \"10s\"\n\
             [swap]\ndrain = \"1s\"\nverify_timeout = \"10s\"\nhandoff = \"environment-file\"\n\
             [rollout]\nmin_healthy = \"1s\"\n",
            etcd.endpoint(),
            updates.endpoint()
        ),
    )
    .unwrap();
    systemd.run(&[
        "sh",
        "-c",
        &format!(
            "mkdir -p /etc/sidekick/config.d && cp {SHARED}/config/*.toml /etc/sidekick/config.d/ \
                 && chmod 0644 /etc/sidekick/config.d/*.toml"
        ),
    ]);
    systemd.reload().await;
    assert_eq!(systemd::run_job(&mgr, Job::Start, &app).await, "done");
    let url = format!("http://127.0.0.1:{port}/");
    let page = wait_for_http_ok(&url, START_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{app} does not serve: {e}\n{}", systemd.log_tail(30)));
    assert!(page.contains(FIRST_VERSION), "{page}");

    let started = systemd::run_job(&mgr, Job::Start, &sidekick).await;
    let journal = |unit: &str| {
        let out = systemd.exec(&["journalctl", "--no-pager", "-o", "cat", "-u", unit]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(started, "done", "{}", journal(&sidekick));
    let pid = systemd.systemctl(&["show", "--property=MainPID", "--value", &sidekick]);
    let owner = systemd.run(&["stat", "-c", "%U", &format!("/proc/{}", pid.trim())]);
    assert_eq!(
        owner.trim(),
        "sidekick",
        "the daemon does not run as user sidekick"
    );

    updates.publish(NEW_VERSION, &new).await;
    let fail = |e: String| -> ! {
        panic!(
            "{e}\n--- {sidekick} ---\n{}\n--- templates ---\n{}{}\n--- systemd ---\n{}",
            journal(&sidekick),
            journal("sidekick-prepull@*"),
            journal("sidekick-version@*"),
            systemd.log_tail(30)
        )
    };
    poll_until(SWAP_TIMEOUT, "the app serves 2.0.0", || async {
        match http_get(&url).await? {
            (200, page) if page.contains(NEW_VERSION) => Ok(()),
            (status, page) => Err(format!("{status}: {page}")),
        }
    })
    .await
    .unwrap_or_else(|e| fail(e));
    let seen = poll_until(START_TIMEOUT, "the service saw 3/1", || async {
        let listing = updates.instances().await;
        let seen = listing.first().map(events).unwrap_or_default();
        match seen.last() {
            Some((3, 1)) => Ok(seen),
            _ => Err(format!("{listing:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| fail(e));
    assert!(in_order(&seen, &SUCCESS_EVENTS), "service saw {seen:?}");
    assert_eq!(updates.instances().await.len(), 1);

    // The version came through root's environment file, which the app unit reads.
    let env_file = format!("/var/lib/sidekick-versions/{name}.env");
    let text = systemd.run(&["cat", &env_file]);
    assert_eq!(
        text,
        format!("SIDEKICK_IMAGE={new}\nSIDEKICK_VERSION={NEW_VERSION}\n")
    );
    let owner = systemd.run(&["stat", "-c", "%U %a", &env_file]);
    assert_eq!(owner.trim(), "root 644");
    // No drop-in of the sidekick's, and its state in its own directory.
    let dropin = systemd.unit_dir().join(format!("{app}.d/50-sidekick.conf"));
    assert!(!dropin.exists(), "{} was written", dropin.display());
    let request = systemd.run(&[
        "stat",
        "-c",
        "%U",
        &format!("/var/lib/sidekick/{name}/version.request"),
    ]);
    assert_eq!(request.trim(), "sidekick");
    // The pre-pull ran as the template, pulling the new image.
    let pulled = journal("sidekick-prepull@*");
    assert!(pulled.contains(&new), "{pulled}");
    // The daemon found the unit reading the file (it says so at the start when not).
    let log = journal(&sidekick);
    assert!(
        log.contains("the version reaches the unit through its environment file")
            && !log.contains("has no EnvironmentFile="),
        "{log}"
    );

    // A version that never turns healthy: rolled back through the same file, and reported.
    updates.publish(BROKEN_VERSION, &broken).await;
    let seen = poll_until(SWAP_TIMEOUT, "the service saw 3/0", || async {
        let listing = updates.instances().await;
        let seen = listing.first().map(events).unwrap_or_default();
        match seen.last() {
            Some((3, 0)) => Ok(seen),
            _ => Err(format!("{listing:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| fail(e));
    assert!(
        in_order(&seen, &[(13, 1), (14, 1), (800, 1), (3, 0)]),
        "service saw {seen:?}"
    );
    let handed = journal("sidekick-version@*");
    assert!(handed.contains(BROKEN_VERSION), "{handed}");
    poll_until(START_TIMEOUT, "the app serves 2.0.0 again", || async {
        match http_get(&url).await? {
            (200, page) if page.contains(NEW_VERSION) => Ok(()),
            (status, page) => Err(format!("{status}: {page}")),
        }
    })
    .await
    .unwrap_or_else(|e| fail(e));
    let text = systemd.run(&["cat", &env_file]);
    assert_eq!(
        text,
        format!("SIDEKICK_IMAGE={new}\nSIDEKICK_VERSION={NEW_VERSION}\n")
    );
    assert_eq!(systemd::run_job(&mgr, Job::Stop, &sidekick).await, "done");
}

#[tokio::test]
async fn a_sidekick_in_environment_file_mode_says_at_its_start_when_the_unit_does_not_read_the_file()
 {
    let needs = [systemd::NEEDS, NEEDS, etcd::NEEDS].concat();
    if !prerequisites_met(&needs) {
        return;
    }
    let etcd = Etcd::start().await;
    // An app template with no EnvironmentFile=.
    let systemd = non_root_host(Some("[Service]\nExecStart=/usr/bin/sleep infinity\n")).await;
    let mgr = systemd.manager().await;
    let sidekick = "sidekick@example-web@1.service";
    systemd.write_dropin(sidekick, "10-user.conf", "[Service]\nUser=sidekick\n");
    let config = systemd.bus_dir().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("10-test.toml"),
        format!(
            "[etcd]\nendpoints = [\"{}\"]\n[registration]\nenabled = false\n\
             [health]\ncheck = \"none\"\n\
             [update]\nserver = \"http://127.0.0.1:9/v1/update/\"\napp_id = \"{APP_ID}\"\n\
             [swap]\nhandoff = \"environment-file\"\n",
            etcd.endpoint()
        ),
    )
    .unwrap();
    systemd.run(&[
        "sh",
        "-c",
        &format!(
            "mkdir -p /etc/sidekick/config.d && cp {SHARED}/config/*.toml /etc/sidekick/config.d/ \
                 && chmod 0644 /etc/sidekick/config.d/*.toml"
        ),
    ]);
    systemd.reload().await;
    assert_eq!(
        systemd::run_job(&mgr, Job::Start, "example-web@1.service").await,
        "done"
    );
    let _ = systemd::run_job(&mgr, Job::Start, sidekick).await;
    let said = poll_until(
        Duration::from_secs(30),
        "the start's error line",
        || async {
            let out = systemd.exec(&["journalctl", "--no-pager", "-o", "cat", "-u", sidekick]);
            let log = String::from_utf8_lossy(&out.stdout).into_owned();
            match log.contains("has no EnvironmentFile=") {
                true => Ok(log),
                false => Err(log),
            }
        },
    )
    .await
    .unwrap_or_else(|log| panic!("no such line: {log}"));
    assert!(
        said.contains("/var/lib/sidekick-versions/example-web-1.env"),
        "{said}"
    );
}
