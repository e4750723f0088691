//! Command-line interface: global options and subcommands.

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand};

use crate::config::ConfigSources;
use crate::logging::LogTarget;

/// Keeps one app instance registered in etcd while its unit is active and healthy, and applies the
/// new versions an Omaha update service offers, one instance of a group at a time.
#[derive(Debug, Parser)]
#[command(name = "sidekick", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file, applied after the drop-in directories; may be repeated, later wins.
    #[arg(long = "config", value_name = "FILE", global = true)]
    pub config: Vec<PathBuf>,

    /// The systemd unit this sidekick serves (overrides instance.unit); the drop-ins of its own
    /// directory (config.d/<unit without .service>/) are read after the shared ones.
    #[arg(long, value_name = "UNIT", global = true)]
    pub unit: Option<String>,

    /// Root under which the drop-in directories and the runtime directory (run/sidekick) are
    /// found (for tests and image builds).
    #[arg(
        long,
        value_name = "DIR",
        global = true,
        hide = true,
        env = "SIDEKICK_CONFIG_ROOT",
        default_value = "/"
    )]
    pub config_root: PathBuf,

    /// More log output (-v debug, -vv trace).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Less log output (-q warnings, -qq errors only).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub quiet: u8,

    /// Where logs go.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    pub log: LogTarget,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the configuration and print the effective settings with their sources.
    CheckConfig,
    /// Check once for an update and print the answer as one JSON object (exit 0 when the check
    /// completed, 1 on error).
    ///
    /// The instance's running daemon is asked to check, over its control socket
    /// (daemon.control_socket), and its answer is printed. With no daemon it refuses (exit 1)
    /// unless --standalone is given: in Nebraska an update check that gets an offer is a grant,
    /// counted against the group's limits and timed out if nobody applies the update.
    UpdateCheck {
        /// The version the instance runs, for a standalone check (default: SIDEKICK_VERSION of
        /// the unit, read over D-Bus).
        #[arg(long, value_name = "VERSION")]
        current_version: Option<String>,
        /// Mark a standalone check as asked for by an operator (installsource="ondemandupdate").
        #[arg(long)]
        interactive: bool,
        /// When no daemon answers, check directly (an offer it gets is a grant the service counts
        /// and times out).
        #[arg(long)]
        standalone: bool,
    },
    /// Show registrations, update slot holders and halted groups from etcd, and the sidekicks
    /// running on this host as they answer on their control sockets.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Where the local sidekicks' control sockets are looked for, as DIR/*/control.sock
        /// (default: /run/sidekick).
        #[arg(long, value_name = "DIR")]
        runtime_dir: Option<PathBuf>,
    },
    /// Release a slot, resume a halted group, or store a group's limit.
    Slots {
        #[command(subcommand)]
        action: SlotsAction,
    },
    /// The daemon: keep the instance registered in etcd while its unit is active and healthy,
    /// and apply updates.
    ///
    /// With update.enabled it polls the update service and applies each version it is granted:
    /// pre-pull the image, take the group's update slot, deregister, point the unit at the new
    /// image, restart and verify it, register again; a version that does not turn healthy is
    /// rolled back and halts the group's rollout (docs/swap.md).
    Run(RunArgs),
    /// The group's rollout policy (stored in etcd, over [rollout]), pause, promotion, history
    /// and status.
    Rollout {
        #[command(subcommand)]
        action: RolloutAction,
    },
    /// Print the etcdctl commands creating a least-privilege etcd role and user for this
    /// instance (its own keys and its group's) and an operator role.
    EtcdRole {
        /// The slot group (default: slot.group).
        #[arg(long)]
        group: Option<String>,
    },
    /// Pull the image a `sidekick-prepull@.service` instance names: run by that root-owned
    /// template for a sidekick in non-root mode (`swap.handoff = "environment-file"`), never by
    /// hand. The instance string is unescaped and checked against the image reference grammar,
    /// then `PROGRAM pull IMAGE` runs (no shell).
    PullImage {
        /// The puller, an absolute path or a name on systemd's search path.
        #[arg(long = "with", value_name = "PROGRAM", default_value = "docker")]
        program: String,
        /// The unit's instance string (`%i`).
        instance: String,
    },
    /// Apply a non-root sidekick's version request: run by the root-owned
    /// `sidekick-version@.service`, never by hand. Reads `STATE_DIR/<instance>/version.request`,
    /// refuses anything but `SIDEKICK_IMAGE=<image reference>` and `SIDEKICK_VERSION=<semver>`,
    /// and writes `INTO/<instance>.env`, the app unit's `EnvironmentFile=` (an empty request
    /// removes it).
    ApplyVersion {
        /// The sidekicks' state directory (daemon.state_dir).
        #[arg(long, value_name = "DIR", default_value = "/var/lib/sidekick")]
        state_dir: PathBuf,
        /// Where the environment files go (root's; the app units read them).
        #[arg(long, value_name = "DIR", default_value = crate::systemd::control::envfile::VERSIONS_DIR)]
        into: PathBuf,
        /// The unit's instance string (`%i`).
        instance: String,
    },
}

