//! A TCP proxy on a free loopback port in front of a server, whose answers can be held back:
//! requests still reach the server and take effect, but the client waits for the answer as it
//! would for a slow server. Runs on the test's tokio runtime (use a multi-threaded one when the
//! test blocks a thread while the proxy must forward); stops on drop.

use std::net::Ipv4Addr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A proxy to one upstream `host:port`.
pub struct HoldingProxy {
    port: u16,
    hold: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl HoldingProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards each connection to `upstream`.
    pub async fn start(upstream: &str) -> HoldingProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (hold, held) = watch::channel(false);
        let upstream = upstream.to_string();
        let task = tokio::spawn(async move {
            // Dropped with the accept task: aborts every connection.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let held = held.clone();
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream.as_str()).await {
                        forward(client, server, held).await;
                    }
                });
            }
        });
        HoldingProxy { port, hold, task }
    }

    /// `http://127.0.0.1:<port>`, for an etcd endpoint list.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// From now on, answers wait in the proxy (requests still go through).
    pub fn hold(&self) {
        self.hold.send_replace(true);
    }

    /// Delivers held answers and every later one.
    pub fn release(&self) {
        self.hold.send_replace(false);
    }
}

impl Drop for HoldingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies client → server freely and server → client only while not held.
async fn forward(client: TcpStream, server: TcpStream, mut held: watch::Receiver<bool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    };
    let answers = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if held.wait_for(|h| !*h).await.is_err() {
                break;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(requests, answers);
}
