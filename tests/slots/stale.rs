//! A restarted `sidekick run` gives back the update slot an earlier run of it left, only once its
//! instance is registered on the version it runs: with etcd, the key naming its holder id and this
//! host (a SIGKILLed `slot_holder` with that holder id, its lease still alive and recorded in the
//! instance's lease ledger) is deleted and that lease revoked, while a clone's key (same holder id,
//! another host) stays, and a key planted under our holder id and host on somebody else's lease
//! (one the ledger does not record) is deleted with that lease left alive; with FleetLock, the
//! lock the server still holds for its id is unlocked. Real etcd, the systemd container, the
//! example update service (offering nothing new) and the FleetLock test server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, PutOptions};
use sidekick::slot::etcd::{group_prefix, slot_key};
use sidekick::slot::{Acquisition, FleetLockSlots, SlotHolder, SlotHost, SlotLock, SlotValue};
use url::Url;

use super::fleetlock_server::{Flavour, Shared, serve};
use super::support::etcd::{self, Etcd};
use super::support::systemd::{self, Job, Systemd};
use super::support::{ProcessGuard, SignalTarget, poll_until, prerequisites_met, temp_dir};
use super::update_service::{APP_ID, TRACK, UpdateService};
use super::{GROUP, slot_holder_example};

/// The instance's unit and its registration key (seed layout).
const UNIT: &str = "web@1.service";
const REGISTRATION_KEY: &str = "/services/web/web-1";
/// The unit the sidekick follows: it runs 1.0.0, which is what the update service offers.
const APP_UNIT: &str = "[Service]\nEnvironment=SIDEKICK_VERSION=1.0.0 SIDEKICK_IMAGE=web:1.0.0\n\
                        ExecStart=/usr/bin/sleep infinity\n";
/// How long the release may take once the instance is registered.
const RELEASE_BOUND: Duration = Duration::from_secs(10);
/// Longer than the test: an earlier run's lease that has not lapsed by itself.
const EARLIER_TTL: u64 = 300;

/// The holder id the sidekick derives for `UNIT` on this host.
fn our_holder() -> String {
    sidekick::identity::read_app_machine_id(
        Path::new(sidekick::identity::MACHINE_ID_PATH),
        APP_ID,
        UNIT,
    )
    .expect("this host's app machine id")
}

/// The systemd container with the app unit loaded but not started, and the update service.
struct World {
    systemd: Systemd,
    updates: UpdateService,
    dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let systemd = Systemd::start().await;
        systemd.write_unit("web@.service", APP_UNIT);
        systemd.reload().await;
        let updates = UpdateService::start("1.0.0", "web:1.0.0", Duration::from_secs(3600)).await;
        World {
            systemd,
            updates,
            dir: temp_dir("slots-stale"),
        }
    }

    /// `sidekick run` with registration in `etcd` and this `[slot]` section.
    fn sidekick(&self, etcd: &str, slot: &str) -> (ProcessGuard, PathBuf) {
        let dir = self.dir.path();
        let config = dir.join("sidekick.toml");
        let text = format!(
            "[instance]\nunit = \"{UNIT}\"\n\
             [etcd]\nendpoints = [\"{etcd}\"]\ntimeout = \"2s\"\n\
             [registration]\nlayout = \"seed\"\nhost = \"127.0.0.1\"\nport = 8080\nttl = \"10s\"\n\
             [health]\ncheck = \"none\"\n\
             [update]\nserver = \"{server}\"\napp_id = \"{APP_ID}\"\ntrack = \"{TRACK}\"\n\
             interval = \"10s\"\nimage = \"{{codebase}}\"\n\
             [slot]\n{slot}\n\
             [swap]\ndropin_dir = \"{dropins}\"\n\
             [rollout]\nmin_healthy = \"1s\"\n\
             [daemon]\nstate_dir = \"{state}\"\n",
            server = self.updates.endpoint(),
            dropins = self.systemd.unit_dir().display(),
            state = dir.display(),
        );
        std::fs::write(&config, text).expect("write config");
        let root = dir.join("config-root");
        std::fs::create_dir_all(&root).expect("config root");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidekick"));
        cmd.args(["run", "--log", "stderr", "--config"])
            .arg(&config)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.systemd.bus_address())
            .env("SIDEKICK_CONFIG_ROOT", &root)
            .env("RUST_LOG", "info,sidekick=debug")
            .env_remove("NOTIFY_SOCKET");
        let log = dir.join("sidekick.log");
        let guard = ProcessGuard::spawn("sidekick", &mut cmd, &log, SignalTarget::Group);
        (guard, log)
    }

    async fn start_unit(&self) {
        let mgr = self.systemd.manager().await;
        let result = systemd::run_job(&mgr, Job::Start, UNIT).await;
        assert_eq!(result, "done", "{}", self.systemd.log_tail(30));
    }
}

