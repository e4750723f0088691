//! `sidekick rollout set|pause|resume|promote|history|status`: an operator's and a pipeline's
//! hands on a group's rollout policy and state in etcd (`crate::rollout::store`).

use std::process::ExitCode;

use etcd_client::Client;
use jiff::Timestamp;

use crate::cli::RolloutAction;
use crate::config::ConfigSources;
use crate::config::rollout::RolloutSettings;
use crate::rollout::PolicyText;
use crate::rollout::gate::rollout_target;
use crate::rollout::state::{VersionState, p95_swap};
use crate::rollout::store::{self, GroupSnapshot};

/// `sidekick rollout …`.
pub async fn run(sources: &ConfigSources, action: &RolloutAction) -> ExitCode {
    let settings = match super::load_settings::<RolloutSettings>(sources) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (RolloutAction::Set { group, .. }
    | RolloutAction::Pause { group }
    | RolloutAction::Resume { group }
    | RolloutAction::Promote { group, .. }
    | RolloutAction::History { group }
    | RolloutAction::Status { group, .. }) = action;
    let Some(group) = group.as_deref().or(settings.slots.group.as_deref()) else {
        eprintln!(
            "sidekick: no group: pass --group, or set slot.group or update.app_id in the \
             configuration"
        );
        return ExitCode::from(super::EXIT_CONFIG);
    };
    // A bad KEY=VALUE is a bad configuration: refuse it before reaching etcd.
    if let RolloutAction::Set {
        clear: false,
        settings: pairs,
        ..
    } = action
        && let Err(message) = edited(&PolicyText::default(), pairs)
    {
        eprintln!("sidekick: {message}");
        return ExitCode::from(super::EXIT_CONFIG);
    }
    if let RolloutAction::Promote {
        target: Some(version),
        ..
    } = action
        && let Err(message) = promotable(version)
    {
        eprintln!("sidekick: {message}");
        return ExitCode::from(super::EXIT_CONFIG);
    }
    let mut client = match super::connect(&settings.slots.etcd).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = match action {
        RolloutAction::Set { clear: true, .. } => clear(&mut client, group).await,
        RolloutAction::Set {
            settings: pairs, ..
        } => set(&mut client, &settings, group, pairs).await,
        RolloutAction::Pause { .. } => pause(&mut client, group).await,
        RolloutAction::Resume { .. } => resume(&mut client, group).await,
        RolloutAction::Promote { target, .. } => {
            promote(&mut client, group, target.as_deref()).await
        }
        RolloutAction::History { .. } => history(&mut client, group).await,
        RolloutAction::Status {
            json,
            wait,
            timeout,
            ..
        } => {
            let how = super::rollout_status::How {
                json: *json,
                wait: *wait,
                timeout: *timeout,
            };
            return super::rollout_status::run(&mut client, &settings, group, how).await;
        }
    };
    match result {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("sidekick: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `base` with each `KEY=VALUE` applied, validated; the first `window=` replaces the windows.
fn edited(base: &PolicyText, pairs: &[String]) -> Result<PolicyText, String> {
    let mut text = base.clone();
    let mut windows_given = false;
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("`{pair}` is not KEY=VALUE"));
        };
        if key == "window" && !windows_given {
            text.window.clear();
            windows_given = true;
        }
        text.set(key, value)
            .map_err(|e| format!("rollout set: {e}"))?;
    }
    text.validate().map_err(|e| format!("rollout set: {e}"))?;
    Ok(text)
}

/// Who runs the command, for the pause and promotion records.
fn operator() -> String {
    std::env::var("USER").unwrap_or_else(|_| "operator".into())
}

async fn snapshot(client: &mut Client, group: &str) -> Result<GroupSnapshot, String> {
    store::read_group(client, group)
        .await
        .map_err(|e| format!("failed to read the rollout of group {group}: {e}"))
}

async fn set(
    client: &mut Client,
    settings: &RolloutSettings,
    group: &str,
    pairs: &[String],
) -> Result<String, String> {
    let stored = snapshot(client, group).await?.stored_policy;
    let base = store::effective(stored.as_ref(), &settings.policy).to_text();
    let policy = edited(&base, pairs)?
        .validate()
        .map_err(|e| format!("rollout set: {e}"))?;
    let replaced = store::set_policy(client, group, &policy)
        .await
        .map_err(|e| format!("failed to store the policy of group {group}: {e}"))?;
    let json = serde_json::to_string(&policy.to_text()).unwrap_or_default();
    let was = if replaced {
        "replacing the stored one"
    } else {
        "over each sidekick's [rollout]"
    };
    Ok(format!(
        "stored the rollout policy of group {group} ({was}): {json}"
    ))
}

async fn clear(client: &mut Client, group: &str) -> Result<String, String> {
    match store::clear_policy(client, group).await {
        Ok(true) => Ok(format!(
            "removed the stored rollout policy of group {group}: each sidekick's [rollout] applies"
        )),
        Ok(false) => Ok(format!(
            "group {group} has no stored rollout policy; nothing to remove"
        )),
        Err(e) => Err(format!("failed to remove the policy of group {group}: {e}")),
    }
}

