//! Turning merged input into validated settings: the whole [`Settings`] for the daemon, or only
//! the part one command reads ([`StatusSettings`], [`SlotsSettings`]). Each section has one
//! function, shared by all of them; every check names the key and where its value came from.

use std::net::{IpAddr, SocketAddr};

mod check;
mod etcd;
mod registration;
mod rollout;
mod slot;
mod unit;
mod update;

use super::ConfigError;
use super::inputs::{DaemonInput, Input, SwapInput};
use super::origin::Origins;
use super::settings::*;
use check::Check;
pub use etcd::etcd_insecure_warning;
use slot::GroupName;
pub use update::insecure_warning;

/// Settings validated from the merged input: only the sections they read are checked, so a
/// command is not refused for a key it never uses.
pub trait Validated: Sized {
    /// Validates the sections this reads; `origins` lets errors name the file and line.
    fn validate(input: Input, origins: &Origins) -> Result<Self, ConfigError>;
    /// The etcd settings, whose secret files are checked when loading.
    fn etcd(&self) -> &EtcdOptions;
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

impl Validated for Settings {
    /// Every section is checked, so one run names every error it can find (a section that
    /// depends on one that failed is left out: its errors would only repeat the first).
    fn validate(input: Input, origins: &Origins) -> Result<Settings, ConfigError> {
        let check = Check { origins };
        let mut errors = Vec::new();
        let instance = keep(&mut errors, unit::validate(&check, input.instance));
        let etcd = keep(&mut errors, etcd::validate(&check, input.etcd));
        let registration = keep(
            &mut errors,
            registration::validate(&check, input.registration),
        );
        let health = registration.as_ref().and_then(|registration| {
            keep(
                &mut errors,
                registration::health(&check, input.health, registration.port),
            )
        });
        let update = keep(&mut errors, update::validate(&check, input.update));
        let slot = match (&instance, &update) {
            (Some(instance), Some(update)) => {
                let named_by = GroupName {
                    name: match update.app_id.as_str() {
                        "" => &instance.service,
                        app_id => app_id,
                    },
                    track: &update.track,
                };
                keep(&mut errors, slot::validate(&check, input.slot, named_by))
            }
            _ => None,
        };
        let swap = keep(&mut errors, swap(&check, input.swap));
        let daemon = instance
            .as_ref()
            .and_then(|instance| keep(&mut errors, daemon(&check, input.daemon, &instance.unit)));
        let rollout = keep(
            &mut errors,
            super::rollout::validate(&input.rollout, origins),
        );
        match (
            instance,
            etcd,
            registration,
            health,
            update,
            slot,
            swap,
            daemon,
            rollout,
        ) {
            (
                Some(instance),
                Some(etcd),
                Some(registration),
                Some(health),
                Some(update),
                Some(slot),
                Some(swap),
                Some(daemon),
                Some(rollout),
            ) if errors.is_empty() => Ok(Settings {
                instance,
                etcd,
                registration,
                health,
                update,
                slot,
                swap,
                daemon,
                rollout,
            }),
            _ => Err(ConfigError::from_all(errors)),
        }
    }

    fn etcd(&self) -> &EtcdOptions {
        &self.etcd
    }
}

impl Validated for StatusSettings {
    fn validate(input: Input, origins: &Origins) -> Result<StatusSettings, ConfigError> {
        let check = Check { origins };
        Ok(StatusSettings {
            etcd: etcd::validate(&check, input.etcd)?,
            registration: registration::keys(&check, &input.registration)?,
        })
    }

    fn etcd(&self) -> &EtcdOptions {
        &self.etcd
    }
}

impl Validated for UpdateCheckSettings {
    fn validate(input: Input, origins: &Origins) -> Result<UpdateCheckSettings, ConfigError> {
        let check = Check { origins };
        let instance = unit::validate(&check, input.instance)?;
        let daemon = daemon(&check, input.daemon, &instance.unit)?;
        Ok(UpdateCheckSettings {
            etcd: etcd::validate(&check, input.etcd)?,
            update: update::validate(&check, input.update).map_err(|err| err.to_string()),
            handoff: input.swap.handoff,
            instance,
            daemon,
        })
    }

