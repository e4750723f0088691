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

/// Answers 200 and then drips a body at one byte per second, forever: the read timeout never
/// trips, only a total one can end it.
async fn dripping_server() -> Url {
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
                let head =
                    "HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ncontent-length: 100000\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                while socket.write_all(b" ").await.is_ok() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn a_body_dripped_at_one_byte_per_second_ends_at_the_total_timeout() {
    let endpoint = dripping_server().await;
    let timeouts = HttpTimeouts {
        connect: Duration::from_secs(1),
        read: Duration::from_secs(30),
        total: Duration::from_secs(2),
    };
    let source = HttpUpdateSource::new(endpoint, instance(APP, "web-1"), timeouts, None).unwrap();
    let started = Instant::now();
    let error = source.check(&v("1.0.0"), false).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(error.kind(), "timeout", "{error}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "took {took:?}"
    );
}

#[tokio::test]
async fn update_check_as_a_whole_ends_at_its_limit_against_a_dripping_server() {
    let endpoint = dripping_server().await;
    let dir = support::temp_dir("update-check-drip");
    let config = dir.path().join("web.toml");
    std::fs::write(
        &config,
        format!(
            "[instance]\nunit = \"web@1.service\"\n[registration]\nenabled = false\n\
             [health]\ncheck = \"none\"\n[update]\nserver = \"{endpoint}\"\napp_id = \"{APP}\"\n"
        ),
    )
    .unwrap();
    let sources = sidekick::config::ConfigSources {
        root: dir.path().to_path_buf(),
        files: vec![config],
        unit: None,
    };
    let settings = sidekick::config::load(&sources)
        .expect("valid config")
        .settings;
    // Per-request totals longer than the limit: the limit alone must end the command.
    let timeouts = HttpTimeouts {
        connect: Duration::from_secs(60),
        read: Duration::from_secs(60),
        total: Duration::from_secs(60),
    };
    let started = Instant::now();
    let report = sidekick::commands::update_check::update_check_within(
        &settings,
        Some("1.0.0"),
        false,
        timeouts,
        Duration::from_secs(2),
    )
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let json = serde_json::to_string(&report).unwrap();
    assert!(
        json.contains("\"kind\":\"timeout\"") && json.contains("within 2s"),
        "{json}"
    );
    // The CLI's own figures: every request and the whole command stay under a minute.
    assert!(sidekick::commands::update_check::UPDATE_CHECK_LIMIT < Duration::from_secs(60));
    assert!(HttpTimeouts::default().total <= sidekick::commands::update_check::UPDATE_CHECK_LIMIT);
}

/// Answers every request with 200 and `body`.
pub(super) async fn answering_server(body: String) -> Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!(
        "http://{}/v1/update/",
        listener.local_addr().unwrap()
    ))
    .unwrap();
    let body = Arc::new(body);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = socket.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    url
}

pub(super) fn offer_app(app: &str, version: &str) -> String {
    format!(
        "<app appid=\"{app}\" status=\"ok\"><updatecheck status=\"ok\"><urls><url codebase=\"r/web\"/>\
         </urls><manifest version=\"{version}\"><packages><package name=\"p\"/></packages>\
         </manifest></updatecheck></app>"
    )
}

#[tokio::test]
async fn fuzzer_found_answers_parse_tolerantly_and_a_500_kb_version_is_refused() {
    let other = "<app appid=\"other\" status=\"ok\"><updatecheck status=\"noupdate\"/></app>";
    let wrap = |apps: String| {
        format!("<?xml version=\"1.0\"?><response protocol=\"3.0\">{apps}</response>")
    };
    let separated = wrap(format!(
        "{other}<daystart elapsed_seconds=\"1\"/>{}",
        offer_app(APP, "2.0.0")
    ));
    let two_checks = wrap(format!(
        "<app appid=\"{APP}\" status=\"ok\"><updatecheck status=\"noupdate\"/><event status=\"ok\"/>\
         <updatecheck status=\"noupdate\"/></app>"
    ));
    let huge = format!("2.0.0-{}", "a".repeat(500 * 1024));
    let huge_version = wrap(offer_app(APP, &huge));
    let check = |body: String| async move {
        let endpoint = answering_server(body).await;
        let source =
            HttpUpdateSource::new(endpoint, instance(APP, "web-1"), short_timeouts(), None)
                .unwrap();
        source.check(&v("1.0.0"), false).await.expect("an answer")
    };
    match check(separated).await {
        CheckOutcome::Update(offer) => assert_eq!(offer.version, "2.0.0"),
        other => panic!("apps separated by another element: {other:?}"),
    }
    assert_eq!(check(two_checks).await, CheckOutcome::NoUpdate);
    match check(huge_version).await {
        CheckOutcome::Error {
            kind: ResponseErrorKind::InvalidResponse,
            detail,
        } => {
            assert!(detail.contains("longer than the 128 accepted"), "{detail}");
            assert!(
                detail.len() < 300,
                "the version is echoed: {} bytes",
                detail.len()
            );
        }
        other => panic!("a 500 KB version was not refused: {other:?}"),
    }
}
