//! Precedence, masking and error reporting of the configuration loader, on files in a temp root.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn write(path: &Path, text: &str) -> PathBuf {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    path.to_path_buf()
}

fn sources(root: &Path, files: Vec<PathBuf>, unit: Option<&str>) -> ConfigSources {
    ConfigSources {
        root: root.to_path_buf(),
        files,
        unit: unit.map(String::from),
    }
}

const MINIMAL: &str = "[instance]\nunit = \"web@1.service\"\n[registration]\nport = 8080\n[update]\nenabled = false\n";

#[test]
fn precedence_runs_usr_lib_then_run_then_etc_then_config_files_then_flags() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    write(&r.join("usr/lib/sidekick/config.d/10-base.toml"), MINIMAL);
    // Same name in /run hides the /usr/lib file completely: its drain is not applied.
    write(
        &r.join("usr/lib/sidekick/config.d/20-swap.toml"),
        "[swap]\ndrain = \"9s\"\n",
    );
    write(
        &r.join("run/sidekick/config.d/20-swap.toml"),
        "[swap]\nstart_timeout = \"7s\"\n",
    );
    // /etc beats /run for the same name.
    write(
        &r.join("run/sidekick/config.d/30-etcd.toml"),
        "[etcd]\ntimeout = \"3s\"\n",
    );
    write(
        &r.join("etc/sidekick/config.d/30-etcd.toml"),
        "[etcd]\ntimeout = \"4s\"\n",
    );
    // File-name order across directories: 40 (usr/lib) applies after 30 (etc).
    write(
        &r.join("usr/lib/sidekick/config.d/40-late.toml"),
        "[health]\nrise = 5\n",
    );
    write(
        &r.join("etc/sidekick/config.d/35-early.toml"),
        "[health]\nrise = 4\nfall = 3\n",
    );
    // A /dev/null link masks a lower file of the same name.
    write(
        &r.join("usr/lib/sidekick/config.d/50-masked.toml"),
        "[health]\nfall = 9\n",
    );
    fs::create_dir_all(r.join("etc/sidekick/config.d")).unwrap();
    symlink("/dev/null", r.join("etc/sidekick/config.d/50-masked.toml")).unwrap();
    // Non-toml files are ignored.
    write(&r.join("etc/sidekick/config.d/README"), "not toml = [");

    let first = write(&r.join("a.toml"), "[slot]\nmax = 2\nttl = \"10s\"\n");
    let second = write(
        &r.join("b.toml"),
        "[slot]\nmax = 3\n[instance]\nunit = \"web@2.service\"\n",
    );

    let loaded = load(&sources(r, vec![first.clone(), second.clone()], None)).unwrap();
    let s = &loaded.settings;
    assert_eq!(
        s.swap.drain,
        Duration::from_secs(5),
        "hidden /usr/lib file must not apply"
    );
    assert_eq!(s.swap.start_timeout, Duration::from_secs(7));
    assert_eq!(s.etcd.timeout, Duration::from_secs(4));
    assert_eq!(s.health.rise.get(), 5);
    assert_eq!(s.health.fall.get(), 3, "masked file must not apply");
    assert_eq!(s.slot.max.get(), 3, "later --config wins");
    assert_eq!(s.slot.ttl, Duration::from_secs(10));
    assert_eq!(s.instance.unit, "web@2.service");
    assert_eq!(
        loaded.origins["slot.max"],
        Origin::File {
            path: second.clone(),
            line: 2
        }
    );
    assert_eq!(
        loaded.origins["etcd.timeout"],
        Origin::File {
            path: r.join("etc/sidekick/config.d/30-etcd.toml"),
            line: 2
        }
    );
    assert!(!loaded.files.iter().any(|f| f.ends_with("50-masked.toml")));

    let flagged = load(&sources(r, vec![first, second], Some("api@7"))).unwrap();
    assert_eq!(
        flagged.settings.instance.unit, "api@7.service",
        "flag beats files"
    );
    assert_eq!(flagged.settings.instance.name, "api-7");
    assert_eq!(flagged.settings.instance.service, "api");
    assert_eq!(flagged.origins["instance.unit"], Origin::Flag("--unit"));
}

