//! A configuration read again while the daemon runs (SIGHUP), set against the one in force: which
//! changed keys take effect in the running process, and which wait for a restart and keep their
//! running value until then. Pure; `sidekick run` logs the outcome and hands the driver the rest.

use std::mem::discriminant;

use super::Settings;

/// Whether a key's new value can take effect in a running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// At once (registration, health), or at the next update pass or swap (update, swap).
    Live,
    /// Only in a new process: the key names what the process is (instance, state directory),
    /// or what it holds open (etcd connection and lease, slot client, metrics listener).
    AtRestart,
}

/// A reloaded configuration as it takes effect.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconciled {
    /// What to run with: the new settings, but each key that waits for a restart as it runs now.
    pub settings: Settings,
    /// Changed keys whose new values apply, in schema order.
    pub applied: Vec<&'static str>,
    /// Changed keys that keep their running value until a restart, in schema order.
    pub deferred: Vec<&'static str>,
}

impl Reconciled {
    /// Whether nothing changed at all.
    pub fn is_unchanged(&self) -> bool {
        self.applied.is_empty() && self.deferred.is_empty()
    }
}

/// Sets `read` against `running`: the changed keys, and the settings to run with.
pub fn reconcile(running: &Settings, read: Settings) -> Reconciled {
    let mut settings = read;
    let changed: Vec<&Key> = KEYS
        .iter()
        .filter(|key| (key.differs)(running, &settings))
        .collect();
    let mut applied = Vec::new();
    let mut deferred = Vec::new();
    for key in changed {
        match key.applies {
            Applies::Live => applied.push(key.name),
            Applies::AtRestart => {
                (key.keep)(&mut settings, running);
                deferred.push(key.name);
            }
        }
    }
    Reconciled {
        settings,
        applied,
        deferred,
    }
}

/// One configuration key: how it applies, whether two settings differ in it, and how to keep the
/// running value.
struct Key {
    name: &'static str,
    applies: Applies,
    differs: fn(&Settings, &Settings) -> bool,
    keep: fn(&mut Settings, &Settings),
}

/// A key that is one settings field.
macro_rules! field {
    ($name:literal, $applies:ident, $($path:ident).+) => {
        Key {
            name: $name,
            applies: Applies::$applies,
            differs: |a, b| a.$($path).+ != b.$($path).+,
            keep: |new, old| new.$($path).+ = old.$($path).+.clone(),
        }
    };
}

