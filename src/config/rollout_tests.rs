//! `[rollout]` in files: defaults, every key set, windows adding up across files, and each
//! refusal naming the file, line and key.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{ConfigSources, load};
use crate::rollout::{Promote, ZoneName};

const MINIMAL: &str = "[instance]\nunit = \"web@1.service\"\n[registration]\nport = 8080\n[update]\nenabled = false\n";

fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).expect("write");
    path
}

fn load_files(dir: &Path, texts: &[&str]) -> Result<crate::config::LoadedConfig, String> {
    let mut files = vec![file(dir, "0.toml", MINIMAL)];
    for (i, text) in texts.iter().enumerate() {
        files.push(file(dir, &format!("{}.toml", i + 1), text));
    }
    let sources = ConfigSources {
        root: dir.to_path_buf(),
        files,
        unit: None,
    };
    load(&sources).map_err(|e| e.to_string())
}

fn refusal(text: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    load_files(dir.path(), &[text]).expect_err("refused")
}

#[test]
fn without_a_rollout_section_the_issue_defaults_apply() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = load_files(dir.path(), &[]).expect("valid").settings.rollout;
    assert_eq!(p.min_healthy, Duration::from_secs(10));
    assert_eq!(p.monitor, Duration::ZERO);
    assert_eq!(p.canary, 0);
    assert_eq!(p.canary_bake, Duration::ZERO);
    assert_eq!(p.promote, Promote::Auto);
    assert_eq!(p.max_failures.get(), 1);
    assert_eq!(p.batch_delay, Duration::ZERO);
    assert_eq!(p.time_zone, ZoneName::Utc);
    assert!(p.windows.is_empty());
}

#[test]
fn every_key_is_read_and_windows_add_up_across_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = "[rollout]\nmin_healthy = \"25s\"\nmonitor = \"1m\"\ncanary = 1\ncanary_bake = \"5m\"\n\
                 promote = \"manual\"\nmax_failures = 2\nbatch_delay = \"10s\"\n\
                 time_zone = \"Europe/Berlin\"\n\n[[rollout.window]]\ndays = [\"Mon\", \"tuesday\"]\n\
                 start_time = \"02:00\"\nlength_minutes = 120\n";
    let second =
        "[[rollout.window]]\ndays = [\"Sun\"]\nstart_time = \"23:30\"\nlength_minutes = 60\n";
    let loaded = load_files(dir.path(), &[first, second]).expect("valid");
    let p = &loaded.settings.rollout;
    assert_eq!(p.min_healthy, Duration::from_secs(25));
    assert_eq!(p.monitor, Duration::from_secs(60));
    assert_eq!((p.canary, p.max_failures.get()), (1, 2));
    assert_eq!(p.canary_bake, Duration::from_secs(300));
    assert_eq!(p.promote, Promote::Manual);
    assert_eq!(p.batch_delay, Duration::from_secs(10));
    assert_eq!(p.time_zone, ZoneName::Iana("Europe/Berlin".into()));
    assert_eq!(p.windows.len(), 2);
    assert_eq!((p.windows[0].start, p.windows[0].length), (120, 120));
    assert_eq!(p.windows[0].days.len(), 2);
    assert_eq!(
        (p.windows[1].start, p.windows[1].length),
        (23 * 60 + 30, 60)
    );
    // check-config shows the section, with where each value came from.
    let shown = loaded.render();
    assert!(shown.contains("[rollout]"), "{shown}");
    assert!(shown.contains("canary = 1  # from"), "{shown}");
    assert!(shown.contains("[[rollout.window]]"), "{shown}");
    assert!(shown.contains("start_time = \"23:30\""), "{shown}");
}

#[test]
fn localtime_is_accepted_as_zincati_accepts_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = load_files(dir.path(), &["[rollout]\ntime_zone = \"localtime\"\n"])
        .expect("valid")
        .settings
        .rollout;
    assert_eq!(p.time_zone, ZoneName::Local);
}

