//! Which reloaded keys apply live and which wait for a restart, key by key.

use std::num::NonZeroU32;
use std::time::Duration;

use url::Url;

use super::*;
use crate::config::{
    ClientCert, DaemonSettings, EtcdAuth, EtcdOptions, HealthCheck, HealthSettings,
    InstanceSettings, Layout, RegistrationKeys, RegistrationSettings, SlotBackend, SlotOptions,
    SwapSettings, UpdateSettings,
};

/// The embedded example, with an HTTP check, etcd credentials and a client certificate.
fn running() -> Settings {
    let mut settings = crate::config::load_embedded(std::path::Path::new("/"))
        .expect("embedded configuration")
        .settings;
    settings.health.check = HealthCheck::Http {
        url: url("http://127.0.0.1:8080/"),
    };
    settings.etcd.auth = Some(EtcdAuth {
        username: "sidekick".into(),
        password_file: "/etc/sidekick/etcd-password".into(),
    });
    settings.etcd.client_cert = Some(ClientCert {
        cert_file: "/etc/sidekick/client.pem".into(),
        key_file: "/etc/sidekick/client-key.pem".into(),
    });
    settings
}

fn url(text: &str) -> Url {
    Url::parse(text).unwrap()
}

/// Names every settings field: a new field does not compile here until it has a row in
/// [`changes`] and a place in `KEYS` saying whether it applies live.
fn every_field(settings: &Settings) {
    let Settings {
        instance:
            InstanceSettings {
                unit: _,
                name: _,
                service: _,
            },
        etcd:
            EtcdOptions {
                endpoints: _,
                timeout: _,
                auth: _,
                ca_file: _,
                client_cert: _,
            },
        registration:
            RegistrationSettings {
                enabled: _,
                keys:
                    RegistrationKeys {
                        layout: _,
                        prefix: _,
                        domain: _,
                        scheme: _,
                    },
                host: _,
                port: _,
                ttl: _,
            },
        health:
            HealthSettings {
                check: _,
                interval: _,
                timeout: _,
                rise: _,
                fall: _,
            },
        update:
            UpdateSettings {
                enabled: _,
                server: _,
                app_id: _,
                track: _,
                arch: _,
                interval: _,
                image: _,
                pin_digest: _,
                ca_file: _,
                allow_insecure: _,
                allowed_repositories: _,
                verify_digest: _,
                allow_major_jump: _,
            },
        slot:
            SlotOptions {
                backend: _,
                max: _,
                group: _,
                ttl: _,
                fleetlock_url: _,
            },
        swap:
            SwapSettings {
                drain: _,
                start_timeout: _,
                verify_timeout: _,
                prepull: _,
                prune: _,
                dropin_dir: _,
                quadlet_dir: _,
                handoff: _,
            },
        daemon:
            DaemonSettings {
                state_dir: _,
                metrics: _,
                control_socket: _,
            },
        rollout: _,
    } = settings;
}

type Change = fn(&mut Settings);

