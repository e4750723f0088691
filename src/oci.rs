//! The image registry's own word on what a tag names: a HEAD of the manifest over the OCI
//! distribution API
//! (<https://github.com/opencontainers/distribution-spec/blob/main/spec.md#pulling-manifests>),
//! whose `Docker-Content-Digest` header is the digest `docker pull` resolves the tag to. The update
//! pass compares it with the offer's `hash_sha256` (`update.verify_digest`), so the update service
//! and the registry must agree before anything runs.
//!
//! Anonymous pulls only: a registry that answers 401 with a `Bearer` challenge (Docker Hub,
//! ghcr.io) is asked for an anonymous pull token at the challenge's realm, as the distribution
//! token spec describes (<https://distribution.github.io/distribution/spec/auth/token/>).
//! Loopback registries (`localhost`, 127.0.0.0/8, `::1`) are spoken to over plain http, as Docker
//! does; every other one over https with the system's roots.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, WWW_AUTHENTICATE};
use thiserror::Error;
use url::{Host, Url};

use crate::omaha::ImageReference;
use crate::omaha::repository_policy::canonical_repository;

/// Every manifest type `docker pull` accepts: an index (multi-platform) is answered as such, so
/// its digest is the one a pull by tag records.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";
/// The header that names the manifest's digest.
pub const DIGEST_HEADER: &str = "docker-content-digest";
/// Bound on one registry request, token included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest manifest read when a registry sends no digest header (the spec's own limit is 4 MiB).
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest token answer read.
const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// Where Docker Hub's API lives (`docker.io` is only its name in references).
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Why the registry could not say which manifest a tag names.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// A transport error, a timeout, a 5xx or a 429: worth retrying later.
    #[error("failed to reach the registry at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// Any other answer than 200 (404: the tag does not exist).
    #[error("the registry answered {status} for {url}")]
    Status { url: String, status: u16 },
    /// A 200 without a usable digest.
    #[error("the registry's answer for {url} has no usable digest: {detail}")]
    NoDigest { url: String, detail: String },
    /// A 401 this sidekick cannot answer (no anonymous token, or an unusable challenge).
    #[error("the registry at {url} refuses anonymous pulls: {detail}")]
    Auth { url: String, detail: String },
}

impl RegistryError {
    /// A stable short name for metrics and log fields.
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryError::Unreachable { .. } => "registry-unreachable",
            RegistryError::Status { .. } => "registry-status",
            RegistryError::NoDigest { .. } => "registry-no-digest",
            RegistryError::Auth { .. } => "registry-auth",
        }
    }

    /// Whether asking again later may help (the registry was down or busy).
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unreachable { .. })
    }
}

/// The manifest URL of `image`: by tag (`latest` when it has none) even when it is also pinned,
/// since the question is what the tag names now; by digest when it has only a digest.
pub fn manifest_url(image: &ImageReference) -> Result<Url, RegistryError> {
    let canonical = canonical_repository(image);
    let (registry, path) = canonical
        .split_once('/')
        .unwrap_or(("docker.io", canonical.as_str()));
    let host = match registry {
        "docker.io" => DOCKER_HUB_API,
        other => other,
    };
    let reference = match (image.tag(), image.digest()) {
        (Some(tag), _) => tag,
        (None, Some(digest)) => digest,
        (None, None) => "latest",
    };
    let scheme = if is_loopback(host) { "http" } else { "https" };
    let text = format!("{scheme}://{host}/v2/{path}/manifests/{reference}");
    Url::parse(&text).map_err(|err| RegistryError::NoDigest {
        detail: format!("not a registry URL: {err}"),
        url: text,
    })
}

