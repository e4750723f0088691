//! The app units of the fleet: the `web@.service` template and what systemd says about each
//! instance's unit (version, invocation, the sidekick's drop-in), over D-Bus.
//!
//! Shared by `tests/rollout.rs` and `examples/rollout_bench.rs`; not every item is used by each.
#![allow(dead_code)]

use std::path::PathBuf;

use zbus::proxy::CacheProperties;
use zbus_systemd::systemd1::{ManagerProxy, UnitProxy};

use super::fleet::Fleet;
use zbus_systemd::systemd1::ServiceProxy;

/// The container's unit directory (the host's `Systemd::unit_dir()`).
pub const CONTAINER_UNIT_DIR: &str = "/etc/systemd/system";
/// The sidekick binary, copied into the unit directory so the container can run it.
const SIDEKICK_IN_CONTAINER: &str = "sidekick-bin";
use crate::support::systemd::{self, Job};

impl Fleet {
    /// The version the unit of instance `i` runs, from `SIDEKICK_VERSION` in its environment.
    pub async fn unit_version(&self, i: usize) -> String {
        let conn = self.systemd.connection().await;
        systemd::unit_version(&conn, &self.instances[i].unit).await
    }

    /// The unit's `InvocationID`: a new one for every start of the unit, restarts included.
    pub async fn unit_invocation(&self, i: usize) -> Vec<u8> {
        let conn = self.systemd.connection().await;
        let mgr = ManagerProxy::new(&conn).await.expect("manager proxy");
        let path = mgr
            .load_unit(self.instances[i].unit.clone())
            .await
            .expect("LoadUnit");
        let unit = UnitProxy::builder(&conn)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .expect("unit proxy");
        unit.invocation_id().await.expect("InvocationID")
    }

    /// The drop-in the sidekick of instance `i` owns (`swap.dropin_dir/<unit>.d/50-sidekick.conf`).
    pub fn sidekick_dropin(&self, i: usize) -> PathBuf {
        self.systemd
            .unit_dir()
            .join(format!("{}.d", self.instances[i].unit))
            .join("50-sidekick.conf")
    }

    /// Copies the sidekick into the container and starts `sidekick@1..N.service`, each `Wants=`
    /// and `After=` its app unit (DESIGN.md: the pairing that keeps the sidekick's PID).
    pub(super) async fn start_sidekick_units(&self) {
        let dir = self.systemd.unit_dir();
        std::fs::copy(&self.spec().sidekick, dir.join(SIDEKICK_IN_CONTAINER))
            .expect("copy the sidekick binary into the unit dir");
        self.systemd
            .write_unit("sidekick@.service", &sidekick_unit());
        self.systemd.reload().await;
        let mgr = self.systemd.manager().await;
        for i in 1..=self.instances.len() {
            let unit = format!("sidekick@{i}.service");
            let result = systemd::run_job(&mgr, Job::Start, &unit).await;
            assert_eq!(result, "done", "{unit}: {}", self.systemd.log_tail(30));
        }
    }

    /// Where `sidekick@N.service` of instance `name` (`web-N`) logs, as the host sees it.
    pub fn sidekick_unit_log(&self, name: &str) -> PathBuf {
        self.systemd.unit_dir().join(format!("sidekick-{name}.log"))
    }

    /// `MainPID` and `NRestarts` of `sidekick@N.service` for instance `i` (0-based).
    pub async fn sidekick_unit_pid(&self, i: usize) -> (u32, u32) {
        let conn = self.systemd.connection().await;
        let mgr = ManagerProxy::new(&conn).await.expect("manager proxy");
        let unit = format!("sidekick@{}.service", i + 1);
        let path = mgr.load_unit(unit).await.expect("LoadUnit");
        let service = ServiceProxy::builder(&conn)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .expect("service proxy");
        let pid = service.main_pid().await.expect("MainPID");
        let restarts = service.n_restarts().await.expect("NRestarts");
        (pid, restarts)
    }

    /// Restarts the unit of instance `i` over D-Bus and waits for the job; its result.
    pub async fn restart_unit(&self, i: usize) -> String {
        let mgr = self.systemd.manager().await;
        systemd::run_job(&mgr, Job::Restart, &self.instances[i].unit).await
    }
}

/// `sidekick@.service`: the sidekick of `web@%i.service` inside the container, logging to a file
/// in the unit directory.
fn sidekick_unit() -> String {
    format!(
        "[Unit]\nDescription=sidekick for web@%i\nWants=web@%i.service\nAfter=web@%i.service\n\
         [Service]\n\
         Environment=RUST_LOG=info,sidekick::agent=debug\n\
         ExecStart={CONTAINER_UNIT_DIR}/{SIDEKICK_IN_CONTAINER} run --log stderr --config {CONTAINER_UNIT_DIR}/web-%i.toml\n\
         StandardOutput=append:{CONTAINER_UNIT_DIR}/sidekick-web-%i.log\n\
         StandardError=inherit\n"
    )
}
