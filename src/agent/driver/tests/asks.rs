//! The control socket's side of the loop: a "check now" refused with the reason when there are
//! no updates, and the state the socket shows following the unit.

use tokio::sync::oneshot;

use super::*;
use crate::control::{CheckReport, DaemonState};
use crate::health::ProbeError;
use crate::systemd::control::MemoryUnitControl;

struct Healthy;

impl Probe for Healthy {
    async fn check(&mut self) -> Result<(), ProbeError> {
        Ok(())
    }
}

#[tokio::test]
async fn without_updates_a_check_is_refused_with_the_reason_and_the_state_follows_the_unit() {
    let units = MemoryUnits::new(ActiveState::Active);
    let (link, handle) = crate::control::link(DaemonState::default());
    let driver = driver::<_, MemoryUnitControl>(
        agent(1, 1, false),
        MemoryRegistry::new(),
        Healthy,
        &units,
        None,
        options(vec![("k".into(), "v".into())]),
    )
    .with_control(link);
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(driver.run(async {
        let _ = stopped.await;
    }));
    let registered = async {
        while !handle.state().registered {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), registered)
        .await
        .expect("registered in time");
    let state = handle.state();
    assert_eq!(
        (
            state.instance.as_str(),
            state.unit.as_str(),
            state.phase.as_str()
        ),
        ("web-1", "web@1.service", "serving")
    );
    assert_eq!(
        (state.active_state.as_str(), state.status.as_str()),
        ("active", "registered")
    );
    assert_eq!(state.last_check, None);

    let report = handle.check_now(Duration::from_secs(5)).await;
    assert!(
        matches!(&report, CheckReport::Error { kind, .. } if kind == "updates-off"),
        "{report:?}"
    );
    let _ = stop.send(());
    run.await.unwrap();
    let report = handle.check_now(Duration::from_secs(5)).await;
    assert!(
        matches!(&report, CheckReport::Error { kind, .. } if kind == "stopping"),
        "{report:?}"
    );
}
