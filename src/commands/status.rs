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
use crate::terminal_text::{MAX_LINE_CHARS, sanitize_to};

mod keys;
pub mod local;
mod model;
mod render;
mod table;

pub use keys::{gather, registrations, slot_groups};
pub use model::{
    EtcdDownReport, HaltStatus, HolderStatus, InstanceStatus, RegistrationStatus, SlotGroupStatus,
    SlotLimitStatus, StatusReport, UnreadableSection,
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
    // to see, so they are shown, with one line on stderr saying why the fleet view is missing
    // (and `etcd_error` in JSON), and exit code 1.
    let fleet = match super::connect_or_why(&settings.etcd).await {
        Ok(mut client) => gather(&mut client, &layout).await.map_err(|err| {
            format!(
                "failed to read status from etcd at {}: {}",
                crate::etcd::endpoint_list(&settings.etcd),
                super::slot_error_line(&err)
            )
        }),
        Err(why) => Err(why),
    };
    let local = local::gather(runtime_dir).await;
    let report = match fleet {
        Ok(report) => StatusReport { local, ..report },
        Err(why) => return etcd_down(&why, &local, json),
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
    // A partial report is shown, and said to be partial: exit 1 as when etcd is down.
    for u in &report.unreadable {
        eprintln!(
            "sidekick: status section {} could not be read: {}",
            u.section,
            sanitize_to(&u.error, MAX_LINE_CHARS)
        );
    }
    match report.unreadable.is_empty() {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

/// `status` when etcd could not be read: what this host's daemons say, the reason on stderr.
fn etcd_down(why: &str, local: &[local::LocalDaemon], json: bool) -> ExitCode {
    // etcd's own messages are shown escaped, as one line.
    let why = sanitize_to(why, MAX_LINE_CHARS);
    eprintln!("sidekick: {why}");
    if json {
        let report = EtcdDownReport {
            etcd_error: &why,
            local,
        };
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(err) => eprintln!("sidekick: failed to encode status: {err}"),
        }
    } else {
        print!("{}", local::section(local).render());
    }
    ExitCode::FAILURE
}