#[test]
fn defaults_fill_derived_names_prefix_and_slot_group() {
    let root = tempfile::tempdir().unwrap();
    let file = write(
        &root.path().join("c.toml"),
        "[instance]\nunit = \"web@1.service\"\n[registration]\nport = 8080\nlayout = \"traefik\"\n[update]\nserver = \"http://127.0.0.1:8000/v1/update/\"\napp_id = \"6a6e5b4c-0000-4000-8000-00000000beef\"\n",
    );
    let s = load(&sources(root.path(), vec![file], None))
        .unwrap()
        .settings;
    assert_eq!(s.instance.name, "web-1");
    assert_eq!(s.instance.service, "web");
    assert_eq!(s.registration.keys.prefix, "traefik");
    assert_eq!(s.slot.group, "6a6e5b4c-0000-4000-8000-00000000beef/stable");
    assert_eq!(
        s.health.check,
        HealthCheck::Http {
            url: "http://127.0.0.1:8080/".parse().unwrap()
        }
    );
    assert_eq!(s.update.interval, Duration::from_secs(300));
    assert_eq!(s.swap.prepull, ["docker", "pull", "{image}"]);
    assert_eq!(s.swap.prune, ["docker", "image", "rm", "{image}"]);
}

fn error_for(text: &str) -> (PathBuf, ConfigError) {
    let root = tempfile::tempdir().unwrap();
    let file = write(&root.path().join("bad.toml"), text);
    let err = load(&sources(root.path(), vec![file.clone()], None)).unwrap_err();
    (file, err)
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let (file, err) =
        error_for("[instance]\nunit = \"web@1\"\n\n[registration]\nport = 80\nprot = 81\n");
    match &err {
        ConfigError::Parse {
            path,
            line,
            key,
            message,
        } => {
            assert_eq!(path, &file);
            assert_eq!(*line, 6);
            assert_eq!(key.as_deref(), Some("registration.prot"));
            assert!(message.contains("unknown field `prot`"), "{message}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with(&format!("{}:6: key `registration.prot`", file.display()))
    );
}

#[test]
fn unknown_section_names_its_line() {
    let (_, err) = error_for("[instance]\nunit = \"web@1\"\n[registraton]\nport = 80\n");
    assert!(
        matches!(&err, ConfigError::Parse { line: 3, key: Some(k), .. } if k == "registraton"),
        "{err:?}"
    );
}

#[test]
fn wrong_type_names_file_line_and_key() {
    let (_, err) = error_for("[instance]\nunit = \"web@1\"\n[registration]\nport = \"eighty\"\n");
    assert!(
        matches!(&err, ConfigError::Parse { line: 4, key: Some(k), .. } if k == "registration.port"),
        "{err:?}"
    );
}

#[test]
fn bad_duration_names_file_line_and_key() {
    let (_, err) = error_for("[instance]\nunit = \"web@1\"\n[swap]\ndrain = \"5 parsecs\"\n");
    assert!(
        matches!(&err, ConfigError::Parse { line: 4, key: Some(k), .. } if k == "swap.drain"),
        "{err:?}"
    );
}

#[test]
fn invalid_value_names_file_line_and_key() {
    let (file, err) = error_for(
        MINIMAL
            .replace("port = 8080", "port = 8080\nttl = \"2s\"")
            .as_str(),
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "{}:5: key `registration.ttl`: must be at least 5s",
            file.display()
        )),
        "{text}"
    );
}

#[test]
fn missing_unit_says_how_to_set_it() {
    let (_, err) = error_for("[update]\nenabled = false\n[registration]\nport = 8080\n");
    assert_eq!(
        err.to_string(),
        "key `instance.unit`: required: set it in a config file or pass --unit"
    );
}

#[test]
fn syntax_error_names_file_and_line() {
    let (file, err) = error_for("[instance]\nunit = \"web@1\n");
    assert!(
        err.to_string()
            .starts_with(&format!("{}:2:", file.display())),
        "{err}"
    );
}

#[test]
fn render_marks_values_set_by_files_and_derived_values() {
    let root = tempfile::tempdir().unwrap();
    let file = write(&root.path().join("c.toml"), MINIMAL);
    let rendered = load(&sources(root.path(), vec![file.clone()], None))
        .unwrap()
        .render();
    let from = |line: usize| format!("# from {}:{line}", file.display());
    assert!(
        rendered.contains(&format!("unit = \"web@1.service\"  {}", from(2))),
        "{rendered}"
    );
    assert!(
        rendered.contains(&format!("port = 8080  {}", from(4))),
        "{rendered}"
    );
    assert!(
        rendered.contains(&format!("enabled = false  {}", from(6))),
        "{rendered}"
    );
    assert!(
        rendered.contains("name = \"web-1\"  # derived"),
        "{rendered}"
    );
    assert!(
        rendered.contains("drain = \"5s\"\n"),
        "defaults carry no comment: {rendered}"
    );
    let reparsed: toml::Table = toml::from_str(&rendered).unwrap();
    assert_eq!(reparsed["registration"]["port"].as_integer(), Some(8080));
}

