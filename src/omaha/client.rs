//! The HTTP update source: POSTs Omaha requests with reqwest, with connect, read and total
//! timeouts, a 1 MiB response cap enforced while streaming, and HTTPS verified against the
//! system roots plus an optional CA file.

use std::path::Path;
use std::time::Duration;

use semver::Version;
use url::Url;

use super::UpdateSource;
use super::protocol::{
    AppInstance, CheckOutcome, Event, InstallSource, classify_check_response, event_request,
    response_app_status, update_check_request,
};
use crate::logging::redact_url;

/// Largest response body accepted; larger ones are refused without being buffered whole.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Content type of every request, as go-omaha sends it.
const REQUEST_CONTENT_TYPE: &str = "text/xml; charset=utf-8";
/// Default time to establish a connection (TCP and TLS).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest silence while waiting for or reading the response.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound on a whole exchange, body included: a server dripping a byte at a time never
/// trips the read timeout, so this is what ends it (go-omaha uses 90 s; shorter here so that one
/// `update-check` stays under a minute).
pub const DEFAULT_TOTAL_TIMEOUT: Duration = Duration::from_secs(45);

/// Why an exchange with the update service failed.
#[derive(Debug, thiserror::Error)]
pub enum OmahaError {
    /// The client could not be set up (bad endpoint scheme, unreadable CA file).
    #[error("failed to set up the update client: {0}")]
    Setup(String),
    /// No connection could be made.
    #[error("failed to connect to the update service: {0}")]
    Connect(String),
    /// The service did not answer in time.
    #[error("the update service did not answer within the timeout")]
    Timeout,
    /// The service answered with a non-success HTTP status.
    #[error("the update service answered HTTP {status}")]
    HttpStatus {
        /// The HTTP status code.
        status: u16,
    },
    /// The response body was larger than the cap.
    #[error("the response is larger than {limit} bytes")]
    TooLarge {
        /// The cap, in bytes.
        limit: usize,
    },
    /// The response body was empty.
    #[error("the update service sent an empty body")]
    EmptyBody,
    /// The body could not be read completely (connection closed mid-body, bad chunking).
    #[error("failed to read the response body: {0}")]
    Body(String),
    /// The body was not UTF-8.
    #[error("the response body is not UTF-8")]
    Encoding,
    /// Any other request failure.
    #[error("the request failed: {0}")]
    Request(String),
    /// The local release file of the in-memory source could not be read.
    #[error("failed to read the release file: {0}")]
    ReleaseFile(String),
}

impl OmahaError {
    /// A short stable label for logs, metrics and the `update-check` JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Setup(_) => "setup",
            Self::Connect(_) => "connect",
            Self::Timeout => "timeout",
            Self::HttpStatus { .. } => "http-status",
            Self::TooLarge { .. } => "too-large",
            Self::EmptyBody => "empty-body",
            Self::Body(_) => "body",
            Self::Encoding => "parse",
            Self::Request(_) => "request",
            Self::ReleaseFile(_) => "release-file",
        }
    }

    fn from_reqwest(error: reqwest::Error, while_reading_body: bool) -> Self {
        // reqwest's text names the full URL, query and userinfo included: tokens live there.
        let error = error.without_url();
        if error.is_timeout() {
            Self::Timeout
        } else if error.is_connect() {
            Self::Connect(error_chain(&error))
        } else if while_reading_body || error.is_body() || error.is_decode() {
            Self::Body(error_chain(&error))
        } else {
            Self::Request(error_chain(&error))
        }
    }
}

/// The time limits of one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpTimeouts {
    /// Establishing the connection.
    pub connect: Duration,
    /// Longest silence while waiting for or reading the response.
    pub read: Duration,
    /// The whole exchange.
    pub total: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        Self {
            connect: DEFAULT_CONNECT_TIMEOUT,
            read: DEFAULT_READ_TIMEOUT,
            total: DEFAULT_TOTAL_TIMEOUT,
        }
    }
}

/// An Omaha update service reached over HTTP(S).
#[derive(Debug, Clone)]
pub struct HttpUpdateSource {
    http: reqwest::Client,
    endpoint: Url,
    instance: AppInstance,
    total_timeout: Duration,
}

