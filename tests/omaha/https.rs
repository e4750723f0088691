//! The client over HTTPS: the server's certificate is checked against the system roots plus
//! `update.ca_file`, so a private CA works when configured and is refused when it is not.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::support::{pki, prerequisites_met, temp_dir};
use super::*;

/// Answers every request on a TLS listener with the no-update fixture; returns the endpoint.
async fn https_server(cert: &Path, key: &Path) -> Url {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!(
        "https://{}/v1/update/",
        listener.local_addr().unwrap()
    ))
    .unwrap();
    let body = fixture("a-noupdate.xml");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake here.
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                read_request(&mut tls).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(body.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    url
}

/// Reads one HTTP/1.1 request: the head, then `content-length` bytes of body.
async fn read_request(stream: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buf).await {
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return;
            }
        }
    }
}

#[tokio::test]
async fn https_update_service_with_a_private_ca_is_trusted_only_through_ca_file() {
    if !prerequisites_met(pki::NEEDS) {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = temp_dir("omaha-https");
    let certs = pki::Pki::generate(dir.path());
    let endpoint = https_server(&certs.server_cert, &certs.server_key).await;
    let current = v("1.0.0");
    let source = |ca: Option<&Path>| {
        HttpUpdateSource::new(
            endpoint.clone(),
            instance(FLATCAR_APP, "web-1"),
            short_timeouts(),
            ca,
        )
        .unwrap()
    };

    let trusted = source(Some(&certs.ca)).check(&current, false).await;
    assert_eq!(trusted.unwrap(), CheckOutcome::NoUpdate);

    let untrusted = source(None).check(&current, false).await.unwrap_err();
    assert_eq!(untrusted.kind(), "connect", "{untrusted}");
    assert!(untrusted.to_string().contains("certificate"), "{untrusted}");

    let wrong_ca = source(Some(&certs.other_ca))
        .check(&current, false)
        .await
        .unwrap_err();
    assert_eq!(wrong_ca.kind(), "connect", "{wrong_ca}");
}