/// `host[:port]` names this machine.
fn is_loopback(host_port: &str) -> bool {
    let Ok(url) = Url::parse(&format!("http://{host_port}/")) else {
        return false;
    };
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The digest (lowercase hex of its SHA-256) of the manifest `image`'s tag names now.
pub async fn manifest_digest(image: &ImageReference) -> Result<String, RegistryError> {
    let url = manifest_url(image)?;
    let client = client(&url)?;
    let head = |token: Option<String>| {
        let mut request = client.head(url.clone()).header(ACCEPT, MANIFEST_ACCEPT);
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        request.send()
    };
    let mut response = head(None).await.map_err(|e| unreachable(&url, e))?;
    let mut token = None;
    if response.status() == StatusCode::UNAUTHORIZED {
        let fetched = anonymous_token(&client, &url, response.headers()).await?;
        response = head(Some(fetched.clone()))
            .await
            .map_err(|e| unreachable(&url, e))?;
        token = Some(fetched);
    }
    check_status(&url, response.status())?;
    match response.headers().get(DIGEST_HEADER) {
        Some(value) => parse_digest(&url, value.to_str().unwrap_or_default()),
        // The header is optional for a GET-less HEAD in some registries: hash the body ourselves.
        None => digest_of_body(&client, &url, token).await,
    }
}

/// A client for `url`'s scheme that follows no redirect (a manifest is never redirected, and a
/// redirect is a place we did not choose).
fn client(url: &Url) -> Result<reqwest::Client, RegistryError> {
    crate::http_tls::client_builder(url, Vec::new())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|err| RegistryError::Unreachable {
            url: url.to_string(),
            detail: crate::http_tls::explain(err.without_url().to_string()),
        })
}

fn unreachable(url: &Url, error: reqwest::Error) -> RegistryError {
    let detail = match error.is_timeout() {
        true => format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
        false => error_chain(&error.without_url()),
    };
    RegistryError::Unreachable {
        url: url.to_string(),
        detail,
    }
}

/// An error and its causes on one line (reqwest's own text is only "error sending request").
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

fn check_status(url: &Url, status: StatusCode) -> Result<(), RegistryError> {
    if status.is_success() {
        return Ok(());
    }
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Err(RegistryError::Unreachable {
            url: url.to_string(),
            detail: format!("answered {status}"),
        });
    }
    Err(RegistryError::Status {
        url: url.to_string(),
        status: status.as_u16(),
    })
}

/// `sha256:<64 hex>` as lowercase hex; any other algorithm is no usable digest.
fn parse_digest(url: &Url, value: &str) -> Result<String, RegistryError> {
    match value.trim().strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(hex.to_ascii_lowercase())
        }
        _ => Err(RegistryError::NoDigest {
            url: url.to_string(),
            detail: format!("{DIGEST_HEADER} is {value:?}, not sha256:<64 hex>"),
        }),
    }
}