/// What `sidekick rollout` does to a group's rollout.
#[derive(Debug, Clone, Subcommand)]
pub enum RolloutAction {
    /// Store the group's policy in etcd for every sidekick of the group (authoritative over
    /// [rollout]): the stored one (else this configuration's) with KEY=VALUE changed;
    /// window=DAYS/HH:MM/MINUTES adds a window, window=none removes them. --clear removes it.
    Set {
        /// The group (default: slot.group from the configuration).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// Remove the stored policy: each sidekick's [rollout] applies again.
        #[arg(long, conflicts_with = "settings")]
        clear: bool,
        #[arg(value_name = "KEY=VALUE", required_unless_present = "clear")]
        settings: Vec<String>,
    },
    /// Take no new slot in the group until `rollout resume` (swaps under way finish).
    Pause {
        /// The group (default: slot.group from the configuration).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },
    /// Lift a pause and a halt of the group.
    Resume {
        /// The group (default: slot.group from the configuration).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },
    /// Let the rest of the group follow the canaries (promote = "manual").
    Promote {
        /// The group (default: slot.group from the configuration).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// The version (default: the newest started).
        #[arg(value_name = "VERSION")]
        target: Option<String>,
    },
    /// Each recorded version of the group, newest first.
    History {
        /// The group (default: slot.group from the configuration).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },
    /// The group's newest rollout: stage, instances on it, canaries, failures, pause and halt.
    Status {
        /// The group (default: slot.group from the configuration).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Block until the rollout is done (exit 0), halted or failed (1), awaiting promotion
        /// (3), or --timeout passes (4), following etcd's watch events.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. 30m (default: no limit).
        #[arg(long, value_name = "DURATION", requires = "wait", value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
}

/// What `sidekick slots` does to a slot group.
#[derive(Debug, Clone, Subcommand)]
pub enum SlotsAction {
    /// Release the slot held by a holder id (to clear a holder known to be gone).
    Release {
        /// The holder id, as shown by `sidekick status`.
        #[arg(long, value_name = "ID")]
        holder: String,
        /// The slot group (default: slot.group from the configuration).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },
    /// Remove the halt marker of a group, so updates go on.
    Resume {
        /// The slot group (default: slot.group from the configuration).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },
    /// Store the group's limit in etcd, for every sidekick of the group (overrides slot.max;
    /// lowering it evicts no holder).
    SetMax {
        /// The slot group (default: slot.group from the configuration).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// How many instances of the group may update at once (at least 1).
        #[arg(value_name = "N", value_parser = slot_limit)]
        max: std::num::NonZeroU32,
    },
}

/// Options of `sidekick run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Read everything, write nothing: print each write it would make as `dry-run: would …`.
    /// With no configuration at all it runs on embedded defaults with no server.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop after one pass: the registration decided and one update check followed through.
    #[arg(long)]
    pub once: bool,
    /// Release list offered by the in-memory update service of a dry run on embedded defaults
    /// (default: the compiled-in copy of examples/releases.toml).
    #[arg(long, value_name = "FILE", requires = "dry_run")]
    pub releases: Option<PathBuf>,
}

/// A group's slot limit: 0 would stop every update for good, which a pause says better.
fn slot_limit(text: &str) -> Result<std::num::NonZeroU32, String> {
    let n: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of instances"))?;
    std::num::NonZeroU32::new(n).ok_or_else(|| {
        "a group's limit is at least 1 (0 would let no instance ever update); to stop the \
         group's updates for a while, run `sidekick rollout pause`"
            .to_string()
    })
}

impl Cli {
    /// `-v` count minus `-q` count.
    pub fn verbosity(&self) -> i8 {
        i8::try_from(i16::from(self.verbose) - i16::from(self.quiet)).unwrap_or(0)
    }

    /// Configuration sources named on the command line.
    pub fn config_sources(&self) -> ConfigSources {
        ConfigSources {
            root: self.config_root.clone(),
            files: self.config.clone(),
            unit: self.unit.clone(),
        }
    }
}
