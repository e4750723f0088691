//! The `sidekick` binary's configuration commands, run as a user would run them; the duration
//! bounds, the rules of the README's configuration table, what `status` and `slots` ask for and
//! what they say with etcd down in the submodules.

mod support;

#[path = "cli/bounds.rs"]
mod bounds;
#[path = "cli/etcd_down.rs"]
mod etcd_down;
#[path = "cli/needs.rs"]
mod needs;
#[path = "cli/once.rs"]
mod once;
#[path = "cli/rules.rs"]
mod rules;
#[path = "cli/swapping.rs"]
mod swapping;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn sidekick(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args(args)
        .env("SIDEKICK_CONFIG_ROOT", root)
        .env_remove("RUST_LOG")
        .output()
        .expect("sidekick binary runs")
}

fn example_config() -> String {
    format!("{}/examples/config/web.toml", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn version_flag_prints_the_crate_version() {
    let root = tempfile::tempdir().unwrap();
    let out = sidekick(root.path(), &["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sidekick {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn help_says_status_shows_registrations_and_run_applies_updates() {
    let root = tempfile::tempdir().unwrap();
    let out = sidekick(root.path(), &["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Show registrations, update slot holders and halted groups"),
        "{help}"
    );
    assert!(
        help.contains("applies the new versions an Omaha update service offers"),
        "{help}"
    );
    assert!(help.contains("and apply updates"), "{help}");
    assert!(!help.to_lowercase().contains("without downtime"), "{help}");
    let out = sidekick(root.path(), &["run", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for step in [
        "pre-pull the image",
        "update slot",
        "rolled back",
        "halts the group",
    ] {
        assert!(
            help.contains(step),
            "run --help does not say {step:?}: {help}"
        );
    }
}

#[test]
fn the_podman_example_config_on_top_of_web_toml_pulls_and_prunes_with_podman() {
    let root = tempfile::tempdir().unwrap();
    let podman = format!(
        "{}/examples/config/web-podman.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let args = [
        "check-config",
        "--config",
        &example_config(),
        "--config",
        &podman,
    ];
    let out = sidekick(root.path(), &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "prepull = [\"podman\", \"pull\", \"{image}\"]",
        "prune = [\"podman\", \"rmi\", \"{image}\"]",
        "quadlet_dir = \"/etc/containers/systemd\"",
    ] {
        assert!(stdout.contains(line), "no {line} in:\n{stdout}");
    }
}

#[test]
fn check_config_prints_effective_settings_with_their_sources() {
    let root = tempfile::tempdir().unwrap();
    let config = example_config();
    let out = sidekick(root.path(), &["check-config", "--config", &config]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("# read {config}")), "{stdout}");
    assert!(
        stdout.contains(&format!("layout = \"traefik\"  # from {config}:12")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("port = 8081  # from {config}:13")),
        "{stdout}"
    );
    assert!(
        stdout.contains("name = \"example-web-1\"  # derived"),
        "{stdout}"
    );
    // Values left at their defaults carry no source.
    assert!(stdout.contains("drain = \"5s\"\n"), "{stdout}");
    // The output is itself valid TOML a user can start from.
    let table: toml::Table = toml::from_str(&stdout).expect("output parses as TOML");
    assert_eq!(
        table["instance"]["unit"].as_str(),
        Some("example-web@1.service")
    );
}

#[test]
fn check_config_reads_dropins_under_the_config_root_and_flags_win() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("etc/sidekick/config.d");
    std::fs::create_dir_all(&dir).unwrap();
    let dropin = dir.join("10-web.toml");
    std::fs::write(&dropin, "[instance]\nunit = \"web@1.service\"\n[registration]\nport = 9000\n[update]\nenabled = false\n").unwrap();
    let out = sidekick(root.path(), &["check-config", "--unit", "web@2.service"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("port = 9000  # from {}:4", dropin.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("unit = \"web@2.service\"  # from flag --unit"),
        "{stdout}"
    );
}

#[test]
fn check_config_unit_reads_that_instances_own_dropins_after_the_shared_ones() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("etc/sidekick/config.d");
    std::fs::create_dir_all(dir.join("web@2")).unwrap();
    std::fs::write(dir.join("10-web.toml"), "[instance]\nunit = \"web@1.service\"\n[registration]\nport = 9000\n[update]\nenabled = false\n").unwrap();
    let own = dir.join("web@2/10-port.toml");
    std::fs::write(&own, "[registration]\nport = 9002\n").unwrap();
    let out = sidekick(root.path(), &["check-config", "--unit", "web@2.service"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        stdout.contains(&format!("# read {}", own.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("port = 9002  # from {}:2", own.display())),
        "{stdout}"
    );
    let other = sidekick(root.path(), &["check-config", "--unit", "web@3.service"]);
    let stdout = String::from_utf8_lossy(&other.stdout);
    assert!(stdout.contains("port = 9000  # from"), "{stdout}");
    assert!(!stdout.contains("web@2/"), "{stdout}");
}

#[test]
fn status_with_unit_reads_that_instances_dropins_so_the_flag_is_not_ignored() {
    let root = tempfile::tempdir().unwrap();
    let own = root.path().join("etc/sidekick/config.d/web@2/10-etcd.toml");
    std::fs::create_dir_all(own.parent().unwrap()).unwrap();
    std::fs::write(&own, "[etcd]\ntimeout = \"banana\"\n").unwrap();
    let out = sidekick(root.path(), &["status", "--unit", "web@2.service"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{}:2", own.display())), "{stderr}");
}

/// A valid configuration with `key = value` added (or replacing the same key), and the line the
/// key is on.
fn config_with(key: &str, value: &str) -> (String, usize) {
    let (section, name) = key.split_once('.').expect("section.key");
    let mut sections: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "instance",
            vec![("unit".into(), "\"web@1.service\"".into())],
        ),
        ("registration", vec![("port".into(), "8080".into())]),
        ("update", vec![("enabled".into(), "false".into())]),
    ];
    match sections.iter_mut().find(|(s, _)| *s == section) {
        Some((_, keys)) => match keys.iter_mut().find(|(k, _)| k == name) {
            Some(entry) => entry.1 = value.to_string(),
            None => keys.push((name.to_string(), value.to_string())),
        },
        None => sections.push((section, vec![(name.to_string(), value.to_string())])),
    }
    let (mut text, mut line) = (String::new(), 0);
    for (s, keys) in &sections {
        text.push_str(&format!("[{s}]\n"));
        for (k, v) in keys {
            text.push_str(&format!("{k} = {v}\n"));
            if *s == section && k == name {
                line = text.lines().count();
            }
        }
    }
    (text, line)
}

/// Runs `check-config` on `text`; the file and the output.
fn check_config(text: &str) -> (tempfile::TempDir, std::path::PathBuf, Output) {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("bad.toml");
    std::fs::write(&file, text).unwrap();
    let out = sidekick(
        root.path(),
        &["check-config", "--config", file.to_str().unwrap()],
    );
    (root, file, out)
}

/// `check-config` exits 2 with `detail` on stderr and nothing on stdout.
fn assert_refused(text: &str, detail: &str) {
    let (_root, _file, out) = check_config(text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing is printed on stdout for a bad config"
    );
    assert!(stderr.contains(detail), "want {detail:?} in {stderr}");
}

fn assert_rejected(text: &str, line: usize, key: &str, detail: &str) {
    let (_root, file, out) = check_config(text);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing is printed on stdout for a bad config"
    );
    let expected = format!("{}:{line}: key `{key}`", file.display());
    assert!(stderr.contains(&expected), "want {expected:?} in {stderr}");
    assert!(stderr.contains(detail), "want {detail:?} in {stderr}");
}

#[test]
fn check_config_rejects_an_unknown_key_with_exit_2() {
    assert_rejected(
        "[instance]\nunit = \"web@1\"\n[health]\nchek = \"tcp\"\n",
        4,
        "health.chek",
        "unknown field",
    );
}

#[test]
fn check_config_rejects_a_wrong_type_with_exit_2() {
    assert_rejected(
        "[instance]\nunit = \"web@1\"\n[slot]\nmax = \"two\"\n",
        4,
        "slot.max",
        "invalid type",
    );
}

#[test]
fn check_config_rejects_a_bad_duration_with_exit_2() {
    assert_rejected(
        "[instance]\nunit = \"web@1\"\n[registration]\nttl = \"thirty\"\n",
        4,
        "registration.ttl",
        "thirty",
    );
}

#[test]
fn check_config_rejects_an_invalid_value_with_exit_2() {
    assert_rejected(
        "[instance]\nunit = \"web@1\"\n[registration]\nport = 80\n[etcd]\nendpoints = [\"127.0.0.1:2379\"]\n",
        6,
        "etcd.endpoints",
        "must be an http:// or https:// URL",
    );
}

/// A config every command refuses: an unknown key.
const BAD_CONFIG: &str = "[instance]\nunit = \"web@1\"\n[registration]\nprot = 8080\n";

#[test]
fn a_bad_configuration_exits_2_for_run_update_check_status_and_slots() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("bad.toml");
    std::fs::write(&file, BAD_CONFIG).unwrap();
    let config = file.to_str().unwrap();
    let commands: [&[&str]; 6] = [
        &["run"],
        &["run", "--dry-run"],
        &["update-check"],
        &["status"],
        &["slots", "resume"],
        &["slots", "release", "--holder", "x"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.extend(["--config", config]);
        let out = sidekick(root.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {stderr}");
        let at = format!("{config}:4: key `registration.prot`");
        assert!(stderr.contains(&at), "{command:?}: want {at:?} in {stderr}");
    }
}

#[test]
fn check_config_warns_about_a_password_file_others_can_read_as_ssh_does() {
    let root = tempfile::tempdir().unwrap();
    let password = root.path().join("password");
    std::fs::write(&password, "secret").unwrap();
    let (text, _) = config_with("etcd.username", "\"root\"");
    let text = text.replace(
        "username = \"root\"",
        &format!(
            "username = \"root\"\npassword_file = \"{}\"",
            password.display()
        ),
    );
    let file = root.path().join("auth.toml");
    std::fs::write(&file, text).unwrap();
    let args = [
        "check-config",
        "--log",
        "stderr",
        "--config",
        file.to_str().unwrap(),
    ];
    for (mode, warned) in [(0o644, true), (0o640, true), (0o600, false)] {
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = sidekick(root.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{mode:o}: {stderr}");
        let warning = format!(
            "etcd.password_file {} is accessible by group or others",
            password.display()
        );
        assert_eq!(
            stderr.contains(&warning) && stderr.contains("WARN"),
            warned,
            "{mode:o}: {stderr}"
        );
    }
}

#[test]
fn check_config_refuses_a_coreos_public_ipv4_that_is_not_a_host_with_exit_2() {
    let root = tempfile::tempdir().unwrap();
    let (text, _) = config_with("registration.port", "8080");
    let file = root.path().join("web.toml");
    std::fs::write(&file, text).unwrap();
    let command = |command: &str, value: &str| {
        Command::new(env!("CARGO_BIN_EXE_sidekick"))
            .args([command, "--config", file.to_str().unwrap()])
            .env("SIDEKICK_CONFIG_ROOT", root.path())
            .env("COREOS_PUBLIC_IPV4", value)
            .output()
            .expect("sidekick binary runs")
    };
    let run = |value: &str| command("check-config", value);
    // `run` refuses it the same way before starting anything, so systemd does not restart it.
    for out in [run("10.0.0.5:8080"), command("run", "10.0.0.5:8080")] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(
                "$COREOS_PUBLIC_IPV4 = \"10.0.0.5:8080\" is neither an IP address nor a host name"
            ),
            "{stderr}"
        );
    }
    let out = run("10.0.0.5");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `sidekick run --config file` under `root` until it exits (killed after 10 s); its exit
/// code and stderr.
fn run_until_exit(root: &Path, file: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args(["run", "--config", file.to_str().unwrap()])
        .env("SIDEKICK_CONFIG_ROOT", root)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

#[test]
fn a_start_moves_an_earlier_releases_flat_state_files_into_the_instance_directory_under_its_lock() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let file = root.path().join("web.toml");
    let text = format!(
        "{}\n[daemon]\nstate_dir = \"{}\"\ncontrol_socket = \"\"\n",
        std::fs::read_to_string(example_config()).unwrap(),
        state.display()
    );
    std::fs::write(&file, text).unwrap();
    let journal = "{\"format\": 1, \"instance\": \"example-web-1\", \"swap\": \"left by a swap\"}";
    std::fs::write(state.join("example-web-1.json"), journal).unwrap();
    std::fs::write(state.join("example-web-1.denylist.json"), "[]").unwrap();
    // A daemon of the earlier release runs: nothing moves, and the start exits 2 naming its lock.
    let earlier = std::fs::File::create(state.join("example-web-1.lock")).unwrap();
    earlier.try_lock().unwrap();
    let (code, stderr) = run_until_exit(root.path(), &file);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("example-web-1.lock") && stderr.contains("earlier release"),
        "{stderr}"
    );
    assert!(state.join("example-web-1.json").exists());
    drop(earlier);
    // It is gone; a daemon of this release holds the new lock, so the start stops right after
    // the move, and the journal the swap left is where this release resumes it.
    let current = sidekick::agent::update::Journal::new(&state, "example-web-1")
        .lock()
        .unwrap();
    let (code, stderr) = run_until_exit(root.path(), &file);
    assert_eq!(code, Some(2), "{stderr}");
    let dir = state.join("example-web-1");
    assert_eq!(
        std::fs::read_to_string(dir.join("journal.json")).unwrap(),
        journal
    );
    assert!(dir.join("denylist.json").exists());
    for flat in [
        "example-web-1.json",
        "example-web-1.denylist.json",
        "example-web-1.lock",
    ] {
        assert!(!state.join(flat).exists(), "{flat} left: {stderr}");
    }
    drop(current);
}

#[test]
fn a_second_run_for_the_same_unit_exits_2_naming_the_held_journal_lock() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let file = root.path().join("web.toml");
    let text = format!(
        "{}\n[daemon]\nstate_dir = \"{}\"\ncontrol_socket = \"\"\n",
        std::fs::read_to_string(example_config()).unwrap(),
        state.display()
    );
    std::fs::write(&file, text).unwrap();
    // The first daemon of the unit, as far as the lock goes.
    let first = sidekick::agent::update::Journal::new(&state, "example-web-1")
        .lock()
        .unwrap();
    let mut second = Command::new(env!("CARGO_BIN_EXE_sidekick"))
        .args(["run", "--config", file.to_str().unwrap()])
        .env("SIDEKICK_CONFIG_ROOT", root.path())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            second.kill().unwrap();
            second.wait().unwrap();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "a second daemon of the unit ran on: {stderr}"
    );
    assert!(
        stderr.contains("another sidekick runs for this instance")
            && stderr.contains("example-web-1/journal.lock"),
        "{stderr}"
    );
    drop(first);
}
