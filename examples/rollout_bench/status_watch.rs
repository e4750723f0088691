//! `sidekick rollout status --json --wait` run beside a rollout, as a pipeline would: every line it
//! prints (one at its start, then one per change of what it shows: the stage, the instances
//! serving the version, …), timed as it arrives.

use std::process::Stdio;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::fleet::Fleet;

/// One line of the status, when the bench read it.
#[derive(Debug, Clone)]
pub struct StatusSample {
    pub at: Timestamp,
    pub json: Result<Value, String>,
}

impl StatusSample {
    /// `serving` of `instances`: instance records whose unit runs the version, of those read.
    pub fn serving(&self) -> Option<(u64, u64)> {
        let json = self.json.as_ref().ok()?;
        Some((json["serving"].as_u64()?, json["instances"].as_u64()?))
    }

    pub fn stage(&self) -> String {
        match &self.json {
            Ok(json) => json["stage"].as_str().unwrap_or("?").to_string(),
            Err(line) => format!("unreadable: {line}"),
        }
    }

    /// The predicted finish (`eta`), when the status gives one.
    pub fn eta(&self) -> Option<Timestamp> {
        self.json.as_ref().ok()?["eta"].as_str()?.parse().ok()
    }

    /// The estimate per remaining instance it used (`swap_estimate_secs`).
    pub fn swap_estimate(&self) -> Option<f64> {
        self.json.as_ref().ok()?["swap_estimate_secs"].as_f64()
    }
}

/// What the status printed and how it ended.
pub struct StatusRun {
    pub samples: Vec<StatusSample>,
    /// Its exit code (0: done), `None` when it was still running at the end and was killed.
    pub exit: Option<i32>,
    pub stderr: String,
}

/// The running `sidekick rollout status --json --wait`.
pub struct StatusWatch {
    child: Child,
    lines: JoinHandle<Vec<StatusSample>>,
    stderr: JoinHandle<String>,
}

impl StatusWatch {
    /// Starts the status on instance 0's configuration (its group, its `[rollout]`), waiting at
    /// most `timeout`.
    pub fn start(fleet: &Fleet, timeout: Duration) -> StatusWatch {
        let mut child = Command::new(&fleet.spec().sidekick)
            .args(["rollout", "status", "--json", "--wait", "--timeout"])
            .arg(format!("{}s", timeout.as_secs()))
            .arg("--config")
            .arg(&fleet.instances[0].config)
            .env("SIDEKICK_CONFIG_ROOT", fleet.dir().join("config-root"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run sidekick rollout status");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let lines = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut samples = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                let at = Timestamp::now();
                eprintln!("rollout status at {at}: {line}");
                let json = serde_json::from_str(&line).map_err(|_| line);
                samples.push(StatusSample { at, json });
            }
            samples
        });
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        StatusWatch {
            child,
            lines,
            stderr,
        }
    }

    /// Waits up to `grace` for the status to exit by itself, kills it after that; what it printed.
    pub async fn finish(mut self, grace: Duration) -> StatusRun {
        let exit = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = self.child.kill().await;
                None
            }
        };
        StatusRun {
            samples: self.lines.await.unwrap_or_default(),
            exit,
            stderr: self.stderr.await.unwrap_or_default(),
        }
    }
}
