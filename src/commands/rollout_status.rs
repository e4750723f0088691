//! `sidekick rollout status [--json] [--wait [--timeout D]]`: the group's newest rollout as the
//! pure [`stage`] sees it; `--wait` follows etcd watch events (and the next time a stage can
//! change by itself: a bake's end, a window's opening) until the stage ends the wait.

use std::process::ExitCode;
use std::time::Duration;

use etcd_client::{Client, WatchOptions};
use jiff::Timestamp;
use serde_json::json;

use crate::config::rollout::RolloutSettings;
use crate::rollout::decide::{GroupView, MEASURED_SWAPS, Stage, stage, swap_floor};
use crate::rollout::gate::rollout_target;
use crate::rollout::state::p95_swap;
use crate::rollout::store::{self, GroupSnapshot};
use crate::rollout::window::{Schedule, WindowState};

/// Exit code of `--wait` when the timeout passes.
pub const EXIT_TIMEOUT: u8 = 4;

pub struct How {
    pub json: bool,
    pub wait: bool,
    pub timeout: Option<Duration>,
}

/// What the status shows of one snapshot.
struct Report {
    stage: Option<Stage>,
    line: String,
    /// The line without what moves with the clock (the ETA): a change is a change of this.
    key: String,
    /// `[###---] 1/3`: how many instances serve the version.
    bar: String,
    json: serde_json::Value,
}

/// A progress bar of `done` of `total` instances, 20 cells wide.
fn progress_bar(done: usize, total: usize) -> String {
    const WIDTH: usize = 20;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(0).min(WIDTH);
    format!(
        "[{}{}] {done}/{total}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled)
    )
}

fn fmt_time(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "never within a week".into(), |t| t.to_string())
}

fn report(settings: &RolloutSettings, group: &str, snap: &GroupSnapshot, now: Timestamp) -> Report {
    let policy = store::effective(snap.stored_policy.as_ref(), &settings.policy);
    let source = if snap.stored_policy.is_some() {
        "stored"
    } else {
        "configured"
    };
    let schedule = Schedule::new(&policy.windows, policy.time_zone.zone());
    let floor = swap_floor(
        settings.swap_bounds,
        Default::default(),
        Default::default(),
        policy.min_healthy,
    );
    let estimate = p95_swap(&snap.versions, MEASURED_SWAPS).unwrap_or(floor);
    let window = match schedule.state_at(now) {
        WindowState::Unrestricted => "no window".to_string(),
        WindowState::Open { closes, .. } => format!("window open until {}", fmt_time(closes)),
        WindowState::Closed { opens } => format!("next window opens {}", fmt_time(opens)),
    };
    let mut json = json!({
        "group": group,
        "policy_source": source,
        "policy": policy.to_text(),
        "paused": snap.paused,
        "halt": snap.halt,
        "swap_estimate_secs": estimate.as_secs_f64(),
        "window": window,
        "instances": snap.instances.len(),
    });
    let mut head = format!("group {group}: policy {source}; {window}");
    if let Some(warning) = disagreement(snap) {
        head.push_str(&format!("; WARNING: {warning}"));
        json["policy_warning"] = json!(warning);
    }
    if let Some(p) = &snap.paused {
        head.push_str(&format!("; paused by {} since {}", p.by, p.since));
    }
    if let Some(h) = &snap.halt {
        head.push_str(&format!(
            "; halted at {} by {}: {}",
            h.version, h.instance, h.reason
        ));
    }
    let Some((version, state)) = rollout_target(snap) else {
        json["stage"] = json!("none");
        let line = format!("{head}; no rollout recorded");
        return Report {
            stage: None,
            key: line.clone(),
            line,
            bar: progress_bar(0, snap.instances.len()),
            json,
        };
    };
    let (serving, instances) = crate::rollout::gate::serving_counts(snap, version);
    let view = GroupView {
        policy,
        paused: snap.paused.is_some(),
        halted: snap.halt.as_ref().map(|h| h.reason.as_str()),
        version: state,
        last_release: snap.versions.iter().filter_map(|v| v.last_release()).max(),
        // A one-shot command saw nothing before: the bake and the gap show on the writers' clocks.
        release_seen: None,
        wave_seen: None,
        swap_estimate: estimate,
        superseded_by: crate::rollout::gate::superseded_by(snap, version),
    };
    let stage = stage(&view, &schedule, serving, instances, now);
    let remaining = instances.saturating_sub(serving);
    let eta = crate::rollout::gate::eta(&stage, remaining, estimate, policy.batch_delay, now);
    let (claimed, passed, failed) = state.map_or((0, 0, 0), |s| {
        (s.canaries.len(), s.canaries_passed(), s.failed_instances())
    });
    json["eta"] = json!(eta);
    json["version"] = json!(version);
    json["recorded"] = json!(state.is_some());
    json["stage"] = json!(stage.name());
    json["detail"] = json!(detail(&stage));
    json["serving"] = json!(serving);
    json["canaries"] = json!({"wanted": policy.canary, "claimed": claimed, "passed": passed});
    json["failures"] = json!(state.map_or(0, |s| s.failures.len()));
    json["promoted"] = json!(state.and_then(|s| s.promoted.as_ref()));
    // A version instances wait for with nothing recorded: say so, and how to let it through
    // (`rollout promote` without a version refuses it, so the version must be named).
    let unrecorded = match (state, &stage) {
        (Some(_), _) => String::new(),
        (None, Stage::AwaitingPromotion) => format!(
            " (nothing recorded yet; instances wait for a slot for it: \
             `sidekick rollout promote {version}`)"
        ),
        (None, _) => " (nothing recorded yet; instances wait for a slot for it)".into(),
    };
    let line = format!(
        "{head}; version {version}{unrecorded}: {}; {serving} of {} instances serve it; \
         canaries {passed}/{} passed; failures {failed}/{}",
        detail(&stage),
        instances,
        policy.canary,
        policy.max_failures
    );
    let key = line.clone();
    let line = match eta {
        Some(eta) => format!(
            "{line}; ETA {eta} ({remaining} left × p95 swap {})",
            humantime::format_duration(Duration::from_secs(estimate.as_secs()))
        ),
        None => line,
    };
    let bar = progress_bar(serving, instances);
    json["instances"] = json!(instances);
    Report {
        stage: Some(stage),
        line,
        key,
        bar,
        json,
    }
}

