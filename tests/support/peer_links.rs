//! Cuttable links between etcd members (issue 19 part 2, cases 4 and 5). Each member advertises
//! its peer URL on a gate: a TCP proxy on a free loopback port in front of the member's real peer
//! listener, so every raft stream, pipeline, lease forward and version probe between members
//! passes a gate. The gate finds which member opened each connection — the process owning the
//! connecting socket, from `/proc/net/tcp` and each member's `/proc/<pid>/fd` — so one member can
//! be cut from the others alone: while it is isolated, nothing passes on a connection to or from
//! it, either way, and connections stay open (a partition is silence, not a reset). Healing lets
//! held bytes and every later one through. Runs on the test's tokio runtime; stops on drop.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The isolated members (by index).
type Isolated = BTreeSet<usize>;

/// The gates of one cluster's members.
pub struct PeerLinks {
    ports: Vec<u16>,
    isolated: watch::Sender<Isolated>,
    pids: Arc<Mutex<Vec<Option<u32>>>>,
    unattributed: Arc<Mutex<usize>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl PeerLinks {
    /// One gate per member, in front of the peer listeners on `upstream_ports` (loopback).
    pub async fn start(upstream_ports: &[u16]) -> PeerLinks {
        let (isolated, state) = watch::channel(Isolated::new());
        let pids = Arc::new(Mutex::new(vec![None; upstream_ports.len()]));
        let unattributed = Arc::new(Mutex::new(0));
        let mut ports = Vec::new();
        let mut tasks = Vec::new();
        for (to, &upstream) in upstream_ports.iter().enumerate() {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("bind a peer gate");
            let gate = listener.local_addr().expect("gate address");
            ports.push(gate.port());
            let (state, pids, unattributed) = (state.clone(), pids.clone(), unattributed.clone());
            tasks.push(tokio::spawn(async move {
                // Dropped with the accept task: aborts every connection.
                let mut connections = JoinSet::new();
                while let Ok((client, from_addr)) = listener.accept().await {
                    let (state, pids, unattributed) =
                        (state.clone(), pids.clone(), unattributed.clone());
                    connections.spawn(async move {
                        let from = source(from_addr, gate, &pids).await;
                        if from.is_none() {
                            *unattributed.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                        }
                        let link = Link { from, to, state };
                        link.carry(client, upstream).await;
                    });
                }
            }));
        }
        PeerLinks {
            ports,
            isolated,
            pids,
            unattributed,
            tasks,
        }
    }

    /// The gate's port of member `i` (its advertised peer port).
    pub fn port(&self, i: usize) -> u16 {
        self.ports[i]
    }

    /// Records member `i`'s process (after each start; `None` once it is gone).
    pub fn set_pid(&self, i: usize, pid: Option<u32>) {
        self.pids.lock().unwrap_or_else(|e| e.into_inner())[i] = pid;
    }

    /// Cuts member `i` from every other member, both ways, silently.
    pub fn isolate(&self, i: usize) {
        self.isolated.send_modify(|s| {
            s.insert(i);
        });
    }

    /// Joins member `i` to the others again.
    pub fn heal(&self, i: usize) {
        self.isolated.send_modify(|s| {
            s.remove(&i);
        });
    }

    /// Connections whose member could not be found (each passes unless its target is isolated).
    pub fn unattributed(&self) -> usize {
        *self.unattributed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for PeerLinks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One connection from member `from` (if found) to member `to`.
struct Link {
    from: Option<usize>,
    to: usize,
    state: watch::Receiver<Isolated>,
}

impl Link {
    fn open(from: Option<usize>, to: usize, isolated: &Isolated) -> bool {
        !isolated.contains(&to) && from.is_none_or(|f| !isolated.contains(&f))
    }

    async fn carry(mut self, client: TcpStream, upstream: u16) {
        let (from, to) = (self.from, self.to);
        // A connection opened during the cut waits, silent, for the heal.
        if self
            .state
            .wait_for(|s| Link::open(from, to, s))
            .await
            .is_err()
        {
            return;
        }
        let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream)).await else {
            return;
        };
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::join!(
            pipe(client_read, server_write, self.state.clone(), from, to),
            pipe(server_read, client_write, self.state, from, to),
        );
    }
}

/// Copies `from_half` to `to_half`, holding each chunk while the link is cut.
async fn pipe(
    mut from_half: OwnedReadHalf,
    mut to_half: OwnedWriteHalf,
    mut state: watch::Receiver<Isolated>,
    from: Option<usize>,
    to: usize,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from_half.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if state.wait_for(|s| Link::open(from, to, s)).await.is_err() {
            break;
        }
        if to_half.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to_half.shutdown().await;
}

/// The member whose process owns the socket connected from `from` to the gate at `gate`; tried
/// for up to a second (a member dials as soon as it runs, maybe before its pid is recorded).
async fn source(
    from: SocketAddr,
    gate: SocketAddr,
    pids: &Mutex<Vec<Option<u32>>>,
) -> Option<usize> {
    for _ in 0..20 {
        if let Some(inode) = socket_inode(from, gate) {
            let pids = pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let found = pids
                .iter()
                .position(|pid| pid.is_some_and(|pid| owns_socket(pid, inode)));
            if found.is_some() {
                return found;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The inode of the IPv4 TCP socket with local address `local` and remote `remote`.
fn socket_inode(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let (local, remote) = (proc_addr(local)?, proc_addr(remote)?);
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| fields.get(9)?.parse().ok())
            .flatten()
    })
}

/// An address as `/proc/net/tcp` writes it: the IPv4 address as a little-endian hex word.
fn proc_addr(addr: SocketAddr) -> Option<String> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    let ip = u32::from_le_bytes(v4.ip().octets());
    Some(format!("{ip:08X}:{:04X}", v4.port()))
}

/// Whether process `pid` holds the socket with `inode`.
fn owns_socket(pid: u32, inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy() == want)
    })
}
