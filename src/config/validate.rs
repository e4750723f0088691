//! Turning merged input into [`Settings`]: every check names the key and where its value came
//! from.

use std::net::{IpAddr, SocketAddr};

mod check;
mod slot;
mod unit;

use super::ConfigError;
use super::inputs::{Input, Origins};
use super::settings::*;
use check::Check;
use unit::{normalise_unit, unit_problem};

fn default_prefix(layout: Layout) -> &'static str {
    match layout {
        Layout::Seed => "/services",
        Layout::Traefik => "traefik",
        Layout::Skydns => "/skydns",
        Layout::Vulcand => "/vulcand",
    }
}

/// An IP address or a DNS host name: what `registration.host` and `$COREOS_PUBLIC_IPV4` accept.
pub fn valid_host(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
        || (!host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
            }))
}

/// Placeholders outside `allowed` in a template like `{codebase}:{version}`.
fn unknown_placeholder<'a>(template: &'a str, allowed: &[&str]) -> Option<&'a str> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Some(&rest[open..]);
        };
        let name = &after[..close];
        if !allowed.contains(&name) {
            return Some(name);
        }
        rest = &after[close + 1..];
    }
    None
}

impl Settings {
    /// Validates merged input; `origins` lets errors name the file and line of a bad value.
    pub fn validate(input: Input, origins: &Origins) -> Result<Settings, ConfigError> {
        let check = Check { origins };
        let Input {
            instance,
            etcd,
            registration,
            health,
            update,
            slot,
            swap,
            daemon,
        } = input;

        let unit = instance.unit.ok_or_else(|| {
            check.fail(
                "instance.unit",
                "required: set it in a config file or pass --unit",
            )
        })?;
        let unit = normalise_unit(&unit);
        if let Some(problem) = unit_problem(&unit) {
            return Err(check.fail("instance.unit", problem));
        }
        let stem = unit
            .rsplit_once('.')
            .map_or(unit.as_str(), |(stem, _)| stem);
        let name = match instance.name {
            Some(name) => check.word("instance.name", &name)?,
            None => check.word("instance.name", &stem.replace('@', "-"))?,
        };
        let service = match instance.service {
            Some(service) => check.word("instance.service", &service)?,
            None => check.word("instance.service", stem.split('@').next().unwrap_or(stem))?,
        };

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
        let etcd = EtcdSettings {
            endpoints,
            timeout: check.duration("etcd.timeout", etcd.timeout)?,
            auth,
            ca_file: etcd.ca_file,
            client_cert,
        };

        let port = match (registration.port, registration.enabled) {
            (Some(0), _) => {
                return Err(check.fail("registration.port", "must be between 1 and 65535"));
            }
            (Some(port), _) => port,
            (None, true) => {
                return Err(
                    check.fail("registration.port", "required when registration is enabled")
                );
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
        let prefix = match registration.prefix.as_str() {
            "" => default_prefix(registration.layout).to_string(),
            prefix if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return Err(check.fail("registration.prefix", "must not contain whitespace"));
            }
            prefix => prefix.trim_end_matches('/').to_string(),
        };
        let registration = RegistrationSettings {
            enabled: registration.enabled,
            layout: registration.layout,
            prefix,
            domain: registration.domain,
            host,
            port,
            scheme: registration.scheme,
            ttl: check.duration("registration.ttl", registration.ttl)?,
        };

        let probe_port = |kind: &str| {
            if port == 0 {
                Err(check.fail(
                    "health.url",
                    format!("required for a {kind} check when registration.port is unset"),
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
        let health = HealthSettings {
            check: health_check,
            interval: check.duration("health.interval", health.interval)?,
            timeout: check.duration("health.timeout", health.timeout)?,
            rise: check.non_zero("health.rise", health.rise)?,
            fall: check.non_zero("health.fall", health.fall)?,
        };

        let server = match (update.server.as_str(), update.enabled) {
            ("", true) => {
                return Err(check.fail("update.server", "required when updates are enabled"));
            }
            ("", false) => None,
            (server, _) => Some(check.http_url("update.server", server)?),
        };
        if update.enabled && update.app_id.trim().is_empty() {
            return Err(check.fail("update.app_id", "required when updates are enabled"));
        }
        if update.app_id.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '&' | '"' | '\'')
        }) {
            return Err(check.fail(
                "update.app_id",
                "must not contain whitespace, quotes or XML markup",
            ));
        }
        if let Some(name) = unknown_placeholder(&update.image, &["codebase", "name", "version"]) {
            return Err(check.fail(
                "update.image",
                format!("unknown placeholder `{name}`: use {{codebase}}, {{name}} or {{version}}"),
            ));
        }
        let update = UpdateSettings {
            enabled: update.enabled,
            server,
            track: check.word("update.track", &update.track)?,
            arch: check.word("update.arch", &update.arch)?,
            app_id: update.app_id,
            interval: check.duration("update.interval", update.interval)?,
            image: update.image,
            pin_digest: update.pin_digest,
            ca_file: update.ca_file,
        };

        let slot = slot::validate(&check, slot, &update, &service)?;

        if swap
            .prepull
            .first()
            .is_some_and(|program| program.trim().is_empty())
        {
            return Err(check.fail("swap.prepull", "the first element must name a program"));
        }
        if let Some(name) = swap
            .prepull
            .iter()
            .find_map(|arg| unknown_placeholder(arg, &["image"]))
        {
            return Err(check.fail(
                "swap.prepull",
                format!("unknown placeholder `{name}`: only {{image}} is known"),
            ));
        }
        let swap = SwapSettings {
            drain: check.duration("swap.drain", swap.drain)?,
            start_timeout: check.duration("swap.start_timeout", swap.start_timeout)?,
            verify_timeout: check.duration("swap.verify_timeout", swap.verify_timeout)?,
            prepull: swap.prepull,
            dropin_dir: check.absolute("swap.dropin_dir", swap.dropin_dir)?,
        };

        let metrics = match daemon.metrics.as_str() {
            "" => None,
            address => Some(address.parse::<SocketAddr>().map_err(|_| {
                check.fail(
                    "daemon.metrics",
                    format!("`{address}` must be an address like 127.0.0.1:9527"),
                )
            })?),
        };
        let control_socket = match daemon.control_socket {
            None => Some(
                daemon
                    .runtime_dir
                    .join(unit.strip_suffix(".service").unwrap_or(&unit))
                    .join(CONTROL_SOCKET_FILE),
            ),
            Some(path) if path.as_os_str().is_empty() => None,
            Some(path) => Some(check.socket_path("daemon.control_socket", path)?),
        };
        let daemon = DaemonSettings {
            state_dir: check.absolute("daemon.state_dir", daemon.state_dir)?,
            metrics,
            control_socket,
        };

        Ok(Settings {
            instance: InstanceSettings {
                unit,
                name,
                service,
            },
            etcd,
            registration,
            health,
            update,
            slot,
            swap,
            daemon,
        })
    }
}