/// One change per key, and how it must apply.
fn changes() -> Vec<(&'static str, Applies, Change)> {
    use Applies::{AtRestart, Live};
    vec![
        ("instance.unit", AtRestart, |s| {
            s.instance.unit = "api@2.service".into()
        }),
        ("instance.name", AtRestart, |s| {
            s.instance.name = "api-2".into()
        }),
        ("instance.service", AtRestart, |s| {
            s.instance.service = "api".into()
        }),
        ("etcd.endpoints", AtRestart, |s| {
            s.etcd.endpoints = vec![url("http://10.0.0.9:2379")]
        }),
        ("etcd.timeout", AtRestart, |s| {
            s.etcd.timeout = Duration::from_secs(9)
        }),
        ("etcd.username", AtRestart, |s| {
            s.etcd
                .auth
                .iter_mut()
                .for_each(|a| a.username = "root".into())
        }),
        ("etcd.password_file", AtRestart, |s| {
            s.etcd
                .auth
                .iter_mut()
                .for_each(|a| a.password_file = "/etc/pw".into())
        }),
        ("etcd.ca_file", AtRestart, |s| {
            s.etcd.ca_file = Some("/etc/ca.pem".into())
        }),
        ("etcd.cert_file", AtRestart, |s| {
            s.etcd
                .client_cert
                .iter_mut()
                .for_each(|c| c.cert_file = "/etc/c.pem".into())
        }),
        ("etcd.key_file", AtRestart, |s| {
            s.etcd
                .client_cert
                .iter_mut()
                .for_each(|c| c.key_file = "/etc/k.pem".into())
        }),
        ("registration.enabled", AtRestart, |s| {
            s.registration.enabled = false
        }),
        ("registration.layout", Live, |s| {
            s.registration.keys.layout = Layout::Traefik
        }),
        ("registration.prefix", Live, |s| {
            s.registration.keys.prefix = "/apps".into()
        }),
        ("registration.domain", Live, |s| {
            s.registration.keys.domain = "web.example.com".into()
        }),
        ("registration.host", Live, |s| {
            s.registration.host = Some("10.0.0.7".into())
        }),
        ("registration.port", Live, |s| s.registration.port = 8081),
        ("registration.scheme", Live, |s| {
            s.registration.keys.scheme = "https".into()
        }),
        ("registration.ttl", AtRestart, |s| {
            s.registration.ttl = Duration::from_secs(60)
        }),
        ("health.check", Live, |s| {
            s.health.check = HealthCheck::Tcp {
                address: "127.0.0.1:8080".into(),
            }
        }),
        ("health.url", Live, |s| {
            s.health.check = HealthCheck::Http {
                url: url("http://127.0.0.1:8080/health"),
            }
        }),
        ("health.interval", Live, |s| {
            s.health.interval = Duration::from_secs(7)
        }),
        ("health.timeout", Live, |s| {
            s.health.timeout = Duration::from_secs(3)
        }),
        ("health.rise", Live, |s| {
            s.health.rise = NonZeroU32::new(5).unwrap()
        }),
        ("health.fall", Live, |s| {
            s.health.fall = NonZeroU32::new(5).unwrap()
        }),
        ("update.enabled", AtRestart, |s| s.update.enabled = false),
        ("update.server", Live, |s| {
            s.update.server = Some(url("http://10.0.0.8/v1/update/"))
        }),
        ("update.app_id", AtRestart, |s| {
            s.update.app_id = "other".into()
        }),
        ("update.track", AtRestart, |s| {
            s.update.track = "beta".into()
        }),
        ("update.arch", Live, |s| s.update.arch = "arm64".into()),
        ("update.interval", Live, |s| {
            s.update.interval = Duration::from_secs(60)
        }),
        ("update.image", Live, |s| {
            s.update.image = "{codebase}".into()
        }),
        ("update.pin_digest", Live, |s| s.update.pin_digest = true),
        ("update.ca_file", Live, |s| {
            s.update.ca_file = Some("/etc/ca.pem".into())
        }),
        ("update.allow_insecure", Live, |s| {
            s.update.allow_insecure = true
        }),
        ("update.allowed_repositories", Live, |s| {
            s.update.allowed_repositories = vec!["registry.example.com/web".into()]
        }),
        ("update.verify_digest", Live, |s| {
            s.update.verify_digest = true
        }),
        ("update.allow_major_jump", Live, |s| {
            s.update.allow_major_jump = true
        }),
        ("slot.backend", AtRestart, |s| {
            s.slot.backend = SlotBackend::None
        }),
        ("slot.max", AtRestart, |s| {
            s.slot.max = NonZeroU32::new(3).unwrap()
        }),
        ("slot.group", AtRestart, |s| {
            s.slot.group = "other/stable".into()
        }),
        ("slot.ttl", AtRestart, |s| {
            s.slot.ttl = Duration::from_secs(60)
        }),
        ("slot.fleetlock_url", AtRestart, |s| {
            s.slot.fleetlock_url = Some(url("http://10.0.0.6/"))
        }),
        ("swap.drain", Live, |s| {
            s.swap.drain = Duration::from_secs(9)
        }),
        ("swap.start_timeout", Live, |s| {
            s.swap.start_timeout = Duration::from_secs(9)
        }),
        ("swap.verify_timeout", Live, |s| {
            s.swap.verify_timeout = Duration::from_secs(9)
        }),
        ("swap.prepull", Live, |s| s.swap.prepull = Vec::new()),
        ("swap.prune", AtRestart, |s| s.swap.prune = Vec::new()),
        ("swap.dropin_dir", AtRestart, |s| {
            s.swap.dropin_dir = "/run/systemd/system".into()
        }),
        ("swap.quadlet_dir", AtRestart, |s| {
            s.swap.quadlet_dir = "/run/containers/systemd".into()
        }),
        ("swap.handoff", AtRestart, |s| {
            s.swap.handoff = crate::config::Handoff::EnvironmentFile
        }),
        ("daemon.state_dir", AtRestart, |s| {
            s.daemon.state_dir = "/srv/sidekick".into()
        }),
        ("daemon.metrics", AtRestart, |s| {
            s.daemon.metrics = Some("127.0.0.1:9527".parse().unwrap())
        }),
        ("daemon.control_socket", AtRestart, |s| {
            s.daemon.control_socket = Some("/run/web/ctl.sock".into())
        }),
        ("rollout", Live, |s| s.rollout.canary = 2),
    ]
}

