//! `[etcd]`: endpoints, credentials and TLS files, each pair complete or absent.

use super::Check;
use crate::config::ConfigError;
use crate::config::inputs::EtcdInput;
use crate::config::settings::{ClientCert, EtcdAuth, EtcdOptions};

/// Validates `[etcd]`.
pub(super) fn validate(check: &Check, etcd: EtcdInput) -> Result<EtcdOptions, ConfigError> {
    if etcd.endpoints.is_empty() {
        return Err(check.fail("etcd.endpoints", "needs at least one endpoint"));
    }
    let endpoints = etcd
        .endpoints
        .iter()
        .map(|endpoint| check.http_url("etcd.endpoints", endpoint))
        .collect::<Result<Vec<_>, _>>()?;
    let auth = check
        .both(
            ("etcd.username", etcd.username),
            ("etcd.password_file", etcd.password_file),
        )?
        .map(|(username, password_file)| EtcdAuth {
            username,
            password_file,
        });
    let client_cert = check
        .both(
            ("etcd.cert_file", etcd.cert_file),
            ("etcd.key_file", etcd.key_file),
        )?
        .map(|(cert_file, key_file)| ClientCert {
            cert_file,
            key_file,
        });
    // https:// without etcd.ca_file trusts the system's CA roots (the etcd layer loads them).
    let uses_tls = endpoints.iter().any(|url| url.scheme() == "https");
    if !uses_tls && (etcd.ca_file.is_some() || client_cert.is_some()) {
        return Err(check.fail(
            "etcd.endpoints",
            "must be https:// when etcd.ca_file or etcd.cert_file is set",
        ));
    }
    Ok(EtcdOptions {
        endpoints,
        timeout: check.duration("etcd.timeout", etcd.timeout)?,
        auth,
        ca_file: etcd.ca_file,
        client_cert,
    })
}
