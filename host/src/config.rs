//! How a host daemon runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use roam_proto::Labels;
use roam_runtime::EngineKind;

/// How a host daemon runs.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Host name (unique in the cluster).
    pub name: String,
    /// Address of the host's API.
    pub listen: SocketAddr,
    /// URL others reach the API at, if not `https://{listen}`.
    pub advertise: Option<String>,
    /// Scheduler replicas' URLs, comma-separated (any one will do; the
    /// host finds the leader).
    pub join: String,
    /// Join token (`SECRET.CA-HASH` as `roam token create` prints it).
    pub token: String,
    /// Data directory (compiled-code cache).
    pub data_dir: PathBuf,
    /// Memory for workloads, bytes.
    pub capacity_memory: u64,
    /// Instance slots.
    pub slots: u32,
    /// Largest memory of one instance (default: the capacity, at most 4 GiB).
    pub max_instance_memory: Option<u64>,
    /// Bytes of each freed instance slot's written memory kept faulted in
    /// (zeroed in place) rather than given back to the kernel (wasmtime's
    /// `linear_memory_keep_resident`; freed slots are reused first): the
    /// next instance or incoming migration writes into memory faulted in
    /// already.
    pub keep_resident: u64,
    /// Native code or the portable interpreter.
    pub engine: EngineKind,
    /// Untrusted labels the host reports (trusted ones come from the token).
    pub labels: Labels,
    /// Serve and call over cleartext HTTP, with no certificate (the
    /// scheduler must run so too): for a trusted network only.
    pub insecure_plaintext: bool,
    /// The operator's certificate chain and key (PEM) shown to clients of
    /// the ingress; cluster peers always see the host's cluster certificate.
    pub tls_cert: Option<PathBuf>,
    /// See `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// On SIGTERM or Ctrl-C, how long the host gives the scheduler to move
    /// its workloads away before it exits.
    pub shutdown_timeout: Duration,
    /// Whether `/metrics` is served and requests are counted.
    pub metrics: bool,
    /// Workloads with series of their own in `/metrics`; the rest are
    /// summed as `workload="_other"`.
    pub metrics_workloads: usize,
}

impl HostConfig {
    /// Every scheduler URL `join` lists.
    pub fn schedulers(&self) -> Vec<String> {
        self.join
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect()
    }
}
