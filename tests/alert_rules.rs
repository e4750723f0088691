//! The shipped Prometheus alert rules (`examples/prometheus/sidekick.rules.yml`): the real
//! `promtool` accepts them (`check rules`) and their unit tests pass (`test rules`: each alert
//! fires when it should and stays silent when it should not), and every metric and label value
//! they select is one the sidekick exports, so a renamed metric cannot leave an alert that never
//! fires.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Need, find_binary, prerequisites_met, run};

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/prometheus")
}

fn promtool(args: &[&str]) -> String {
    let promtool = find_binary("promtool").expect("promtool");
    run(Command::new(promtool).args(args).current_dir(rules_dir()))
}

#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() {
    if !prerequisites_met(&[Need::Binary("promtool")]) {
        return;
    }
    let checked = promtool(&["check", "rules", "sidekick.rules.yml"]);
    let alerts = alert_names(&rules_text());
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{checked}"
    );
    let tested = promtool(&["test", "rules", "sidekick.rules.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Shown with --nocapture.
    eprintln!("{checked}{tested}");
}

#[test]
fn every_alert_has_a_unit_test_that_expects_it_to_fire_and_one_that_expects_silence() {
    let tests = std::fs::read_to_string(rules_dir().join("sidekick.rules.test.yml")).unwrap();
    for alert in alert_names(&rules_text()) {
        let evals: Vec<&str> = tests
            .split("- eval_time:")
            .skip(1)
            .filter(|eval| eval.contains(&format!("alertname: {alert}\n")))
            .collect();
        assert!(
            evals.iter().any(|e| e.contains("exp_labels:")),
            "no test expects {alert} to fire"
        );
        assert!(
            evals.iter().any(|e| e.contains("exp_alerts: []")),
            "no test expects {alert} to stay silent"
        );
    }
}

#[test]
fn every_metric_and_label_value_the_rules_select_is_exported() {
    let exported = exported_sample_names();
    let sources = source_text(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let selectors = selectors(&rules_text());
    assert!(!selectors.is_empty(), "no sidekick_ metric in the rules");
    for (name, matchers) in selectors {
        assert!(
            exported.contains(&name),
            "the rules select {name}, which the sidekick does not export: {exported:?}"
        );
        for (label, value) in matchers {
            assert!(
                sources.contains(&format!("\"{value}\"")),
                "the rules select {name}{{{label}=\"{value}\"}}, but no source file sets \
                 the value {value:?}"
            );
        }
    }
}

fn rules_text() -> String {
    std::fs::read_to_string(rules_dir().join("sidekick.rules.yml")).unwrap()
}

fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .map(str::to_string)
        .collect()
}

/// The sample names a scrape can hold, from the registry's `# TYPE` lines in the classic text
/// format that Prometheus stores (counters with `_total`, histograms with their suffixes).
/// A labelled family is encoded only once it has a child, so each gets one (any label value:
/// only the names are read here).
fn exported_sample_names() -> BTreeSet<String> {
    let metrics = sidekick::metrics::Metrics::new();
    metrics.set_phase("serving");
    metrics.update_checked("no-update");
    metrics.swap_finished("updated");
    metrics.swap_step("drain", std::time::Duration::from_secs(1));
    metrics.set_version("1.0.0");
    metrics.set_step_started(Some(("slot", 0)));
    metrics.rollout().set_stage("g", "1.0.0", "rolling");
    let text = sidekick::metrics::prometheus_text(&metrics.encode());
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// Every `sidekick_…{label="value", label!="value", label=~"a|b"}` in the rules' `expr:` blocks.
fn selectors(rules: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut exprs = String::new();
    let mut in_expr = false;
    for line in rules.lines() {
        let key = line.trim_start();
        if key.starts_with("expr:") {
            in_expr = true;
        } else if ["for:", "labels:", "annotations:", "- alert:"]
            .iter()
            .any(|k| key.starts_with(k))
        {
            in_expr = false;
        }
        if in_expr && !key.starts_with('#') {
            exprs.push_str(line);
            exprs.push('\n');
        }
    }
    let mut found = Vec::new();
    let mut rest = exprs.as_str();
    while let Some(at) = rest.find("sidekick_") {
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = rest[..end].to_string();
        rest = &rest[end..];
        let mut matchers = Vec::new();
        if let Some(body) = rest.strip_prefix('{') {
            let (inside, after) = body.split_once('}').expect("a closed label selector");
            for matcher in inside.split(',') {
                let (label, value) = ["!~", "=~", "!="]
                    .iter()
                    .find_map(|op| matcher.split_once(op))
                    .or_else(|| matcher.split_once('='))
                    .unwrap_or_else(|| panic!("a label matcher: {matcher}"));
                // A regex matcher here is only ever a list of values (`a|b`): each must exist.
                for value in value.trim().trim_matches('"').split('|') {
                    matchers.push((label.trim().to_string(), value.into()));
                }
            }
            rest = after;
        }
        found.push((name, matchers));
    }
    found
}

/// All Rust source under `dir`, concatenated.
fn source_text(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            text.push_str(&source_text(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            text.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    text
}