/// Each bad value, the line it is on in its file (`1.toml`), the key named and a word of why.
#[test]
fn each_bad_value_is_refused_with_its_file_line_and_key() {
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "[rollout]\nmin_healthy = \"2h\"\n",
            2,
            "rollout.min_healthy",
            "between 0s and 1h",
        ),
        (
            "[rollout]\nmin_healthy = \"soon\"\n",
            2,
            "rollout.min_healthy",
            "",
        ),
        (
            "[rollout]\nmonitor = \"25h\"\n",
            2,
            "rollout.monitor",
            "between 0s and 1day",
        ),
        (
            "[rollout]\ncanary_bake = \"8days\"\n",
            2,
            "rollout.canary_bake",
            "between 0s and 7days",
        ),
        (
            "[rollout]\nbatch_delay = \"2days\"\n",
            2,
            "rollout.batch_delay",
            "between 0s and 1day",
        ),
        (
            "[rollout]\ncanary = 1001\n",
            2,
            "rollout.canary",
            "between 0 and 1000",
        ),
        ("[rollout]\ncanary = -1\n", 2, "rollout.canary", ""),
        (
            "[rollout]\nmax_failures = 0\n",
            2,
            "rollout.max_failures",
            "between 1 and 1000",
        ),
        (
            "[rollout]\npromote = \"later\"\n",
            2,
            "rollout.promote",
            "unknown variant",
        ),
        (
            "[rollout]\ntime_zone = \"Mars/Olympus\"\n",
            2,
            "rollout.time_zone",
            "IANA",
        ),
        (
            "[rollout]\nspeed = 1\n",
            2,
            "rollout",
            "unknown field `speed`",
        ),
        (
            "[rollout]\n[[rollout.window]]\ndays = []\nstart_time = \"02:00\"\nlength_minutes = 1\n",
            3,
            "rollout.window[0].days",
            "at least one day",
        ),
        (
            "[[rollout.window]]\ndays = [\"Someday\"]\nstart_time = \"02:00\"\nlength_minutes = 1\n",
            2,
            "rollout.window[0].days",
            "`Someday` is not a weekday",
        ),
        (
            "[[rollout.window]]\ndays = [\"Mon\"]\nstart_time = \"24:00\"\nlength_minutes = 1\n",
            3,
            "rollout.window[0].start_time",
            "hh:mm",
        ),
        (
            "[[rollout.window]]\ndays = [\"Mon\"]\nstart_time = \"2:00\"\nlength_minutes = 1\n",
            3,
            "rollout.window[0].start_time",
            "hh:mm",
        ),
        (
            "[[rollout.window]]\ndays = [\"Mon\"]\nstart_time = \"02:00\"\nlength_minutes = 0\n",
            4,
            "rollout.window[0].length_minutes",
            "between 1 and 10080",
        ),
        (
            "[[rollout.window]]\ndays = [\"Mon\"]\nstart_time = \"02:00\"\nlength_minutes = 1\n\n[[rollout.window]]\ndays = [\"Tue\"]\nstart_time = \"02:00\"\nlength_minutes = 10081\n",
            9,
            "rollout.window[1].length_minutes",
            "a week",
        ),
        (
            "[[rollout.window]]\ndays = [\"Mon\"]\nstart_time = \"02:00\"\n",
            1,
            "rollout.window",
            "missing field `length_minutes`",
        ),
        (
            "[[rollout.window]]\ndays = [\"Mon\"]\nstart_time = \"02:00\"\nlength_minutes = 5\nevery = 2\n",
            5,
            "rollout.window[0]",
            "unknown field `every`",
        ),
    ];
    for (text, line, key, why) in cases {
        let err = refusal(text);
        assert!(err.contains(&format!("1.toml:{line}:")), "{text}\n=> {err}");
        assert!(err.contains(&format!("key `{key}")), "{text}\n=> {err}");
        assert!(err.contains(why), "{text}\n=> {err}");
    }
}

#[test]
fn a_bad_window_in_a_later_file_is_numbered_after_the_earlier_files_windows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = "[[rollout.window]]\ndays = [\"Mon\"]\nstart_time = \"02:00\"\nlength_minutes = 5\n";
    let bad =
        "\n[[rollout.window]]\ndays = [\"Mon\"]\nstart_time = \"99:00\"\nlength_minutes = 5\n";
    let err = load_files(dir.path(), &[good, bad]).expect_err("refused");
    assert!(
        err.contains("2.toml:4: key `rollout.window[1].start_time`"),
        "{err}"
    );
}
