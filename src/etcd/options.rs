//! The etcd client's own options (`[etcd]`), validated by `config`, which composes them
//! into its settings.

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

/// Where etcd is and how to authenticate to it.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdOptions {
    pub endpoints: Vec<Url>,
    pub timeout: Duration,
    pub auth: Option<EtcdAuth>,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<ClientCert>,
}

/// Username and the file holding the password (read when connecting, never logged).
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdAuth {
    pub username: String,
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}
