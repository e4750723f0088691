//! The commands' end of the control socket: one request, one answer, within a time limit and
//! [`MAX_ANSWER_BYTES`].

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

use super::protocol::{CheckReport, DaemonState, MAX_ANSWER_BYTES, Request};

/// Why a daemon gave no usable answer.
#[derive(Debug, Error)]
pub enum AskError {
    /// Nothing listens there: no socket file, or a stale one.
    #[error("no daemon answers on {} ({source})", path.display())]
    NoDaemon { path: PathBuf, source: io::Error },
    #[error("failed to connect to {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("no answer from {} within {}", path.display(), humantime::format_duration(*limit))]
    Timeout { path: PathBuf, limit: Duration },
    #[error("failed to talk to the daemon on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("the daemon on {} answered with something unusable: {detail}", path.display())]
    Malformed { path: PathBuf, detail: String },
    /// The daemon answered with an error instead of its state.
    #[error("the daemon on {} answered {kind}: {detail}", path.display())]
    Refused {
        path: PathBuf,
        kind: String,
        detail: String,
    },
}

impl AskError {
    /// A stable short name for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            AskError::NoDaemon { .. } => "no-daemon",
            AskError::Connect { .. } => "connect",
            AskError::Timeout { .. } => "timeout",
            AskError::Io { .. } => "io",
            AskError::Malformed { .. } => "malformed",
            AskError::Refused { .. } => "refused",
        }
    }
}

/// Asks the daemon on `path` to check now; its report (which may itself be an error).
pub async fn check_now(path: &Path, limit: Duration) -> Result<CheckReport, AskError> {
    let line = ask(path, Request::CheckNow, limit).await?;
    serde_json::from_slice(&line).map_err(|err| malformed(path, &err))
}

/// The daemon's state.
pub async fn state(path: &Path, limit: Duration) -> Result<DaemonState, AskError> {
    let line = ask(path, Request::State, limit).await?;
    if let Ok(CheckReport::Error { kind, detail }) = serde_json::from_slice(&line) {
        return Err(AskError::Refused {
            path: path.to_path_buf(),
            kind,
            detail,
        });
    }
    serde_json::from_slice(&line).map_err(|err| malformed(path, &err))
}

fn malformed(path: &Path, err: &serde_json::Error) -> AskError {
    AskError::Malformed {
        path: path.to_path_buf(),
        detail: err.to_string(),
    }
}

/// Sends `request` and reads the answer line, all within `limit`.
pub async fn ask(path: &Path, request: Request, limit: Duration) -> Result<Vec<u8>, AskError> {
    match tokio::time::timeout(limit, exchange(path, request)).await {
        Ok(answer) => answer,
        Err(_) => Err(AskError::Timeout {
            path: path.to_path_buf(),
            limit,
        }),
    }
}

async fn exchange(path: &Path, request: Request) -> Result<Vec<u8>, AskError> {
    let mut stream = UnixStream::connect(path).await.map_err(|source| {
        let path = path.to_path_buf();
        match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                AskError::NoDaemon { path, source }
            }
            _ => AskError::Connect { path, source },
        }
    })?;
    let io = |source| AskError::Io {
        path: path.to_path_buf(),
        source,
    };
    stream
        .write_all(request.line().as_bytes())
        .await
        .map_err(io)?;
    let mut reader = BufReader::new(stream.take(MAX_ANSWER_BYTES as u64 + 1));
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await.map_err(io)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_ANSWER_BYTES {
        return Err(AskError::Malformed {
            path: path.to_path_buf(),
            detail: format!("the answer is longer than {MAX_ANSWER_BYTES} bytes"),
        });
    }
    if line.is_empty() {
        return Err(AskError::Malformed {
            path: path.to_path_buf(),
            detail: "it closed the connection without an answer".into(),
        });
    }
    Ok(line)
}
