//! Per-instance identity sent to the Omaha update service: the app-specific machine id and the
//! boot id.
//!
//! Nebraska counts one instance per `machineid` and per app (reference §5.2–5.3), so two sidekicks
//! on one host must never share an id, and an id must survive restarts. The id is therefore a keyed
//! hash, in the spirit of systemd's `sd_id128_get_machine_app_specific()`: HMAC-SHA256 keyed with
//! the host's `/etc/machine-id`, over a domain tag, the Omaha app id and the app's systemd unit
//! name, truncated to 128 bits and written as 32 lowercase hex characters (never braced: Nebraska
//! treats braced UUIDs as fake instances).
//!
//! The unit name (`web@1.service`) is what tells two instances on one host apart; the instance
//! name derived from it is not, since `web@1` and `web-1` would share it. The app id is part of
//! the message so that one unit under two apps does not give correlatable ids; it is hashed in the
//! form Nebraska compares it (trimmed, braces stripped, lowercase), so spelling it differently does
//! not make a new instance. The raw host machine id never leaves the host.

use std::path::Path;

use ring::hmac;

use crate::omaha::protocol::normalise_app_id;

/// Where systemd keeps the host's machine id.
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";
/// Where the kernel exposes the random id of the current boot.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Domain tag hashed before the app id and instance name; changing it changes every id.
const MACHINE_ID_DOMAIN: &[u8] = b"sidekick omaha machine id v1";
/// Bytes of the HMAC kept for the id (32 hex characters).
const MACHINE_ID_BYTES: usize = 16;

/// Why an identity could not be derived.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The file that was read.
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// `/etc/machine-id` did not hold 32 hex characters.
    #[error("host machine id is not 32 hex characters: {0:?}")]
    InvalidMachineId(String),
    /// The boot id was not a UUID.
    #[error("boot id is not a UUID: {0:?}")]
    InvalidBootId(String),
    /// The unit name was empty.
    #[error("unit name is empty")]
    EmptyUnit,
}

/// Derives the app-specific machine id from the host machine id's text, the app id and the unit.
pub fn app_machine_id(
    host_machine_id: &str,
    app_id: &str,
    unit: &str,
) -> Result<String, IdentityError> {
    let host = host_machine_id.trim();
    if host.len() != 32 || !host.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(IdentityError::InvalidMachineId(host.to_owned()));
    }
    if unit.is_empty() {
        return Err(IdentityError::EmptyUnit);
    }
    let app_id = normalise_app_id(app_id);
    let key = hmac::Key::new(hmac::HMAC_SHA256, host.to_ascii_lowercase().as_bytes());
    let mut context = hmac::Context::with_key(&key);
    // Length-prefixed fields, so ("ab", "c") and ("a", "bc") never collide.
    for field in [MACHINE_ID_DOMAIN, app_id.as_bytes(), unit.as_bytes()] {
        context.update(&(field.len() as u64).to_be_bytes());
        context.update(field);
    }
    let tag = context.sign();
    Ok(hex_lower(&tag.as_ref()[..MACHINE_ID_BYTES]))
}

/// Reads the host machine id from `machine_id_path` and derives the app-specific machine id.
pub fn read_app_machine_id(
    machine_id_path: &Path,
    app_id: &str,
    unit: &str,
) -> Result<String, IdentityError> {
    let host = read_to_string(machine_id_path)?;
    app_machine_id(&host, app_id, unit)
}

/// Formats a kernel boot id as the braced, lowercase UUID the `bootid` attribute carries.
pub fn braced_boot_id(raw: &str) -> Result<String, IdentityError> {
    let id = raw.trim().trim_start_matches('{').trim_end_matches('}');
    let groups: Vec<&str> = id.split('-').collect();
    let lengths_ok = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]);
    let hex_ok = groups
        .iter()
        .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
    if !lengths_ok || !hex_ok {
        return Err(IdentityError::InvalidBootId(raw.trim().to_owned()));
    }
    Ok(format!("{{{}}}", id.to_ascii_lowercase()))
}

