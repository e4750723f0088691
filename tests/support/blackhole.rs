//! A TCP proxy on a free loopback port in front of a server that can cut the path without closing
//! it: while cut, nothing goes through in either direction and new connections are accepted but
//! never reach the server, as in a network partition (silence, not a reset). Healing lets held
//! bytes and every later one through. Runs on the test's tokio runtime; stops on drop.

use std::net::Ipv4Addr;

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
        let task = tokio::spawn(async move {
            // Dropped with the accept task: aborts every connection.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut state = state.clone();
                connections.spawn(async move {
                    // A connection opened during the cut waits, silent, for the heal.
                    if state.wait_for(|cut| !*cut).await.is_err() {
                        return;
                    }
                    if let Ok(server) = TcpStream::connect(upstream.as_str()).await {
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::join!(
                            pipe(client_read, server_write, state.clone()),
                            pipe(server_read, client_write, state),
                        );
                    }
                });
            }
        });
        Blackhole { port, cut, task }
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

/// Copies `from` to `to`, holding each chunk while the path is cut.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut state: watch::Receiver<bool>) {
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
    }
    let _ = to.shutdown().await;
}