#[test]
fn the_same_settings_again_change_nothing() {
    let reconciled = reconcile(&running(), running());
    assert!(reconciled.is_unchanged(), "{reconciled:?}");
    assert_eq!(reconciled.settings, running());
}

#[test]
fn each_key_changed_alone_is_reported_alone_as_live_or_waiting_for_a_restart() {
    every_field(&running());
    let rows = changes();
    let names: Vec<&str> = rows.iter().map(|(name, ..)| *name).collect();
    let listed: Vec<&str> = KEYS.iter().map(|key| key.name).collect();
    assert_eq!(names, listed, "one row per key, in schema order");
    for (name, applies, change) in rows {
        let mut read = running();
        change(&mut read);
        assert_ne!(read, running(), "{name}: the change changes nothing");
        let reconciled = reconcile(&running(), read.clone());
        match applies {
            Applies::Live => {
                assert_eq!(reconciled.applied, [name], "{name}");
                assert!(reconciled.deferred.is_empty(), "{name}: {reconciled:?}");
                assert_eq!(reconciled.settings, read, "{name}: the new value applies");
            }
            Applies::AtRestart => {
                assert_eq!(reconciled.deferred, [name], "{name}");
                assert!(reconciled.applied.is_empty(), "{name}: {reconciled:?}");
                assert_eq!(
                    reconciled.settings,
                    running(),
                    "{name}: the running value stays"
                );
            }
        }
    }
}

#[test]
fn live_keys_take_their_new_values_while_keys_waiting_for_a_restart_keep_theirs() {
    let mut read = running();
    read.registration.port = 9090;
    read.health.interval = Duration::from_secs(5);
    read.etcd.endpoints = vec![url("http://10.0.0.9:2379")];
    read.daemon.state_dir = "/srv/sidekick".into();
    let reconciled = reconcile(&running(), read);
    assert_eq!(reconciled.applied, ["registration.port", "health.interval"]);
    assert_eq!(reconciled.deferred, ["etcd.endpoints", "daemon.state_dir"]);
    let settings = reconciled.settings;
    assert_eq!(settings.registration.port, 9090);
    assert_eq!(settings.health.interval, Duration::from_secs(5));
    assert_eq!(settings.etcd.endpoints, running().etcd.endpoints);
    assert_eq!(settings.daemon.state_dir, running().daemon.state_dir);
}

#[test]
fn a_switch_of_the_check_kind_is_the_check_and_a_new_target_is_the_url() {
    let mut tcp = running();
    tcp.health.check = HealthCheck::Tcp {
        address: "127.0.0.1:8080".into(),
    };
    assert_eq!(reconcile(&running(), tcp.clone()).applied, ["health.check"]);
    let mut none = running();
    none.health.check = HealthCheck::None;
    assert_eq!(reconcile(&running(), none).applied, ["health.check"]);
    let mut moved = tcp.clone();
    moved.health.check = HealthCheck::Tcp {
        address: "127.0.0.1:9090".into(),
    };
    assert_eq!(reconcile(&tcp, moved).applied, ["health.url"]);
}

#[test]
fn the_readme_lists_each_key_under_the_way_it_applies() {
    let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
    let section = readme
        .split_once("### Reload")
        .and_then(|(_, rest)| rest.split("\n## ").next())
        .expect("README has a Reload section");
    let item = |head: &str| {
        let start = section
            .find(head)
            .unwrap_or_else(|| panic!("no {head} item"));
        let rest = &section[start..];
        let end = rest[head.len()..]
            .find("\n- ")
            .map_or(rest.len(), |i| i + head.len());
        rest[..end].split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let (live, restart) = (item("- **live**"), item("- **after a restart**"));
    for key in KEYS {
        let quoted = format!("`{}`", key.name);
        let (right, wrong) = match key.applies {
            Applies::Live => (&live, &restart),
            Applies::AtRestart => (&restart, &live),
        };
        assert!(right.contains(&quoted), "{quoted} missing from its item");
        assert!(
            !wrong.contains(&quoted),
            "{quoted} listed under the other item"
        );
    }
}
