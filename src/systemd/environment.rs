//! The version a unit runs, read back from systemd: the `Environment` property of its Service
//! object, where the sidekick's drop-in (or the unit's own default) sets `SIDEKICK_VERSION`.

use zbus::Connection;
use zbus::proxy::CacheProperties;
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy};

/// Environment variable naming the version the unit runs.
pub const VERSION_VARIABLE: &str = "SIDEKICK_VERSION";
/// Environment variable naming the image the unit runs.
pub const IMAGE_VARIABLE: &str = "SIDEKICK_IMAGE";

/// The `Environment=` assignments systemd reports for a service unit, loading the unit if needed.
pub async fn service_environment(conn: &Connection, unit: &str) -> zbus::Result<Vec<String>> {
    let manager = ManagerProxy::new(conn).await?;
    let path = manager.load_unit(unit.to_string()).await?;
    // Fresh values: cached properties go stale across daemon-reload.
    let service = ServiceProxy::builder(conn)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    service.environment().await
}

/// The last value assigned to `name` (systemd applies assignments in order).
pub fn variable<'a>(environment: &'a [String], name: &str) -> Option<&'a str> {
    environment
        .iter()
        .rev()
        .find_map(|entry| entry.strip_prefix(name)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_assignment_wins_and_prefixes_do_not_match() {
        let env = vec![
            "SIDEKICK_VERSION=1.0.0".to_string(),
            "SIDEKICK_VERSIONX=9".to_string(),
            "SIDEKICK_VERSION=2.0.0".to_string(),
        ];
        assert_eq!(variable(&env, VERSION_VARIABLE), Some("2.0.0"));
        assert_eq!(variable(&env, IMAGE_VARIABLE), None);
    }
}
