//! Key/value layouts of one registration, as the load balancers that read etcd expect them, and the
//! reverse: listing the registrations found under a layout's prefix.
//!
//! - `seed`: `<prefix>/<service>/<instance>` → `{"host":"10.0.0.5","port":8080}` (confd and the
//!   seed's own consumers).
//! - `traefik`: `<prefix>/http/services/<service>/loadbalancer/servers/<instance>/url` →
//!   `http://10.0.0.5:8080` (Traefik's KV provider,
//!   <https://doc.traefik.io/traefik/routing/providers/kv/>).
//! - `skydns`: `<prefix>/<reversed domain labels>/<instance>` →
//!   `{"host":"10.0.0.5","port":8080,"ttl":30}` (CoreDNS etcd plugin; the explicit `ttl` keeps
//!   CoreDNS from using the lease id as the DNS TTL, CVE-2025-58063).
//! - `vulcand`: `<prefix>/backends/<service>/servers/<instance>` → `{"URL":"http://10.0.0.5:8080"}`
//!   (vulcand ≥ 0.8).
//!
//! Pure: no I/O. Every key of one registration goes into one etcd transaction on one lease.

use std::net::Ipv6Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Layout, RegistrationKeys};

/// One etcd key and its value.
pub type Entry = (String, String);

/// Where and how registrations of one service are written: the layout with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    pub layout: Layout,
    /// Key prefix without a trailing `/`, e.g. `/services` or `traefik`.
    pub prefix: String,
    /// skydns: the DNS name of the service, e.g. `web.example.com`.
    pub domain: String,
    /// traefik: scheme of the server URL.
    pub scheme: String,
}

/// The address one instance announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    pub service: String,
    pub instance: String,
    pub host: String,
    pub port: u16,
    /// Written into skydns records as the DNS TTL.
    pub ttl: Duration,
}

/// A registration found in etcd by [`KeyLayout::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The service (for skydns: the domain, e.g. `web.example.com`).
    pub service: String,
    pub instance: String,
    pub host: String,
    pub port: u16,
}

/// JSON value of the seed and skydns layouts; field order is the documented one.
#[derive(Debug, Serialize, Deserialize)]
struct HostPort {
    host: String,
    port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl: Option<u64>,
}

/// JSON value of the vulcand layout.
#[derive(Debug, Serialize, Deserialize)]
struct VulcandServer {
    #[serde(rename = "URL")]
    url: String,
}

impl KeyLayout {
    /// The layout configured in `[registration]`.
    pub fn from_settings(settings: &RegistrationKeys) -> KeyLayout {
        KeyLayout {
            layout: settings.layout,
            prefix: settings.prefix.clone(),
            domain: settings.domain.clone(),
            scheme: settings.scheme.clone(),
        }
    }

    /// The keys and values of one registration, in write order.
    pub fn entries(&self, announce: &Announce) -> Vec<Entry> {
        let Announce {
            service,
            instance,
            host,
            port,
            ttl,
        } = announce;
        let prefix = &self.prefix;
        match self.layout {
            Layout::Seed => vec![(
                format!("{prefix}/{service}/{instance}"),
                host_port_json(host, *port, None),
            )],
            Layout::Traefik => vec![(
                format!("{prefix}/http/services/{service}/loadbalancer/servers/{instance}/url"),
                url(&self.scheme, host, *port),
            )],
            Layout::Skydns => vec![(
                format!("{prefix}/{}/{instance}", reversed_labels(&self.domain)),
                host_port_json(host, *port, Some(ttl.as_secs())),
            )],
            Layout::Vulcand => {
                let value = VulcandServer {
                    url: url("http", host, *port),
                };
                vec![(
                    format!("{prefix}/backends/{service}/servers/{instance}"),
                    serde_json::to_string(&value).unwrap_or_default(),
                )]
            }
        }
    }

