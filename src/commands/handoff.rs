//! The root side of non-root mode (`swap.handoff = "environment-file"`): the fixed commands of
//! the root-owned template units `sidekick-prepull@.service` (`pull-image`) and
//! `sidekick-version@.service` (`apply-version`). Each takes only its unit's instance string and
//! checks everything it reads (`src/systemd/control/envfile.rs`), since the non-root sidekick
//! chooses the instance.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::ExitCode;

use crate::systemd::control::envfile;
use crate::terminal_text::{MAX_LINE_CHARS, sanitize_to};

/// Runs `program pull <image>` in place of this process, for the image `instance` names.
pub fn pull_image(program: &str, instance: &str) -> ExitCode {
    let image = match envfile::image_of_instance(instance) {
        Ok(image) => image,
        Err(err) => {
            eprintln!(
                "sidekick pull-image: refused: {}",
                sanitize_to(&err.to_string(), MAX_LINE_CHARS)
            );
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(image = %image.as_str(), "pulling");
    let err = std::process::Command::new(program)
        .arg("pull")
        .arg(image.as_str())
        .exec();
    eprintln!("sidekick pull-image: cannot run {program:?}: {err}");
    ExitCode::FAILURE
}

/// Applies the version request of the instance `instance` names.
pub fn apply_version(state_dir: &Path, into: &Path, instance: &str) -> ExitCode {
    match envfile::apply_request(state_dir, into, instance) {
        Ok(done) => {
            tracing::info!("{done}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!(
                "sidekick apply-version: refused: {}",
                sanitize_to(&err.to_string(), MAX_LINE_CHARS)
            );
            ExitCode::FAILURE
        }
    }
}