/// Waits until the sidekick's log has `line`.
async fn logged(log: &Path, line: &str) {
    poll_until(Duration::from_secs(60), line, || async move {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        match text.contains(line) {
            true => Ok(()),
            false => Err(text),
        }
    })
    .await
    .unwrap_or_else(|text| panic!("the sidekick never logged `{line}`:\n{text}"));
}

/// The key's lease and creation revision, if it exists.
async fn key(client: &Client, key: &str) -> Option<(i64, i64)> {
    let got = client.clone().get(key, None).await.expect("get");
    got.kvs()
        .first()
        .map(|kv| (kv.lease(), kv.create_revision()))
}

/// The time-to-live etcd gives `lease` (-1 once it is gone).
async fn lease_ttl(client: &Client, lease: i64) -> i64 {
    let got = client.clone().lease_time_to_live(lease, None).await;
    got.expect("lease time-to-live").ttl()
}

#[tokio::test]
async fn a_restarted_sidekick_releases_its_earlier_runs_slot_only_once_registered_and_not_a_clones()
{
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let world = World::start().await;
    let holder = our_holder();

    // The earlier run: takes slot 0 under our holder id on this host, then dies by SIGKILL.
    let mut cmd = Command::new(slot_holder_example());
    cmd.arg(etcd.endpoint())
        .args([GROUP, holder.as_str()])
        .arg(EARLIER_TTL.to_string())
        // Where `sidekick run` keeps this instance's ledger: `<state_dir>/<instance>/slot-leases`.
        .arg(world.dir.path().join("web-1/slot-leases"));
    let log = world.dir.path().join("holder.log");
    let mut earlier = ProcessGuard::spawn("slot holder", &mut cmd, &log, SignalTarget::Group);
    let ours = slot_key(GROUP, 0);
    let taken = poll_until(
        Duration::from_secs(20),
        "the earlier run holds slot 0",
        || {
            let ours = ours.clone();
            let client = &client;
            async move { key(client, &ours).await.ok_or("not held") }
        },
    )
    .await;
    let (earlier_lease, _) = taken.unwrap_or_else(|e| panic!("{e}\n{}", earlier.log_tail(20)));
    earlier.kill();
    // A clone (same /etc/machine-id) on another host holds slot 1 under the same holder id.
    let clone_lease = client
        .clone()
        .lease_grant(EARLIER_TTL as i64, None)
        .await
        .unwrap()
        .id();
    let clone = SlotValue {
        holder: holder.clone(),
        instance: "web-1".into(),
        version: "2.0.0".into(),
        since: sidekick::slot::now_rfc3339(),
        host: Some(SlotHost {
            hostname: "clone-of-this-host".into(),
            boot_id: "00000000-0000-4000-8000-000000000000".into(),
        }),
    };
    let theirs = slot_key(GROUP, 1);
    let options = PutOptions::new().with_lease(clone_lease);
    client
        .clone()
        .put(
            theirs.as_str(),
            serde_json::to_vec(&clone).unwrap(),
            Some(options),
        )
        .await
        .unwrap();

    // Somebody with write access to the group plants a key naming our holder id and this host,
    // bound to a victim's lease that also carries the victim's registration.
    let victim_lease = client
        .clone()
        .lease_grant(EARLIER_TTL as i64, None)
        .await
        .unwrap()
        .id();
    let victim_key = "/services/victim/victim-1";
    let options = PutOptions::new().with_lease(victim_lease);
    client
        .clone()
        .put(victim_key, "10.0.0.9:80", Some(options.clone()))
        .await
        .unwrap();
    let planted = SlotValue {
        host: Some(SlotHost::this()),
        ..clone.clone()
    };
    let forged = slot_key(GROUP, 2);
    client
        .clone()
        .put(
            forged.as_str(),
            serde_json::to_vec(&planted).unwrap(),
            Some(options),
        )
        .await
        .unwrap();

    let slot = format!("backend = \"etcd\"\ngroup = \"{GROUP}\"\nmax = 3\nttl = \"5s\"");
    let (_sidekick, log) = world.sidekick(&etcd.endpoint(), &slot);
    // Up and through a whole update pass (which sends no check while the unit is not started):
    // nothing registered, nothing released.
    logged(&log, "update check: not checked: the unit is not active").await;
    assert_eq!(key(&client, REGISTRATION_KEY).await, None);
    assert_eq!(
        key(&client, &ours).await.map(|(lease, _)| lease),
        Some(earlier_lease),
        "released before the instance registered"
    );

    let mut watch = client
        .clone()
        .watch(
            group_prefix(GROUP),
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await
        .expect("watch the group");
    world.start_unit().await;
    let registered = poll_until(Duration::from_secs(30), "registered", || {
        let client = &client;
        async move { key(client, REGISTRATION_KEY).await.ok_or("absent") }
    })
    .await
    .expect("the instance registers once its unit is active");
    let deleted = tokio::time::timeout(RELEASE_BOUND, async {
        while let Some(resp) = watch.message().await.expect("watch stream") {
            for event in resp.events() {
                let kv = event.kv().expect("event kv");
                if event.event_type() == EventType::Delete && kv.key_str().unwrap() == ours {
                    return kv.mod_revision();
                }
            }
        }
        panic!("watch ended");
    })
    .await
    .unwrap_or_else(|_| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("slot 0 still held {RELEASE_BOUND:?} after registering:\n{text}")
    });
    assert!(
        deleted > registered.1,
        "released at revision {deleted}, before the registration at {}",
        registered.1
    );
    // The key goes in one transaction and its lease in the request after it: poll, not one look.
    let client_ref = &client;
    poll_until(RELEASE_BOUND, "old lease revoked", || async move {
        match lease_ttl(client_ref, earlier_lease).await {
            -1 => Ok(()),
            ttl => Err(format!("lease TTL {ttl}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        key(&client, &theirs).await.map(|(lease, _)| lease),
        Some(clone_lease),
        "the clone's slot was released"
    );
    assert!(
        lease_ttl(&client, clone_lease).await > 0,
        "the clone's lease was revoked"
    );
    assert_eq!(key(&client, &forged).await, None, "the planted key stayed");
    assert!(
        lease_ttl(&client, victim_lease).await > 0,
        "the victim's lease was revoked"
    );
    assert!(
        key(&client, victim_key).await.is_some(),
        "the victim's registration went with its lease"
    );
    // The line is logged once the release returned, which may be just after etcd shows it.
    logged(&log, "released an update slot left by an earlier run").await;
    logged(&log, "a lease this sidekick did not grant").await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains(&ours), "{text}");
    assert!(text.contains("held on another host"), "{text}");
    let left = client
        .clone()
        .get(
            group_prefix(GROUP),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(left.count(), 1, "only the clone's slot is left");
}

/// The holder ids the FleetLock server holds a lock for in `group`.
fn locked(state: &Shared, group: &str) -> Vec<String> {
    let server = state.lock().unwrap();
    server.groups[group].1.iter().cloned().collect()
}

#[tokio::test]
async fn a_restarted_sidekick_unlocks_its_earlier_runs_fleetlock_lock_once_registered() {
    if !prerequisites_met(&[etcd::NEEDS, systemd::NEEDS].concat()) {
        return;
    }
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let world = World::start().await;
    let holder = our_holder();
    let (base, state): (Url, Shared) = serve(Flavour::Airlock).await;
    // The earlier run locked under our id and died: airlock keeps the lock until an unlock.
    let earlier = FleetLockSlots::new(
        &base,
        "web",
        &SlotHolder {
            holder: holder.clone(),
            instance: "web-1".into(),
        },
        &world.dir.path().join("earlier"),
    )
    .expect("FleetLock client");
    assert_eq!(
        earlier.acquire("2.0.0").await.unwrap(),
        Acquisition::Acquired
    );
    drop(earlier);

    let slot = format!("backend = \"fleetlock\"\ngroup = \"web\"\nfleetlock_url = \"{base}\"");
    let (_sidekick, log) = world.sidekick(&etcd.endpoint(), &slot);
    logged(&log, "update check: not checked: the unit is not active").await;
    assert_eq!(key(&client, REGISTRATION_KEY).await, None);
    assert_eq!(
        locked(&state, "web"),
        vec![holder],
        "unlocked before registering"
    );

    world.start_unit().await;
    poll_until(Duration::from_secs(30), "registered", || {
        let client = &client;
        async move { key(client, REGISTRATION_KEY).await.ok_or("absent") }
    })
    .await
    .expect("the instance registers once its unit is active");
    let unlocked = poll_until(RELEASE_BOUND, "the earlier lock is unlocked", || {
        let held = locked(&state, "web");
        async move {
            match held.is_empty() {
                true => Ok(()),
                false => Err(held),
            }
        }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(unlocked.is_ok(), "{unlocked:?}\n{text}");
    logged(&log, "released an update slot left by an earlier run").await;
}
