//! The Docker sidekick applies an update. The unit drop-in directory is one host directory bound
//! at the same path into the sidekick container and at `/etc/systemd/system` into the systemd
//! container; the image pre-pulls the new version with a transient unit (the host's Docker, through
//! the socket bound into the systemd container), writes its drop-in there, reloads and restarts
//! the app unit over D-Bus, verifies the app and registers it again.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::rotation::{KeyWatch, rotation};
use super::support::etcd::{self, Etcd};
use super::support::registry::{self, Registry};
use super::support::systemd::{self, Job, Systemd};
use super::support::{
    free_port, http_get, images, poll_until, prerequisites_met, temp_dir, wait_for_http_ok,
};
use super::update_service::{APP_ID, TRACK, UpdateService, events};
use super::{KEY, container_log, image, needs, registered, run_sidekick, stop};

const UNIT: &str = "web@1.service";
const FIRST_VERSION: &str = "1.0.0";
const NEW_VERSION: &str = "2.0.0";
/// The registrations of the `web` service in the traefik layout.
const SERVERS_PREFIX: &str = "traefik/http/services/web/loadbalancer/servers/";
/// Starting the app container and the first health checks, on a loaded machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// A poll (10 s ± 10 %), the pre-pull, the slot, the drain, the restart and the verification.
const SWAP_TIMEOUT: Duration = Duration::from_secs(180);
/// What the service hears from a swap that succeeded, in this order.
const SUCCESS_EVENTS: [(i64, i64); 4] = [(13, 1), (14, 1), (800, 1), (3, 1)];

/// The Docker sidekick's configuration: the app on 127.0.0.1:`port` in the traefik layout,
/// updates from `server`, drop-ins in `dropin_dir`. `swap.prepull` stays at its default, the
/// bare `docker pull {image}`: the image has no `docker`, so systemd finds the host's.
fn config(etcd: &str, port: u16, server: &str, dropin_dir: &Path) -> String {
    format!(
        "[etcd]\nendpoints = [\"{etcd}\"]\ntimeout = \"2s\"\n\
         [registration]\nlayout = \"traefik\"\nhost = \"127.0.0.1\"\nport = {port}\nttl = \"10s\"\n\
         [health]\ncheck = \"http\"\ninterval = \"250ms\"\nrise = 2\n\
         [update]\nserver = \"{server}\"\napp_id = \"{APP_ID}\"\ntrack = \"{TRACK}\"\n\
         interval = \"10s\"\n\
         [slot]\nttl = \"10s\"\n\
         [swap]\ndrain = \"1s\"\nverify_timeout = \"30s\"\ndropin_dir = \"{}\"\n\
         [rollout]\nmin_healthy = \"1s\"\n",
        dropin_dir.display()
    )
}

/// Whether `wanted` occurs in `seen` in order (other events may come between).
fn in_order(seen: &[(i64, i64)], wanted: &[(i64, i64)]) -> bool {
    let mut rest = seen.iter();
    wanted.iter().all(|w| rest.any(|s| s == w))
}

