//! The `sidekick` binary: parses the command line, loads the configuration once and runs the
//! chosen command.

use std::process::ExitCode;

use clap::Parser;

use sidekick::cli::{Cli, Command};
use sidekick::{commands, config, logging};

/// Exit code for an unusable configuration (also clap's code for bad flags).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    logging::init(cli.log, cli.verbosity());
    match &cli.command {
        Command::CheckConfig => check_config(&cli),
        Command::Run(args) => commands::run::main(&cli, args),
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
