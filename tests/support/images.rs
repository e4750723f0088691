//! App images built `FROM scratch` with the host's static `/bin/busybox` from the files under
//! `examples/walkthrough/image/` (the walkthrough's `prepare` builds the same ones), and containers
//! run from them. `1.0.0`, `2.0.0` and `3.0.1` serve a page naming their version at `/`; `3.0.0` starts and serves
//! `/version`, but `/` answers 404, so an HTTP health check on `/` fails; `1.1.0` and `1.2.0` serve
//! like the good ones but exit (non-zero) 12 s after their start. Containers run with
//! `--network host`, so each takes its port from env `PORT` (and address from `ADDR`, default
//! 0.0.0.0); PID 1 is a busybox sh that traps SIGTERM, so `docker stop` returns at once.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Need, find_binary, run, temp_dir};

/// What image tests need from the machine.
pub const NEEDS: &[Need] = &[Need::Root, Need::Docker, Need::Binary(BUSYBOX)];

/// Repository of the test app images; tags are the versions.
pub const REPOSITORY: &str = "sidekick-test/app";
/// Versions whose `/` answers 200 with a page naming the version.
pub const HEALTHY_VERSIONS: &[&str] = &["1.0.0", "2.0.0", "3.0.1"];
/// The version that starts but fails its health check (`/` answers 404).
pub const BROKEN_VERSION: &str = "3.0.0";
/// Versions that pass verification and exit [`DIES_AFTER`] after their start.
pub const DYING_VERSIONS: &[&str] = &["1.1.0", "1.2.0"];
/// How long a [`DYING_VERSIONS`] container serves before it exits.
pub const DIES_AFTER: std::time::Duration = std::time::Duration::from_secs(12);

/// Static busybox from Debian `busybox-static`.
const BUSYBOX: &str = "/bin/busybox";
/// Serialises builds across parallel test binaries (the tag is shared machine-wide).
const BUILD_LOCK: &str = "/tmp/sidekick-test-images.lock";
/// Assembles an image's build context; the walkthrough's `prepare` builds the same images with it.
const CONTEXT_SCRIPT: &str = "examples/walkthrough/image/context";

/// The image reference for `version`, e.g. `sidekick-test/app:1.0.0`, built on first use in this
/// process. Panics for a version other than 1.0.0, 2.0.0, 3.0.0, 3.0.1, 1.1.0 or 1.2.0.
pub fn app_image(version: &str) -> String {
    static BUILT: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    assert!(
        HEALTHY_VERSIONS.contains(&version)
            || version == BROKEN_VERSION
            || DYING_VERSIONS.contains(&version),
        "no test app image for version {version}"
    );
    let image = format!("{REPOSITORY}:{version}");
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.get_or_insert_with(HashSet::new).contains(version) {
        return image;
    }
    let _lock = lock_file(BUILD_LOCK);
    let context = temp_dir("image");
    write_context(context.path(), version);
    run(Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "-q", "--label", "sidekick-test=1", "-t", &image])
        .arg(context.path()));
    built.as_mut().unwrap().insert(version.to_string());
    image
}

/// The build context of `version`, from the files committed under `examples/walkthrough/image/`.
fn write_context(dir: &Path, version: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(CONTEXT_SCRIPT);
    run(Command::new(&script)
        .env("BUSYBOX", BUSYBOX)
        .arg(dir)
        .arg(version));
}

/// An exclusive `flock` on `path`, released when the file is dropped.
pub fn lock_file(path: &str) -> File {
    let file = File::options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: flock on a valid fd we own; blocks until the lock is ours.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {path}: {}", std::io::Error::last_os_error());
    file
}

/// Absolute path of the docker CLI, for unit files (it must live under `/usr` to be visible in
/// the systemd container).
pub fn docker_path() -> PathBuf {
    let docker = find_binary("docker").expect("docker CLI on PATH");
    assert!(
        docker.starts_with("/usr/"),
        "{} is not under /usr, so units in the systemd container cannot run it",
        docker.display()
    );
    docker
}

/// A container name unique to this process and call, e.g. `sidekick-test-app-1234-7`.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("sidekick-test-{prefix}-{}-{n}", std::process::id())
}

/// A named docker container that is removed (`docker rm -f`) on drop. Also useful to clean up
/// containers that a systemd unit under test starts by name.
pub struct Container {
    name: String,
}

impl Container {
    /// Guards a container (that exists now or will later) by name.
    pub fn guard(name: &str) -> Container {
        // Docker containers belong to dockerd: only the reaper removes them after a SIGKILL.
        super::reaper::watch(&super::reaper::Leftover::DockerContainer(name.to_string()));
        Container {
            name: name.to_string(),
        }
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        super::reaper::forget(&super::reaper::Leftover::DockerContainer(self.name.clone()));
    }
}

/// `<name>@.service` template running the app image on `127.0.0.1:${WEB_PORT}` (set it in a
/// drop-in per instance) through the Docker socket bound into the systemd container, as
/// container `<container_prefix>-%i`; `first_image` at `first_version` is the default the
/// sidekick's drop-in overrides.
pub fn app_unit(container_prefix: &str, first_image: &str, first_version: &str) -> String {
    let docker = docker_path();
    let docker = docker.display();
    format!(
        "[Unit]\nDescription=test app %i\n\
         [Service]\n\
         Environment=SIDEKICK_IMAGE={first_image}\n\
         Environment=SIDEKICK_VERSION={first_version}\n\
         ExecStartPre=-{docker} rm -f {container_prefix}-%i\n\
         ExecStart={docker} run --rm --name {container_prefix}-%i -p 127.0.0.1:${{WEB_PORT}}:80 ${{SIDEKICK_IMAGE}}\n\
         ExecStop={docker} stop -t 5 {container_prefix}-%i\n"
    )
}

/// Local image tags removed on drop: what a unit or a pre-pull pulled from the local registry.
pub struct LocalTags(pub Vec<String>);

impl Drop for LocalTags {
    fn drop(&mut self) {
        for tag in &self.0 {
            remove_tag(tag);
        }
    }
}

/// Starts `image` detached with `--network host`, serving HTTP on 127.0.0.1:`port`.
pub fn run_app(image: &str, port: u16) -> Container {
    let container = Container::guard(&unique_name("app"));
    run(Command::new("docker").args([
        "run",
        "-d",
        "--rm",
        "--network",
        "host",
        "--name",
        container.name(),
        "-e",
        &format!("PORT={port}"),
        image,
    ]));
    container
}

/// Tags `image` as `<registry>/<image>` (registry like `127.0.0.1:5000`), pushes it and returns
/// the pushed reference. The local tag is removed again; the pushed image stays in the registry.
pub fn push(image: &str, registry: &str) -> String {
    let remote = format!("{registry}/{image}");
    run(Command::new("docker").args(["tag", image, &remote]));
    let pushed = Command::new("docker")
        .args(["push", &remote])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run docker push");
    remove_tag(&remote);
    assert!(
        pushed.status.success(),
        "docker push {remote}: {}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    remote
}

/// `docker port CONTAINER`: each published port as `80/tcp -> ADDRESS:PORT`, one a line.
pub fn docker_port(container: &str) -> String {
    let out = Command::new("docker")
        .args(["port", container])
        .output()
        .expect("run docker port");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes a local tag (not the image other tags still name).
pub fn remove_tag(reference: &str) {
    let _ = Command::new("docker")
        .args(["rmi", reference])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}
