//! The fleet on Podman and Quadlet (`AppRuntime::Quadlet`): Debian 13's Podman 5.4 in the
//! systemd 257 container, the shipped `units/example-web@.container` installed as
//! `web@.container` with one linked file per instance, and each sidekick writing its drop-in to
//! `web@N.container.d/` (`swap.quadlet_dir`). The Podman configuration is a host directory bound
//! at the container's `/etc/containers`, so the sidekicks on the host write their drop-ins where
//! Quadlet reads them.
//!
//! What the container needs that a Podman host has by default:
//! - `keyring = false` (containers.conf): nspawn's seccomp filter refuses `keyctl`, and crun's
//!   session keyring fails with "create keyring: Operation not permitted".
//! - no cgroup of its own for each app container: `cgroups = "disabled"` (containers.conf, for
//!   `podman run`) and `--cgroups=disabled` (a `PodmanArgs=` in each Quadlet instance's test
//!   drop-in, since Quadlet's `podman run` line says `--cgroups=split`). On this cgroup v1
//!   (hybrid) host the container's v1 controller hierarchies are read-only and its cgroup2 one
//!   has no controllers, so crun cannot create the container's cgroup ("creating cgroup
//!   directory … No such file or directory"). The app's processes then stay in the unit's cgroup.
//! - the test registry (`127.0.0.1:P`, plain HTTP) marked `insecure` in `registries.conf`, and a
//!   `policy.json` that accepts unsigned images.
//!
//! The app runs with host networking (`Network=host` in the shipped unit): nspawn shares the
//! host's network namespace, so Traefik on the host reaches it on 127.0.0.1, and Podman makes no
//! bridge or firewall rule there.
//!
//! Shared by `tests/podman.rs` and the other fleet binaries; not every item is used by each.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use super::fleet::Fleet;

/// Where the container sees the Podman configuration.
pub const CONTAINERS_CONFIG: &str = "/etc/containers";
/// The configuration's directory under the fleet's temp dir.
pub const CONFIG_DIR: &str = "containers";
/// The shipped Quadlet unit, installed as `web@.container`.
const SHIPPED_UNIT: &str = "units/example-web@.container";

/// Writes the Podman configuration for a registry at `registry` (`127.0.0.1:P`) and the
/// template unit under `<dir>/containers`; returns that directory.
pub fn podman_config(dir: &Path, registry: &str) -> PathBuf {
    let config = dir.join(CONFIG_DIR);
    let quadlets = config.join("systemd");
    std::fs::create_dir_all(&quadlets).expect("create the Podman configuration");
    let write = |name: &str, text: &str| {
        std::fs::write(config.join(name), text)
            .unwrap_or_else(|e| panic!("write {CONTAINERS_CONFIG}/{name}: {e}"))
    };
    write(
        "policy.json",
        "{\"default\": [{\"type\": \"insecureAcceptAnything\"}]}\n",
    );
    write(
        "registries.conf",
        &format!("[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n"),
    );
    write(
        "containers.conf",
        "[containers]\nkeyring = false\ncgroups = \"disabled\"\n",
    );
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join(SHIPPED_UNIT);
    std::fs::copy(&unit, quadlets.join("web@.container"))
        .unwrap_or_else(|e| panic!("copy {}: {e}", unit.display()));
    config
}

/// Links `web@<n>.container` to the template and gives it the test host's part in
/// `web@<n>.container.d/10-test.conf`: the first image, its port, no cgroup of its own.
pub fn install_instance(config: &Path, n: usize, port: u16, first_image: &str) {
    let quadlets = config.join("systemd");
    std::os::unix::fs::symlink(
        "web@.container",
        quadlets.join(format!("web@{n}.container")),
    )
    .expect("link the instance's .container file");
    let dropins = quadlets.join(format!("web@{n}.container.d"));
    std::fs::create_dir_all(&dropins).expect("create the instance's drop-in dir");
    std::fs::write(
        dropins.join("10-test.conf"),
        format!(
            "[Container]\nImage={first_image}\nEnvironment=PORT={port}\n\
             PodmanArgs=--cgroups=disabled\n\
             [Service]\nEnvironment=SIDEKICK_IMAGE={first_image}\n"
        ),
    )
    .expect("write the instance's test drop-in");
}

/// The sidekick's config for a Quadlet fleet: the rollout's `docker_config` with Podman's
/// pre-pull and prune (as `examples/config/web-podman.toml`) and the drop-ins in the Quadlet dir.
pub fn sidekick_config(docker_config: String, fleet_dir: &Path) -> String {
    let quadlet_dir = fleet_dir.join(CONFIG_DIR).join("systemd");
    let podman = format!(
        "prepull = [\"podman\", \"pull\", \"{{image}}\"]\n\
         prune = [\"podman\", \"rmi\", \"{{image}}\"]\n\
         quadlet_dir = \"{}\"",
        quadlet_dir.display()
    );
    let mut replaced = 0;
    let lines: Vec<String> = docker_config
        .lines()
        .map(|line| match line.starts_with("prepull = ") {
            true => {
                replaced += 1;
                podman.clone()
            }
            false => line.to_string(),
        })
        .collect();
    assert_eq!(replaced, 1, "no prepull line in:\n{docker_config}");
    lines.join("\n") + "\n"
}

impl Fleet {
    /// The drop-in the sidekick of instance `i` (0-based) writes for its `.container` file.
    pub fn quadlet_dropin(&self, i: usize) -> PathBuf {
        self.dir()
            .join(CONFIG_DIR)
            .join("systemd")
            .join(format!("web@{}.container.d", i + 1))
            .join("50-sidekick.conf")
    }

    /// The image of the Podman container of instance `i` (0-based), as Podman reports it.
    pub fn podman_image(&self, i: usize) -> String {
        let name = format!("example-web-{}", i + 1);
        let out = self
            .systemd
            .exec(&["podman", "inspect", "--format", "{{.ImageName}}", &name]);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success(),
            "podman inspect {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }
}