#[test]
fn value_equal_to_default_carries_no_source_comment() {
    let root = tempfile::tempdir().unwrap();
    let file = write(
        &root.path().join("c.toml"),
        &format!("{MINIMAL}[swap]\ndrain = \"5s\"\n"),
    );
    let rendered = load(&sources(root.path(), vec![file], None))
        .unwrap()
        .render();
    assert!(rendered.contains("drain = \"5s\"\n"), "{rendered}");
}

/// FleetLock servers accept groups matching `^[a-zA-Z0-9.-]+$` only: the fleetlock backend
/// defaults to `<app_id>-<track>` and refuses a group with `/`, naming the key and its line.
#[test]
fn fleetlock_backend_defaults_to_a_protocol_group_and_refuses_a_slash() {
    const FLEETLOCK: &str = "[instance]\nunit = \"web@1.service\"\n[registration]\nport = 8080\n\
        [update]\nserver = \"http://127.0.0.1:8000/v1/update/\"\napp_id = \"e96281a6-d1af-4bde-9a0a-97b76e56dc57\"\n\
        [slot]\nbackend = \"fleetlock\"\nfleetlock_url = \"http://127.0.0.1:9090/\"\n";
    let root = tempfile::tempdir().unwrap();
    let file = write(&root.path().join("c.toml"), FLEETLOCK);
    let s = load(&sources(root.path(), vec![file], None))
        .unwrap()
        .settings;
    assert_eq!(s.slot.group, "e96281a6-d1af-4bde-9a0a-97b76e56dc57-stable");

    let (file, err) = error_for(&format!("{FLEETLOCK}group = \"web/stable\"\n"));
    match &err {
        ConfigError::Invalid {
            key,
            origin,
            message,
        } => {
            assert_eq!(key, "slot.group");
            assert!(message.contains("^[a-zA-Z0-9.-]+$"), "{message}");
            assert!(
                origin
                    .as_ref()
                    .is_some_and(|o| o.to_string().contains(&format!("{}:11", file.display()))),
                "{origin:?}"
            );
        }
        other => panic!("expected an invalid slot.group, got {other:?}"),
    }
    let (_, err) = error_for(&format!("{FLEETLOCK}group = \"web_1\"\n"));
    assert!(err.to_string().contains("slot.group"), "{err}");
}

#[test]
fn the_control_socket_is_derived_from_the_unit_under_the_roots_runtime_dir_or_set_or_off() {
    let root = tempfile::tempdir().unwrap();
    let file = write(&root.path().join("c.toml"), MINIMAL);
    let loaded = load(&sources(root.path(), vec![file], None)).unwrap();
    let derived = root.path().join("run/sidekick/web@1/control.sock");
    assert_eq!(loaded.settings.daemon.control_socket, Some(derived.clone()));
    let rendered = loaded.render();
    assert!(
        rendered.contains(&format!(
            "control_socket = \"{}\"  # derived",
            derived.display()
        )),
        "{rendered}"
    );
    // Production: the root is `/`.
    let mut input = loaded.input.clone();
    input.daemon.runtime_dir = runtime_dir(Path::new("/"));
    let settings = Settings::validate(input, &Origins::new()).unwrap();
    assert_eq!(
        settings.daemon.control_socket,
        Some(PathBuf::from("/run/sidekick/web@1/control.sock"))
    );

    let set = |value: &str| {
        let text = format!("{MINIMAL}[daemon]\ncontrol_socket = \"{value}\"\n");
        let file = write(&root.path().join("set.toml"), &text);
        load(&sources(root.path(), vec![file], None))
    };
    let explicit = set("/run/web/ctl.sock").unwrap();
    assert_eq!(
        explicit.settings.daemon.control_socket,
        Some(PathBuf::from("/run/web/ctl.sock"))
    );
    assert!(
        explicit
            .render()
            .contains("control_socket = \"/run/web/ctl.sock\"  # from")
    );
    assert_eq!(set("").unwrap().settings.daemon.control_socket, None);
    let relative = set("ctl.sock").unwrap_err().to_string();
    assert!(
        relative.contains(
            "set.toml:8: key `daemon.control_socket`: `ctl.sock` must be an absolute path"
        ),
        "{relative}"
    );
    let long = format!("/run/{}/control.sock", "x".repeat(100));
    let too_long = set(&long).unwrap_err().to_string();
    assert!(
        too_long.contains("is 118 bytes long; a Unix socket path may have at most 107"),
        "{too_long}"
    );
}

