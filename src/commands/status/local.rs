//! The `LOCAL DAEMONS` section of `status`: every sidekick on this host, asked for its state over
//! its control socket (`<runtime dir>/*/control.sock`). A unit that is `not-found` or `masked` has
//! no registration and so no record in etcd; this is where it shows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::table::Section;
use crate::config::CONTROL_SOCKET_FILE;
use crate::control::{DaemonState, client};

/// How long a daemon may take to answer: it answers state at once, so a slow one is stuck.
pub const STATE_LIMIT: Duration = Duration::from_secs(2);

/// One control socket found on this host, and its daemon's answer.
#[derive(Debug, Serialize)]
pub struct LocalDaemon {
    pub socket: PathBuf,
    /// The daemon's state; `None` when it gave none.
    pub state: Option<DaemonState>,
    /// Why there is no state.
    pub error: Option<String>,
}

/// Asks every `*/control.sock` under `runtime_dir`, all at once; sorted by socket path. A
/// missing directory is no daemon.
pub async fn gather(runtime_dir: &Path) -> Vec<LocalDaemon> {
    let entries = match std::fs::read_dir(runtime_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(err) => {
            return vec![LocalDaemon {
                socket: runtime_dir.to_path_buf(),
                state: None,
                error: Some(format!("failed to list the runtime directory: {err}")),
            }];
        }
    };
    let mut sockets: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path().join(CONTROL_SOCKET_FILE))
        .filter(|path| path.exists())
        .collect();
    sockets.sort();
    let asks = sockets.into_iter().map(|socket| async move {
        match client::state(&socket, STATE_LIMIT).await {
            Ok(state) => LocalDaemon {
                socket,
                state: Some(state),
                error: None,
            },
            Err(err) => LocalDaemon {
                socket,
                state: None,
                error: Some(err.to_string()),
            },
        }
    });
    futures_util::future::join_all(asks).await
}

/// The daemons as a table; one that did not answer shows its directory and why.
pub fn section(daemons: &[LocalDaemon]) -> Section {
    let rows = daemons
        .iter()
        .map(|daemon| match (&daemon.state, &daemon.error) {
            (Some(s), _) => vec![
                s.instance.clone(),
                s.unit.clone(),
                s.active_state.clone(),
                s.load_state.clone(),
                s.phase.clone(),
                if s.registered { "yes" } else { "no" }.to_string(),
                s.version.clone().unwrap_or_else(|| "-".into()),
                s.last_check.clone().unwrap_or_else(|| "-".into()),
                s.last_result.clone().unwrap_or_else(|| "-".into()),
                s.status.clone(),
            ],
            (None, error) => {
                let dir = daemon.socket.parent().unwrap_or(&daemon.socket);
                let name = dir.file_name().map_or_else(
                    || dir.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                let mut row = vec![name];
                row.extend(std::iter::repeat_n("-".to_string(), 8));
                row.push(format!(
                    "no answer: {}",
                    error.as_deref().unwrap_or("unknown")
                ));
                row
            }
        })
        .collect();
    Section {
        title: "LOCAL DAEMONS",
        headers: &[
            "INSTANCE",
            "UNIT",
            "ACTIVE",
            "LOAD",
            "PHASE",
            "REGISTERED",
            "VERSION",
            "LAST CHECK",
            "RESULT",
            "STATUS",
        ],
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_that_answered_and_one_that_did_not_each_get_a_row() {
        let state = DaemonState {
            instance: "web-1".into(),
            unit: "web@1.service".into(),
            active_state: "inactive".into(),
            load_state: "not-found".into(),
            phase: "serving".into(),
            status: "not registered: unit web@1.service is not-found".into(),
            ..DaemonState::default()
        };
        let daemons = [
            LocalDaemon {
                socket: "/run/sidekick/web@1/control.sock".into(),
                state: Some(state),
                error: None,
            },
            LocalDaemon {
                socket: "/run/sidekick/api@2/control.sock".into(),
                state: None,
                error: Some("no answer within 2s".into()),
            },
            LocalDaemon {
                socket: "/run/sidekick/evil@3/control.sock".into(),
                state: Some(DaemonState {
                    instance: "evil\u{1b}[2J".into(),
                    ..DaemonState::default()
                }),
                error: None,
            },
        ];
        let text = section(&daemons).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "LOCAL DAEMONS");
        let words = |line: &str| {
            line.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            words(lines[2])[..7],
            [
                "web-1",
                "web@1.service",
                "inactive",
                "not-found",
                "serving",
                "no",
                "-"
            ]
        );
        assert!(lines[2].ends_with("not registered: unit web@1.service is not-found"));
        assert!(lines[3].starts_with("  api@2 "), "{text}");
        assert!(
            lines[3].ends_with("no answer: no answer within 2s"),
            "{text}"
        );
        // A daemon's answer is shown like etcd's values: no escape sequence reaches the terminal.
        assert!(lines[4].starts_with("  evil\\u{1b}[2J "), "{text}");
    }

    #[tokio::test]
    async fn no_runtime_directory_is_no_daemon() {
        let dir = tempfile::tempdir().unwrap();
        assert!(gather(&dir.path().join("absent")).await.is_empty());
    }
}