/// With no stored policy each instance enforces its own `[rollout]`: when their hashes differ,
/// which instances enforce which.
fn disagreement(snap: &GroupSnapshot) -> Option<String> {
    if snap.stored_policy.is_some() {
        return None;
    }
    let mut by_hash: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (name, record) in &snap.instances {
        if let Some(hash) = &record.policy {
            by_hash.entry(hash).or_default().push(name);
        }
    }
    (by_hash.len() > 1).then(|| {
        let groups: Vec<String> = by_hash
            .iter()
            .map(|(hash, names)| format!("{hash} on {}", names.join(", ")))
            .collect();
        format!(
            "the instances enforce different [rollout] policies ({}) and none is stored \
             (`sidekick rollout set` stores one for all)",
            groups.join("; ")
        )
    })
}

fn detail(stage: &Stage) -> String {
    match stage {
        Stage::Done => "done".into(),
        Stage::Halted(why) => format!("halted: {why}"),
        Stage::Failed { failed, max } => {
            format!("failed: {failed} instances failed (max_failures {max})")
        }
        Stage::Paused => "paused".into(),
        Stage::AwaitingPromotion => "awaiting promotion (`sidekick rollout promote`)".into(),
        Stage::Canaries {
            passed,
            failed,
            wanted,
        } => {
            format!("canaries: {passed} of {wanted} passed, {failed} failed")
        }
        Stage::Baking { until } => format!("baking until {until}"),
        Stage::WaitingForWindow { opens } => {
            format!("waiting for a window that opens {}", fmt_time(*opens))
        }
        Stage::WindowTooShort { closes, needs } => format!(
            "the window closes at {closes}, before a swap of {} would end",
            humantime::format_duration(*needs)
        ),
        Stage::Rolling => "rolling".into(),
    }
}

/// When the stage can change without an etcd event.
fn wakes_at(stage: Option<&Stage>) -> Option<Timestamp> {
    match stage? {
        Stage::Baking { until } => Some(*until),
        Stage::WaitingForWindow { opens } => *opens,
        _ => None,
    }
}

/// Prints `r`: as JSON, as one line, or on a terminal while waiting as a live bar that the
/// next change redraws in place.
fn print(how: &How, r: &Report) {
    if how.json {
        println!("{}", r.json);
    } else if live(how) {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        // Back to the line's start and clear it: the bar is redrawn, not scrolled.
        let _ = write!(out, "\r\x1b[2K{} {}", r.bar, r.line);
        let _ = out.flush();
    } else {
        println!("{}", r.line);
    }
}

/// Whether the status redraws one live line: `--wait` on a terminal, not `--json`.
fn live(how: &How) -> bool {
    use std::io::IsTerminal as _;
    how.wait && !how.json && std::io::stdout().is_terminal()
}

/// Ends the live line before the command exits.
fn finish(how: &How, code: ExitCode) -> ExitCode {
    if live(how) {
        println!();
    }
    code
}

pub async fn run(
    client: &mut Client,
    settings: &RolloutSettings,
    group: &str,
    how: How,
) -> ExitCode {
    let read = |client: &mut Client| {
        let mut c = client.clone();
        async move { store::read_group(&mut c, group).await }
    };
    let mut snap = match read(client).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sidekick: failed to read the rollout of group {group}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut shown = report(settings, group, &snap, Timestamp::now());
    print(&how, &shown);
    if !how.wait {
        return ExitCode::SUCCESS;
    }
    let deadline = how.timeout.map(|t| tokio::time::Instant::now() + t);
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(snap.revision + 1);
    let mut stream = match client.watch("/sidekick/", Some(options)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sidekick: failed to watch etcd: {e}");
            return finish(&how, ExitCode::FAILURE);
        }
    };
    loop {
        if let Some(code) = shown.stage.as_ref().and_then(Stage::wait_exit) {
            return finish(&how, ExitCode::from(code));
        }
        let wake = wakes_at(shown.stage.as_ref()).map(|t| {
            let left = Duration::try_from(t.duration_since(Timestamp::now())).unwrap_or_default();
            tokio::time::Instant::now() + left + Duration::from_millis(10)
        });
        let until = match (deadline, wake) {
            (Some(d), Some(w)) => Some(d.min(w)),
            (d, w) => d.or(w),
        };
        let sleep = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(resp)) if resp.canceled() => {
                    eprintln!("sidekick: etcd cancelled the watch: {}", resp.cancel_reason());
                    return finish(&how, ExitCode::FAILURE);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    eprintln!("sidekick: the etcd watch ended");
                    return finish(&how, ExitCode::FAILURE);
                }
            },
            () = sleep => {
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    eprintln!("sidekick: rollout of group {group} not done within the timeout");
                    return finish(&how, ExitCode::from(EXIT_TIMEOUT));
                }
            }
        }
        snap = match read(client).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sidekick: failed to read the rollout of group {group}: {e}");
                return finish(&how, ExitCode::FAILURE);
            }
        };
        let next = report(settings, group, &snap, Timestamp::now());
        if next.key != shown.key {
            print(&how, &next);
        }
        shown = next;
    }
}
