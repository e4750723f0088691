//! Connecting to etcd with the configured endpoints, TLS and credentials. Shared by the
//! registration and the update slots; each keeps its own clone of one [`etcd_client::Client`].

use std::time::Duration;

use anyhow::Context as _;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::config::EtcdSettings;

/// gRPC keepalive: notices a dead connection while idle (e.g. waiting on a watch).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection options built from settings; reads the CA, client key pair and password files.
pub fn connect_options(settings: &EtcdSettings) -> anyhow::Result<ConnectOptions> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(settings.timeout)
        .with_timeout(settings.timeout)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(true);
    if settings.ca_file.is_some() || settings.client_cert.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca_file) = &settings.ca_file {
            let pem = std::fs::read(ca_file)
                .with_context(|| format!("failed to read etcd.ca_file {}", ca_file.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some(cert) = &settings.client_cert {
            let cert_pem = std::fs::read(&cert.cert_file).with_context(|| {
                format!("failed to read etcd.cert_file {}", cert.cert_file.display())
            })?;
            let key_pem = std::fs::read(&cert.key_file).with_context(|| {
                format!("failed to read etcd.key_file {}", cert.key_file.display())
            })?;
            tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
        }
        options = options.with_tls(tls);
    }
    if let Some(auth) = &settings.auth {
        let password = std::fs::read_to_string(&auth.password_file).with_context(|| {
            format!(
                "failed to read etcd.password_file {}",
                auth.password_file.display()
            )
        })?;
        options = options.with_user(
            auth.username.clone(),
            password.trim_end_matches(['\n', '\r']),
        );
    }
    Ok(options)
}

/// Connects and proves the connection with a real call: `Client::connect` alone succeeds against
/// a dead endpoint.
pub async fn connect(settings: &EtcdSettings) -> anyhow::Result<Client> {
    let endpoints: Vec<String> = settings
        .endpoints
        .iter()
        .map(|url| url.as_str().trim_end_matches('/').to_string())
        .collect();
    let mut client = Client::connect(&endpoints, Some(connect_options(settings)?))
        .await
        .with_context(|| format!("failed to connect to etcd at {}", endpoints.join(",")))?;
    client
        .status()
        .await
        .with_context(|| format!("etcd at {} did not answer", endpoints.join(",")))?;
    Ok(client)
}
