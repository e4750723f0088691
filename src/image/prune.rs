//! Image housekeeping (`swap.prune`): after a swap has released its slot, the images of the app
//! older than the rollback target are removed, one transient unit per image, the way the
//! pre-pull runs (`UnitControl::run_transient`: no shell, sandboxed, stopped when abandoned).
//!
//! Which images are the app's: the ones this instance was seen running (the unit's
//! `SIDEKICK_IMAGE`), oldest first, in `<state_dir>/<instance>/images.json`. The image running at
//! the daemon's start is noted ([`Pruner::note_running`]), and after each release the one running
//! then. The last two are kept: the running image and the rollback target (the one before it).
//! An older image that another loaded service unit on the host names in its `SIDEKICK_IMAGE` is
//! left alone (and kept in the record, to be removed once nothing uses it). After a rollback the
//! running image is the last one noted already, so nothing is removed.
//!
//! The daemon installs one [`Pruner`] ([`install`]); the swap calls [`after_release`] once its
//! slot is released.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use tracing::{debug, info, warn};
use zbus::Connection;
use zbus_systemd::systemd1::ManagerProxy;

use crate::systemd::control::UnitControl;
use crate::systemd::environment::{self, IMAGE_VARIABLE};

/// Images kept: the running one and the rollback target.
pub const KEEP: usize = 2;
/// Longest one removal may take.
pub const PRUNE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// What to do after seeing `running`: the record to keep and the images to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The new record, oldest first (it still lists the images to remove until each is gone).
    pub record: Vec<String>,
    /// Older images nothing else uses, oldest first.
    pub remove: Vec<String>,
}

/// The plan for a host where `running` runs now, `seen` was recorded, and other units use
/// `in_use`.
pub fn plan(seen: &[String], running: &str, in_use: &BTreeSet<String>) -> Plan {
    let mut record: Vec<String> = seen
        .iter()
        .filter(|image| *image != running)
        .cloned()
        .collect();
    record.push(running.to_string());
    let older = record.len().saturating_sub(KEEP);
    let remove = record[..older]
        .iter()
        .filter(|image| !in_use.contains(*image))
        .cloned()
        .collect();
    Plan { record, remove }
}

/// `template` with `{image}` replaced by `image` in every argument.
pub fn argv_for(template: &[String], image: &str) -> Vec<String> {
    template
        .iter()
        .map(|arg| arg.replace("{image}", image))
        .collect()
}

/// One instance's housekeeping.
#[derive(Debug)]
pub struct Pruner {
    argv: Vec<String>,
    record: PathBuf,
    unit: String,
    conn: Connection,
}

impl Pruner {
    /// Removes with `argv` (`{image}` replaced); `None` when `argv` is empty (`swap.prune = []`).
    /// `conn` is the system bus, where the other units are looked up.
    pub fn new(
        argv: &[String],
        state_dir: &Path,
        instance: &str,
        unit: &str,
        conn: Connection,
    ) -> Option<Pruner> {
        (!argv.is_empty()).then(|| Pruner {
            argv: argv.to_vec(),
            record: crate::state_layout::instance_dir(state_dir, instance)
                .join(crate::state_layout::IMAGES),
            unit: unit.to_string(),
            conn,
        })
    }

    /// Where the record is kept.
    pub fn record_path(&self) -> &Path {
        &self.record
    }

    /// The recorded images, oldest first; an unreadable record counts as empty (it is advisory).
    pub fn recorded(&self) -> Vec<String> {
        match crate::atomic_file::read(&self.record) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                warn!(path = %self.record.display(), "image record unreadable ({err}); starting afresh");
                Vec::new()
            }),
            Ok(None) => Vec::new(),
            Err(err) => {
                warn!(path = %self.record.display(), "cannot read the image record: {err}");
                Vec::new()
            }
        }
    }

    fn write(&self, record: &[String]) {
        let bytes = serde_json::to_vec(record).unwrap_or_default();
        if let Err(err) = crate::atomic_file::write(&self.record, &bytes) {
            warn!(path = %self.record.display(), "cannot write the image record: {err}");
        }
    }

    /// Notes the image the unit runs (at the daemon's start), removing nothing.
    pub async fn note_running<C: UnitControl>(&self, control: &C) {
        let Some(running) = running_image(control).await else {
            return;
        };
        let mut record = self.recorded();
        record.retain(|image| *image != running);
        record.push(running);
        self.write(&record);
    }

    /// After a swap released its slot: notes the running image and removes the older ones (see
    /// the module's docs). Failures are logged; nothing here fails the swap.
    pub async fn after_release<C: UnitControl>(&self, control: &C) {
        let Some(running) = running_image(control).await else {
            return;
        };
        let in_use = match images_of_other_units(&self.conn, &self.unit).await {
            Ok(in_use) => in_use,
            Err(err) => {
                warn!("cannot list the host's units ({err}); no image removed this time");
                return;
            }
        };
        let Plan { mut record, remove } = plan(&self.recorded(), &running, &in_use);
        self.write(&record);
        for image in remove {
            let argv = argv_for(&self.argv, &image);
            match control.run_transient(&argv, PRUNE_TIMEOUT).await {
                Ok(()) => info!(image = %image, "removed an old image of the app"),
                Err(err) => warn!(image = %image, kind = err.kind(),
                    "failed to remove an old image of the app ({err}); left to the operator"),
            }
            record.retain(|kept| *kept != image);
            self.write(&record);
        }
    }
}

