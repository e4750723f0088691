//! The pre-pull as a transient unit: its unique name, its argv (no shell; a bare program name
//! resolved against the sidekick's `PATH`, else left to systemd), the properties handed to
//! `StartTransientUnit` (a sandbox included), and the wording of how its main process ended.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use zbus::{OwnedVariant, Variant};

use super::ControlError;

/// How long systemd gives the pre-pull to stop (SIGTERM) before it sends SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `sidekick-prepull-<instance>-<n>.service`, with characters a unit name cannot hold (or that
/// would make it a template instance, `@`) replaced by `_`.
pub fn unit_name(instance: &str, n: u32) -> String {
    let escaped: String = instance
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | ':' | '_' | '.' | '-' => c,
            _ => '_',
        })
        .collect();
    format!("sidekick-prepull-{escaped}-{n}.service")
}

/// The program to run: an absolute argv[0] as given (systemd reports it if it cannot run it), a
/// bare name searched on `path` (the sidekick's `PATH`); a bare name not found there is passed
/// on as it is, for systemd to look up on its own search path where the program runs (a
/// sidekick in a container has no `docker` CLI of its own; the host's systemd has). Anything
/// else is refused.
pub fn resolve_program(argv: &[String], path: Option<&OsStr>) -> Result<PathBuf, ControlError> {
    let Some(program) = argv.first() else {
        return Err(ControlError::Invalid(
            "the pre-pull command is empty (swap.prepull)".into(),
        ));
    };
    if program.starts_with('/') {
        return Ok(PathBuf::from(program));
    }
    if program.is_empty() || program.contains('/') {
        return Err(ControlError::Invalid(format!(
            "pre-pull program {program:?} (swap.prepull) must be an absolute path or a bare name"
        )));
    }
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = path
        .into_iter()
        .flat_map(std::env::split_paths)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate));
    Ok(found.unwrap_or_else(|| PathBuf::from(program)))
}

/// The pre-pull's sandbox, as (property, value) pairs of `StartTransientUnit`: the puller runs as
/// root with no capability and no way to gain one, sees the file system read-only (a Docker-style
/// puller only talks to its daemon's socket; home stays readable for registry credentials in
/// `~/.docker/config.json`), a private /tmp and no devices, and cannot touch the kernel.
pub const SANDBOX_FLAGS: &[(&str, bool)] = &[
    ("NoNewPrivileges", true),
    ("PrivateTmp", true),
    ("PrivateDevices", true),
    ("ProtectKernelTunables", true),
    ("ProtectKernelModules", true),
    ("ProtectKernelLogs", true),
    ("ProtectControlGroups", true),
    ("ProtectClock", true),
    ("ProtectHostname", true),
    ("RestrictSUIDSGID", true),
    ("RestrictRealtime", true),
    ("LockPersonality", true),
];
/// The string-valued part of the sandbox.
pub const SANDBOX_MODES: &[(&str, &str)] =
    &[("ProtectSystem", "strict"), ("ProtectHome", "read-only")];

/// Pullers that write the image store themselves, with no daemon (Podman's `podman pull` and
/// `podman rmi`, by the program's file name). Under the sandbox above they fail: the store
/// (`/var/lib/containers/storage`) is read-only, mounting a layer needs `CAP_SYS_ADMIN`, a layer's
/// whiteouts are device nodes (`CAP_MKNOD`, no `PrivateDevices=`), and a layer may hold setuid
/// files (no `RestrictSUIDSGID=`). For them `ProtectSystem=full` (`/usr`, `/boot`, `/etc`
/// read-only, `/var` writable), root's capabilities, and the flags below off.
const DAEMONLESS_PROGRAMS: &[&str] = &["podman"];
/// The [`SANDBOX_FLAGS`] a daemonless puller runs without.
const DAEMONLESS_FLAGS_OFF: &[&str] = &["PrivateDevices", "RestrictSUIDSGID"];

/// True when `program` writes its image store itself ([`DAEMONLESS_PROGRAMS`]).
fn daemonless(program: &Path) -> bool {
    program
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|name| DAEMONLESS_PROGRAMS.contains(&name))
}

/// systemd's exit status when it could not execute the command (`203/EXEC`).
const EXIT_EXEC: i32 = 203;

/// The transient unit's properties: a oneshot running `program` with `argv` (argv[0] kept as
/// given), gone once it exits 0, kept while failed so its result can be read
/// (`CollectMode=inactive`), and stopped within [`STOP_TIMEOUT`].
pub fn properties(
    program: &Path,
    argv: &[String],
    description: String,
) -> Result<Vec<(String, OwnedVariant)>, ControlError> {
    let program = program.to_str().ok_or_else(|| {
        ControlError::Invalid(format!("pre-pull program {program:?} is not UTF-8"))
    })?;
    let exec_start = vec![(program.to_string(), argv.to_vec(), false)];
    let owned = |value: Variant<'_>| OwnedVariant::try_from(value).map_err(ControlError::Bus);
    let daemonless = daemonless(Path::new(program));
    let mut sandbox = Vec::new();
    for (name, on) in SANDBOX_FLAGS {
        if !(daemonless && DAEMONLESS_FLAGS_OFF.contains(name)) {
            sandbox.push((name.to_string(), OwnedVariant::from(*on)));
        }
    }
    for (name, mode) in SANDBOX_MODES {
        let mode = match (daemonless, *name) {
            (true, "ProtectSystem") => "full",
            _ => mode,
        };
        sandbox.push((name.to_string(), owned(Variant::from(mode))?));
    }
    // No capability: talking to a root-owned socket needs none (a daemonless puller keeps
    // root's).
    if !daemonless {
        sandbox.push(("CapabilityBoundingSet".into(), OwnedVariant::from(0u64)));
    }
    let unit = vec![
        ("Description".into(), owned(Variant::from(description))?),
        ("Type".into(), owned(Variant::from("oneshot"))?),
        ("RemainAfterExit".into(), OwnedVariant::from(false)),
        ("CollectMode".into(), owned(Variant::from("inactive"))?),
        (
            "TimeoutStopUSec".into(),
            OwnedVariant::from(STOP_TIMEOUT.as_micros() as u64),
        ),
        ("ExecStart".into(), owned(Variant::from(exec_start))?),
    ];
    Ok(unit.into_iter().chain(sandbox).collect())
}

