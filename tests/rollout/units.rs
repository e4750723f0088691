//! The app units of the fleet: the `web@.service` template and what systemd says about each
//! instance's unit (version, invocation, the sidekick's drop-in), over D-Bus.
//!
//! Shared by `tests/rollout.rs` and `examples/rollout_bench.rs`; not every item is used by each.
#![allow(dead_code)]

use std::path::PathBuf;

use zbus::proxy::CacheProperties;
use zbus_systemd::systemd1::{ManagerProxy, UnitProxy};

use super::fleet::{FIRST_VERSION, Fleet};
use crate::support::images;
use crate::support::systemd::{self, Job};

impl Fleet {
    /// The version the unit of instance `i` runs, from `SIDEKICK_VERSION` in its environment.
    pub async fn unit_version(&self, i: usize) -> String {
        let conn = self.systemd.connection().await;
        let env = systemd::service_environment(&conn, &self.instances[i].unit).await;
        env.iter()
            .rev()
            .find_map(|e| e.strip_prefix("SIDEKICK_VERSION="))
            .unwrap_or("<unset>")
            .to_string()
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

    /// Restarts the unit of instance `i` over D-Bus and waits for the job; its result.
    pub async fn restart_unit(&self, i: usize) -> String {
        let mgr = self.systemd.manager().await;
        systemd::run_job(&mgr, Job::Restart, &self.instances[i].unit).await
    }
}

/// `web@.service`: the app image on `127.0.0.1:${WEB_PORT}`, with the first version as default.
pub fn app_unit(container_prefix: &str, first_image: &str) -> String {
    let docker = images::docker_path();
    let docker = docker.display();
    format!(
        "[Unit]\nDescription=rollout test app %i\n\
         [Service]\n\
         Environment=SIDEKICK_IMAGE={first_image}\n\
         Environment=SIDEKICK_VERSION={FIRST_VERSION}\n\
         ExecStartPre=-{docker} rm -f {container_prefix}-%i\n\
         ExecStart={docker} run --rm --name {container_prefix}-%i -p 127.0.0.1:${{WEB_PORT}}:80 ${{SIDEKICK_IMAGE}}\n\
         ExecStop={docker} stop -t 5 {container_prefix}-%i\n"
    )
}