/// The unit's `SIDEKICK_IMAGE` now, `None` when unset or unreadable.
async fn running_image<C: UnitControl>(control: &C) -> Option<String> {
    match control.running().await {
        Ok(running) => running.image,
        Err(err) => {
            debug!("cannot read the unit's image ({err}); no image housekeeping this time");
            None
        }
    }
}

/// The `SIDEKICK_IMAGE` of every loaded service unit but `own`.
pub async fn images_of_other_units(conn: &Connection, own: &str) -> zbus::Result<BTreeSet<String>> {
    let manager = ManagerProxy::new(conn).await?;
    let mut images = BTreeSet::new();
    for unit in manager.list_units().await? {
        let name = unit.0;
        if name == own || !name.ends_with(".service") || unit.2 != "loaded" {
            continue;
        }
        // A unit gone between the listing and this read uses nothing.
        if let Ok(env) = environment::service_environment(conn, &name).await
            && let Some(image) = environment::variable(&env, IMAGE_VARIABLE)
        {
            images.insert(image.to_string());
        }
    }
    Ok(images)
}

static INSTALLED: OnceLock<Pruner> = OnceLock::new();

/// Makes `pruner` the one [`after_release`] uses (set once, by `sidekick run`).
pub fn install(pruner: Pruner) {
    let _first = INSTALLED.set(pruner);
}

/// The hook after a swap's release: runs the installed pruner, if any.
pub async fn after_release<C: UnitControl>(control: &C) {
    if let Some(pruner) = INSTALLED.get() {
        pruner.after_release(control).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// Seen, running now, the record after, removed.
    type Case<'a> = (&'a [&'a str], &'a str, &'a [&'a str], &'a [&'a str]);

    #[test]
    fn keeps_the_running_image_and_the_rollback_target() {
        let none = BTreeSet::new();
        let cases: &[Case] = &[
            (&[], "a:1", &["a:1"], &[]),
            (&["a:1"], "a:2", &["a:1", "a:2"], &[]),
            (&["a:1", "a:2"], "a:3", &["a:1", "a:2", "a:3"], &["a:1"]),
            (
                &["a:1", "a:2", "a:3"],
                "a:4",
                &["a:1", "a:2", "a:3", "a:4"],
                &["a:1", "a:2"],
            ),
            // A rollback: the running image is the last one seen; nothing goes.
            (&["a:2", "a:3"], "a:3", &["a:2", "a:3"], &[]),
            // Back to an older image by hand: it moves to the end, the newer one is its target.
            (
                &["a:1", "a:2", "a:3"],
                "a:1",
                &["a:2", "a:3", "a:1"],
                &["a:2"],
            ),
        ];
        for (seen, running, record, remove) in cases {
            let got = plan(&images(seen), running, &none);
            assert_eq!(got.record, images(record), "{seen:?} then {running}");
            assert_eq!(got.remove, images(remove), "{seen:?} then {running}");
        }
    }

    #[test]
    fn an_image_another_unit_uses_is_left_alone_and_kept_in_the_record() {
        let in_use = BTreeSet::from(["a:1".to_string()]);
        let got = plan(&images(&["a:1", "a:2", "a:3"]), "a:4", &in_use);
        assert_eq!(got.remove, images(&["a:2"]));
        assert_eq!(got.record, images(&["a:1", "a:2", "a:3", "a:4"]));
    }

    #[test]
    fn the_template_gets_the_image_in_every_argument() {
        let template = images(&["podman", "rmi", "--ignore", "{image}"]);
        assert_eq!(
            argv_for(&template, "r/a:1"),
            images(&["podman", "rmi", "--ignore", "r/a:1"])
        );
    }
}