#[test]
fn status_and_slots_settings_validate_only_what_they_read() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    // No unit, no port, updates on with no server: the daemon's settings are refused.
    let file = write(
        &r.join("etcd.toml"),
        "[etcd]\nendpoints = [\"http://10.0.0.1:2379\"]\n[registration]\nlayout = \"vulcand\"\n",
    );
    let only_etcd = sources(r, vec![file.clone()], None);
    assert!(load(&only_etcd).is_err());

    let status = load_as::<StatusSettings>(&only_etcd).unwrap();
    assert_eq!(status.etcd.endpoints[0].as_str(), "http://10.0.0.1:2379/");
    assert_eq!(status.registration.prefix, "/vulcand");

    // The slot group defaults to the app id, else the unit's service, else nothing names it.
    let slots = load_as::<SlotsSettings>(&only_etcd).unwrap();
    assert_eq!(slots.group, None);
    assert_eq!(slots.state_dir, Path::new("/var/lib/sidekick"));
    let with_unit = sources(r, vec![file.clone()], Some("api@2"));
    let slots = load_as::<SlotsSettings>(&with_unit).unwrap();
    assert_eq!(slots.group.as_deref(), Some("api/stable"));
    let app = write(&r.join("app.toml"), "[update]\napp_id = \"web-app\"\n");
    let with_app = sources(r, vec![file.clone(), app], Some("api@2"));
    let slots = load_as::<SlotsSettings>(&with_app).unwrap();
    assert_eq!(slots.group.as_deref(), Some("web-app/stable"));

    // A section they read is still checked, with its file and line.
    let bad = write(&r.join("bad.toml"), "[etcd]\ntimeout = \"0s\"\n");
    let err = load_as::<StatusSettings>(&sources(r, vec![bad], None)).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "{}:2: key `etcd.timeout`",
            r.join("bad.toml").display()
        )),
        "{err}"
    );
}

#[test]
fn instance_dropins_apply_after_shared_ones_and_hide_shared_files_of_their_name() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let shared = r.join("etc/sidekick/config.d");
    write(&shared.join("10-base.toml"), MINIMAL);
    write(&shared.join("20-site.toml"), "[swap]\ndrain = \"9s\"\n");
    // A shared file sorting after the instance's files still applies before them.
    write(
        &shared.join("90-late.toml"),
        "[registration]\nport = 9000\n",
    );
    write(
        &r.join("usr/lib/sidekick/config.d/web@2/10-port.toml"),
        "[registration]\nport = 7000\n",
    );
    // /etc beats /usr/lib for the same name in the instance directory too.
    write(
        &shared.join("web@2/10-port.toml"),
        "[registration]\nport = 8082\n[health]\nrise = 4\n",
    );
    // The instance's 20-site.toml hides the shared one: its drain does not apply.
    write(
        &shared.join("web@2/20-site.toml"),
        "[etcd]\ntimeout = \"3s\"\n",
    );
    // A /dev/null link in the instance directory hides a shared file for this instance only.
    write(&shared.join("30-rise.toml"), "[health]\nfall = 7\n");
    symlink("/dev/null", shared.join("web@2/30-rise.toml")).unwrap();
    write(
        &shared.join("web@3/10-port.toml"),
        "[registration]\nport = 8083\n",
    );

    let two = load(&sources(r, vec![], Some("web@2.service"))).unwrap();
    assert_eq!(two.settings.registration.port, 8082);
    assert_eq!(two.settings.health.rise.get(), 4);
    assert_eq!(two.settings.health.fall.get(), 2, "masked for web@2");
    assert_eq!(two.settings.swap.drain, Duration::from_secs(5), "hidden");
    assert_eq!(two.settings.etcd.timeout, Duration::from_secs(3));
    assert_eq!(
        two.origins["registration.port"],
        Origin::File {
            path: shared.join("web@2/10-port.toml"),
            line: 2
        }
    );
    assert_eq!(
        two.files.last().unwrap(),
        &shared.join("web@2/20-site.toml")
    );

    // Another instance sees only its own directory; the flag may omit ".service".
    let three = load(&sources(r, vec![], Some("web@3"))).unwrap();
    assert_eq!(three.settings.registration.port, 8083);
    assert_eq!(three.settings.swap.drain, Duration::from_secs(9));
    assert_eq!(three.settings.health.fall.get(), 7);

    // The unit named in a shared drop-in (10-base: web@1) selects web@1/, which does not exist.
    let one = load(&sources(r, vec![], None)).unwrap();
    assert_eq!(one.settings.registration.port, 9000);

    // --config files still win over the instance's drop-ins.
    let file = write(&r.join("x.toml"), "[registration]\nport = 8999\n");
    let flagged = load(&sources(r, vec![file], Some("web@2.service"))).unwrap();
    assert_eq!(flagged.settings.registration.port, 8999);
}

