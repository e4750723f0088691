//! `sidekick etcd-role [--group G]`: the `etcdctl` commands that create a least-privilege etcd
//! role and user for this instance, and an operator role. The instance's role reaches only its
//! own registration keys (and their duplicate records), its instance record, its group's slot,
//! queue, slot-duplicate and rollout-state prefixes and halt key, and reads its group's stored
//! limit, policy and pause marker; another tenant's group or registration is out of reach. The
//! operator's role (`slots set-max`, `slots resume`, `status`, `rollout`) covers all of
//! `/sidekick/` and reads the registrations. Nothing is sent to etcd: an administrator runs the
//! printed commands with the root user (`ETCDCTL_USER`).
//!
//! Groups are key prefixes: a group named like the start of another (`web` and `web/stable`)
//! would reach the other's slots, so give tenants groups that do not nest.

use std::process::ExitCode;

use crate::config::{ConfigSources, Settings};
use crate::etcd::duplicate::record_key;
use crate::registry::{Announce, KeyLayout, record};
use crate::rollout::store::{paused_key, policy_key, rollouts_prefix};
use crate::slot::halt::halt_key;
use crate::slot::keys::{group_prefix, limit_key, queue_prefix};

/// The operator's role and user name.
pub const OPERATOR_ROLE: &str = "sidekick-operator";

/// What a role may do with a key or a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// One `etcdctl role grant-permission`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub access: Access,
    pub key: String,
    /// The key is a prefix (`--prefix=true`).
    pub prefix: bool,
}

impl Grant {
    fn key(access: Access, key: String) -> Grant {
        Grant {
            access,
            key,
            prefix: false,
        }
    }

    fn prefix(access: Access, key: String) -> Grant {
        Grant {
            access,
            key,
            prefix: true,
        }
    }
}

/// The role name of `instance` in `group`: `sidekick-<group>-<instance>` with every character
/// outside `[A-Za-z0-9._-]` as `-`.
pub fn instance_role(group: &str, instance: &str) -> String {
    let name: String = format!("sidekick-{group}-{instance}")
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .collect();
    name
}

/// Everything the instance of `settings` needs in `group`, and nothing of other groups.
pub fn instance_grants(settings: &Settings, group: &str) -> Vec<Grant> {
    use Access::{Read, ReadWrite};
    let registration = &settings.registration;
    let announce = Announce {
        service: settings.instance.service.clone(),
        instance: settings.instance.name.clone(),
        // The keys do not depend on the address.
        host: "0.0.0.0".into(),
        port: registration.port,
        ttl: registration.ttl,
    };
    let mut grants = Vec::new();
    for (key, _) in KeyLayout::from_settings(&registration.keys).entries(&announce) {
        grants.push(Grant::key(ReadWrite, record_key(&key)));
        grants.push(Grant::key(ReadWrite, key));
    }
    grants.extend([
        Grant::key(ReadWrite, record::key(group, &settings.instance.name)),
        Grant::prefix(ReadWrite, group_prefix(group)),
        Grant::prefix(ReadWrite, record_key(&group_prefix(group))),
        Grant::prefix(ReadWrite, queue_prefix(group)),
        Grant::key(ReadWrite, halt_key(group)),
        Grant::prefix(ReadWrite, rollouts_prefix(group)),
        Grant::key(Read, limit_key(group)),
        Grant::key(Read, policy_key(group)),
        Grant::key(Read, paused_key(group)),
    ]);
    grants
}

/// The operator's grants: all of `/sidekick/`, and reading the registrations.
pub fn operator_grants(settings: &Settings) -> Vec<Grant> {
    let registrations = KeyLayout::from_settings(&settings.registration.keys).list_prefix();
    vec![
        Grant::prefix(Access::ReadWrite, "/sidekick/".into()),
        Grant::prefix(Access::Read, registrations),
    ]
}

