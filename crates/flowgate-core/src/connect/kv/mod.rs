//! KV stores a `watch` trigger watches and `flowgate kv` reads and writes:
//! the built-in KV of the state store, Consul and etcd. One interface
//! ([`KvStore`]), opened from a store URL by [`open`]:
//!
//! - `consul://host:8500` (`consul+https://host:8501` for TLS; the ACL token from
//!   the store's `token`, a secret);
//! - `etcd://host:2379` (`etcd+https://…`), through etcd's own HTTP/JSON gateway
//!   of its v3 API (no gRPC stack or `protoc` needed to build flowgate).
//!
//! A revision is the store's own number for the key's newest change (Consul's
//! `ModifyIndex`, etcd's `mod_revision`, the built-in KV's revision). It only
//! orders changes within one store's life: a Consul whose data was wiped starts
//! over, so callers compare values as well as revisions.

mod builtin;
mod consul;
mod etcd;

pub use builtin::Builtin;

use std::time::Duration;

use async_trait::async_trait;

pub use crate::state::KvEntry;

/// Why a KV store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The store did not answer or answered with a server error: try again.
    #[error("{store}: {message}")]
    Unavailable { store: String, message: String },
    /// The store refused the request (a missing or wrong ACL token, a bad key).
    #[error("{store} refused the request: {message}")]
    Refused { store: String, message: String },
    /// The URL names no KV store flowgate knows.
    #[error(
        "`{0}` is not a KV store URL: use consul://host:port, etcd://host:port (or consul+https://, etcd+https://)"
    )]
    BadUrl(String),
    /// The store answered with something that is not its API's answer.
    #[error("{store}: unexpected answer: {message}")]
    Protocol { store: String, message: String },
}

impl crate::error::Classify for KvError {
    fn class(&self) -> crate::error::ErrorClass {
        use crate::error::ErrorClass;
        match self {
            KvError::Unavailable { .. } => ErrorClass::EXTERNAL_RETRIABLE,
            KvError::Refused { .. } | KvError::Protocol { .. } => ErrorClass::EXTERNAL_FATAL,
            KvError::BadUrl(_) => ErrorClass::USER,
        }
    }
}

/// What a store still knows of a key's past.
#[derive(Debug, Clone, PartialEq)]
pub enum History {
    /// Every change after the asked revision, oldest first (empty: none).
    Complete(Vec<KvEntry>),
    /// The store keeps no history (Consul) or has compacted it away (etcd): only
    /// the current value is known; changes between were not seen.
    CurrentOnly(Option<KvEntry>),
}

/// A KV store.
#[async_trait]
pub trait KvStore: Send + Sync {
    /// The store as people name it (its URL, without secrets).
    fn describe(&self) -> String;
    /// The key's value and revision; `None` when it is not set.
    async fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError>;
    /// Set the key; returns the revision of this change.
    async fn set(&self, key: &str, value: &str) -> Result<i64, KvError>;
    /// The key's changes after revision `after`, as far as the store knows them.
    async fn history(&self, key: &str, after: i64) -> Result<History, KvError>;
    /// Wait up to `timeout` for the key to change after revision `after` (a
    /// blocking query or a watch, not a poll); `None` when nothing changed.
    async fn wait(
        &self,
        key: &str,
        after: i64,
        timeout: Duration,
    ) -> Result<Option<KvEntry>, KvError>;
}

/// The external KV systems flowgate talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvKind {
    Consul,
    Etcd,
}

impl KvKind {
    /// Whether the store keeps past values of a key (etcd until it compacts).
    pub fn keeps_history(self) -> bool {
        self == KvKind::Etcd
    }
}

/// A URL scheme's system and whether it uses TLS.
fn scheme(scheme: &str) -> Option<(KvKind, bool)> {
    match scheme {
        "consul" => Some((KvKind::Consul, false)),
        "consul+https" => Some((KvKind::Consul, true)),
        "etcd" => Some((KvKind::Etcd, false)),
        "etcd+https" => Some((KvKind::Etcd, true)),
        _ => None,
    }
}

/// A KV store URL's system, whether it uses TLS, and its `host:port`.
fn parse(url: &str) -> Option<(KvKind, bool, &str)> {
    let (name, rest) = url.split_once("://")?;
    let (kind, tls) = scheme(name)?;
    let authority = rest.trim_end_matches('/');
    (!authority.is_empty() && !authority.contains('/')).then_some((kind, tls, authority))
}

/// The external KV system a URL names, if it names one.
pub fn kind_of(url: &str) -> Option<KvKind> {
    url.split_once("://")
        .and_then(|(name, _)| scheme(name))
        .map(|(kind, _)| kind)
}

/// Whether a URL names an external KV store.
pub fn is_kv_url(url: &str) -> bool {
    kind_of(url).is_some()
}

/// How to reach a KV store besides its URL.
#[derive(Debug, Clone, Default)]
pub struct KvOptions {
    /// Consul's ACL token (default: `CONSUL_HTTP_TOKEN`, as Consul's own tools).
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust besides the system's (TLS only).
    pub ca_file: Option<std::path::PathBuf>,
}

impl KvOptions {
    /// The options a `[stores]` entry gives; its CA file is relative to `dir`
    /// (the pipeline file's folder).
    pub fn of(spec: &crate::config::model::StoreSpec, dir: &std::path::Path) -> KvOptions {
        KvOptions {
            token: spec.token.clone().filter(|t| !t.is_empty()),
            ca_file: spec.ca_file.as_ref().map(|f| dir.join(f)),
        }
    }
}

/// Open the KV store a URL names.
pub fn open(url: &str, opts: &KvOptions) -> Result<Box<dyn KvStore>, KvError> {
    let (kind, tls, authority) = parse(url).ok_or_else(|| KvError::BadUrl(url.to_string()))?;
    let base = format!("{}://{authority}", if tls { "https" } else { "http" });
    let client = http_client(opts).map_err(|message| KvError::Refused {
        store: url.to_string(),
        message,
    })?;
    Ok(match kind {
        KvKind::Consul => {
            let token = opts.token.clone().or_else(|| {
                std::env::var("CONSUL_HTTP_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty())
            });
            if let Some(t) = &token {
                crate::secret::register(t);
            }
            Box::new(consul::Consul::new(client, base, url.to_string(), token))
        }
        KvKind::Etcd => Box::new(etcd::Etcd::new(client, base, url.to_string())),
    })
}

/// One HTTP client per store; no overall timeout (blocking queries and watches
/// last as long as asked), a connect timeout instead.
fn http_client(opts: &KvOptions) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if let Some(ca) = &opts.ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("reading {}: {e}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{}: not PEM certificates: {e}", ca.display()))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().map_err(|e| e.to_string())
}

/// A reqwest error as a [`KvError`] of `store`.
fn unavailable(store: &str, e: &reqwest::Error) -> KvError {
    KvError::Unavailable {
        store: store.to_string(),
        message: crate::error::chain(e),
    }
}

/// A non-success HTTP status as a [`KvError`]: 5xx may pass, the rest will not.
fn status_error(store: &str, status: reqwest::StatusCode, body: &str) -> KvError {
    let message = format!(
        "HTTP {status}: {}",
        body.trim().chars().take(300).collect::<String>()
    );
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        KvError::Unavailable {
            store: store.to_string(),
            message,
        }
    } else {
        KvError::Refused {
            store: store.to_string(),
            message,
        }
    }
}
