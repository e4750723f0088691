//! The daemon's end of the control socket: binds it (mode 0600, a stale file from a killed daemon
//! removed first), answers each connection's one request within bounds, and removes the socket
//! when the daemon stops.
//!
//! Bounds, so that a client that sends nothing, or 10 MB, costs the daemon nothing lasting: at
//! most [`MAX_CLIENTS`] connections at once, a request of at most
//! [`super::protocol::MAX_REQUEST_BYTES`] read within [`REQUEST_LIMIT`], the answer written
//! within [`WRITE_LIMIT`]. Only root and the daemon's own user are answered.

use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::DaemonHandle;
use super::protocol::{self, CheckReport, MAX_REQUEST_BYTES, Request};

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CLIENTS: usize = 8;
/// How long a client may take to send its request.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(2);
/// How long writing the answer may take (a client that does not read).
pub const WRITE_LIMIT: Duration = Duration::from_secs(2);
/// How long a "check now" may take: the update check (45 s at most), reading the running version
/// and the 3/0 event for a refused offer, with room for a pass already running when it came.
pub const CHECK_LIMIT: Duration = Duration::from_secs(150);
/// The socket file's mode: root (the daemon's user) only.
pub const SOCKET_MODE: u32 = 0o600;
/// Pause after a failed accept (e.g. out of file descriptors), so it does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Why the control socket could not be set up.
#[derive(Debug, Error)]
pub enum SocketError {
    #[error("failed to create the runtime directory {}: {source}", path.display())]
    Directory { path: PathBuf, source: io::Error },
    #[error("{} exists and is not a socket; remove it or set daemon.control_socket", path.display())]
    NotASocket { path: PathBuf },
    #[error("another sidekick answers on {}: is this instance's daemon running twice?", path.display())]
    InUse { path: PathBuf },
    #[error("cannot tell whether a daemon answers on {}: {source}", path.display())]
    Probe { path: PathBuf, source: io::Error },
    #[error("failed to remove the stale socket {}: {source}", path.display())]
    Stale { path: PathBuf, source: io::Error },
    #[error("failed to listen on {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
}

impl SocketError {
    /// A stable short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            SocketError::Directory { .. } => "directory",
            SocketError::NotASocket { .. } => "not-a-socket",
            SocketError::InUse { .. } => "in-use",
            SocketError::Probe { .. } => "probe",
            SocketError::Stale { .. } => "stale",
            SocketError::Bind { .. } => "bind",
        }
    }
}

/// A bound control socket, not yet answering.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    file: SocketFile,
}

/// The socket's path and the file this daemon bound there, so that it removes only its own.
#[derive(Debug, Clone)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// The daemon's user: besides root, the only one answered.
    uid: u32,
}

impl ControlSocket {
    /// Binds `path` with mode 0600, creating its directory; a socket file nobody answers on is
    /// a stale one and is replaced. Needs a tokio runtime.
    pub fn bind(path: &Path) -> Result<ControlSocket, SocketError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| SocketError::Directory {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        remove_stale(path)?;
        let bind = |source| SocketError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind)?;
        // Until this, the umask decided the mode; a peer that connected meanwhile is turned away
        // by its credentials when its connection is accepted.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(bind)?;
        let meta = std::fs::symlink_metadata(path).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let listener = UnixListener::from_std(listener).map_err(bind)?;
        Ok(ControlSocket {
            listener,
            file: SocketFile {
                path: path.to_path_buf(),
                dev: meta.dev(),
                ino: meta.ino(),
                uid: effective_uid(),
            },
        })
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// Answers requests from now on, for `daemon`; stops and removes the socket file when the
    /// returned guard is dropped.
    pub fn serve(self, daemon: DaemonHandle) -> ServedSocket {
        let file = self.file.clone();
        let task = tokio::spawn(accept_loop(self.listener, self.file, daemon));
        ServedSocket { task, file }
    }
}

/// The control socket being answered; dropping it stops answering and removes the file.
#[derive(Debug)]
pub struct ServedSocket {
    task: JoinHandle<()>,
    file: SocketFile,
}

impl Drop for ServedSocket {
    fn drop(&mut self) {
        self.task.abort();
        // Another daemon may have replaced it since (after deciding ours was stale): leave theirs.
        let ours = std::fs::symlink_metadata(&self.file.path)
            .is_ok_and(|m| m.dev() == self.file.dev && m.ino() == self.file.ino);
        if ours && let Err(err) = std::fs::remove_file(&self.file.path) {
            warn!(path = %self.file.path.display(), error = %err, "failed to remove the control socket");
        }
    }
}

/// The daemon's effective user id: who it acts as, whoever ends up owning the socket file (a
/// file's owner can be changed after the bind; the process's identity cannot).
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions, touches no memory and cannot fail (POSIX).
    unsafe { libc::geteuid() }
}

/// Removes a socket file at `path` that no daemon answers on; refuses anything else there.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Probe {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse {
            path: path.to_path_buf(),
        }),
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
            ) =>
        {
            info!(path = %path.display(), "removing the stale control socket of an earlier run");
            match std::fs::remove_file(path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => Err(SocketError::Stale {
                    path: path.to_path_buf(),
                    source: err,
                }),
                _ => Ok(()),
            }
        }
        Err(source) => Err(SocketError::Probe {
            path: path.to_path_buf(),
            source,
        }),
    }
}

