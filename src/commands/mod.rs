//! The bodies of the subcommands; `main.rs` parses, loads the configuration and dispatches here.

pub mod update_check;
