//! The update side's disk writes, off the driver's task: one thread takes the journal's records,
//! its removal and the denylist's saves in the order they were asked for, so a slow or stuck disk
//! never delays the loop (a deregistration, a watchdog ping, SIGTERM). A journal record answers
//! with its result ([`JournalWrite`]): the driver runs a swap step only once its phase is recorded.
//! A removal and a denylist save are only logged when they fail, as they were on the task.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::error;

use super::super::denylist::Denylist;
use super::super::journal::{Journal, JournalError};
use crate::agent::machine::swap::SwapPhase;

/// How long dropping the writer waits for the writes still queued (a stop's journal removal):
/// bounded, so a stuck disk cannot hold the exit past the stop budget; a removal that did not
/// make it leaves a journal the next start resumes and finishes.
pub const FLUSH_WAIT: Duration = Duration::from_millis(300);

/// Where the journal goes: the file, or a test's stand-in for a slow or failing disk.
pub trait JournalStore: Send + 'static {
    fn write(&self, swap: &SwapPhase) -> Result<(), JournalError>;
    fn clear(&self) -> Result<(), JournalError>;
}

impl JournalStore for Journal {
    fn write(&self, swap: &SwapPhase) -> Result<(), JournalError> {
        Journal::write(self, swap)
    }
    fn clear(&self) -> Result<(), JournalError> {
        Journal::clear(self)
    }
}

/// A journal record in flight; resolves with its result.
pub type JournalWrite = Pin<Box<dyn Future<Output = Result<(), JournalError>> + Send>>;

enum Op {
    Record(Box<SwapPhase>, oneshot::Sender<Result<(), JournalError>>),
    Clear,
    SaveDenylist(Denylist),
}

/// The writer thread's handle; dropping it lets the queued writes finish (for at most
/// [`FLUSH_WAIT`]).
pub struct DiskWriter {
    ops: Option<mpsc::Sender<Op>>,
    done: mpsc::Receiver<()>,
}

impl DiskWriter {
    /// A writer thread over `store`.
    pub fn spawn(store: impl JournalStore) -> DiskWriter {
        let (ops, queue) = mpsc::channel::<Op>();
        let (finished, done) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("sidekick-disk".into())
            .spawn(move || {
                for op in queue {
                    run(&store, op);
                }
                let _ = finished.send(());
            });
        if let Err(err) = spawned {
            // Without the thread every record answers as failed: the journal fails closed.
            error!(error = %err, "cannot start the disk writer thread; journal writes fail");
        }
        DiskWriter {
            ops: Some(ops),
            done,
        }
    }

    /// Records `swap`; the answer says whether it is on disk.
    pub fn record(&self, swap: &SwapPhase) -> JournalWrite {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Record(Box::new(swap.clone()), reply));
        Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                Err(JournalError::Io {
                    path: "the swap journal".into(),
                    source: std::io::Error::other("the disk writer thread is gone"),
                })
            })
        })
    }

    /// Removes the journal after what was asked before it.
    pub fn clear(&self) {
        self.send(Op::Clear);
    }

    /// Saves `list` after what was asked before it.
    pub fn save_denylist(&self, list: Denylist) {
        self.send(Op::SaveDenylist(list));
    }

    fn send(&self, op: Op) {
        let sent = self.ops.as_ref().map(|ops| ops.send(op));
        if !matches!(sent, Some(Ok(()))) {
            error!("the disk writer thread is gone: a journal or denylist write was not made");
        }
    }
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has made what is queued.
        self.ops = None;
        let _ = self.done.recv_timeout(FLUSH_WAIT);
    }
}

fn run(store: &impl JournalStore, op: Op) {
    match op {
        Op::Record(swap, reply) => {
            let _ = reply.send(store.write(&swap));
        }
        Op::Clear => {
            if let Err(err) = store.clear() {
                error!(error = %err, kind = err.kind(), "failed to remove the swap journal");
            }
        }
        Op::SaveDenylist(list) => {
            if let Err(err) = list.save() {
                error!(error = %err, kind = err.kind(), "failed to save the denylist");
            }
        }
    }
}
