//! Transport faults from a local socket: each is an error with a clear kind, in bounded time.

use super::*;

#[derive(Clone, Copy, Debug)]
enum Fault {
    Status500,
    Hang,
    TwoMibWithLength,
    TwoMibChunked,
    EmptyBody,
    CloseMidBody,
}

/// Serves one misbehaving answer per connection; returns the endpoint.
async fn faulty_server(fault: Fault) -> Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!(
        "http://{}/v1/update/",
        listener.local_addr().unwrap()
    ))
    .unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                let two_mib = vec![b'x'; 2 * 1024 * 1024];
                let head = |extra: &str| {
                    format!("HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\n{extra}\r\n")
                };
                let _ = match fault {
                    Fault::Status500 => {
                        socket
                            .write_all(
                                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
                            )
                            .await
                    }
                    Fault::Hang => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        Ok(())
                    }
                    Fault::TwoMibWithLength => {
                        let _ = socket
                            .write_all(
                                head(&format!("content-length: {}\r\n", two_mib.len())).as_bytes(),
                            )
                            .await;
                        socket.write_all(&two_mib).await
                    }
                    Fault::TwoMibChunked => {
                        let _ = socket
                            .write_all(head("transfer-encoding: chunked\r\n").as_bytes())
                            .await;
                        let mut result = Ok(());
                        for chunk in two_mib.chunks(64 * 1024) {
                            let framed =
                                [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"]
                                    .concat();
                            result = socket.write_all(&framed).await;
                            if result.is_err() {
                                break;
                            }
                        }
                        result
                    }
                    Fault::EmptyBody => {
                        socket
                            .write_all(head("content-length: 0\r\n").as_bytes())
                            .await
                    }
                    Fault::CloseMidBody => {
                        let _ = socket
                            .write_all(head("content-length: 1000\r\n").as_bytes())
                            .await;
                        socket.write_all(b"<?xml version=\"1.0\"?><response").await
                    }
                };
                let _ = socket.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test]
async fn transport_faults_give_errors_with_clear_kinds_in_bounded_time() {
    for (fault, kind) in [
        (Fault::Status500, "http-status"),
        (Fault::Hang, "timeout"),
        (Fault::TwoMibWithLength, "too-large"),
        (Fault::TwoMibChunked, "too-large"),
        (Fault::EmptyBody, "empty-body"),
        (Fault::CloseMidBody, "body"),
    ] {
        let endpoint = faulty_server(fault).await;
        let source =
            HttpUpdateSource::new(endpoint, instance(APP, "web-1"), short_timeouts(), None)
                .unwrap();
        let started = Instant::now();
        let error = source
            .check(&v("1.0.0"), false)
            .await
            .expect_err(&format!("{fault:?}"));
        assert_eq!(error.kind(), kind, "{fault:?}: {error}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{fault:?} took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = Url::parse(&format!(
        "http://{}/v1/update/",
        listener.local_addr().unwrap()
    ))
    .unwrap();
    drop(listener);
    let source =
        HttpUpdateSource::new(endpoint, instance(APP, "web-1"), short_timeouts(), None).unwrap();
    let error = source.check(&v("1.0.0"), false).await.unwrap_err();
    assert_eq!(error.kind(), "connect", "{error}");
}
