//! The `sidekick` binary: parses the command line, loads the configuration once and runs the
//! chosen command.

use std::future::Future;
use std::process::ExitCode;

use clap::Parser;

use sidekick::cli::{Cli, Command};
use sidekick::registry::address;
use sidekick::{commands, logging};

fn main() -> ExitCode {
    // reqwest is built without a default provider so that ring is the only one in the tree.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    logging::init(cli.log, cli.verbosity());
    match &cli.command {
        Command::CheckConfig => check_config(&cli),
        Command::Run(args) => commands::run::main(&cli, args),
        Command::UpdateCheck {
            current_version,
            interactive,
            standalone,
        } => block_on(commands::update_check::run(
            &cli.config_sources(),
            current_version.as_deref(),
            *interactive,
            *standalone,
        )),
        Command::Status { json, runtime_dir } => {
            let runtime_dir = runtime_dir
                .clone()
                .unwrap_or_else(|| sidekick::config::runtime_dir(&cli.config_root));
            block_on(commands::status::run(
                &cli.config_sources(),
                *json,
                &runtime_dir,
            ))
        }
        Command::Slots { action } => block_on(commands::slots::run(&cli.config_sources(), action)),
        Command::Rollout { action } => {
            block_on(commands::rollout::run(&cli.config_sources(), action))
        }
        Command::EtcdRole { group } => {
            commands::etcd_role::run(&cli.config_sources(), group.as_deref())
        }
        Command::PullImage { program, instance } => {
            commands::handoff::pull_image(program, instance)
        }
        Command::ApplyVersion {
            state_dir,
            into,
            instance,
        } => commands::handoff::apply_version(state_dir, into, instance),
    }
}

/// Runs an async command on a runtime built only for commands that need one.
fn block_on(command: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(err) => {
            eprintln!("sidekick: failed to start the async runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Also checks `$COREOS_PUBLIC_IPV4` when it would be the announced address.
fn check_config(cli: &Cli) -> ExitCode {
    let loaded = match commands::load_config(&cli.config_sources()) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let registration = &loaded.settings.registration;
    if registration.enabled
        && registration.host.is_none()
        && let Err(err) = address::check_public_ipv4_env()
    {
        eprintln!("sidekick: invalid configuration: {err}");
        return ExitCode::from(commands::EXIT_CONFIG);
    }
    print!("{}", loaded.render());
    ExitCode::SUCCESS
}
