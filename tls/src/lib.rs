//! TLS for every Roam connection.
//!
//! - [`ca`]: the cluster's certificate authority, created by the scheduler
//!   on first start in its data directory, and the certificates it issues.
//! - [`identity`]: what a certificate names. Every cluster certificate
//!   names exactly one identity as a DNS name under the `.roam`
//!   pseudo-domain: `scheduler.roam`, or `NAME.host.roam` for host `NAME`.
//!   Host names are DNS labels, so no host can be named like the scheduler.
//! - [`transport`]: how a process talks to the cluster: plain HTTP (only
//!   behind `--insecure-plaintext`) or TLS with the cluster CA as the only
//!   root, its own certificate presented to the peer, and peers addressed
//!   by their identity's DNS name, resolved to the address they
//!   registered. The peer's certificate is then checked by the ordinary
//!   WebPKI rules against the name the caller expects, whatever address it
//!   dialled.
//! - [`serve`]: the server loop both daemons use, TLS or plain, which tells
//!   every request the verified identity of its client ([`Peer`]).
//!
//! - [`answer`]: bounded reads of what peers answer.
//!
//! The crypto provider is `ring` (aws-lc-rs would complicate the aarch64
//! and riscv64 cross builds); no OpenSSL.

pub mod answer;
pub mod ca;
pub mod identity;
mod resolve;
pub mod revoked;
mod serve;
pub mod transport;

pub use ca::{Ca, CaHash, Issued};
pub use identity::Identity;
pub use resolve::reachable;
pub use revoked::Revoked;
pub use serve::{CLIENT_POOL_IDLE, Peer, ServeOptions, serve};
pub use transport::{CertSlot, ServerCerts, Transport, Trust};

/// What can go wrong setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing key material failed.
    #[error("{what} `{path}`: {source}")]
    Io {
        /// What was being read or written.
        what: &'static str,
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A certificate, key or request could not be made or parsed.
    #[error("{0}")]
    Certificate(String),
    /// rustls refused a configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// A name cannot be an identity.
    #[error("{0}")]
    Name(String),
    /// A URL could not be read.
    #[error("bad URL `{url}`: {why}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
}

impl From<rcgen::Error> for TlsError {
    fn from(e: rcgen::Error) -> Self {
        TlsError::Certificate(e.to_string())
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Config(e.to_string())
    }
}

/// The crypto provider every configuration uses: ring's. rustls 0.23.48
/// deprecates it for lacking post-quantum key exchange (aws-lc-rs has it);
/// ring is what cross-builds cleanly for aarch64 and riscv64 here.
#[allow(
    deprecated,
    reason = "ring is the provider chosen for the cross builds; see above"
)]
///
/// AES-128-GCM is preferred over ring's default first choice, AES-256-GCM:
/// both are far beyond reach of brute force, and the 128-bit key costs
/// fewer rounds per byte, which a migration's page streams feel (every page
/// is encrypted once and decrypted once, on hosts that are also running
/// workloads).
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
    let mut provider = rustls::crypto::ring::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        TLS13_AES_128_GCM_SHA256 => 0,
        TLS13_AES_256_GCM_SHA384 => 1,
        _ => 2,
    };
    provider.cipher_suites.sort_by_key(rank);
    std::sync::Arc::new(provider)
}

/// sha256 of some bytes, hex.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Write a file readable only by its owner.
pub fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options.open(path)?;
    f.write_all(contents.as_bytes())
}