/// Reads the boot id from `boot_id_path` and formats it as `{uuid}`.
pub fn read_boot_id(boot_id_path: &Path) -> Result<String, IdentityError> {
    braced_boot_id(&read_to_string(boot_id_path)?)
}

fn read_to_string(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "9ce7a919806c4f3785eb6d260345ac4a";
    const APP: &str = "6a6e5b4c-0000-4000-8000-00000000beef";

    fn is_32_lower_hex(id: &str) -> bool {
        id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    #[test]
    fn machine_id_is_32_lowercase_hex_without_braces() {
        let id = app_machine_id(HOST, APP, "web@1.service").unwrap();
        assert!(is_32_lower_hex(&id), "{id}");
    }

    #[test]
    fn machine_id_is_stable_across_calls_and_trailing_newline() {
        let a = app_machine_id(HOST, APP, "web@1.service").unwrap();
        let b = app_machine_id(&format!("{HOST}\n"), APP, "web@1.service").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn two_instances_on_one_host_get_distinct_ids() {
        let a = app_machine_id(HOST, APP, "web@1.service").unwrap();
        let b = app_machine_id(HOST, APP, "web@2.service").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn same_unit_under_another_app_or_host_gets_another_id() {
        let base = app_machine_id(HOST, APP, "web@1.service").unwrap();
        assert_ne!(
            base,
            app_machine_id(HOST, "other-app", "web@1.service").unwrap()
        );
        let other_host = "0123456789abcdef0123456789abcdef";
        assert_ne!(
            base,
            app_machine_id(other_host, APP, "web@1.service").unwrap()
        );
        assert_ne!(base, HOST, "the host id must not leak");
    }

    #[test]
    fn units_whose_instance_names_coincide_get_distinct_ids() {
        let a = app_machine_id(HOST, APP, "web@1.service").unwrap();
        let b = app_machine_id(HOST, APP, "web-1.service").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn app_id_spelled_as_nebraska_would_accept_it_gives_the_same_id() {
        let plain = app_machine_id(HOST, APP, "web@1.service").unwrap();
        let braced = format!("{{{}}}", APP.to_ascii_uppercase());
        assert_eq!(
            plain,
            app_machine_id(HOST, &braced, "web@1.service").unwrap()
        );
    }

    #[test]
    fn field_boundaries_do_not_collide() {
        let a = app_machine_id(HOST, "ab", "c").unwrap();
        let b = app_machine_id(HOST, "a", "bc").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn rejects_malformed_host_id_and_empty_unit() {
        assert!(app_machine_id("", APP, "web@1.service").is_err());
        assert!(app_machine_id("not-hex-not-hex-not-hex-not-hex!", APP, "web@1.service").is_err());
        assert!(app_machine_id(HOST, APP, "").is_err());
    }

    #[test]
    fn reads_machine_id_from_an_injected_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine-id");
        std::fs::write(&path, format!("{HOST}\n")).unwrap();
        let from_file = read_app_machine_id(&path, APP, "web@1.service").unwrap();
        assert_eq!(
            from_file,
            app_machine_id(HOST, APP, "web@1.service").unwrap()
        );
        assert!(read_app_machine_id(&dir.path().join("missing"), APP, "web@1.service").is_err());
    }

    #[test]
    fn boot_id_is_braced_and_lowercase() {
        let id = braced_boot_id("965FB4C5-AD3E-4EB7-A4C2-CA0C0E31EC84\n").unwrap();
        assert_eq!(id, "{965fb4c5-ad3e-4eb7-a4c2-ca0c0e31ec84}");
        assert!(braced_boot_id("nonsense").is_err());
    }

    #[test]
    fn reads_boot_id_from_an_injected_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot_id");
        std::fs::write(&path, "965fb4c5-ad3e-4eb7-a4c2-ca0c0e31ec84\n").unwrap();
        assert_eq!(
            read_boot_id(&path).unwrap(),
            "{965fb4c5-ad3e-4eb7-a4c2-ca0c0e31ec84}"
        );
    }
}
