//! The `sidekick` binary: parses the command line, loads the configuration once and runs the
//! chosen command.

use std::process::ExitCode;

use clap::Parser;

use sidekick::cli::{Cli, Command};
use sidekick::{commands, config, logging};

/// Exit code for an unusable configuration (also clap's code for bad flags).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // reqwest is built without a default provider so that ring is the only one in the tree.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    logging::init(cli.log, cli.verbosity());
    match cli.command {
        Command::CheckConfig => check_config(&cli),
        Command::UpdateCheck {
            ref current_version,
            interactive,
        } => update_check(&cli, current_version.as_deref(), interactive),
    }
}

/// Loads the configuration, or reports why not; the caller exits with [`EXIT_CONFIG`].
fn load_settings(cli: &Cli) -> Option<config::Settings> {
    match config::load(&cli.config_sources()) {
        Ok(loaded) => Some(loaded.settings),
        Err(err) => {
            eprintln!("sidekick: invalid configuration: {err}");
            None
        }
    }
}

/// A runtime for commands that do I/O; one worker is plenty for one instance.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn update_check(cli: &Cli, current_version: Option<&str>, interactive: bool) -> ExitCode {
    let Some(settings) = load_settings(cli) else {
        return ExitCode::from(EXIT_CONFIG);
    };
    let report = match runtime() {
        Ok(rt) => rt.block_on(commands::update_check::update_check(
            &settings,
            current_version,
            interactive,
        )),
        Err(err) => commands::update_check::CheckReport::Error {
            kind: "runtime".into(),
            detail: err.to_string(),
        },
    };
    match serde_json::to_string(&report) {
        Ok(json) => println!("{json}"),
        Err(err) => eprintln!("sidekick: failed to print the report: {err}"),
    }
    if report.completed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn check_config(cli: &Cli) -> ExitCode {
    match config::load(&cli.config_sources()) {
        Ok(loaded) => {
            print!("{}", loaded.render());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("sidekick: invalid configuration: {err}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