/// How the main process ended, from the Service's `ExecMainCode` (a `CLD_*` code) and
/// `ExecMainStatus`.
pub fn describe_exit(code: i32, status: i32) -> String {
    match code {
        1 if status == EXIT_EXEC => format!(
            "exited with status {EXIT_EXEC} (EXEC: systemd could not execute the program; \
             is it installed where systemd runs it, on its search path?)"
        ),
        1 => format!("exited with status {status}"),
        2 => format!("killed by signal {status}"),
        3 => format!("dumped core on signal {status}"),
        _ => format!("ended with code {code}, status {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn unit_names_are_unique_per_counter_and_never_template_instances() {
        assert_eq!(unit_name("web@1", 7), "sidekick-prepull-web_1-7.service");
        assert_eq!(unit_name("web-1", 8), "sidekick-prepull-web-1-8.service");
        assert_eq!(unit_name("a/b c", 0), "sidekick-prepull-a_b_c-0.service");
    }

    #[test]
    fn resolves_bare_names_on_path_and_keeps_absolute_ones() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("puller");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths(["/nonexistent".as_ref(), dir.path()]).unwrap();
        assert_eq!(
            resolve_program(&argv(&["puller", "x"]), Some(&path)).unwrap(),
            tool
        );
        assert_eq!(
            resolve_program(&argv(&["/opt/x/pull"]), None).unwrap(),
            PathBuf::from("/opt/x/pull")
        );
    }

    #[test]
    fn leaves_a_bare_name_not_on_path_to_systemd() {
        let path = std::ffi::OsString::from("/nonexistent-a:/nonexistent-b");
        for path in [Some(path.as_os_str()), None] {
            assert_eq!(
                resolve_program(&argv(&["docker", "pull"]), path).unwrap(),
                PathBuf::from("docker")
            );
        }
    }

    #[test]
    fn refuses_an_empty_or_relative_program_saying_why() {
        let path = std::ffi::OsString::from("/nonexistent-a:/nonexistent-b");
        let relative = resolve_program(&argv(&["./pull"]), Some(&path)).unwrap_err();
        assert!(relative.to_string().contains("absolute path"), "{relative}");
        let empty = resolve_program(&[], Some(&path)).unwrap_err();
        assert!(empty.to_string().contains("empty"), "{empty}");
        assert_eq!(empty.kind(), "invalid");
    }

    #[test]
    fn the_transient_unit_is_sandboxed() {
        let props = properties(
            Path::new("/usr/bin/docker"),
            &argv(&["docker", "pull", "x"]),
            "pre-pull".into(),
        )
        .unwrap();
        let value = |name: &str| {
            props
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{name} is set"))
        };
        for name in ["NoNewPrivileges", "PrivateTmp", "ProtectKernelTunables"] {
            assert!(bool::try_from(value(name)).unwrap(), "{name}");
        }
        assert_eq!(String::try_from(value("ProtectSystem")).unwrap(), "strict");
        assert_eq!(u64::try_from(value("CapabilityBoundingSet")).unwrap(), 0);
    }

    #[test]
    fn podman_writes_its_store_itself_so_its_sandbox_leaves_var_and_capabilities() {
        for program in ["podman", "/usr/bin/podman"] {
            let props = properties(
                Path::new(program),
                &argv(&["podman", "pull", "x"]),
                "pre-pull".into(),
            )
            .unwrap();
            let value = |name: &str| props.iter().find(|(n, _)| n == name).map(|(_, v)| v);
            let protect = value("ProtectSystem").expect("ProtectSystem is set");
            assert_eq!(String::try_from(protect.clone()).unwrap(), "full");
            for gone in [
                "CapabilityBoundingSet",
                "PrivateDevices",
                "RestrictSUIDSGID",
            ] {
                assert!(value(gone).is_none(), "{program}: {gone} is set");
            }
            for kept in ["NoNewPrivileges", "PrivateTmp", "ProtectKernelModules"] {
                let on = value(kept).unwrap_or_else(|| panic!("{kept} is set"));
                assert!(bool::try_from(on.clone()).unwrap(), "{kept}");
            }
        }
        // Not by a name that only contains it.
        assert!(!daemonless(Path::new("/usr/local/bin/podman-wrapper")));
    }

    #[test]
    fn exit_descriptions_name_the_status_or_signal() {
        assert_eq!(describe_exit(1, 1), "exited with status 1");
        assert!(describe_exit(1, 203).contains("could not execute the program"));
        assert_eq!(describe_exit(2, 9), "killed by signal 9");
    }
}
