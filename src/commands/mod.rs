//! Subcommand bodies, one module each; `main.rs` dispatches to them.

pub mod run;