/// A shell word: single-quoted unless it is plainly safe.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-%:=".contains(c));
    match plain {
        true => word.to_string(),
        false => format!("'{}'", word.replace('\'', r"'\''")),
    }
}

/// The `etcdctl` lines creating `role` with `grants` and a user of the same name holding it;
/// the user's password is read from `password_file` when given, else from `$ETCD_NEW_PASSWORD`.
pub fn role_script(role: &str, grants: &[Grant], password_file: Option<&str>) -> Vec<String> {
    let role_q = quote(role);
    let mut lines = vec![format!("etcdctl role add {role_q}")];
    for grant in grants {
        let access = match grant.access {
            Access::Read => "read",
            Access::ReadWrite => "readwrite",
        };
        let prefix = if grant.prefix { " --prefix=true" } else { "" };
        lines.push(format!(
            "etcdctl role grant-permission{prefix} {role_q} {access} {}",
            quote(&grant.key)
        ));
    }
    let password = match password_file {
        Some(file) => format!("\"$(cat {})\"", quote(file)),
        None => "\"$ETCD_NEW_PASSWORD\"".to_string(),
    };
    lines.push(format!(
        "etcdctl user add {role_q} --interactive=false --new-user-password={password}"
    ));
    lines.push(format!("etcdctl user grant-role {role_q} {role_q}"));
    lines
}

/// The whole script for the instance of `settings` in `group`, then the operator's.
pub fn script(settings: &Settings, group: &str) -> String {
    let role = instance_role(group, &settings.instance.name);
    let password = settings
        .etcd
        .auth
        .as_ref()
        .map(|auth| auth.password_file.display().to_string());
    let mut out = format!(
        "# etcd role and user {role} for instance {} of group {group} (run with the root user,\n\
         # e.g. ETCDCTL_USER=root ETCDCTL_ENDPOINTS=...); set etcd.username = \"{role}\"\n",
        settings.instance.name
    );
    for line in role_script(
        &role,
        &instance_grants(settings, group),
        password.as_deref(),
    ) {
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&format!(
        "# operator role and user {OPERATOR_ROLE} (slots set-max, slots resume, status, rollout);\n\
         # its password from $ETCD_NEW_PASSWORD\n"
    ));
    for line in role_script(OPERATOR_ROLE, &operator_grants(settings), None) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Prints the script for this configuration; `group` overrides `slot.group`.
pub fn run(sources: &ConfigSources, group: Option<&str>) -> ExitCode {
    let loaded = match super::load_config(sources) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let settings = &loaded.settings;
    let group = group.unwrap_or(&settings.slot.group);
    if group.is_empty() || group.starts_with('/') || group.ends_with('/') {
        eprintln!(
            "sidekick: no usable slot group {group:?}: pass --group, or set slot.group or \
             update.app_id"
        );
        return ExitCode::from(super::EXIT_CONFIG);
    }
    print!("{}", script(settings, group));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(
            quote("/sidekick/queue/web%2Fstable/"),
            "/sidekick/queue/web%2Fstable/"
        );
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn role_names_keep_to_a_safe_alphabet() {
        assert_eq!(
            instance_role("web/stable", "web-1"),
            "sidekick-web-stable-web-1"
        );
    }

    #[test]
    fn a_script_creates_the_role_grants_it_and_binds_a_user() {
        let grants = [
            Grant::key(Access::ReadWrite, "/services/web/web-1".into()),
            Grant::prefix(Access::Read, "/sidekick/x/".into()),
        ];
        let lines = role_script("r", &grants, Some("/etc/sidekick/etcd.pw"));
        assert_eq!(
            lines,
            [
                "etcdctl role add r",
                "etcdctl role grant-permission r readwrite /services/web/web-1",
                "etcdctl role grant-permission --prefix=true r read /sidekick/x/",
                "etcdctl user add r --interactive=false --new-user-password=\"$(cat /etc/sidekick/etcd.pw)\"",
                "etcdctl user grant-role r r",
            ]
        );
    }
}
