//! The rollout's metrics as a scraper sees them: a sidekick's rollout against a real etcd (a
//! stored policy with a closed window, a version waiting for promotion) sets
//! `sidekick_rollout_stage` and `sidekick_rollout_next_window_seconds`, served over HTTP and
//! accepted by `promtool check metrics`.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use sidekick::etcd::EtcdConnection;
use sidekick::metrics::Metrics;
use sidekick::rollout::RolloutPolicy;
use sidekick::rollout::agent::RolloutAgent;
use sidekick::rollout::policy::{PolicyText, Promote, WindowText, day_name};
use sidekick::rollout::state::VersionState;
use sidekick::rollout::store;

use super::{GROUP, put_state, start};
use crate::support::{Need, find_binary, http_get, prerequisites_met};

fn promtool_accepts(text: &str) {
    let promtool = find_binary("promtool").expect("promtool");
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    use std::io::Write as _;
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let checked = check.wait_with_output().expect("promtool ends");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[tokio::test]
async fn the_stage_and_the_next_window_are_scraped_and_promtool_accepts_them() {
    if !prerequisites_met(&[Need::Binary("promtool")]) {
        return;
    }
    let Some((_etcd, mut client)) = start().await else {
        return;
    };
    // A window opening in three hours (UTC), manual promotion, one canary.
    let opens = Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(3))
        .expect("time");
    let zoned = opens.to_zoned(jiff::tz::TimeZone::UTC);
    let stored = PolicyText {
        canary: 1,
        promote: Promote::Manual,
        window: vec![WindowText {
            days: vec![day_name(zoned.weekday()).into()],
            start_time: format!("{:02}:{:02}", zoned.hour(), zoned.minute()),
            length_minutes: 60,
        }],
        ..Default::default()
    }
    .validate()
    .expect("valid");
    store::set_policy(&mut client, GROUP, &stored)
        .await
        .expect("store");
    put_state(&mut client, &VersionState::new("2.0.0", Timestamp::now())).await;

    let metrics = Metrics::new();
    let rollout = Arc::new(RolloutAgent::new(
        EtcdConnection::from_client(client.clone()),
        GROUP,
        "web-1",
        RolloutPolicy::default(),
        Duration::from_secs(50),
    ));
    rollout.set_metrics(metrics.rollout().clone());
    assert!(rollout.check_hold(Some("1.0.0")).await.is_some());

    let (bound, server) = sidekick::metrics::serve("127.0.0.1:0".parse().unwrap(), metrics)
        .await
        .expect("serve");
    let (status, text) = http_get(&format!("http://{bound}/metrics"))
        .await
        .expect("scrape");
    server.abort();
    assert_eq!(status, 200, "{text}");
    let stage = format!(
        "sidekick_rollout_stage{{group=\"{GROUP}\",version=\"2.0.0\",stage=\"waiting-for-window\"}} 1"
    );
    assert!(text.contains(&stage), "no `{stage}` in\n{text}");
    let left = text
        .lines()
        .find_map(|l| l.strip_prefix("sidekick_rollout_next_window_seconds "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or_else(|| panic!("no next window in\n{text}"));
    let expected = opens.as_second() - opens.as_second() % 60 - Timestamp::now().as_second();
    assert!(
        (left - expected).abs() <= 60,
        "{left} s, expected about {expected} s"
    );
    promtool_accepts(&text);
}
