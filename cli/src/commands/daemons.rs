//! `roam scheduler` and `roam host`: the two daemons.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use roam_scheduler::store::{EtcdTls, StoreLocation};

use crate::size::parse_size;

/// Arguments of `roam scheduler`.
#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// API address: every interface, port 7700 (hosts and operators reach
    /// it; every call is TLS and authenticated).
    #[arg(long, default_value = "0.0.0.0:7700")]
    pub listen: SocketAddr,
    /// Data directory: state store (unless `--store` says otherwise),
    /// modules, CA, admin token. Default: /var/lib/roam/scheduler as root,
    /// else $XDG_DATA_HOME/roam/scheduler (~/.local/share/roam/scheduler).
    #[arg(long, env = "ROAM_DATA_DIR", default_value_os_t = default_data_dir("scheduler"))]
    pub data_dir: PathBuf,
    /// Where desired and recorded state lives: `redb=PATH` (an embedded
    /// file; the default is `state.redb` in the data directory) or
    /// `etcd=URL[,URL...]` (an etcd v3 cluster, any of its members).
    #[arg(long, value_parser = parse_store)]
    pub store: Option<StoreArg>,
    /// With an etcd store: the prefix of every key Roam writes.
    #[arg(long, default_value = "/roam")]
    pub etcd_prefix: String,
    /// With an etcd store over TLS (`https://` endpoints): the CA
    /// certificate etcd's serving certificates chain to (PEM).
    #[arg(long, requires_all = ["etcd_cert", "etcd_key"])]
    pub etcd_ca: Option<PathBuf>,
    /// This scheduler's client certificate for etcd (PEM). With etcd's
    /// `--client-cert-auth` and auth enabled, its common name is the etcd
    /// user the scheduler acts as.
    #[arg(long, requires_all = ["etcd_ca", "etcd_key"])]
    pub etcd_cert: Option<PathBuf>,
    /// The key of `--etcd-cert` (PEM).
    #[arg(long, requires_all = ["etcd_ca", "etcd_cert"])]
    pub etcd_key: Option<PathBuf>,
    /// A host that misses heartbeats this long is down and its workloads move.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub heartbeat_timeout: Duration,
    /// Heartbeat period asked of hosts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "500ms")]
    pub heartbeat: Duration,
    /// Threads serving the API and the ingress (default: one per core). A
    /// scheduler that only takes heartbeats and operator calls spends less
    /// CPU waking threads with 1.
    #[arg(long)]
    pub workers: Option<usize>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Extra DNS name or IP address for the scheduler's own certificate (how
    /// the CLI reaches it from elsewhere); repeatable. `localhost`, the
    /// loopback addresses and the listen address are always in it.
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// How long a host certificate is valid; hosts renew at half-life.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    pub host_cert_lifetime: Duration,
    /// The URL hosts and clients reach this replica at, when it is not the
    /// listen address (a follower points callers at the leader's).
    #[arg(long)]
    pub advertise: Option<String>,
    /// This replica's name among those sharing an etcd store (default: the
    /// advertised host and port).
    #[arg(long)]
    pub replica: Option<String>,
    /// With an etcd store: the time to live of each replica's lease. A
    /// leader that stops renewing it (dead, paused, cut off) is replaced
    /// within this plus a campaign round; whole seconds, 2 s at least
    /// (etcd's minimum with its default election timeout).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    pub leader_ttl: Duration,
    /// Connections one client address may hold open at once; more are
    /// closed as they arrive. Raise it when many hosts reach the scheduler
    /// from one address (behind a NAT or a TCP load balancer).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections_per_address: u32,
    /// A file holding the cluster's scrape credential (one line, 16
    /// printable characters at least): the bearer token Prometheus shows
    /// every `/metrics`, this scheduler's and each host's (hosts learn its
    /// sha256 when they join). Without it hosts serve their metrics to
    /// nobody, and the scheduler's needs a viewer token.
    #[arg(long, env = "ROAM_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<std::path::PathBuf>,
    /// Extra root certificates (PEM) for OCI registries, besides the
    /// system's.
    #[arg(long)]
    pub registry_ca: Option<PathBuf>,
    /// An OCI registry (`host:port`) to reach over plain HTTP (only those
    /// listed; every other is TLS).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Require every module to come from an OCI registry signed by one of
    /// these public keys (PEM, `roam key generate`'s `.pub`, or cosign's);
    /// a deploy of an unsigned or wrongly signed module fails with the
    /// reason.
    #[arg(long = "require-signed", num_args = 1..)]
    pub require_signed: Vec<PathBuf>,
}