    fn etcd(&self) -> &EtcdOptions {
        &self.etcd
    }
}

impl Validated for SlotsSettings {
    /// The instance section is read only when it names a unit: its service names the default
    /// group when there is no app id.
    fn validate(input: Input, origins: &Origins) -> Result<SlotsSettings, ConfigError> {
        let check = Check { origins };
        let etcd = etcd::validate(&check, input.etcd)?;
        let (app_id, track) = update::app(&check, &input.update)?;
        let service = match input.instance.unit {
            Some(_) => Some(unit::validate(&check, input.instance)?.service),
            None => None,
        };
        let name = match (app_id.as_str(), &service) {
            ("", None) => None,
            ("", Some(service)) => Some(service.as_str()),
            (app_id, _) => Some(app_id),
        };
        let named_by = name.map(|name| GroupName {
            name,
            track: &track,
        });
        Ok(SlotsSettings {
            etcd,
            backend: input.slot.backend,
            fleetlock_url: slot::fleetlock_url(&check, &input.slot)?,
            group: slot::group(&check, &input.slot, named_by)?,
            state_dir: check.absolute("daemon.state_dir", input.daemon.state_dir)?,
        })
    }

    fn etcd(&self) -> &EtcdOptions {
        &self.etcd
    }
}

/// The value, or `None` with its error added to `errors`.
fn keep<T>(errors: &mut Vec<ConfigError>, result: Result<T, ConfigError>) -> Option<T> {
    result.map_err(|err| errors.push(err)).ok()
}

/// Validates `[swap]`.
fn swap(check: &Check, swap: SwapInput) -> Result<SwapSettings, ConfigError> {
    for (key, argv) in [("swap.prepull", &swap.prepull), ("swap.prune", &swap.prune)] {
        if argv
            .first()
            .is_some_and(|program| program.trim().is_empty())
        {
            return Err(check.fail(key, "the first element must name a program"));
        }
        if let Some(name) = argv
            .iter()
            .find_map(|arg| unknown_placeholder(arg, &["image"]))
        {
            return Err(check.fail(
                key,
                format!("unknown placeholder `{name}`: only {{image}} is known"),
            ));
        }
    }
    // Without `{image}` every run would remove the same thing, not the image it is given.
    if !swap.prune.is_empty() && !swap.prune.iter().any(|arg| arg.contains("{image}")) {
        return Err(check.fail(
            "swap.prune",
            "names no {image}: which image would it remove?",
        ));
    }
    // The template's command is fixed (root's, in sidekick-prepull@.service): another argv here
    // would be silently ignored.
    let default_prepull = ["docker", "pull", "{image}"];
    if swap.handoff == Handoff::EnvironmentFile
        && !swap.prepull.is_empty()
        && swap.prepull != default_prepull
    {
        return Err(check.fail(
            "swap.prepull",
            "with swap.handoff = \"environment-file\" the pre-pull is the root-owned \
             sidekick-prepull@.service: change its ExecStart= in a drop-in of that unit, and \
             leave swap.prepull at its default or set it to [] for no pre-pull",
        ));
    }
    Ok(SwapSettings {
        handoff: swap.handoff,
        drain: check.duration("swap.drain", swap.drain)?,
        start_timeout: check.duration("swap.start_timeout", swap.start_timeout)?,
        verify_timeout: check.duration("swap.verify_timeout", swap.verify_timeout)?,
        prepull: swap.prepull,
        prune: swap.prune,
        dropin_dir: check.absolute("swap.dropin_dir", swap.dropin_dir)?,
        quadlet_dir: check.absolute("swap.quadlet_dir", swap.quadlet_dir)?,
    })
}

/// Validates `[daemon]`; the control socket's default lives under the runtime directory, named
/// for `unit`.
fn daemon(check: &Check, daemon: DaemonInput, unit: &str) -> Result<DaemonSettings, ConfigError> {
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
                .join(unit.strip_suffix(".service").unwrap_or(unit))
                .join(CONTROL_SOCKET_FILE),
        ),
        Some(path) if path.as_os_str().is_empty() => None,
        Some(path) => Some(check.socket_path("daemon.control_socket", path)?),
    };
    Ok(DaemonSettings {
        state_dir: check.absolute("daemon.state_dir", daemon.state_dir)?,
        metrics,
        control_socket,
    })
}
