//! Warnings about secret files that others can read: `etcd.password_file` and `etcd.key_file`
//! with any group or other permission bit set, as ssh warns about an unprotected private key.
//! They are warnings, not errors: the file still works, and a shared secret may be intended.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::EtcdOptions;

/// Permission bits that let someone other than the owner at a secret.
const NOT_OWNER_BITS: u32 = 0o077;

/// One warning per secret file that group or others can access; files that cannot be read yet
/// are left to the code that opens them.
pub fn secret_file_warnings(etcd: &EtcdOptions) -> Vec<String> {
    let secrets = [
        (
            "etcd.password_file",
            etcd.auth.as_ref().map(|a| &a.password_file),
        ),
        (
            "etcd.key_file",
            etcd.client_cert.as_ref().map(|c| &c.key_file),
        ),
    ];
    secrets
        .into_iter()
        .filter_map(|(key, path)| warning(key, path?))
        .collect()
}

fn warning(key: &str, path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & NOT_OWNER_BITS != 0).then(|| {
        format!(
            "{key} {} is accessible by group or others (mode {mode:04o}); \
             restrict it with `chmod 600`",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn only_files_open_to_group_or_others_are_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        fs::write(&path, "secret").unwrap();
        for (mode, warned) in [(0o600, false), (0o400, false), (0o640, true), (0o604, true)] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let got = warning("etcd.password_file", &path);
            assert_eq!(got.is_some(), warned, "{mode:o}: {got:?}");
            if let Some(text) = got {
                assert!(text.contains(&format!("mode {mode:04o}")), "{text}");
            }
        }
        assert_eq!(
            warning("etcd.password_file", &dir.path().join("absent")),
            None
        );
    }
}