/// TLS flags both daemons take.
#[derive(Args, Debug)]
pub struct TlsArgs {
    /// Serve and call over cleartext HTTP: no CA, no certificates, nothing
    /// authenticated by TLS. Only for a network you trust end to end; the
    /// daemon logs a warning at start.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Certificate chain (PEM) shown to clients outside the cluster —
    /// browsers, the CLI, clients of the ingress — which do not trust the
    /// cluster's private CA. Cluster peers always get the cluster
    /// certificate.
    #[arg(long, requires = "tls_key", conflicts_with = "insecure_plaintext")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Arguments of `roam host`.
#[derive(Args, Debug)]
pub struct HostArgs {
    /// Scheduler URL, for example `https://127.0.0.1:7700`.
    #[arg(long)]
    pub join: String,
    /// Join token from `roam token create` (`SECRET.CA-HASH`: the host checks
    /// the scheduler's CA against the hash before it sends the secret).
    #[arg(long, env = "ROAM_JOIN_TOKEN")]
    pub token: String,
    /// Host name (default: the machine's, from `gethostname`: its first
    /// label, lowercase).
    #[arg(long)]
    pub name: Option<String>,
    /// API and ingress address: every interface, port 7701 (port 0 picks
    /// a free one).
    #[arg(long, default_value = "0.0.0.0:7701")]
    pub listen: SocketAddr,
    /// URL the scheduler and other hosts use to reach this host, when it is
    /// not the listen address (NAT, a proxy); default: `https://LISTEN`, or
    /// when listening on every interface, the address of the one that
    /// routes to the scheduler.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Data directory (certificate, compiled-code cache). Default:
    /// /var/lib/roam/host as root, else $XDG_DATA_HOME/roam/host
    /// (~/.local/share/roam/host).
    #[arg(long, env = "ROAM_DATA_DIR", default_value_os_t = default_data_dir("host"))]
    pub data_dir: PathBuf,
    /// Memory for workloads.
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    pub capacity_memory: u64,
    /// Instance slots.
    #[arg(long, default_value_t = 64)]
    pub slots: u32,
    /// Largest memory one instance may have (default: the capacity, at most
    /// 4GiB). Hosts with many slots reserve this much address space per
    /// slot, so a small value lets one host hold tens of thousands.
    #[arg(long, value_parser = parse_size)]
    pub max_instance_memory: Option<u64>,
    /// Of each freed instance slot, keep up to this much of the memory its
    /// workload wrote faulted in, zeroed in place, instead of giving it back
    /// to the kernel; freed slots are then reused before fresh ones. A
    /// workload that starts or migrates in later takes no page faults for
    /// that memory — on VMs whose freed memory goes back to the hypervisor,
    /// a fault on fresh memory can cost more than copying the page. Costs
    /// resident memory: up to this much per slot the host has used, and it
    /// uses no more slots than its peak of concurrent instances (default:
    /// none).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub keep_resident: u64,
    /// How to execute Wasm: `cranelift` compiles to this machine's code;
    /// `pulley` interprets portable bytecode, for architectures Cranelift
    /// does not support. Hosts report it as the `engine` label.
    #[arg(long, default_value = "cranelift")]
    pub engine: roam_runtime::EngineKind,
    /// Extra (untrusted) labels, `k=v`; trusted ones come from the token.
    #[arg(long = "label", value_parser = super::run::parse_env)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// On SIGTERM or Ctrl-C: how long to let the scheduler move this host's
    /// workloads away (live) before exiting; a second signal exits at once.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub shutdown_timeout: std::time::Duration,
    /// Record nothing for `/metrics` and refuse it (the request path then
    /// counts nothing).
    #[arg(long, env = "ROAM_NO_METRICS")]
    pub no_metrics: bool,
    /// How many workloads get series of their own in `/metrics`, in the
    /// order they start here; the figures of any more are summed under
    /// `workload="_other"` (`docs/metrics.md`).
    #[arg(long, default_value_t = 1000)]
    pub metrics_workloads: usize,
}

fn tokio(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        anyhow::ensure!(n > 0, "--workers must be at least 1");
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `--store`: `redb=PATH` or `etcd=URL[,URL...]`.
#[derive(Clone, Debug)]
pub enum StoreArg {
    Redb(PathBuf),
    Etcd(Vec<String>),
}

fn parse_store(s: &str) -> Result<StoreArg, String> {
    match s.split_once('=') {
        Some(("redb", path)) if !path.is_empty() => Ok(StoreArg::Redb(PathBuf::from(path))),
        Some(("etcd", urls)) => {
            let urls: Vec<String> = urls.split(',').map(str::to_string).collect();
            for url in &urls {
                let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}`: {e}"))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(format!(
                        "`{url}` is not an http:// or https:// URL of an etcd member"
                    ));
                }
            }
            Ok(StoreArg::Etcd(urls))
        }
        _ => Err("use redb=PATH or etcd=URL[,URL...]".to_string()),
    }
}

/// Run `roam scheduler`.
pub fn scheduler(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    let etcd_tls = match (&args.etcd_ca, &args.etcd_cert, &args.etcd_key) {
        (Some(ca), Some(cert), Some(key)) => Some(EtcdTls::read(ca, cert, key)?),
        _ => None,
    };
    let store = match args.store {
        Some(StoreArg::Redb(_)) | None if etcd_tls.is_some() => {
            anyhow::bail!("--etcd-ca, --etcd-cert and --etcd-key go with --store etcd=URL")
        }
        Some(StoreArg::Redb(path)) => Some(StoreLocation::Redb(path)),
        Some(StoreArg::Etcd(endpoints)) => Some(StoreLocation::Etcd {
            endpoints,
            prefix: args.etcd_prefix.clone(),
            tls: etcd_tls,
        }),
        None => None,
    };
    tokio(args.workers)?.block_on(roam_scheduler::server::run(
        roam_scheduler::server::ServerConfig {
            listen: args.listen,
            store,
            data_dir: args.data_dir,
            heartbeat_timeout: args.heartbeat_timeout,
            heartbeat: args.heartbeat,
            insecure_plaintext: args.tls.insecure_plaintext,
            tls_cert: args.tls.tls_cert,
            tls_key: args.tls.tls_key,
            tls_san: args.tls_san,
            host_cert_lifetime: args.host_cert_lifetime,
            advertise: args.advertise,
            replica: args.replica,
            leader_ttl: args.leader_ttl,
            max_connections_per_address: args.max_connections_per_address as usize,
            metrics_token_file: args.metrics_token_file,
            registry_ca: args.registry_ca,
            insecure_registries: args.insecure_registries,
            require_signed: args.require_signed,
        },
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Where a daemon keeps its data when `--data-dir` does not say: under
/// /var/lib/roam as root (the systemd units' `StateDirectory`), else under
/// the user's data directory.
fn default_data_dir(role: &str) -> PathBuf {
    data_dir_for(role, is_root(), |k| std::env::var_os(k))
}

fn data_dir_for(
    role: &str,
    root: bool,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> PathBuf {
    if root {
        return PathBuf::from("/var/lib/roam").join(role);
    }
    let base = env("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("roam").join(role)
}

/// Whether this process runs as root (Linux: `/proc/self` belongs to the
/// effective user).
fn is_root() -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// A host name from the machine's (`gethostname`): its first label,
/// lowercase; an error asking for `--name` if that is no DNS label.
fn machine_name(hostname: &str) -> anyhow::Result<String> {
    let first = hostname
        .trim()
        .split('.')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    roam_proto::names::host(&first).map_err(|e| {
        anyhow::anyhow!(
            "this machine's host name `{}` gives no valid Roam host name ({e}); give one with --name",
            hostname.escape_debug()
        )
    })?;
    Ok(first)
}

/// Run `roam host`.
pub fn host(args: HostArgs) -> anyhow::Result<ExitCode> {
    let name = match args.name {
        Some(n) => n,
        None => machine_name(&gethostname::gethostname().to_string_lossy())?,
    };
    tokio(None)?.block_on(roam_host::run(roam_host::HostConfig {
        name,
        listen: args.listen,
        advertise: args.advertise.map(|a| a.trim_end_matches('/').to_string()),
        join: args.join.trim_end_matches('/').to_string(),
        token: args.token,
        data_dir: args.data_dir,
        capacity_memory: args.capacity_memory,
        slots: args.slots,
        max_instance_memory: args.max_instance_memory,
        keep_resident: args.keep_resident,
        engine: args.engine,
        labels: args.labels.into_iter().collect(),
        insecure_plaintext: args.tls.insecure_plaintext,
        tls_cert: args.tls.tls_cert,
        tls_key: args.tls.tls_key,
        shutdown_timeout: args.shutdown_timeout,
        metrics: !args.no_metrics,
        metrics_workloads: args.metrics_workloads,
    }))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemons_keep_their_data_under_var_lib_as_root_else_in_the_users_data_dir() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert_eq!(
            data_dir_for("host", true, env(&[("HOME", "/home/a")])),
            PathBuf::from("/var/lib/roam/host")
        );
        assert_eq!(
            data_dir_for("scheduler", false, env(&[("HOME", "/home/a")])),
            PathBuf::from("/home/a/.local/share/roam/scheduler")
        );
        assert_eq!(
            data_dir_for(
                "host",
                false,
                env(&[("HOME", "/home/a"), ("XDG_DATA_HOME", "/d")])
            ),
            PathBuf::from("/d/roam/host")
        );
    }

    #[test]
    fn a_host_is_named_after_the_machine_or_asks_for_a_name() {
        assert_eq!(machine_name("edge-7").unwrap(), "edge-7");
        assert_eq!(machine_name("Edge-7.site.example.net\n").unwrap(), "edge-7");
        let err = machine_name("").unwrap_err().to_string();
        assert!(err.contains("--name"), "{err}");
        assert!(machine_name("under_score").is_err());
    }
}
