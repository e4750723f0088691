//! Why an etcd registration step failed, with the causes etcd-client hides.

use thiserror::Error;

/// Why the registration is not (or no longer) held.
#[derive(Debug, Error)]
pub enum LeaseError {
    #[error("cannot reach etcd: {0}")]
    Connect(String),
    #[error("{op} failed: {detail}")]
    Rpc { op: &'static str, detail: String },
    #[error("lease {0:x} is gone (expired or revoked)")]
    Gone(i64),
    #[error("registration lease lost: {0}")]
    Lost(String),
    #[error("duplicate instance: {key} is held by another live instance on {other_host}")]
    Duplicate { key: String, other_host: String },
    /// Not a failure: the desired registration changed while a step was under way.
    #[error("the desired registration changed")]
    Superseded,
}

impl LeaseError {
    /// Short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LeaseError::Connect(_) => "connect",
            LeaseError::Rpc { .. } => "rpc",
            LeaseError::Gone(_) => "lease_gone",
            LeaseError::Lost(_) => "lease_lost",
            LeaseError::Duplicate { .. } => "duplicate",
            LeaseError::Superseded => "superseded",
        }
    }
}

/// An etcd error with its causes: etcd-client's errors do not expose `source()`, so the useful
/// part (a TLS or auth failure) would be lost in `Display` alone.
pub fn describe(err: &etcd_client::Error) -> String {
    let inner: Option<&dyn std::error::Error> = match err {
        etcd_client::Error::TransportError(e) => Some(e),
        etcd_client::Error::GRpcStatus(e) => Some(e),
        _ => None,
    };
    let mut text = err.to_string();
    let mut cause = inner.and_then(std::error::Error::source);
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

pub(super) fn rpc(op: &'static str) -> impl FnOnce(etcd_client::Error) -> LeaseError {
    move |e| LeaseError::Rpc {
        op,
        detail: describe(&e),
    }
}
