//! sidekick: keeps one containerised app instance registered in etcd while it is healthy, and rolls
//! it to new versions offered by an Omaha v3 update service without downtime.
//!
//! The binary (`src/main.rs`) parses the command line and wires the production implementations;
//! everything else lives in this library so integration tests can drive each module against real
//! servers.

pub mod agent;
pub mod atomic_file;
pub mod backoff;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod dry_run;
pub mod etcd;
pub mod health;
pub mod http_tls;
pub mod identity;
pub mod image;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod oci;
pub mod omaha;
pub mod registry;
pub mod rollout;
pub mod slot;
pub mod state_layout;
pub mod systemd;
pub mod terminal_text;