async fn accept_loop(listener: UnixListener, file: SocketFile, daemon: DaemonHandle) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let daemon = daemon.clone();
                let uid = file.uid;
                tokio::spawn(async move {
                    answer(stream, uid, &daemon).await;
                    drop(slot);
                });
            }
            Err(err) => {
                warn!(path = %file.path.display(), error = %err, "control socket: accept failed");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

/// Reads one request from `stream` and answers it.
async fn answer(stream: UnixStream, uid: u32, daemon: &DaemonHandle) {
    let allowed = stream
        .peer_cred()
        .is_ok_and(|peer| peer.uid() == 0 || peer.uid() == uid);
    let (read, mut write) = stream.into_split();
    if !allowed {
        let denied = CheckReport::error(
            "permission-denied",
            "only root and the daemon's user may use the control socket",
        );
        return send(&mut write, &denied).await;
    }
    let line = match tokio::time::timeout(REQUEST_LIMIT, read_request(read)).await {
        Ok(Read::Line(line)) => line,
        Ok(Read::Closed) => return,
        Ok(Read::Failed(err)) => {
            debug!(error = %err, "control socket: failed to read a request");
            return;
        }
        Err(_) => {
            let limit = humantime::format_duration(REQUEST_LIMIT);
            let late = CheckReport::error("bad-request", format!("no request within {limit}"));
            return send(&mut write, &late).await;
        }
    };
    match protocol::parse_request(&line) {
        Ok(Request::State) => send(&mut write, &daemon.state()).await,
        Ok(Request::CheckNow) => {
            info!("control socket: check now");
            let report = daemon.check_now(CHECK_LIMIT).await;
            send(&mut write, &report).await;
        }
        Err(err) => {
            debug!(kind = err.kind(), "control socket: bad request: {err}");
            send(&mut write, &CheckReport::error("bad-request", err)).await;
        }
    }
}

/// What reading a request came to.
enum Read {
    Line(Vec<u8>),
    /// The client closed without sending anything (e.g. a liveness probe).
    Closed,
    Failed(io::Error),
}

/// One line of at most [`MAX_REQUEST_BYTES`] (a longer one is cut there and refused by the
/// parser); end of input ends a line too.
async fn read_request(read: tokio::net::unix::OwnedReadHalf) -> Read {
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64 + 1));
    let mut line = Vec::new();
    match reader.read_until(b'\n', &mut line).await {
        Ok(0) => Read::Closed,
        Ok(_) => {
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            Read::Line(line)
        }
        Err(err) => Read::Failed(err),
    }
}

/// Writes `answer` as one line, within [`WRITE_LIMIT`].
async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, answer: &impl serde::Serialize) {
    let mut line = match serde_json::to_vec(answer) {
        Ok(line) => line,
        Err(err) => {
            warn!(error = %err, "control socket: failed to encode an answer");
            return;
        }
    };
    line.push(b'\n');
    let sent = async {
        write.write_all(&line).await?;
        write.shutdown().await
    };
    match tokio::time::timeout(WRITE_LIMIT, sent).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => debug!(error = %err, "control socket: failed to answer"),
        Err(_) => debug!("control socket: the client did not read the answer in time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{DaemonState, link};

    #[tokio::test]
    async fn a_stale_socket_is_replaced_a_live_one_or_a_file_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web@1/control.sock");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Left by a daemon that was killed: nobody answers on it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let socket = ControlSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        let (_link, handle) = link(DaemonState::default());
        let served = socket.serve(handle);

        let again = ControlSocket::bind(&path).unwrap_err();
        assert_eq!(again.kind(), "in-use", "{again}");
        assert!(path.exists(), "the live socket stays");
        drop(served);
        assert!(!path.exists(), "removed when the daemon stops");

        std::fs::write(&path, "not a socket").unwrap();
        let err = ControlSocket::bind(&path).unwrap_err();
        assert_eq!(err.kind(), "not-a-socket", "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
    }

    #[tokio::test]
    async fn the_answered_user_is_the_daemons_own_not_the_socket_files_owner() {
        if effective_uid() != 0 {
            eprintln!("SKIPPED: needs root to create a socket file owned by another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.path().join("control.sock");
        let runtime = tokio::runtime::Handle::current();
        // The file is created under another filesystem uid (per thread on Linux), so its owner is
        // not the daemon's user: only the process's own identity may decide who is answered.
        let bound = std::thread::spawn({
            let path = path.clone();
            move || {
                let _entered = runtime.enter();
                // SAFETY: setfsuid only changes this thread's filesystem uid.
                unsafe { libc::setfsuid(65534) };
                ControlSocket::bind(&path)
            }
        })
        .join()
        .unwrap()
        .unwrap();
        assert_eq!(std::fs::symlink_metadata(&path).unwrap().uid(), 65534);
        assert_eq!(bound.file.uid, 0, "the daemon's euid, not the file's owner");
    }

    #[tokio::test]
    async fn a_stopping_daemon_leaves_a_socket_that_replaced_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let (_link, handle) = link(DaemonState::default());
        let served = ControlSocket::bind(&path).unwrap().serve(handle);
        std::fs::remove_file(&path).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(served);
        assert!(path.exists(), "the other daemon's socket is not removed");
    }
}
