//! Replays the recorded exchanges with the two real FleetLock servers
//! (`tests/fixtures/fleetlock/`, copied from the design notes) against the test server, and checks
//! that every answer has the recorded status, headers and body. This keeps the test server in
//! `fleetlock_server.rs` honest: the client tests run against what real servers send.

use std::path::PathBuf;

use super::fleetlock_server::{Flavour, serve_at};

/// One recorded request and its answer.
#[derive(Debug)]
struct Exchange {
    title: String,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    status: u16,
    answer_headers: Vec<(String, String)>,
    answer_body: Vec<u8>,
}

/// A Python string literal as the recordings print it (`'…'` with backslash escapes).
fn python_literal(text: &str) -> Vec<u8> {
    let inner = text
        .trim()
        .strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''))
        .unwrap_or_else(|| panic!("not a quoted literal: {text}"));
    let mut out = Vec::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        let c = match c {
            '\\' => match chars.next() {
                Some('n') => '\n',
                Some(other) => other,
                None => panic!("dangling escape in {text}"),
            },
            c => c,
        };
        let mut buf = [0; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
    out
}

fn header_line(line: &str) -> Option<(String, String)> {
    let (name, value) = line.split_once(": ")?;
    Some((name.to_string(), value.to_string()))
}

/// The exchanges of one transcript. The airlock recording's "etcd stopped" case is a lock of
/// `aaaa` in `web-stable` sent after etcd was stopped.
fn transcript(file: &str) -> Vec<Exchange> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fleetlock")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for section in text.split("\n### ").skip(1) {
        let mut lines = section.lines();
        let title = lines.next().unwrap_or_default().to_string();
        let (mut request, mut answer) = (Vec::new(), Vec::new());
        for line in lines {
            if let Some(l) = line.strip_prefix(">>> ") {
                request.push(l);
            } else if let Some(l) = line.strip_prefix("<<< ") {
                answer.push(l);
            }
        }
        let Some((first, rest)) = request.split_first() else {
            continue; // the etcd state listing
        };
        let mut words = first.split_whitespace();
        let (method, path) = (
            words.next().unwrap_or_default(),
            words.next().unwrap_or_default(),
        );
        let mut exchange = Exchange {
            title,
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: None,
            status: 0,
            answer_headers: Vec::new(),
            answer_body: Vec::new(),
        };
        if exchange.title.starts_with("etcd stopped") {
            exchange
                .headers
                .push(("fleet-lock-protocol".into(), "true".into()));
            exchange.body =
                Some(br#"{"client_params":{"id":"aaaa","group":"web-stable"}}"#.to_vec());
        }
        for line in rest {
            match line.strip_prefix("body: ") {
                Some(body) => exchange.body = Some(python_literal(body)),
                None => exchange.headers.extend(header_line(line)),
            }
        }
        let (status, rest) = answer.split_first().expect("an answer");
        exchange.status = status
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status in {status}"));
        for line in rest {
            match line.strip_prefix("body: ") {
                Some(body) => exchange.answer_body = python_literal(body),
                None => exchange.answer_headers.extend(header_line(line)),
            }
        }
        out.push(exchange);
    }
    out
}

/// Sends every exchange in order (the server's state carries over, as it did when recorded)
/// and compares status, the recorded headers, the presence of `Content-Type`, and the body.
async fn replay(flavour: Flavour, file: &str) {
    let exchanges = transcript(file);
    assert!(
        exchanges.len() >= 24,
        "{file}: only {} exchanges",
        exchanges.len()
    );
    let (base, state) = serve_at(flavour, "").await;
    // reqwest is built without a default provider: install ring here, not rely on another test
    // of the same process having done it first (alone, under nextest, none has).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("HTTP client");
    for ex in exchanges {
        if ex.title.starts_with("etcd stopped") {
            state.lock().expect("server state").etcd_down = true;
        }
        let url = format!("http://{}{}", base.authority(), ex.path);
        let method = reqwest::Method::from_bytes(ex.method.as_bytes()).expect("method");
        let mut req = http.request(method, &url);
        for (name, value) in &ex.headers {
            req = req.header(name, value);
        }
        if let Some(body) = &ex.body {
            req = req.body(body.clone());
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", ex.title));
        let what = format!("{file}: {}", ex.title);
        assert_eq!(resp.status().as_u16(), ex.status, "{what}: status");
        for (name, value) in &ex.answer_headers {
            let got = resp
                .headers()
                .get(name.as_str())
                .and_then(|v| v.to_str().ok());
            assert_eq!(got, Some(value.as_str()), "{what}: header {name}");
        }
        let recorded_type = ex.answer_headers.iter().any(|(n, _)| n == "Content-Type");
        let has_type = resp.headers().contains_key("content-type");
        assert_eq!(has_type, recorded_type, "{what}: Content-Type presence");
        let body = resp.bytes().await.expect("body");
        assert_eq!(
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(&ex.answer_body),
            "{what}: body"
        );
    }
}

#[tokio::test]
async fn fleetlock_test_server_answers_every_recorded_airlock_exchange_identically() {
    replay(Flavour::Airlock, "airlock-transcript.txt").await;
}

#[tokio::test]
async fn fleetlock_test_server_answers_every_recorded_heathcliff_exchange_identically() {
    replay(Flavour::Heathcliff, "heathcliff26-fleetlock-transcript.txt").await;
}