async fn pause(client: &mut Client, group: &str) -> Result<String, String> {
    let p = store::pause(client, group, &operator())
        .await
        .map_err(|e| format!("failed to pause group {group}: {e}"))?;
    Ok(format!(
        "group {group} is paused (by {} since {}): no new slot is taken; swaps under way finish",
        p.by, p.since
    ))
}

async fn resume(client: &mut Client, group: &str) -> Result<String, String> {
    let (paused, halt) = store::resume(client, group)
        .await
        .map_err(|e| format!("failed to resume group {group}: {e}"))?;
    let mut lifted = Vec::new();
    if let Some(p) = paused {
        lifted.push(format!("the pause by {}", p.by));
    }
    if let Some(m) = halt {
        lifted.push(format!(
            "the halt at version {} by {}: {}",
            m.version, m.instance, m.reason
        ));
    }
    Ok(match lifted.is_empty() {
        true => format!("group {group} is neither paused nor halted; nothing to resume"),
        false => format!("resumed group {group} (lifted {})", lifted.join(" and ")),
    })
}

/// A version as `rollout promote` takes it: it names a key under the group's rollouts, so it
/// is one path segment of printable characters.
fn promotable(version: &str) -> Result<(), String> {
    if version.is_empty()
        || version.len() > 128
        || version
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "rollout promote: `{version}` is not a version (1 to 128 characters, no `/`, no \
             spaces)"
        ));
    }
    Ok(())
}

async fn promote(
    client: &mut Client,
    group: &str,
    version: Option<&str>,
) -> Result<String, String> {
    let snap = snapshot(client, group).await?;
    let version = match version {
        Some(v) => v.to_string(),
        // Without a version: the one `rollout status` shows, only when its rollout is recorded.
        None => match rollout_target(&snap) {
            Some((newest, Some(_))) => newest.to_string(),
            Some((waited, None)) => {
                return Err(format!(
                    "no rollout of {waited} is recorded in group {group} yet (instances wait \
                     for a slot for it): name the version to promote it, `sidekick rollout \
                     promote --group {group} {waited}`"
                ));
            }
            None => {
                return Err(format!(
                    "no rollout is recorded in group {group}: name the version to promote, \
                     `sidekick rollout promote --group {group} VERSION`"
                ));
            }
        },
    };
    let by = operator();
    let now = Timestamp::now();
    let mut recorded_here = false;
    // Create-if-absent or compare-and-swap: an instance recording the version at the same time
    // makes this try again over what it wrote.
    let state = store::update_version(client, group, &version, |current| {
        recorded_here = current.is_none();
        VersionState::promoted(current, &version, &by, now)
    })
    .await
    .map_err(|e| format!("failed to promote {version} in group {group}: {e}"))?;
    let Some(p) = state.and_then(|s| s.promoted) else {
        return Err(format!(
            "version {version} of group {group} was not promoted: its state changed meanwhile"
        ));
    };
    let mut done = format!(
        "version {version} of group {group} is promoted (by {} at {}): the rest of the group \
         follows",
        p.by, p.at
    );
    if recorded_here {
        done.push_str("; its rollout was not recorded before, it is now");
        let known = snap
            .instances
            .iter()
            .any(|(_, r)| r.version == version || r.target.as_deref() == Some(version.as_str()));
        if !known {
            done.push_str(&format!(
                "; no instance of the group runs or waits for {version} yet (a mistyped \
                 version is removed with `etcdctl del {}`)",
                store::version_key(group, &version)
            ));
        }
    }
    Ok(done)
}

async fn history(client: &mut Client, group: &str) -> Result<String, String> {
    let snap = snapshot(client, group).await?;
    if snap.versions.is_empty() {
        return Ok(format!("no rollout is recorded in group {group}"));
    }
    Ok(snap
        .versions
        .iter()
        .map(history_line)
        .collect::<Vec<_>>()
        .join("\n"))
}

/// One version of `rollout history`.
pub(super) fn history_line(v: &VersionState) -> String {
    let mut line = format!(
        "{}  started {}  canaries {}/{} passed  failures {}",
        v.version,
        v.started,
        v.canaries_passed(),
        v.canaries.len(),
        v.failures.len()
    );
    if let Some(p) = &v.promoted {
        line.push_str(&format!("  promoted {} by {}", p.at, p.by));
    }
    if let Some(f) = v.finished {
        line.push_str(&format!("  finished {f}"));
    }
    let released = v.swaps.iter().filter(|s| s.released.is_some()).count();
    line.push_str(&format!("  swaps {released}"));
    if let Some(p95) = p95_swap(std::slice::from_ref(v), usize::MAX) {
        line.push_str(&format!(" (p95 {})", humantime::format_duration(p95)));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::promotable;

    #[test]
    fn a_promoted_version_is_one_key_segment_and_a_bad_one_is_named() {
        for good in ["2.0.0", "v2.0.0-rc.1+build.7", "sha256_abc"] {
            assert_eq!(promotable(good), Ok(()), "{good}");
        }
        for bad in ["", "2.0.0/extra", "2.0 .0", "2.0.0\n"] {
            let err = promotable(bad).expect_err(bad);
            assert!(err.contains(&format!("`{bad}` is not a version")), "{err}");
        }
        assert!(promotable(&"9".repeat(129)).is_err());
    }
}
