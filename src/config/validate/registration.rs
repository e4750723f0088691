//! `[registration]` and `[health]`: where the registration's keys go, what it announces, and the
//! probe that decides whether it is announced.

use super::{Check, valid_host};
use crate::config::ConfigError;
use crate::config::inputs::{HealthInput, RegistrationInput};
use crate::config::settings::{
    CheckKind, HealthCheck, HealthSettings, Layout, RegistrationKeys, RegistrationSettings,
};

fn default_prefix(layout: Layout) -> &'static str {
    match layout {
        Layout::Seed => "/services",
        Layout::Traefik => "traefik",
        Layout::Skydns => "/skydns",
        Layout::Vulcand => "/vulcand",
    }
}

/// Validates the keys of `[registration]` that say where registrations live; what a reader of
/// them needs, so a missing port or domain is no error here.
pub(super) fn keys(
    check: &Check,
    registration: &RegistrationInput,
) -> Result<RegistrationKeys, ConfigError> {
    if !registration.domain.is_empty() && !valid_host(&registration.domain) {
        return Err(check.fail(
            "registration.domain",
            format!("`{}` is not a DNS name", registration.domain),
        ));
    }
    if !matches!(registration.scheme.as_str(), "http" | "https") {
        return Err(check.fail(
            "registration.scheme",
            format!("`{}` must be \"http\" or \"https\"", registration.scheme),
        ));
    }
    let prefix = match registration.prefix.as_str() {
        "" => default_prefix(registration.layout).to_string(),
        prefix if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            return Err(check.fail("registration.prefix", "must not contain whitespace"));
        }
        prefix => prefix.trim_end_matches('/').to_string(),
    };
    Ok(RegistrationKeys {
        layout: registration.layout,
        prefix,
        domain: registration.domain.clone(),
        scheme: registration.scheme.clone(),
    })
}

/// Validates `[registration]` for the instance that registers itself.
pub(super) fn validate(
    check: &Check,
    registration: RegistrationInput,
) -> Result<RegistrationSettings, ConfigError> {
    let port = match (registration.port, registration.enabled) {
        (Some(0), _) => {
            return Err(check.fail("registration.port", "must be between 1 and 65535"));
        }
        (Some(port), _) => port,
        (None, true) => {
            return Err(check.fail(
                "registration.port",
                "required while registration.enabled is true: set registration.port to the \
                 port the app listens on, or registration.enabled = false for updates only",
            ));
        }
        (None, false) => 0,
    };
    if registration.layout == Layout::Skydns
        && registration.enabled
        && registration.domain.is_empty()
    {
        return Err(check.fail(
            "registration.domain",
            "required by the skydns layout, e.g. \"web.example.com\"",
        ));
    }
    let keys = keys(check, &registration)?;
    let host = match registration.host.as_str() {
        "" => None,
        host if valid_host(host) => Some(host.to_string()),
        host => {
            return Err(check.fail(
                "registration.host",
                format!("`{host}` is neither an IP address nor a host name"),
            ));
        }
    };
    Ok(RegistrationSettings {
        enabled: registration.enabled,
        keys,
        host,
        port,
        ttl: check.duration("registration.ttl", registration.ttl)?,
    })
}

/// Validates `[health]`; an unset target probes `registration.port` on loopback.
pub(super) fn health(
    check: &Check,
    health: HealthInput,
    port: u16,
) -> Result<HealthSettings, ConfigError> {
    let probe_port = |kind: &str| {
        if port == 0 {
            Err(check.fail(
                "health.url",
                format!(
                    "required for a {kind} check when registration.port is unset: set \
                     health.url, or health.check = \"none\""
                ),
            ))
        } else {
            Ok(port)
        }
    };
    let health_check = match health.check {
        CheckKind::None => HealthCheck::None,
        CheckKind::Http if health.url.is_empty() => HealthCheck::Http {
            url: check.http_url(
                "health.url",
                &format!("http://127.0.0.1:{}/", probe_port("http")?),
            )?,
        },
        CheckKind::Http => HealthCheck::Http {
            url: check.http_url("health.url", &health.url)?,
        },
        CheckKind::Tcp if health.url.is_empty() => HealthCheck::Tcp {
            address: format!("127.0.0.1:{}", probe_port("tcp")?),
        },
        CheckKind::Tcp => {
            let valid = health.url.rsplit_once(':').is_some_and(|(host, port)| {
                valid_host(host.trim_matches(['[', ']']))
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !valid {
                return Err(check.fail(
                    "health.url",
                    format!("`{}` must be host:port for a tcp check", health.url),
                ));
            }
            HealthCheck::Tcp {
                address: health.url,
            }
        }
    };
    Ok(HealthSettings {
        check: health_check,
        interval: check.duration("health.interval", health.interval)?,
        timeout: check.duration("health.timeout", health.timeout)?,
        rise: check.non_zero("health.rise", health.rise)?,
        fall: check.non_zero("health.fall", health.fall)?,
    })
}