impl HttpUpdateSource {
    /// A source posting to `endpoint` (e.g. `https://nebraska.example.com/v1/update/`) for `instance`.
    pub fn new(
        endpoint: Url,
        instance: AppInstance,
        timeouts: HttpTimeouts,
        ca_file: Option<&Path>,
    ) -> Result<Self, OmahaError> {
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(OmahaError::Setup(format!(
                "endpoint {} is not http or https",
                redact_url(&endpoint)
            )));
        }
        let mut extra_roots = Vec::new();
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                OmahaError::Setup(format!("failed to read CA file {}: {e}", path.display()))
            })?;
            extra_roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                OmahaError::Setup(format!("CA file {} is not PEM: {e}", path.display()))
            })?;
        }
        let http = crate::http_tls::client_builder(&endpoint, extra_roots)
            .user_agent(super::protocol::UPDATER_VERSION)
            .connect_timeout(timeouts.connect)
            .read_timeout(timeouts.read)
            .timeout(timeouts.total)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OmahaError::Setup(crate::http_tls::explain(error_chain(&e))))?;
        Ok(Self {
            http,
            endpoint,
            instance,
            total_timeout: timeouts.total,
        })
    }

    /// The instance this source speaks for.
    pub fn instance(&self) -> &AppInstance {
        &self.instance
    }

    /// The endpoint without its query string or credentials, safe for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.endpoint)
    }

    /// POSTs one request document and returns the response body, capped and non-empty.
    pub async fn exchange(&self, request: String) -> Result<String, OmahaError> {
        // reqwest's own total timeout covers the body too; this guard also bounds our own reads.
        match tokio::time::timeout(self.total_timeout, self.exchange_unbounded(request)).await {
            Ok(result) => result,
            Err(_) => Err(OmahaError::Timeout),
        }
    }

    async fn exchange_unbounded(&self, request: String) -> Result<String, OmahaError> {
        let mut response = self
            .http
            .post(self.endpoint.clone())
            .header(reqwest::header::CONTENT_TYPE, REQUEST_CONTENT_TYPE)
            .body(request)
            .send()
            .await
            .map_err(|e| OmahaError::from_reqwest(e, false))?;
        let status = response.status();
        if !status.is_success() {
            return Err(OmahaError::HttpStatus {
                status: status.as_u16(),
            });
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
        {
            return Err(OmahaError::TooLarge {
                limit: MAX_RESPONSE_BYTES,
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| OmahaError::from_reqwest(e, true))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(OmahaError::TooLarge {
                    limit: MAX_RESPONSE_BYTES,
                });
            }
            body.extend_from_slice(&chunk);
        }
        if body.is_empty() {
            return Err(OmahaError::EmptyBody);
        }
        String::from_utf8(body).map_err(|_| OmahaError::Encoding)
    }
}

impl UpdateSource for HttpUpdateSource {
    async fn check(
        &self,
        current: &Version,
        interactive: bool,
    ) -> Result<CheckOutcome, OmahaError> {
        let source = InstallSource::from_interactive(interactive);
        let request = update_check_request(&self.instance, current, source);
        tracing::debug!(endpoint = %self.redacted_url(), %current, "sending update check");
        let body = self.exchange(request).await?;
        let outcome = classify_check_response(&body, &self.instance.app_id);
        tracing::debug!(?outcome, "update check answered");
        Ok(outcome)
    }

    async fn send_event(&self, current: &Version, event: Event) -> Result<(), OmahaError> {
        let request = event_request(&self.instance, current, event);
        let body = self.exchange(request).await?;
        // Events are best effort (update_engine ignores the answer); only log an odd one.
        match response_app_status(&body, &self.instance.app_id) {
            Ok(status) if status == "ok" => {}
            Ok(status) => tracing::warn!(?event, %status, "update service did not accept event"),
            Err(detail) => tracing::warn!(?event, %detail, "unreadable answer to event"),
        }
        Ok(())
    }
}

/// The error and its sources on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> AppInstance {
        AppInstance {
            app_id: "app".into(),
            track: "stable".into(),
            arch: "x64".into(),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
            boot_id: "{965fb4c5-ad3e-4eb7-a4c2-ca0c0e31ec84}".into(),
            name: "web-1".into(),
        }
    }

    #[test]
    fn refuses_non_http_endpoints_and_missing_ca_files() {
        let url = Url::parse("ftp://example.com/").unwrap();
        let err =
            HttpUpdateSource::new(url, instance(), HttpTimeouts::default(), None).unwrap_err();
        assert_eq!(err.kind(), "setup");
        let url = Url::parse("https://example.com/v1/update/").unwrap();
        let missing = Path::new("/nonexistent/ca.pem");
        let err = HttpUpdateSource::new(url, instance(), HttpTimeouts::default(), Some(missing))
            .unwrap_err();
        assert_eq!(err.kind(), "setup");
    }

    #[test]
    fn error_kinds_are_stable_labels() {
        assert_eq!(OmahaError::Timeout.kind(), "timeout");
        assert_eq!(OmahaError::HttpStatus { status: 500 }.kind(), "http-status");
        assert_eq!(OmahaError::TooLarge { limit: 1 }.kind(), "too-large");
        assert_eq!(OmahaError::EmptyBody.kind(), "empty-body");
        assert_eq!(OmahaError::Body(String::new()).kind(), "body");
        assert_eq!(OmahaError::Connect(String::new()).kind(), "connect");
    }
}
