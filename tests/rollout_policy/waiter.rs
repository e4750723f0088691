//! A `sidekick rollout status --wait` run in the background, read line by line.

use std::process::{Command, Stdio};

/// A `rollout status --wait` running in the background, its output read line by line; killed
/// on drop.
pub struct Waiter {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    read: String,
}

/// How a waiter ended.
#[derive(Debug)]
pub struct Ended {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Waiter {
    pub fn spawn(mut cmd: Command) -> Waiter {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        Waiter {
            child,
            lines: std::io::BufRead::lines(std::io::BufReader::new(stdout)),
            read: String::new(),
        }
    }

    /// Blocks until the first line is printed (the test's etcd client keeps no runtime task
    /// waiting meanwhile).
    pub fn first_line(&mut self) -> String {
        let line = self.lines.next().expect("a first line").expect("utf-8");
        self.read = format!("{line}\n");
        line
    }

    /// Blocks until the waiter exits.
    pub fn finish(mut self) -> Ended {
        for line in self.lines.by_ref() {
            self.read.push_str(&line.expect("utf-8"));
            self.read.push('\n');
        }
        let stderr = self.child.stderr.take().map(|mut e| {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut e, &mut text);
            text
        });
        let status = self.child.wait().expect("waiter ends");
        Ended {
            code: status.code(),
            stdout: std::mem::take(&mut self.read),
            stderr: stderr.unwrap_or_default(),
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