#[tokio::test]
async fn the_image_prepulls_writes_the_dropin_restarts_the_unit_and_registers_the_new_version() {
    let needs = [
        needs(),
        etcd::NEEDS.to_vec(),
        systemd::NEEDS.to_vec(),
        registry::NEEDS.to_vec(),
    ]
    .concat();
    if !prerequisites_met(&needs) {
        return;
    }
    let tag = image();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let registry = Registry::start().await;
    let first = images::push(&images::app_image(FIRST_VERSION), &registry.address());
    let new = images::push(&images::app_image(NEW_VERSION), &registry.address());
    // The unit pulls the first image, the pre-pull the new one, into the host's Docker.
    let _pulled = images::LocalTags(vec![first.clone(), new.clone()]);
    let updates = UpdateService::start(FIRST_VERSION, &first, Duration::from_secs(5)).await;
    let systemd = Systemd::start().await;

    let prefix = images::unique_name("image-swap");
    let _app = images::Container::guard(&format!("{prefix}-1"));
    let port = free_port();
    systemd.write_unit(
        "web@.service",
        &images::app_unit(&prefix, &first, FIRST_VERSION),
    );
    let port_conf = format!("[Service]\nEnvironment=WEB_PORT={port}\n");
    systemd.write_dropin(UNIT, "10-port.conf", &port_conf);
    systemd.reload().await;
    let mgr = systemd.manager().await;
    let started = systemd::run_job(&mgr, Job::Start, UNIT).await;
    assert_eq!(started, "done", "{}", systemd.log_tail(30));
    let app = format!("http://127.0.0.1:{port}/");
    let page = wait_for_http_ok(&app, START_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", systemd.log_tail(30)));
    assert!(page.contains(FIRST_VERSION), "{page}");

    // The host directory systemd reads as /etc/systemd/system, at the same path in the sidekick.
    let dropins = systemd.unit_dir();
    let dir = temp_dir("image-swap");
    let config_dir = dir.path().join("config");
    let state = dir.path().join("state");
    std::fs::create_dir_all(config_dir.join("config.d")).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let text = config(&etcd.endpoint(), port, &updates.endpoint(), &dropins);
    std::fs::write(config_dir.join("config.d/10-web.toml"), text).unwrap();
    let bind_dropins = format!("{0}:{0}", dropins.display());
    let sidekick = run_sidekick(tag, &systemd, &config_dir, &state, &[bind_dropins], UNIT);
    let fail = |e: String| -> ! {
        panic!(
            "{e}\n--- sidekick container log ---\n{}\n--- systemd ---\n{}",
            container_log(&sidekick),
            systemd.log_tail(30)
        )
    };
    let url = registered(&client, KEY, START_TIMEOUT)
        .await
        .unwrap_or_else(|e| fail(e));
    assert_eq!(url, format!("http://127.0.0.1:{port}"));

    let servers = KeyWatch::start(&client, SERVERS_PREFIX).await;
    updates.publish(NEW_VERSION, &new).await;

    let conn = systemd.connection().await;
    poll_until(
        SWAP_TIMEOUT,
        "the unit's SIDEKICK_VERSION is 2.0.0",
        || async {
            match systemd::unit_version(&conn, UNIT).await {
                version if version == NEW_VERSION => Ok(()),
                version => Err(version),
            }
        },
    )
    .await
    .unwrap_or_else(|e| fail(e));
    poll_until(START_TIMEOUT, "the app answers 2.0.0", || async {
        match http_get(&app).await? {
            (200, page) if page.contains(NEW_VERSION) => Ok(()),
            (status, page) => Err(format!("{status}: {page}")),
        }
    })
    .await
    .unwrap_or_else(|e| fail(e));
    let machine_id = sidekick::identity::read_app_machine_id(
        Path::new(sidekick::identity::MACHINE_ID_PATH),
        APP_ID,
        UNIT,
    )
    .expect("app machine id");
    let seen = poll_until(START_TIMEOUT, "the service saw 3/1", || async {
        let listing = updates.instances().await;
        let seen = listing
            .iter()
            .find(|row: &&Value| row["machine_id"].as_str() == Some(machine_id.as_str()))
            .map(events)
            .unwrap_or_default();
        match seen.last() {
            Some((3, 1)) => Ok(seen),
            _ => Err(seen),
        }
    })
    .await
    .unwrap_or_else(|e| fail(e));
    assert!(in_order(&seen, &SUCCESS_EVENTS), "service saw {seen:?}");
    let url = registered(&client, KEY, START_TIMEOUT)
        .await
        .unwrap_or_else(|e| fail(e));
    assert_eq!(url, format!("http://127.0.0.1:{port}"));
    // Out of rotation once, for the restart, and back.
    let out = rotation(&servers).stretches;
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].instance, "web-1");
    assert!(out[0].until.is_some(), "not registered again: {out:?}");

    let dropin = std::fs::read_to_string(dropins.join(format!("{UNIT}.d/50-sidekick.conf")))
        .expect("the sidekick's drop-in, where systemd reads it");
    assert!(
        dropin.contains(&format!("SIDEKICK_VERSION={NEW_VERSION}")) && dropin.contains(&new),
        "{dropin}"
    );
    // 13/1 and 14/1 above: the pre-pull ran and succeeded; here, as a transient unit of the
    // systemd container, running the bare `docker` the image does not have.
    let journal = systemd.exec(&["journalctl", "--no-pager", "-u", "sidekick-prepull-*"]);
    let journal = String::from_utf8_lossy(&journal.stdout);
    assert!(
        journal.contains(&format!("sidekick pre-pull for web-1: docker pull {new}")),
        "{journal}"
    );
    assert_eq!(stop(&sidekick), "0", "{}", container_log(&sidekick));
}
