//! `run --dry-run`: every read, no write. Against the configured etcd it connects with the
//! configured TLS and credentials, proves etcd answers (`Status`), reads the current value of each
//! key a registration would write and prints `dry-run: would register KEY = VALUE … (now: …)`. It
//! never grants, puts, runs a txn or revokes. When etcd does not answer it says so once per retry,
//! backing off like the real registry, and keeps following the unit. With no etcd at all (the
//! embedded defaults) it prints the same lines without reading anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Entry, Published, Registry};
use crate::backoff::{Backoff, MAX_DELAY};
use crate::config::EtcdOptions;
use crate::dry_run::would;
use crate::etcd::endpoint_list;

/// What the driver asked for, in order: a dry run logs each step, none may be coalesced away.
#[derive(Debug)]
enum Command {
    Register(Vec<Entry>),
    Deregister,
    /// The record a real registry would hold on a lease of its own (`None`: withdrawn).
    Hold(Option<Entry>),
    Shutdown,
}

/// The read-only registry of `--dry-run`.
pub struct DryRunRegistry {
    commands: mpsc::UnboundedSender<Command>,
    /// The record a real registry would hold apart from the registration now.
    held: Option<Entry>,
    published: watch::Receiver<Published>,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl DryRunRegistry {
    /// Starts the reader for `instance` on the current tokio runtime; connects at once to `etcd`,
    /// or reads nothing when there is none. `ttl` is the lease a real registration would take.
    pub fn start(etcd: Option<EtcdOptions>, instance: String, ttl: Duration) -> DryRunRegistry {
        let (commands, rx) = mpsc::unbounded_channel();
        let (published_tx, published) = watch::channel(Published::Absent);
        let requests = Arc::new(AtomicU64::new(0));
        let reader = Reader {
            endpoint: etcd.as_ref().map(endpoint_list).unwrap_or_default(),
            etcd,
            ttl,
            instance,
            commands: rx,
            published: published_tx,
            requests: requests.clone(),
            client: None,
            present: None,
            holding: false,
            backoff: Backoff::new(MAX_DELAY),
        };
        DryRunRegistry {
            commands,
            held: None,
            published,
            requests,
            task: tokio::spawn(reader.run()),
        }
    }
}

impl Registry for DryRunRegistry {
    fn register(&mut self, entries: Vec<Entry>) {
        let _ = self.commands.send(Command::Register(entries));
    }

    fn deregister(&mut self) {
        let _ = self.commands.send(Command::Deregister);
    }

    fn published(&self) -> watch::Receiver<Published> {
        self.published.clone()
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn hold(&mut self, entry: Option<Entry>) {
        if self.held != entry {
            self.held = entry.clone();
            let _ = self.commands.send(Command::Hold(entry));
        }
    }

    async fn shutdown(self, deadline: Duration) {
        let _ = self.commands.send(Command::Shutdown);
        let mut task = self.task;
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            task.abort();
        }
    }
}

struct Reader {
    etcd: Option<EtcdOptions>,
    ttl: Duration,
    endpoint: String,
    instance: String,
    commands: mpsc::UnboundedReceiver<Command>,
    published: watch::Sender<Published>,
    requests: Arc<AtomicU64>,
    client: Option<Client>,
    /// The registration that would be published now.
    present: Option<Vec<Entry>>,
    /// Whether a record would be held on its own lease now.
    holding: bool,
    backoff: Backoff,
}

impl Reader {
    async fn run(mut self) {
        let mut connect_at = self.etcd.is_some().then(Instant::now);
        loop {
            let command = match connect_at {
                Some(at) => tokio::select! {
                    _ = tokio::time::sleep_until(at) => {
                        connect_at = self.connect().await;
                        if connect_at.is_none() && let Some(entries) = self.present.clone() {
                            // etcd answers now: show what the registration would replace.
                            connect_at = self.log_puts(&entries).await;
                        }
                        continue;
                    }
                    command = self.commands.recv() => command,
                },
                None => self.commands.recv().await,
            };
            match command {
                Some(Command::Register(entries)) => {
                    self.published
                        .send_replace(Published::Registered { lease: 0 });
                    let retry = self.log_puts(&entries).await;
                    connect_at = connect_at.or(retry);
                    self.present = Some(entries);
                }
                Some(Command::Deregister) => self.log_revoke(),
                Some(Command::Hold(Some((key, value)))) => {
                    self.holding = true;
                    would(format_args!(
                        "write {key} = {value} on a lease of its own while deregistered"
                    ));
                }
                Some(Command::Hold(None)) => {
                    if std::mem::take(&mut self.holding) {
                        would(
                            "revoke the swapping instance record's lease, deleting its key where still on it",
                        );
                    }
                }
                Some(Command::Shutdown) | None => {
                    self.log_revoke();
                    return;
                }
            }
        }
    }

    /// Connects and asks for `Status`; `None` on success, else when to try again.
    async fn connect(&mut self) -> Option<Instant> {
        let etcd = self.etcd.clone()?;
        if etcd.auth.is_some() {
            self.count(); // Authenticate, made by connect.
        }
        self.count();
        match crate::etcd::connect(&etcd).await {
            Ok(client) => {
                info!(instance = %self.instance, endpoint = %self.endpoint,
                    "dry run: etcd answers; reading only, writing nothing");
                self.client = Some(client);
                self.backoff.reset();
                None
            }
            Err(err) => Some(self.unreachable(&format!("{err:#}"))),
        }
    }

    /// Logs the failure once and picks the next attempt with backoff.
    fn unreachable(&mut self, error: &str) -> Instant {
        self.client = None;
        let delay = self.backoff.next_delay();
        warn!(instance = %self.instance, endpoint = %self.endpoint, error = %error,
            "dry run: etcd unreachable; retrying in {delay:.1?}");
        self.published.send_replace(Published::Unreachable {
            error: error.to_string(),
        });
        Instant::now() + delay
    }

    /// Logs each put the registration would make with the key's current value; when etcd does
    /// not answer, logs the puts without it and returns when to reconnect.
    async fn log_puts(&mut self, entries: &[Entry]) -> Option<Instant> {
        let mut failed = None;
        let ttl = humantime::format_duration(self.ttl);
        for (key, value) in entries {
            if self.etcd.is_none() {
                would(format_args!("register {key} = {value} (on a {ttl} lease)"));
                continue;
            }
            let now = match (&self.client, &failed) {
                (Some(client), None) => {
                    self.count();
                    match client.clone().get(key.as_str(), None).await {
                        Ok(got) => match got.kvs().first() {
                            Some(kv) => String::from_utf8_lossy(kv.value()).into_owned(),
                            None => "absent".to_string(),
                        },
                        Err(err) => {
                            failed = Some(super::error::describe(&err));
                            "unknown, etcd did not answer".to_string()
                        }
                    }
                }
                _ => "unknown, etcd did not answer".to_string(),
            };
            would(format_args!(
                "register {key} = {value} (on a {ttl} lease; now: {now})"
            ));
        }
        failed.map(|error| self.unreachable(&error))
    }

    /// The revoke a real registry would make, if something would be registered.
    fn log_revoke(&mut self) {
        if self.present.take().is_some() {
            would("deregister: revoke the registration lease, deleting its keys");
        }
        self.published.send_replace(Published::Absent);
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}
