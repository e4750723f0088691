//! The metrics listener's limits: a warning for an address others can reach, and a cap on the
//! connections served at once.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::*;

#[test]
fn only_a_non_loopback_address_is_warned_about() {
    for quiet in ["127.0.0.1:9527", "[::1]:9527", "127.0.0.2:1"] {
        assert_eq!(exposure_warning(quiet.parse().unwrap()), None, "{quiet}");
    }
    for exposed in ["0.0.0.0:9527", "10.0.0.5:9527", "[::]:9527"] {
        let warning = exposure_warning(exposed.parse().unwrap()).expect(exposed);
        assert!(warning.contains("not loopback"), "{warning}");
    }
}

/// One `GET /metrics` on a new connection, answered within `limit`: the status line.
async fn scrape(address: SocketAddr, limit: Duration) -> Option<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .map(String::from)
    };
    tokio::time::timeout(limit, exchange).await.ok().flatten()
}

#[tokio::test]
async fn idle_connections_beyond_the_cap_wait_and_one_freed_lets_a_scrape_through() {
    let (address, task) = serve("127.0.0.1:0".parse().unwrap(), Metrics::new())
        .await
        .unwrap();
    assert_eq!(
        scrape(address, Duration::from_secs(5)).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        idle.push(TcpStream::connect(address).await.unwrap());
    }
    // Each idle connection holds a slot (the server accepted it) until it closes.
    assert_eq!(scrape(address, Duration::from_millis(500)).await, None);
    drop(idle.pop());
    assert_eq!(
        scrape(address, Duration::from_secs(5)).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    task.abort();
}
