//! Non-root mode is a boundary (issue 18): the shipped polkit rule (`units/50-sidekick.rules`),
//! loaded by the real polkitd in the systemd container (systemd 252, or 257 with
//! `SIDEKICK_SYSTEMD_VERSION=257`), with the shipped units and templates installed as the package
//! installs them. User `sidekick` may start, stop and restart its app units and start the two
//! root-owned templates; it is refused a transient unit running `/bin/sh` (whatever it is named),
//! a daemon reload, and write access to every place systemd reads the app unit's configuration
//! from; and the shipped `sidekick@.service`, run as that user with
//! `swap.handoff = "environment-file"`, still swaps its app to a new version
//! (`tests/polkit/swap.rs`).

mod support;

#[path = "../examples/omaha_server/service/mod.rs"]
mod service;
#[path = "rollout/update_service.rs"]
mod update_service;

#[path = "polkit/swap.rs"]
mod swap;

use support::systemd::{self, Job, Systemd};
use support::{Need, prerequisites_met, shipped};

/// Where the container sees the host's `Systemd::bus_dir()`.
const SHARED: &str = "/run/dbus";
const NEEDS: &[Need] = &[
    Need::Binary("nsenter"),
    Need::Binary("setpriv"),
    Need::Binary("busctl"),
    Need::Binary("/usr/lib/polkit-1/polkitd"),
];

const MANAGER: [&str; 3] = [
    "org.freedesktop.systemd1",
    "/org/freedesktop/systemd1",
    "org.freedesktop.systemd1.Manager",
];

/// The app instance the tests act on.
const APP: &str = "example-web@1.service";

