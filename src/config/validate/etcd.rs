//! `[etcd]`: endpoints, credentials and TLS files, each pair complete or absent; credentials over
//! plain http:// to another host only with `etcd.allow_insecure`.

use super::Check;
use super::update::is_insecure;
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
    if auth.is_some()
        && !etcd.allow_insecure
        && let Some(plain) = endpoints.iter().find(|url| is_insecure(url))
    {
        return Err(check.fail(
            "etcd.endpoints",
            format!(
                "`{}` is plain http:// to a host other than loopback, and etcd.username is \
                 set: the password and every token would cross the network readable. Use \
                 https://, or set etcd.allow_insecure = true to accept this (warned at every \
                 start)",
                crate::logging::redact_url(plain)
            ),
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

/// The warning for etcd credentials accepted over plain http (`etcd.allow_insecure`), for every
/// start and `check-config`.
pub fn etcd_insecure_warning(etcd: &EtcdOptions) -> Option<String> {
    etcd.auth.as_ref()?;
    let plain = etcd.endpoints.iter().find(|url| is_insecure(url))?;
    Some(format!(
        "etcd credentials go over plain http:// to {} (etcd.allow_insecure = true): anyone on the \
         network path can read the password and the tokens",
        plain.host_str().unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use crate::config::{ConfigError, ConfigSources, LoadedConfig, etcd_insecure_warning, load};

    /// Loads `[etcd]` keys `etcd` (a password file `{pw}` is written) and `extra` sections.
    fn load_etcd(etcd: &str, extra: &str) -> Result<LoadedConfig, ConfigError> {
        let root = tempfile::tempdir().unwrap();
        let password = root.path().join("etcd.pw");
        std::fs::write(&password, "hunter2\n").unwrap();
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
        let file = root.path().join("web.toml");
        let etcd = etcd.replace("{pw}", &password.display().to_string());
        let text = format!(
            "[instance]\nunit = \"web@1.service\"\n[registration]\nport = 8080\n\
             [update]\nenabled = false\n[etcd]\n{etcd}\n{extra}\n"
        );
        std::fs::write(&file, text).unwrap();
        load(&ConfigSources {
            root: root.path().to_path_buf(),
            files: vec![file],
            unit: None,
        })
    }

    const CREDENTIALS: &str = "username = \"web\"\npassword_file = \"{pw}\"";

    #[test]
    fn credentials_over_plain_http_to_another_host_are_refused_unless_allowed_and_then_warned() {
        let remote = format!("endpoints = [\"http://10.0.0.5:2379\"]\n{CREDENTIALS}");
        let text = load_etcd(&remote, "").expect_err("refused").to_string();
        for part in ["etcd.endpoints", "10.0.0.5", "etcd.allow_insecure = true"] {
            assert!(text.contains(part), "names {part}: {text}");
        }
        let allowed = load_etcd(&format!("{remote}\nallow_insecure = true"), "").unwrap();
        let warning = etcd_insecure_warning(&allowed.settings.etcd).expect("a warning");
        assert!(warning.contains("10.0.0.5"), "{warning}");
        assert!(allowed.render().contains("allow_insecure = true"));

        // Loopback, https, or no credentials: nothing to refuse or warn about.
        for ok in [
            format!("endpoints = [\"http://127.0.0.1:2379\"]\n{CREDENTIALS}"),
            "endpoints = [\"http://10.0.0.5:2379\"]".to_string(),
        ] {
            let loaded = load_etcd(&ok, "").unwrap();
            assert_eq!(etcd_insecure_warning(&loaded.settings.etcd), None, "{ok}");
        }
    }

    #[test]
    fn check_config_shows_urls_without_userinfo_or_query() {
        let loaded = load_etcd(
            "endpoints = [\"https://root:s3cret@etcd.example.com:2379/?token=t0ken\"]",
            "[slot]\nbackend = \"fleetlock\"\nfleetlock_url = \"https://ops:hunter2@fl.example.com/?k=v4lue\"",
        )
        .unwrap();
        let rendered = loaded.render();
        for secret in ["s3cret", "t0ken", "hunter2", "v4lue", "root:", "ops:"] {
            assert!(!rendered.contains(secret), "shows {secret}: {rendered}");
        }
        assert!(
            rendered.contains("https://etcd.example.com:2379/"),
            "{rendered}"
        );
        assert!(rendered.contains("https://fl.example.com/"), "{rendered}");
    }
}