/// The SHA-256 of the manifest's bytes, read with a bound.
async fn digest_of_body(
    client: &reqwest::Client,
    url: &Url,
    token: Option<String>,
) -> Result<String, RegistryError> {
    let mut request = client.get(url.clone()).header(ACCEPT, MANIFEST_ACCEPT);
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = request.send().await.map_err(|e| unreachable(url, e))?;
    check_status(url, response.status())?;
    let body = read_bounded(response, MAX_MANIFEST_BYTES, url).await?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &body);
    Ok(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
    url: &Url,
) -> Result<Vec<u8>, RegistryError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(url, e))? {
        if body.len() + chunk.len() > limit {
            return Err(RegistryError::NoDigest {
                url: url.to_string(),
                detail: format!("the answer is larger than {limit} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The parts of a `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerChallenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// Parses a Bearer challenge; `None` for any other scheme or one without a realm.
pub fn parse_challenge(header: &str) -> Option<BearerChallenge> {
    let (scheme, params) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut scope = None;
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let close = after.find('"')?;
        let value = after[..close].to_string();
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            "scope" => scope = Some(value),
            _ => {}
        }
        rest = after[close + 1..].trim_start_matches([',', ' ']);
    }
    Some(BearerChallenge {
        realm: realm?,
        service,
        scope,
    })
}

/// An anonymous pull token from the realm a 401 names. The realm must be https (or loopback
/// http): a token is only as good as the place it came from.
async fn anonymous_token(
    client: &reqwest::Client,
    url: &Url,
    headers: &HeaderMap,
) -> Result<String, RegistryError> {
    let auth = |detail: String| RegistryError::Auth {
        url: url.to_string(),
        detail,
    };
    let header = headers
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let challenge = parse_challenge(header)
        .ok_or_else(|| auth(format!("401 with no usable Bearer challenge ({header:?})")))?;
    let mut realm = Url::parse(&challenge.realm)
        .map_err(|err| auth(format!("realm {:?}: {err}", challenge.realm)))?;
    let plain_remote = realm.scheme() != "https"
        && !(realm.scheme() == "http" && realm.host_str().is_some_and(is_loopback));
    if plain_remote {
        return Err(auth(format!(
            "the token realm {realm} is not https: refused"
        )));
    }
    {
        let mut query = realm.query_pairs_mut();
        if let Some(service) = &challenge.service {
            query.append_pair("service", service);
        }
        if let Some(scope) = &challenge.scope {
            query.append_pair("scope", scope);
        }
    }
    let response = client
        .get(realm.clone())
        .send()
        .await
        .map_err(|e| unreachable(&realm, e))?;
    if !response.status().is_success() {
        return Err(auth(format!(
            "the token realm answered {}",
            response.status()
        )));
    }
    let body = read_bounded(response, MAX_TOKEN_BYTES, &realm).await?;
    let answer: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|err| auth(format!("the token answer is not JSON: {err}")))?;
    answer
        .get("token")
        .or_else(|| answer.get("access_token"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or_else(|| auth("the token answer has no token".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(image: &str) -> String {
        manifest_url(&ImageReference::parse(image).unwrap())
            .unwrap()
            .to_string()
    }

    #[test]
    fn manifest_urls_follow_dockers_naming() {
        assert_eq!(
            url("nginx:1.27"),
            "https://registry-1.docker.io/v2/library/nginx/manifests/1.27"
        );
        assert_eq!(
            url("ghcr.io/acme/web"),
            "https://ghcr.io/v2/acme/web/manifests/latest"
        );
        assert_eq!(
            url("127.0.0.1:5000/web:2.0.0"),
            "http://127.0.0.1:5000/v2/web/manifests/2.0.0"
        );
        assert_eq!(
            url("localhost:5000/team/web:2"),
            "http://localhost:5000/v2/team/web/manifests/2"
        );
        let hex = "3aed3129de50b959a97e4913ba485bd60e72d2bb6aa377d5ed404103f0680043";
        // A pinned tag is still asked about by its tag: what does the tag name now?
        assert_eq!(
            url(&format!("registry.example.com/web:2@sha256:{hex}")),
            "https://registry.example.com/v2/web/manifests/2"
        );
        assert_eq!(
            url(&format!("registry.example.com/web@sha256:{hex}")),
            format!("https://registry.example.com/v2/web/manifests/sha256:{hex}")
        );
    }

    #[test]
    fn bearer_challenges_parse_and_others_do_not() {
        let hub = "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\",\
                   scope=\"repository:library/nginx:pull\"";
        assert_eq!(
            parse_challenge(hub),
            Some(BearerChallenge {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            })
        );
        assert_eq!(parse_challenge("Basic realm=\"x\""), None);
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        assert_eq!(parse_challenge("Bearer realm=unquoted"), None);
    }

    #[test]
    fn only_sha256_digests_are_usable() {
        let u = Url::parse("http://127.0.0.1:1/v2/web/manifests/1").unwrap();
        let hex = "3AED3129DE50B959A97E4913BA485BD60E72D2BB6AA377D5ED404103F0680043";
        assert_eq!(
            parse_digest(&u, &format!("sha256:{hex}")).unwrap(),
            hex.to_ascii_lowercase()
        );
        let err = parse_digest(&u, "sha512:abcd").unwrap_err();
        assert_eq!(err.kind(), "registry-no-digest");
        assert!(err.to_string().contains("sha512:abcd"), "{err}");
    }
}