/// Runs `argv` in the container as user `sidekick`; returns whether it succeeded and its output.
fn as_user(systemd: &Systemd, argv: &[&str]) -> (bool, String) {
    let mut full = vec![
        "setpriv",
        "--reuid=sidekick",
        "--regid=sidekick",
        "--clear-groups",
    ];
    full.extend(argv);
    let out = systemd.exec(&full);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// Calls a systemd Manager method as user `sidekick`, never asking for interactive
/// authorisation; returns whether systemd allowed it, and what busctl said.
fn as_sidekick(systemd: &Systemd, method: &str, args: &[&str]) -> (bool, String) {
    // "--": arguments such as `-c` are the method's, not busctl's options.
    let mut argv = vec![
        "busctl",
        "--allow-interactive-authorization=no",
        "call",
        "--",
    ];
    argv.extend(MANAGER);
    argv.push(method);
    argv.extend(args);
    as_user(systemd, &argv)
}

/// `StartTransientUnit` of a oneshot named `unit` running `/bin/sh -c "touch <marker>"` as root.
fn start_shell_transient(systemd: &Systemd, unit: &str, marker: &str) -> (bool, String) {
    let script = format!("touch {marker}");
    let args = [
        "ssa(sv)a(sa(sv))",
        unit,
        "replace",
        "3",
        "Type",
        "s",
        "oneshot",
        "User",
        "s",
        "root",
        "ExecStart",
        "a(sasb)",
        "1",
        "/bin/sh",
        "3",
        "/bin/sh",
        "-c",
        &script,
        "false",
        "0",
    ];
    as_sidekick(systemd, "StartTransientUnit", &args)
}

/// A container set up as the package and an operator set up a host for non-root mode: the
/// shipped `sidekick@.service`, the two templates and the example app template in the unit
/// directory, this build's binary at `/usr/bin/sidekick` (a read-only overlay in the container's
/// own mount namespace), user `sidekick`, the shipped rule in polkitd, and a stand-in
/// `docker.service` (the app template requires one; the host's Docker is reached through its
/// socket). `app_template` replaces the example app template when given.
async fn non_root_host(app_template: Option<&str>) -> Systemd {
    let systemd = Systemd::start().await;
    for unit in [
        "sidekick@.service",
        "sidekick-prepull@.service",
        "sidekick-version@.service",
    ] {
        systemd.write_unit(unit, &shipped(&format!("units/{unit}")));
    }
    let app = app_template.map_or_else(|| shipped("units/example-web@.service"), str::to_string);
    systemd.write_unit("example-web@.service", &app);
    systemd.write_unit(
        "other.service",
        "[Service]\nExecStart=/usr/bin/sleep infinity\n",
    );
    systemd.write_unit(
        "docker.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
    );
    let shared = systemd.bus_dir();
    std::fs::create_dir_all(shared.join("bin")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_sidekick"), shared.join("bin/sidekick")).unwrap();
    std::fs::write(
        shared.join("50-sidekick.rules"),
        shipped("units/50-sidekick.rules"),
    )
    .unwrap();
    let setup = format!(
        "mount -t overlay overlay -o lowerdir={SHARED}/bin:/usr/bin /usr/bin \
         && mkdir -p /etc/polkit-1/rules.d /etc/sysusers.d \
         && cp {SHARED}/50-sidekick.rules /etc/polkit-1/rules.d/ \
         && echo 'u sidekick - \"sidekick\" /nonexistent' > /etc/sysusers.d/sidekick.conf \
         && systemd-sysusers"
    );
    systemd.run(&["sh", "-c", &setup]);
    systemd.reload().await;
    let mgr = systemd.manager().await;
    assert_eq!(
        systemd::run_job(&mgr, Job::Start, "polkit.service").await,
        "done",
        "{}",
        systemd.log_tail(20)
    );
    systemd
}

/// A sleeping app template: the grant tests are about systemd's answers, not the app.
const SLEEPER: &str = "[Service]\nExecStart=/usr/bin/sleep infinity\n";

#[tokio::test]
async fn user_sidekick_may_start_stop_and_restart_its_app_units_and_start_and_stop_the_templates_only()
 {
    if !prerequisites_met(&[systemd::NEEDS, NEEDS].concat()) {
        return;
    }
    let systemd = non_root_host(Some(SLEEPER)).await;
    let call = |method: &str, unit: &str| as_sidekick(&systemd, method, &["ss", unit, "replace"]);
    for method in ["StartUnit", "RestartUnit", "StopUnit"] {
        let (allowed, said) = call(method, APP);
        assert!(allowed, "{method} {APP}: {said}");
    }
    // The templates' commands are fixed and check their instance: starting them is granted
    // (the runs themselves fail here, on instances that name nothing).
    // A pre-pull the swap gives up on is stopped, so stopping them is granted too.
    for unit in [
        "sidekick-prepull@localhost_snothing:0.service",
        "sidekick-version@nobody.service",
    ] {
        for method in ["StartUnit", "StopUnit"] {
            let (allowed, said) = call(method, unit);
            assert!(allowed, "{method} {unit}: {said}");
        }
    }
    let refused = [
        ("StartUnit", "other.service"),
        ("RestartUnit", "sidekick-version@nobody.service"),
        ("StartUnit", "sidekick-prepull-web-1.service"),
        ("ReloadUnit", APP),
        ("KillUnit", APP),
    ];
    for (method, unit) in refused {
        let (allowed, said) = match method {
            "KillUnit" => as_sidekick(&systemd, method, &["ssi", unit, "all", "9"]),
            _ => call(method, unit),
        };
        assert!(!allowed, "{method} {unit} was allowed: {said}");
    }
    // No reload: this mode writes no drop-in.
    let (allowed, said) = as_sidekick(&systemd, "Reload", &[]);
    assert!(!allowed, "Reload was allowed: {said}");
    let (allowed, said) = as_sidekick(&systemd, "SetEnvironment", &["as", "1", "LD_PRELOAD=/x"]);
    assert!(!allowed, "SetEnvironment was allowed: {said}");
    let (allowed, said) = as_sidekick(
        &systemd,
        "SetUnitProperties",
        &["sba(sv)", APP, "true", "1", "CPUWeight", "t", "100"],
    );
    assert!(!allowed, "SetUnitProperties was allowed: {said}");
    let (allowed, said) = as_sidekick(
        &systemd,
        "LinkUnitFiles",
        &[
            "asbb",
            "1",
            "/var/lib/sidekick/evil.service",
            "false",
            "true",
        ],
    );
    assert!(!allowed, "LinkUnitFiles was allowed: {said}");
}

#[tokio::test]
async fn user_sidekick_is_refused_a_transient_unit_running_bin_sh_whatever_its_name() {
    if !prerequisites_met(&[systemd::NEEDS, NEEDS].concat()) {
        return;
    }
    let systemd = non_root_host(Some(SLEEPER)).await;
    // systemd 252 does not name the unit to polkit, so the rule refuses every one. systemd 257
    // names it and says "start", as for StartUnit: the rule grants the names of its app units and
    // templates, and systemd itself refuses a transient unit where a unit file exists.
    let names = [
        "other-transient.service",
        "sidekick-prepull-web-1-7.service",
        "sidekick-prepull@localhost_sweb:1.service",
        "sidekick-version@example-web-1.service",
        APP,
    ];
    for (n, name) in names.iter().enumerate() {
        let marker = format!("/run/sidekick-polkit-marker-{n}");
        let (allowed, said) = start_shell_transient(&systemd, name, &marker);
        assert!(!allowed, "StartTransientUnit {name} was allowed: {said}");
        // Nothing ran: the shell's marker does not exist.
        let (made, _) = as_user(&systemd, &["test", "-e", &marker]);
        assert!(!made, "/bin/sh ran as {name}: {said}");
        // And refused by whom, as expected for this version.
        let granted_name = name.starts_with("sidekick-prepull@")
            || name.starts_with("sidekick-version@")
            || *name == APP;
        let by = match (systemd::version(), granted_name) {
            (252, _) | (257, false) => "Interactive authentication required",
            (257, true) => "was already loaded or has a fragment file",
            (other, _) => panic!("no expectation for systemd {other}: add it here"),
        };
        assert!(said.contains(by), "StartTransientUnit {name}: {said}");
    }
}

#[tokio::test]
async fn user_sidekick_can_write_no_file_systemd_reads_the_app_unit_from() {
    if !prerequisites_met(&[systemd::NEEDS, NEEDS].concat()) {
        return;
    }
    let systemd = non_root_host(None).await;
    // The shipped sidekick unit's ExecStartPre= makes the app's drop-in directory (root's).
    systemd.run(&["mkdir", "-p", &format!("/etc/systemd/system/{APP}.d")]);
    let show = |property: &str| {
        systemd
            .systemctl(&["show", &format!("--property={property}"), "--value", APP])
            .trim()
            .to_string()
    };
    // Every directory systemd loads units and drop-ins from, the app unit's own files and the
    // directory of its EnvironmentFile=.
    let mut places: Vec<String> = systemd
        .run(&["systemd-analyze", "unit-paths"])
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        places.iter().any(|p| p == "/etc/systemd/system"),
        "{places:?}"
    );
    places.push(show("FragmentPath"));
    places.push(format!("/etc/systemd/system/{APP}.d"));
    let env_files = show("EnvironmentFiles");
    assert!(
        env_files.contains("/var/lib/sidekick-versions/example-web-1.env"),
        "{env_files}"
    );
    places.push("/var/lib/sidekick-versions".into());
    for place in &places {
        let dropin = format!("{place}/{APP}.d/99-evil.conf");
        let script = format!(
            "mkdir -p {place}/{APP}.d 2>/dev/null; \
             printf '[Service]\\nExecStartPre=+/bin/sh -c id\\n' > {dropin} \
             || printf 'LD_PRELOAD=/tmp/x.so\\n' > {place}/example-web-1.env"
        );
        let (wrote, said) = as_user(&systemd, &["sh", "-c", &script]);
        assert!(!wrote, "user sidekick wrote into {place}: {said}");
    }
    // The same user writes where it may: the refusals above are the file system's.
    let (wrote, said) = as_user(
        &systemd,
        &["sh", "-c", "echo > /tmp/sidekick-may-write-here"],
    );
    assert!(wrote, "user sidekick cannot write even /tmp: {said}");
    let fragment = show("FragmentPath");
    let (wrote, _) = as_user(&systemd, &["sh", "-c", &format!("echo >> {fragment}")]);
    assert!(!wrote, "user sidekick appended to {fragment}");
}
