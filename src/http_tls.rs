//! Where the daemon's HTTP clients (health probe, Omaha update checks, FleetLock) get their TLS
//! roots. A client for an `http://` URL is built with no roots at all, so plain HTTP works in a
//! root with no CA bundle (a `FROM scratch` image, a minimal container). A client for `https://`
//! verifies with the system's roots (`/etc/ssl/certs`, from Debian's `ca-certificates`, or
//! `SSL_CERT_FILE`/`SSL_CERT_DIR`) plus any CA file the configuration names; when neither gives a
//! root, building it fails with [`NO_ROOTS_HINT`] in the message.

use reqwest::{Certificate, ClientBuilder};
use url::Url;

/// What to do when an https client finds no CA roots.
pub const NO_ROOTS_HINT: &str = "https needs CA roots: install the system's CA bundle (Debian: \
     ca-certificates), point SSL_CERT_FILE at a PEM bundle, or set the section's ca_file";

/// A client builder for requests to `url` (all requests of the client go to its scheme), with
/// ring as the rustls provider. `extra_roots` are trusted in addition to the system's; they are
/// ignored for `http://`.
pub fn client_builder(url: &Url, extra_roots: Vec<Certificate>) -> ClientBuilder {
    // reqwest is built without a default provider; a second install is a harmless no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder();
    if url.scheme() == "https" {
        builder.tls_certs_merge(extra_roots)
    } else {
        // An empty, explicit root set: never load the system's (which fails when there are none),
        // and refuse any https redirect target instead of trusting it.
        builder.tls_certs_only(Vec::new())
    }
}

/// Appends [`NO_ROOTS_HINT`] to a client build error that is about missing roots.
pub fn explain(error: String) -> String {
    if error.contains("No CA certificates") {
        format!("{error} ({NO_ROOTS_HINT})")
    } else {
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_clients_build_without_touching_the_system_roots() {
        let url = Url::parse("http://127.0.0.1:8080/").unwrap();
        assert!(client_builder(&url, Vec::new()).build().is_ok());
    }

    #[test]
    fn a_missing_roots_error_gets_the_hint_and_others_stay_as_they_are() {
        let explained = explain("builder error: No CA certificates were loaded".to_string());
        assert!(explained.contains("ca-certificates"), "{explained}");
        assert_eq!(explain("other".to_string()), "other");
    }
}
