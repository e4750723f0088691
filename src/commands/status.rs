//! `sidekick status`: what etcd says about the fleet (which versions run where, each instance's
//! phase and last check), registrations (under the configured layout), update slots and halts,
//! and what the sidekicks on this host say over their control sockets ([`local`]), as aligned
//! tables or JSON.
//!
//! The report ([`model`]) is a list of sections, each read from etcd on its own ([`keys`]) and
//! rendered as one table ([`render`]); a new section is a field in [`StatusReport`], a read step
//! in [`gather`] and one entry in [`StatusReport::sections`].

use std::path::Path;
use std::process::ExitCode;

use crate::config::{ConfigSources, StatusSettings};
use crate::registry::KeyLayout;

mod keys;
pub mod local;
mod model;
mod render;
mod table;

pub use keys::{gather, registrations, slot_groups};
pub use model::{
    HaltStatus, HolderStatus, InstanceStatus, RegistrationStatus, SlotGroupStatus, SlotLimitStatus,
    StatusReport,
};
pub use table::{Section, printable};

/// `sidekick status [--json]`; the local daemons' control sockets are looked for under
/// `runtime_dir`.
pub async fn run(sources: &ConfigSources, json: bool, runtime_dir: &Path) -> ExitCode {
    let settings = match super::load_settings::<StatusSettings>(sources) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let layout = KeyLayout::from_settings(&settings.registration);
    // The local daemons answer whether or not etcd does: with etcd down they are what is left
    // to see, so they are shown (and the exit code says the fleet view failed).
    let fleet = match super::connect(&settings.etcd).await {
        Ok(mut client) => gather(&mut client, &layout).await.map_err(|err| {
            eprintln!("sidekick: failed to read status from etcd: {err}");
        }),
        Err(_) => Err(()),
    };
    let local = local::gather(runtime_dir).await;
    let (report, code) = match fleet {
        Ok(report) => (StatusReport { local, ..report }, ExitCode::SUCCESS),
        Err(()) if local.is_empty() => return ExitCode::FAILURE,
        Err(()) => {
            let only_local = StatusReport {
                local,
                ..StatusReport::default()
            };
            if !json {
                eprintln!("sidekick: etcd did not answer; showing only the daemons on this host");
                print!("{}", local::section(&only_local.local).render());
                return ExitCode::FAILURE;
            }
            (only_local, ExitCode::FAILURE)
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(err) => {
                eprintln!("sidekick: failed to encode status: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.render_table());
    }
    code
}
