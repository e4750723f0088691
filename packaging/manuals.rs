//! Writes the man pages and the shell completions of `sidekick` from its clap definitions
//! (`sidekick::cli::Cli`), for `scripts/package`:
//!
//! ```text
//! cargo run --example package_manuals -- OUT_DIR
//! ```
//!
//! writes `OUT_DIR/man/sidekick.1` and one page per subcommand (`sidekick-status.1`, …), and
//! `OUT_DIR/completions/{sidekick.bash,_sidekick,sidekick.fish}`.
//!
//! A program beside the daemon rather than a `build.rs` or a hidden subcommand: `src/cli.rs` uses
//! types of the library (`ConfigSources`, `LogTarget`), so a build script cannot `include!` it
//! alone, and a hidden subcommand would link roff and the completion generators into the daemon
//! that every host runs. As an example it builds against the very same `Cli`, and its two crates
//! are dev-dependencies only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: package_manuals OUT_DIR");
        return ExitCode::from(2);
    };
    match write_all(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "package_manuals: failed to write into {}: {err}",
                out.display()
            );
            ExitCode::FAILURE
        }
    }
}

fn write_all(out: &Path) -> std::io::Result<()> {
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    // One page for the command and one for each subcommand, linked by their SEE ALSO sections.
    clap_mangen::generate_to(sidekick::cli::Cli::command(), &man)?;

    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut command = sidekick::cli::Cli::command();
        clap_complete::generate_to(shell, &mut command, "sidekick", &completions)?;
    }
    Ok(())
}
