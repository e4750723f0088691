//! The one etcd layer under the registration, the update slots and `status`: connecting with the
//! configured endpoints, TLS and credentials ([`EtcdConnection`]), reconnecting with the one retry
//! policy after a transport error, and the one lease keeper ([`lease::LeaseKeeper`]).
//!
//! Every request carries etcd's `hasleader` metadata, so a member cut off from its quorum answers
//! "no leader" at once instead of letting a watch or keepalive stream hang. With a username, an
//! expired token (`--auth-token-ttl`) is refreshed and the request retried. `https://` endpoints
//! without `etcd.ca_file` are verified against the system's CA roots.

pub mod clock;
pub mod duplicate;
pub mod lease;
mod options;
pub mod paged;

pub use options::{ClientCert, EtcdAuth, EtcdOptions};

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::backoff::Backoff;

/// gRPC keepalive: notices a dead connection while idle (e.g. waiting on a watch).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Where the system's CA bundle is looked for when `https://` has no `etcd.ca_file`
/// (`SSL_CERT_FILE` first, as OpenSSL does).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];
/// Longest pause the connection itself puts between reconnect attempts; callers that retry pace
/// themselves with their own cap on top.
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// The configured endpoints as one comma-separated string for log lines and messages: without
/// userinfo, query or fragment ([`crate::logging::redact_url`]), which may hold credentials.
pub fn endpoint_list(etcd: &EtcdOptions) -> String {
    etcd.endpoints
        .iter()
        .map(|u| {
            crate::logging::redact_url(u)
                .trim_end_matches('/')
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn endpoints(etcd: &EtcdOptions) -> Vec<String> {
    etcd.endpoints
        .iter()
        .map(|u| u.as_str().trim_end_matches('/').to_string())
        .collect()
}

/// The system's CA bundle, for `https://` endpoints without `etcd.ca_file`.
fn system_roots() -> anyhow::Result<Vec<u8>> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    let candidates = from_env
        .into_iter()
        .chain(SYSTEM_CA_BUNDLES.iter().map(|p| Path::new(p).to_path_buf()));
    for path in candidates {
        if let Ok(pem) = std::fs::read(&path) {
            return Ok(pem);
        }
    }
    anyhow::bail!(
        "https:// etcd endpoints without etcd.ca_file need the system CA bundle, and none of {} exists",
        SYSTEM_CA_BUNDLES.join(", ")
    )
}

/// Connection options built from settings; reads the CA, client key pair and password files.
pub fn connect_options(settings: &EtcdOptions) -> anyhow::Result<ConnectOptions> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(settings.timeout)
        .with_timeout(settings.timeout)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    let uses_tls = settings.endpoints.iter().any(|u| u.scheme() == "https");
    if uses_tls || settings.ca_file.is_some() || settings.client_cert.is_some() {
        let ca = match &settings.ca_file {
            Some(ca_file) => std::fs::read(ca_file)
                .with_context(|| format!("failed to read etcd.ca_file {}", ca_file.display()))?,
            None => system_roots()?,
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
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
        options = options
            .with_user(
                auth.username.clone(),
                password.trim_end_matches(['\n', '\r']),
            )
            .with_auto_token_refresh(true);
    }
    Ok(options)
}

/// Connects and proves the connection with a real call: `Client::connect` alone succeeds against
/// a dead endpoint.
/// A failure is one line naming the endpoints and the cause ([`describe`]); the client's full
/// error is logged at DEBUG (`-v`).
pub async fn connect(settings: &EtcdOptions) -> anyhow::Result<Client> {
    let list = endpoint_list(settings);
    let unreachable = |err: etcd_client::Error| {
        tracing::debug!("etcd at {list}: {err:?}");
        anyhow::anyhow!(
            "etcd at {list} did not answer within {} ({})",
            humantime::format_duration(settings.timeout),
            describe(&err)
        )
    };
    let options = connect_options(settings)?;
    let all = endpoints(settings);
    let mut chosen = match all.len() {
        1 => all.clone(),
        _ => members_with_leader(&all, &options).await,
    };
    if chosen.is_empty() {
        // None answers: connecting to all of them fails with the reason below.
        chosen = all;
    }
    let mut client = Client::connect(chosen, Some(options))
        .await
        .map_err(&unreachable)?;
    match client.status().await {
        Ok(_) => Ok(client),
        // etcd 3.4.23+ keeps the maintenance Status call to root: a least-privilege user
        // (`sidekick etcd-role`) is refused it, which still proves etcd answered.
        Err(etcd_client::Error::GRpcStatus(status))
            if i32::from(status.code()) == GRPC_PERMISSION_DENIED =>
        {
            Ok(client)
        }
        Err(err) => Err(unreachable(err)),
    }
}

/// Of several endpoints, those whose member answers `Status` with a leader (every request carries
/// `hasleader`), asked side by side. A member cut off from its quorum answers "no leader" at
/// once, and a client balancing over every endpoint would keep sending it a share of the
/// requests (each failing) for as long as the connection lasts; left out here, the requests go
/// to the majority until the next reconnect asks every member again (issue 19 part 2, case 5).
async fn members_with_leader(all: &[String], options: &ConnectOptions) -> Vec<String> {
    let probes = all.iter().map(|endpoint| async move {
        let answered = async {
            let mut client = Client::connect([endpoint.clone()], Some(options.clone())).await?;
            client.status().await.map(|_| ())
        };
        match answered.await {
            Ok(()) => Some(endpoint.clone()),
            // A least-privilege user is refused Status: the member still answered.
            Err(etcd_client::Error::GRpcStatus(status))
                if i32::from(status.code()) == GRPC_PERMISSION_DENIED =>
            {
                Some(endpoint.clone())
            }
            Err(err) => {
                tracing::info!(
                    endpoint = %crate::logging::redact_url_text(endpoint),
                    "etcd member left out of this connection: {}",
                    describe(&err)
                );
                None
            }
        }
    });
    futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Why an etcd call failed, in a few words a person can act on (`connection refused`, `no
/// answer`, `authentication failed: …`), instead of the client's nested debug text.
pub fn describe(err: &etcd_client::Error) -> String {
    use etcd_client::Error;
    match err {
        Error::GRpcStatus(status) => {
            if let Some(io) = io_cause(std::error::Error::source(status)) {
                return io;
            }
            let message = status.message();
            match i32::from(status.code()) {
                GRPC_DEADLINE_EXCEEDED | GRPC_CANCELLED => "no answer".to_string(),
                GRPC_UNAUTHENTICATED => format!("authentication failed: {message}"),
                GRPC_PERMISSION_DENIED => format!("permission denied: {message}"),
                _ if message.is_empty() => format!("gRPC status {}", i32::from(status.code())),
                _ => message.to_string(),
            }
        }
        Error::TransportError(transport) => io_cause(std::error::Error::source(transport))
            .or_else(|| innermost(std::error::Error::source(transport)))
            .unwrap_or_else(|| transport.to_string()),
        Error::IoError(io) => io_text(io),
        other => other.to_string(),
    }
}

/// The first I/O error in a source chain, as [`io_text`].
fn io_cause(mut source: Option<&(dyn std::error::Error + 'static)>) -> Option<String> {
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io_text(io));
        }
        source = err.source();
    }
    None
}

/// The last error in a source chain (the most specific one, e.g. a TLS verification failure).
fn innermost(mut source: Option<&(dyn std::error::Error + 'static)>) -> Option<String> {
    let mut last = None;
    while let Some(err) = source {
        last = Some(err.to_string());
        source = err.source();
    }
    last
}

/// `connection refused`, `timed out`, …: the kind when it says it all, else the error's text.
fn io_text(io: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match io.kind() {
        ErrorKind::Other | ErrorKind::InvalidData | ErrorKind::InvalidInput => io.to_string(),
        kind => kind.to_string(),
    }
}

/// Whether `err` means the connection itself is broken (as opposed to a refused request), so the
/// next request should connect afresh.
pub fn is_transport(err: &etcd_client::Error) -> bool {
    use etcd_client::Error;
    match err {
        Error::TransportError(_) | Error::IoError(_) => true,
        Error::GRpcStatus(s) => matches!(
            i32::from(s.code()),
            GRPC_UNKNOWN | GRPC_DEADLINE_EXCEEDED | GRPC_UNAVAILABLE
        ),
        _ => false,
    }
}

/// gRPC status codes (tonic is not a direct dependency, so its `Code` cannot be named here).
const GRPC_CANCELLED: i32 = 1;
const GRPC_UNKNOWN: i32 = 2;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_PERMISSION_DENIED: i32 = 7;
const GRPC_UNAVAILABLE: i32 = 14;
const GRPC_UNAUTHENTICATED: i32 = 16;

/// A shared, lazily (re)connected etcd client. Cheap to clone.
#[derive(Clone)]
pub struct EtcdConnection {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` for a connection made from a ready client (tests, tools): it is never replaced.
    settings: Option<EtcdOptions>,
    endpoint: String,
    state: Mutex<Link>,
    requests: AtomicU64,
}

/// The current client and the pacing of reconnects.
struct Link {
    client: Option<Client>,
    backoff: Backoff,
    next_attempt: Option<Instant>,
}

impl std::fmt::Debug for EtcdConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConnection")
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

impl EtcdConnection {
    /// A connection to the configured endpoints; connects at the first request.
    pub fn new(settings: EtcdOptions) -> EtcdConnection {
        let endpoint = endpoint_list(&settings);
        EtcdConnection::build(Some(settings), endpoint, None)
    }

    /// A connection over an already connected client (tests and tools); never reconnects itself
    /// (the client's channel does).
    pub fn from_client(client: Client) -> EtcdConnection {
        EtcdConnection::build(None, String::new(), Some(client))
    }

    fn build(settings: Option<EtcdOptions>, endpoint: String, client: Option<Client>) -> Self {
        EtcdConnection {
            inner: Arc::new(Inner {
                settings,
                endpoint,
                state: Mutex::new(Link {
                    client,
                    backoff: Backoff::new(RECONNECT_MAX),
                    next_attempt: None,
                }),
                requests: AtomicU64::new(0),
            }),
        }
    }

    /// The endpoints, joined once, for log lines.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The client, connecting (and proving it with a `Status` call) when there is none. After a
    /// failed connect the next attempt waits a step of the retry policy.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let mut link = self.inner.state.lock().await;
        if let Some(client) = &link.client {
            return Ok(client.clone());
        }
        let settings = self
            .inner
            .settings
            .as_ref()
            .context("etcd connection has neither a client nor settings")?;
        if let Some(at) = link.next_attempt {
            tokio::time::sleep_until(at).await;
        }
        // What connect sends: with several endpoints a `Status` probe to each (each
        // authenticating first when auth is on), then the proving `Status` (the same).
        let probes = match endpoints(settings).len() {
            1 => 0,
            n => n,
        };
        let per_connect = 1 + u64::from(settings.auth.is_some());
        for _ in 0..(probes as u64 + 1) * per_connect {
            self.count();
        }
        match connect(settings).await {
            Ok(client) => {
                link.backoff.reset();
                link.next_attempt = None;
                link.client = Some(client.clone());
                Ok(client)
            }
            Err(err) => {
                link.next_attempt = Some(Instant::now() + link.backoff.next_delay());
                Err(err)
            }
        }
    }

    /// Reports a failed request: after a transport error the next request connects afresh.
    pub async fn failed(&self, err: &etcd_client::Error) {
        if is_transport(err) && self.inner.settings.is_some() {
            self.inner.state.lock().await.client = None;
        }
    }

    /// Counts one etcd request (for the benchmarks).
    pub fn count(&self) {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// etcd requests counted on this connection so far.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }
}

impl From<Client> for EtcdConnection {
    fn from(client: Client) -> Self {
        EtcdConnection::from_client(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(endpoint: &str) -> EtcdOptions {
        EtcdOptions {
            endpoints: vec![endpoint.parse().expect("url")],
            timeout: Duration::from_secs(1),
            auth: None,
            ca_file: None,
            client_cert: None,
        }
    }

    #[test]
    fn https_without_a_ca_file_is_verified_against_the_system_roots() {
        let system = SYSTEM_CA_BUNDLES.iter().any(|p| Path::new(p).exists())
            || std::env::var_os("SSL_CERT_FILE").is_some();
        let options = connect_options(&settings("https://127.0.0.1:2379"));
        assert_eq!(options.is_ok(), system, "{options:?}");
        assert!(system_roots().is_ok() == system);
    }

    #[test]
    fn endpoints_are_joined_once_without_trailing_slashes() {
        let mut s = settings("http://127.0.0.1:2379/");
        s.endpoints
            .push("http://127.0.0.2:2379".parse().expect("url"));
        assert_eq!(
            endpoint_list(&s),
            "http://127.0.0.1:2379,http://127.0.0.2:2379"
        );
        let etcd = EtcdConnection::new(s);
        assert_eq!(
            etcd.endpoint(),
            "http://127.0.0.1:2379,http://127.0.0.2:2379"
        );
    }

    #[test]
    fn endpoints_in_messages_carry_no_userinfo_or_query() {
        let s = settings("http://root:hunter2@127.0.0.1:2379/?token=s3cret");
        assert_eq!(endpoint_list(&s), "http://127.0.0.1:2379");
        assert_eq!(EtcdConnection::new(s).endpoint(), "http://127.0.0.1:2379");
    }
}
