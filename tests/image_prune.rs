//! Image housekeeping (`swap.prune`, `src/image/prune.rs`) against the real things: the app unit
//! in the systemd container goes through five versions the way a swap moves it (drop-in, reload,
//! restart, then the hook the swap calls after its release), and the pruner removes the old
//! images with the default `docker image rm {image}`, each through a transient unit of that
//! systemd, from the host's Docker engine.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sidekick::image::prune::Pruner;
use sidekick::systemd::control::{DbusUnitControl, DropIn, UnitControl};
use support::images::{self, LocalTags};
use support::systemd::{self, Job, Systemd};
use support::{prerequisites_met, run, temp_dir};

const VERSIONS: [&str; 5] = ["1.0.0", "2.0.0", "3.0.0", "4.0.0", "5.0.0"];
const DEFAULT_PRUNE: [&str; 4] = ["docker", "image", "rm", "{image}"];
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds one small distinct image per version under a repository of this test's own (a shared
/// Docker engine holds other tests' images); every tag is removed again on drop.
fn build_versions(repository: &str) -> LocalTags {
    let tags = LocalTags(
        VERSIONS
            .iter()
            .map(|v| format!("{repository}:{v}"))
            .collect(),
    );
    for (version, tag) in VERSIONS.iter().zip(&tags.0) {
        let context = temp_dir("prune-image");
        std::fs::write(
            context.path().join("Dockerfile"),
            "FROM scratch\nCOPY version /version\n",
        )
        .unwrap();
        std::fs::write(context.path().join("version"), version).unwrap();
        run(Command::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-q", "--label", "sidekick-test=1", "-t", tag])
            .arg(context.path()));
    }
    tags
}

/// The tags of `repository` the engine holds, sorted.
fn tags_on_host(repository: &str) -> Vec<String> {
    let listed =
        run(Command::new("docker").args(["image", "ls", repository, "--format", "{{.Tag}}"]));
    let mut tags: Vec<String> = listed.lines().map(str::to_string).collect();
    tags.sort();
    tags
}

fn unit_running(image: &str) -> String {
    format!("[Service]\nEnvironment=SIDEKICK_IMAGE={image}\nExecStart=/usr/bin/sleep infinity\n")
}

/// Moves `web@1.service` through every version as a swap does, calling the pruner's hook after
/// each; returns the pruner's record.
async fn five_versions(systemd: &Systemd, repository: &str, state_dir: &Path) -> Vec<String> {
    let conn = systemd.connection().await;
    let units = systemd.unit_dir();
    let control = DbusUnitControl::new(conn.clone(), "web@1.service", &units, &units, "web-1")
        .await
        .expect("unit control");
    let argv: Vec<String> = DEFAULT_PRUNE.map(String::from).to_vec();
    let pruner = Pruner::new(&argv, state_dir, "web-1", "web@1.service", conn).expect("a pruner");
    // The daemon's start: the image running then is the first one noted.
    pruner.note_running(&control).await;
    for version in &VERSIONS[1..] {
        let dropin = DropIn {
            image: format!("{repository}:{version}"),
            version: version.to_string(),
        };
        control.write_dropin(&dropin).await.expect("write drop-in");
        control.reload().await.expect("reload");
        control.restart(START_TIMEOUT).await.expect("restart");
        pruner.after_release(&control).await;
    }
    pruner.recorded()
}

#[tokio::test]
async fn after_five_versions_the_host_holds_exactly_two_of_the_apps_images() {
    if !prerequisites_met(&[systemd::NEEDS, images::NEEDS].concat()) {
        return;
    }
    let repository = images::unique_name("sidekick-prune");
    let _tags = build_versions(&repository);
    let state = temp_dir("prune-state");
    let systemd = Systemd::start().await;
    systemd.write_unit(
        "web@.service",
        &unit_running(&format!("{repository}:1.0.0")),
    );
    systemd.reload().await;
    let mgr = systemd.manager().await;
    assert_eq!(
        systemd::run_job(&mgr, Job::Start, "web@1.service").await,
        "done"
    );
    assert_eq!(tags_on_host(&repository).len(), 5);

    let record = five_versions(&systemd, &repository, state.path()).await;

    // The running version and its rollback target, nothing else.
    assert_eq!(
        tags_on_host(&repository),
        ["4.0.0", "5.0.0"],
        "{}",
        systemd.log_tail(30)
    );
    let kept: Vec<String> = ["4.0.0", "5.0.0"]
        .iter()
        .map(|v| format!("{repository}:{v}"))
        .collect();
    assert_eq!(record, kept);
}

#[tokio::test]
async fn an_old_image_another_unit_runs_is_left_on_the_host() {
    if !prerequisites_met(&[systemd::NEEDS, images::NEEDS].concat()) {
        return;
    }
    let repository = images::unique_name("sidekick-prune");
    let _tags = build_versions(&repository);
    let state = temp_dir("prune-state");
    let systemd = Systemd::start().await;
    systemd.write_unit(
        "web@.service",
        &unit_running(&format!("{repository}:1.0.0")),
    );
    systemd.reload().await;
    let mgr = systemd.manager().await;
    // A second instance of the app on the same host stays on 1.0.0.
    for unit in ["web@1.service", "web@2.service"] {
        assert_eq!(systemd::run_job(&mgr, Job::Start, unit).await, "done");
    }

    let record = five_versions(&systemd, &repository, state.path()).await;

    assert_eq!(tags_on_host(&repository), ["1.0.0", "4.0.0", "5.0.0"]);
    // Still noted, to be removed once web@2 no longer names it.
    assert_eq!(record.first(), Some(&format!("{repository}:1.0.0")));
}