/// Every key, in schema order (the README's table).
const KEYS: &[Key] = &[
    field!("instance.unit", AtRestart, instance.unit),
    field!("instance.name", AtRestart, instance.name),
    field!("instance.service", AtRestart, instance.service),
    field!("etcd.endpoints", AtRestart, etcd.endpoints),
    field!("etcd.timeout", AtRestart, etcd.timeout),
    Key {
        name: "etcd.username",
        applies: Applies::AtRestart,
        differs: |a, b| {
            let user = |s: &Settings| s.etcd.auth.as_ref().map(|a| a.username.clone());
            user(a) != user(b)
        },
        keep: |new, old| new.etcd.auth = old.etcd.auth.clone(),
    },
    Key {
        name: "etcd.password_file",
        applies: Applies::AtRestart,
        differs: |a, b| {
            let file = |s: &Settings| s.etcd.auth.as_ref().map(|a| a.password_file.clone());
            file(a) != file(b)
        },
        keep: |new, old| new.etcd.auth = old.etcd.auth.clone(),
    },
    field!("etcd.ca_file", AtRestart, etcd.ca_file),
    Key {
        name: "etcd.cert_file",
        applies: Applies::AtRestart,
        differs: |a, b| {
            let file = |s: &Settings| s.etcd.client_cert.as_ref().map(|c| c.cert_file.clone());
            file(a) != file(b)
        },
        keep: |new, old| new.etcd.client_cert = old.etcd.client_cert.clone(),
    },
    Key {
        name: "etcd.key_file",
        applies: Applies::AtRestart,
        differs: |a, b| {
            let file = |s: &Settings| s.etcd.client_cert.as_ref().map(|c| c.key_file.clone());
            file(a) != file(b)
        },
        keep: |new, old| new.etcd.client_cert = old.etcd.client_cert.clone(),
    },
    // Turning registration on or off changes which registry runs.
    field!("registration.enabled", AtRestart, registration.enabled),
    field!("registration.layout", Live, registration.keys.layout),
    field!("registration.prefix", Live, registration.keys.prefix),
    field!("registration.domain", Live, registration.keys.domain),
    field!("registration.host", Live, registration.host),
    field!("registration.port", Live, registration.port),
    field!("registration.scheme", Live, registration.keys.scheme),
    // The lease is granted with it.
    field!("registration.ttl", AtRestart, registration.ttl),
    Key {
        name: "health.check",
        applies: Applies::Live,
        differs: |a, b| discriminant(&a.health.check) != discriminant(&b.health.check),
        keep: |new, old| new.health.check = old.health.check.clone(),
    },
    Key {
        name: "health.url",
        applies: Applies::Live,
        differs: |a, b| {
            let same_kind = discriminant(&a.health.check) == discriminant(&b.health.check);
            same_kind && a.health.check != b.health.check
        },
        keep: |new, old| new.health.check = old.health.check.clone(),
    },
    field!("health.interval", Live, health.interval),
    field!("health.timeout", Live, health.timeout),
    field!("health.rise", Live, health.rise),
    field!("health.fall", Live, health.fall),
    // Turning updates on or off starts or ends the update client, slots and unit control.
    field!("update.enabled", AtRestart, update.enabled),
    field!("update.server", Live, update.server),
    // The Omaha machine id is derived from the app id, and the slot group from both.
    field!("update.app_id", AtRestart, update.app_id),
    field!("update.track", AtRestart, update.track),
    field!("update.arch", Live, update.arch),
    field!("update.interval", Live, update.interval),
    field!("update.image", Live, update.image),
    field!("update.pin_digest", Live, update.pin_digest),
    field!("update.ca_file", Live, update.ca_file),
    field!("update.allow_insecure", Live, update.allow_insecure),
    field!(
        "update.allowed_repositories",
        Live,
        update.allowed_repositories
    ),
    field!("update.verify_digest", Live, update.verify_digest),
    field!("update.allow_major_jump", Live, update.allow_major_jump),
    // A held slot is bound to these; the stored limit (`sidekick slots set-max`) changes live.
    field!("slot.backend", AtRestart, slot.backend),
    field!("slot.max", AtRestart, slot.max),
    field!("slot.group", AtRestart, slot.group),
    field!("slot.ttl", AtRestart, slot.ttl),
    field!("slot.fleetlock_url", AtRestart, slot.fleetlock_url),
    field!("swap.drain", Live, swap.drain),
    field!("swap.start_timeout", Live, swap.start_timeout),
    field!("swap.verify_timeout", Live, swap.verify_timeout),
    field!("swap.prepull", Live, swap.prepull),
    // The pruner is set up at the start (`src/image/prune.rs`).
    field!("swap.prune", AtRestart, swap.prune),
    // The unit control writes the drop-in there, and the sandbox allows only that directory.
    field!("swap.dropin_dir", AtRestart, swap.dropin_dir),
    field!("swap.quadlet_dir", AtRestart, swap.quadlet_dir),
    // The unit control is set up at the start.
    field!("swap.handoff", AtRestart, swap.handoff),
    field!("daemon.state_dir", AtRestart, daemon.state_dir),
    field!("daemon.metrics", AtRestart, daemon.metrics),
    // The socket is bound at start.
    field!("daemon.control_socket", AtRestart, daemon.control_socket),
    // Like a policy stored with `sidekick rollout set`, from the next slot request: a swap under
    // way keeps the policy its request was judged by. A stored policy still wins.
    field!("rollout", Live, rollout),
];

#[cfg(test)]
mod tests;