    /// The prefix to list (with a range get) to find every registration of this layout.
    pub fn list_prefix(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// Reads one key/value found under [`KeyLayout::list_prefix`]; `None` when it is not a
    /// registration of this layout (e.g. a Traefik router key) or its value does not parse.
    pub fn parse(&self, key: &str, value: &str) -> Option<Listed> {
        let rest = key.strip_prefix(&self.list_prefix())?;
        let parts: Vec<&str> = rest.split('/').collect();
        let (service, instance, address) = match (self.layout, parts.as_slice()) {
            (Layout::Seed, [service, instance]) => {
                let value: HostPort = serde_json::from_str(value).ok()?;
                (service.to_string(), *instance, (value.host, value.port))
            }
            (
                Layout::Traefik,
                [
                    "http",
                    "services",
                    service,
                    "loadbalancer",
                    "servers",
                    instance,
                    "url",
                ],
            ) => (service.to_string(), *instance, parse_url(value)?),
            (Layout::Vulcand, ["backends", service, "servers", instance]) => {
                let value: VulcandServer = serde_json::from_str(value).ok()?;
                (service.to_string(), *instance, parse_url(&value.url)?)
            }
            (Layout::Skydns, [labels @ .., instance]) if !labels.is_empty() => {
                let value: HostPort = serde_json::from_str(value).ok()?;
                let domain: Vec<&str> = labels.iter().rev().copied().collect();
                (domain.join("."), *instance, (value.host, value.port))
            }
            _ => return None,
        };
        if instance.is_empty() || service.is_empty() {
            return None;
        }
        Some(Listed {
            service,
            instance: instance.to_string(),
            host: address.0,
            port: address.1,
        })
    }
}

/// `web.example.com` → `com/example/web`, SkyDNS's key order.
fn reversed_labels(domain: &str) -> String {
    let labels: Vec<&str> = domain
        .trim_end_matches('.')
        .split('.')
        .rev()
        .filter(|l| !l.is_empty())
        .collect();
    labels.join("/").to_ascii_lowercase()
}

fn host_port_json(host: &str, port: u16, ttl: Option<u64>) -> String {
    let value = HostPort {
        host: host.to_string(),
        port,
        ttl,
    };
    // Serialising two strings and integers cannot fail.
    serde_json::to_string(&value).unwrap_or_default()
}

/// `scheme://host:port`, with IPv6 addresses in brackets.
fn url(scheme: &str, host: &str, port: u16) -> String {
    if host.parse::<Ipv6Addr>().is_ok() {
        format!("{scheme}://[{host}]:{port}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

/// Host and port of a server URL; the scheme's default port when it names none.
fn parse_url(value: &str) -> Option<(String, u16)> {
    let url = url::Url::parse(value).ok()?;
    let host = url.host_str()?.trim_matches(['[', ']']).to_string();
    Some((host, url.port_or_known_default()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(layout: Layout, prefix: &str) -> KeyLayout {
        KeyLayout {
            layout,
            prefix: prefix.to_string(),
            domain: "web.example.com".to_string(),
            scheme: "http".to_string(),
        }
    }

    fn web_1() -> Announce {
        Announce {
            service: "web".into(),
            instance: "web-1".into(),
            host: "10.0.0.5".into(),
            port: 8080,
            ttl: Duration::from_secs(30),
        }
    }

    fn entries(layout: &KeyLayout) -> Vec<(String, String)> {
        layout.entries(&web_1())
    }

    fn expected(key: &str, value: &str) -> Vec<(String, String)> {
        vec![(key.to_string(), value.to_string())]
    }

    #[test]
    fn seed_layout_writes_the_seeds_host_port_json() {
        assert_eq!(
            entries(&layout(Layout::Seed, "/services")),
            expected("/services/web/web-1", r#"{"host":"10.0.0.5","port":8080}"#)
        );
    }

    #[test]
    fn traefik_layout_writes_a_named_server_url() {
        assert_eq!(
            entries(&layout(Layout::Traefik, "traefik")),
            expected(
                "traefik/http/services/web/loadbalancer/servers/web-1/url",
                "http://10.0.0.5:8080"
            )
        );
    }

    #[test]
    fn traefik_layout_uses_the_configured_scheme_and_prefix() {
        let mut l = layout(Layout::Traefik, "lb/traefik");
        l.scheme = "https".into();
        assert_eq!(
            entries(&l),
            expected(
                "lb/traefik/http/services/web/loadbalancer/servers/web-1/url",
                "https://10.0.0.5:8080"
            )
        );
    }

    #[test]
    fn skydns_layout_reverses_the_domain_and_writes_an_explicit_ttl() {
        assert_eq!(
            entries(&layout(Layout::Skydns, "/skydns")),
            expected(
                "/skydns/com/example/web/web-1",
                r#"{"host":"10.0.0.5","port":8080,"ttl":30}"#
            )
        );
    }

    #[test]
    fn vulcand_layout_writes_the_server_url_object() {
        assert_eq!(
            entries(&layout(Layout::Vulcand, "/vulcand")),
            expected(
                "/vulcand/backends/web/servers/web-1",
                r#"{"URL":"http://10.0.0.5:8080"}"#
            )
        );
    }

    #[test]
    fn ipv6_hosts_are_bracketed_in_urls_and_bare_in_json() {
        let mut announce = web_1();
        announce.host = "fd00::5".into();
        let traefik = layout(Layout::Traefik, "traefik").entries(&announce);
        assert_eq!(traefik[0].1, "http://[fd00::5]:8080");
        let seed = layout(Layout::Seed, "/services").entries(&announce);
        assert_eq!(seed[0].1, r#"{"host":"fd00::5","port":8080}"#);
    }

    #[test]
    fn parse_reads_back_what_each_layout_writes() {
        for (kind, prefix) in [
            (Layout::Seed, "/services"),
            (Layout::Traefik, "traefik"),
            (Layout::Skydns, "/skydns"),
            (Layout::Vulcand, "/vulcand"),
        ] {
            let l = layout(kind, prefix);
            let (key, value) = l.entries(&web_1()).remove(0);
            let listed = l.parse(&key, &value).expect("parses");
            let service = if kind == Layout::Skydns {
                "web.example.com"
            } else {
                "web"
            };
            assert_eq!(
                listed,
                Listed {
                    service: service.into(),
                    instance: "web-1".into(),
                    host: "10.0.0.5".into(),
                    port: 8080
                },
                "{kind:?}"
            );
        }
    }

    #[test]
    fn parse_skips_keys_that_are_not_registrations() {
        let traefik = layout(Layout::Traefik, "traefik");
        assert_eq!(
            traefik.parse("traefik/http/routers/web/rule", "Host(`x`)"),
            None
        );
        assert_eq!(
            traefik.parse(
                "traefik/http/services/web/loadbalancer/passhostheader",
                "true"
            ),
            None
        );
        let vulcand = layout(Layout::Vulcand, "/vulcand");
        assert_eq!(
            vulcand.parse("/vulcand/backends/web/backend", r#"{"Type":"http"}"#),
            None
        );
        let seed = layout(Layout::Seed, "/services");
        assert_eq!(seed.parse("/services/web/web-1", "not json"), None);
        assert_eq!(seed.parse("/other/web/web-1", "{}"), None);
    }
}
