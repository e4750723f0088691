//! A small local Omaha update service for tests and demos. NOT for production.
//!
//! `cargo run --example omaha_server -- --listen 127.0.0.1:8000 [--state state.json]`

mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;

/// Command line of the example server.
#[derive(Debug, Parser)]
#[command(about = "A small Omaha update service with Nebraska's answers. Not for production.")]
struct Args {
    /// Loopback address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// JSON file to load the state from and save it to; in memory when absent.
    #[arg(long)]
    state: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {}: this server is for loopback use only",
            args.listen
        );
    }
    let state = match args.state {
        Some(path) => service::ServerState::with_file(path)?,
        None => service::ServerState::in_memory(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    service::serve(listener, Arc::new(state)).await?;
    Ok(())
}