#[test]
fn an_instance_name_that_cannot_be_a_directory_reads_no_instance_dropins() {
    assert_eq!(sources::instance_dir_name("web@2.service"), Some("web@2"));
    assert_eq!(sources::instance_dir_name("web@2"), Some("web@2"));
    assert_eq!(sources::instance_dir_name("../x.service"), None);
    assert_eq!(sources::instance_dir_name(".service"), None);
    assert_eq!(sources::instance_dir_name(".."), None);
}

#[test]
fn every_bad_value_of_a_file_is_named_in_one_run_in_line_order() {
    let (file, err) = error_for(
        "[instance]\nunit = \"web@1\"\n[registration]\nport = 8080\nbogus = 1\nttl = \"15\"\n[swap]\ndrain = \"5 parsecs\"\n",
    );
    let ConfigError::Many(errors) = &err else {
        panic!("expected several errors, got {err:?}");
    };
    let found: Vec<(usize, Option<&str>)> = errors
        .iter()
        .map(|e| match e {
            ConfigError::Parse { line, key, .. } => (*line, key.as_deref()),
            other => panic!("expected parse errors, got {other:?}"),
        })
        .collect();
    assert_eq!(
        found,
        [
            (5, Some("registration.bogus")),
            (6, Some("registration.ttl")),
            (8, Some("swap.drain"))
        ]
    );
    let text = err.to_string();
    assert!(text.starts_with("3 errors:\n  "), "{text}");
    assert!(text.contains(&format!("{}:6: key `registration.ttl`", file.display())));
}

#[test]
fn a_duration_without_a_unit_shows_one_with_it() {
    let (_, err) = error_for("[instance]\nunit = \"web@1\"\n[registration]\nttl = \"15\"\n");
    assert!(err.to_string().ends_with("e.g. \"15s\""), "{err}");
}

#[test]
fn every_invalid_section_is_named_in_one_run() {
    let (_, err) = error_for(
        "[instance]\nunit = \"web@1\"\n[registration]\nport = 8080\n[health]\nrise = 0\n[update]\nserver = \"ftp://x\"\n[daemon]\nstate_dir = \"relative\"\n",
    );
    let ConfigError::Many(errors) = &err else {
        panic!("expected several errors, got {err:?}");
    };
    let keys: Vec<&str> = errors
        .iter()
        .map(|e| match e {
            ConfigError::Invalid { key, .. } => key.as_str(),
            other => panic!("expected invalid values, got {other:?}"),
        })
        .collect();
    assert_eq!(keys, ["health.rise", "update.server", "daemon.state_dir"]);
}

#[test]
fn bad_files_are_all_named_in_one_run() {
    let root = tempfile::tempdir().unwrap();
    let a = write(&root.path().join("a.toml"), "[swap]\ndrain = \"x\"\n");
    let b = write(&root.path().join("b.toml"), "[etcd]\ntimeout = \"9\"\n");
    let err = load(&sources(root.path(), vec![a.clone(), b.clone()], None)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&format!("{}:2", a.display())), "{text}");
    assert!(text.contains(&format!("{}:2", b.display())), "{text}");
}

#[test]
fn swap_prune_is_an_argv_with_image_or_empty_and_a_bad_one_is_named() {
    let (_, err) =
        error_for("[instance]\nunit = \"web@1\"\n[swap]\nprune = [\"docker\", \"rmi\"]\n");
    assert!(err.to_string().contains("swap.prune"), "{err}");
    assert!(err.to_string().contains("{image}"), "{err}");
    let (_, err) =
        error_for("[instance]\nunit = \"web@1\"\n[swap]\nprune = [\" \", \"{image}\"]\n");
    assert!(err.to_string().contains("swap.prune"), "{err}");
    let (_, err) = error_for("[instance]\nunit = \"web@1\"\n[swap]\nprune = [\"rm\", \"{tag}\"]\n");
    assert!(
        err.to_string().contains("unknown placeholder `tag`"),
        "{err}"
    );
    let root = tempfile::tempdir().unwrap();
    let file = write(
        &root.path().join("off.toml"),
        "[instance]\nunit = \"web@1\"\n[registration]\nenabled = false\n\
         [update]\nenabled = false\n[health]\ncheck = \"none\"\n[swap]\nprune = []\n",
    );
    let loaded = load(&sources(root.path(), vec![file], None)).unwrap();
    assert!(loaded.settings.swap.prune.is_empty());
}
