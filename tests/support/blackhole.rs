//! A TCP proxy on a free loopback port in front of a server that can cut the path without closing
//! it: while cut, nothing goes through in either direction and new connections are accepted but
//! never reach the server, as in a network partition (silence, not a reset). Healing lets held
//! bytes and every later one through. Runs on the test's tokio runtime; stops on drop. It notes
//! when the server's bytes reached the client (its answers), for reconnect times.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A cuttable path to one upstream `host:port`.
pub struct Blackhole {
    port: u16,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    answers: Arc<Mutex<Vec<Instant>>>,
}

impl Blackhole {
    /// Listens on 127.0.0.1 (a free port) and forwards each connection to `upstream`.
    pub async fn start(upstream: &str) -> Blackhole {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind blackhole proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (cut, state) = watch::channel(false);
        let upstream = upstream.to_string();
        let answers = Arc::new(Mutex::new(Vec::new()));
        let noted = answers.clone();
        let task = tokio::spawn(async move {
            // Dropped with the accept task: aborts every connection.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut state = state.clone();
                let noted = noted.clone();
                connections.spawn(async move {
                    // A connection opened during the cut waits, silent, for the heal.
                    if state.wait_for(|cut| !*cut).await.is_err() {
                        return;
                    }
                    if let Ok(server) = TcpStream::connect(upstream.as_str()).await {
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::join!(
                            pipe(client_read, server_write, state.clone(), None),
                            pipe(server_read, client_write, state, Some(noted)),
                        );
                    }
                });
            }
        });
        Blackhole {
            port,
            cut,
            task,
            answers,
        }
    }

    /// When the server's bytes first reached the client at or after `since`.
    pub fn first_answer_since(&self, since: Instant) -> Option<Instant> {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.iter().copied().find(|&at| at >= since)
    }

    /// How many times the server's bytes reached the client between `from` and `to`.
    pub fn answers_between(&self, from: Instant, to: Instant) -> usize {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.iter().filter(|&&at| at >= from && at < to).count()
    }

    /// `http://127.0.0.1:<port>`, for an etcd endpoint list.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From now on nothing passes, either way; connections stay open.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Lets held bytes and every later one through.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding each chunk while the path is cut; notes when each chunk went
/// through in `noted`, if given.
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut state: watch::Receiver<bool>,
    noted: Option<Arc<Mutex<Vec<Instant>>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if state.wait_for(|cut| !*cut).await.is_err() {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if let Some(noted) = &noted {
            noted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Instant::now());
        }
    }
    let _ = to.shutdown().await;
}
