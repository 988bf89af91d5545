//! Operator verbs: `token create`, `deploy`, `get`, `describe`, `logs`,
//! `invoke`, `delete`, `cordon`, `uncordon`. Tables for people, `-o json`
//! for scripts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use comfy_table::Table;
use reqwest::Method;
use roam_proto::paths::{self, NodeAction};
use roam_proto::{
    Durability, Grants, InstanceInfo, ModuleRef, TokenRequest, TokenResponse, WorkloadInfo,
    WorkloadSpec,
};

use super::client::{Client, ClientConfig};
use crate::size::parse_size;

/// Output format.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Output {
    /// A table for people.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
}

/// `roam token ...`
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token: a join token (the default) binds trusted labels and
    /// expires after 24 h unless --ttl says otherwise; admin, operator and
    /// viewer tokens are for people and tools.
    Create {
        /// What it may do: join, viewer, operator or admin.
        #[arg(long, default_value = "join", value_parser = parse_role)]
        role: roam_proto::TokenRole,
        /// Trusted label `k=v` (site, region, jurisdiction, provider); repeatable.
        #[arg(long = "label", value_parser = super::run::parse_env)]
        labels: Vec<(String, String)>,
        /// Lifetime (`24h`, `30m`); default 24h for join tokens, none for others.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// How many hosts may join with it (join tokens only).
        #[arg(long)]
        uses: Option<u32>,
    },
    /// List tokens: id, role, labels, expiry, uses left (never the tokens).
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Revoke a token by its id (from `roam token list`).
    Revoke {
        /// The token's id.
        id: String,
    },
}

/// `roam node ...`
#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// End a host's identity for good: every certificate issued to it is
    /// refused by the scheduler and every host, its name cannot join
    /// again, and its workloads are started elsewhere.
    Revoke {
        /// Host name.
        host: String,
    },
}

/// `roam node revoke HOST`
pub fn node(cmd: NodeCommand) -> anyhow::Result<ExitCode> {
    block_on(async {
        let c = client()?;
        match cmd {
            NodeCommand::Revoke { host } => {
                let r: roam_proto::HostRevoked = c
                    .json(c.request(Method::POST, &paths::node_revoke(&host)?))
                    .await?;
                println!(
                    "host `{}` revoked: {} certificate(s) refused from now on",
                    r.host, r.certificates
                );
                if !r.workloads.is_empty() {
                    println!("placing elsewhere: {}", r.workloads.join(", "));
                }
                if let Some(id) = r.join_token {
                    println!(
                        "it joined with token {id}, which still admits hosts: `roam token revoke {id}` if it may have leaked"
                    );
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn parse_role(s: &str) -> Result<roam_proto::TokenRole, String> {
    use roam_proto::TokenRole::*;
    [Join, Viewer, Operator, Admin]
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| format!("`{s}` is not a role: join, viewer, operator or admin"))
}

/// A replica's memory cap unless the deploy says otherwise.
pub(super) const DEFAULT_MEMORY: u64 = 64 << 20;

impl Manifest {
    /// The manifest at `path`; unknown fields are refused.
    pub(super) fn load(path: &std::path::Path) -> anyhow::Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid manifest `{}`", path.display()))
    }

    /// Its memory cap, bytes.
    pub(super) fn memory(&self) -> anyhow::Result<u64> {
        match &self.memory {
            Some(s) => parse_size(s).map_err(anyhow::Error::msg),
            None => Ok(DEFAULT_MEMORY),
        }
    }

    /// Its module's path: `module`, from the manifest's directory.
    pub(super) fn module_path(&self, manifest: &std::path::Path) -> Option<PathBuf> {
        self.module
            .as_ref()
            .filter(|m| !is_oci(&m.to_string_lossy()))
            .map(|m| {
                manifest
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join(m)
            })
    }
}

/// Whether a module is named by an OCI reference rather than a path.
fn is_oci(module: &str) -> bool {
    module.starts_with("oci://")
}

/// `roam deploy`
#[derive(Args, Debug)]
pub struct DeployArgs {
    /// A module to deploy (with --name), instead of -f: a file (uploaded
    /// to the scheduler), or `oci://REGISTRY/REPOSITORY:TAG` (the
    /// scheduler pulls it, resolving the tag to a digest once).
    pub file: Option<PathBuf>,
    /// Deploy a built example by name (counter, kv-cache, sensor-aggregator,
    /// sensor-probe, mandelbrot), with the grants it needs.
    #[arg(long, conflicts_with_all = ["file", "manifest"])]
    pub example: Option<String>,
    /// A workload.toml manifest. Flags given with it win over its values
    /// (`--env` per variable; `--grant` adds to its grants).
    #[arg(short = 'f', long = "file", conflicts_with = "file")]
    pub manifest: Option<PathBuf>,
    /// Workload name.
    #[arg(long)]
    pub name: Option<String>,
    /// Placement rules, for example `jurisdiction=EU,site in (eu-west-1,eu-central-1)`
    /// [default: none, or the manifest's].
    #[arg(long)]
    pub selector: Option<String>,
    /// Replicas [default: 1, or the manifest's].
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Memory cap per replica [default: 64MiB, or the manifest's].
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Spread replicas across this label.
    #[arg(long)]
    pub spread_by: Option<String>,
    /// Grant capabilities: kv, timers, send (repeatable or comma-separated).
    #[arg(long = "grant", value_delimiter = ',')]
    pub grants: Vec<String>,
    /// Environment variable K=V (repeatable).
    #[arg(long = "env", value_parser = super::run::parse_env)]
    pub env: Vec<(String, String)>,
    /// What a failure may cost the workload's state: none, async or sync
    /// (overrides the manifest's `durability`).
    #[arg(long)]
    pub durability: Option<Durability>,
    /// With `--durability async`: the longest time between two checkpoints
    /// (default 100ms).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub checkpoint_interval: Option<std::time::Duration>,
    /// Then wait until every replica is placed and serving, showing how
    /// many are; fail with the hosts' reasons if they are not within
    /// --timeout.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m", requires = "wait")]
    pub timeout: std::time::Duration,
    /// When this deploy changes what running replicas run (a new module,
    /// memory, environment, grants): how many are replaced at once
    /// (default 1).
    #[arg(long)]
    pub max_unavailable: Option<u32>,
    /// Let a version without the upgrade hooks replace the running one:
    /// its memory starts anew (key-value data, timers and messages still
    /// carry over). Without it such a rollout stops with the reason.
    #[arg(long)]
    pub discard_state: bool,
}

/// `roam get`
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    /// Hosts.
    Nodes,
    /// Workloads.
    Workloads,
    /// Replicas.
    Instances,
    /// Live migrations, newest first.
    Migrations,
    /// Scheduler replicas: which one leads, since when, and the store's
    /// health.
    Schedulers,
}

/// The manifest: `workload.toml`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Manifest {
    pub(super) name: String,
    pub(super) module: Option<PathBuf>,
    digest: Option<String>,
    #[serde(default = "one")]
    replicas: u32,
    #[serde(default)]
    selector: String,
    memory: Option<String>,
    spread_by: Option<String>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) grants: Grants,
    durability: Option<Durability>,
    /// For example `250ms`.
    checkpoint_interval: Option<String>,
}

fn one() -> u32 {
    1
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub fn client() -> anyhow::Result<Client> {
    Client::new(ClientConfig::load()?)
}

pub fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    f: F,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f)
}

pub(super) fn grants(list: &[String]) -> anyhow::Result<Grants> {
    let mut g = Grants::default();
    for item in list {
        match item.as_str() {
            "kv" => g.kv = true,
            "timers" => g.timers = true,
            "send" => g.send = vec!["*".into()],
            other => bail!("unknown grant `{other}`; use kv, timers or send"),
        }
    }
    Ok(g)
}

/// The examples and the grants each needs.
pub const EXAMPLES: &[(&str, &[&str])] = &[
    ("counter", &[]),
    ("kv-cache", &["kv", "timers"]),
    ("sensor-aggregator", &[]),
    ("sensor-probe", &["send"]),
    ("mandelbrot", &["timers"]),
];

/// Where built examples are: `$ROAM_EXAMPLES_DIR`, else
/// `target/wasm32-wasip1/release` beside the `target/{debug,release}` this
/// binary runs from, else under the current directory.
pub fn examples_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ROAM_EXAMPLES_DIR") {
        return PathBuf::from(dir);
    }
    let beside = std::env::current_exe().ok().and_then(|exe| {
        exe.parent()?
            .parent()
            .map(|t| t.join("wasm32-wasip1/release"))
    });
    match beside {
        Some(dir) if dir.is_dir() => dir,
        _ => PathBuf::from("target/wasm32-wasip1/release"),
    }
}

fn example_module(name: &str) -> anyhow::Result<(PathBuf, &'static [&'static str])> {
    let Some((_, needs)) = EXAMPLES.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = EXAMPLES.iter().map(|(n, _)| *n).collect();
        bail!("no example `{name}`; examples are {}", names.join(", "));
    };
    let path = examples_dir().join(format!("{}.wasm", name.replace('-', "_")));
    if !path.exists() {
        bail!(
            "example `{name}` is not built: run `cargo build --release --target wasm32-wasip1 -p {name}` (looked for {})",
            path.display()
        );
    }
    Ok((path, needs))
}

async fn upload(c: &Client, path: &PathBuf) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let m: ModuleRef = c
        .json(c.request(Method::PUT, &paths::modules()).body(bytes))
        .await?;
    Ok(m.digest)
}

/// Seconds since the Unix epoch, as an RFC 3339 time.
fn unix_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// `roam token create|list|revoke`
pub fn token(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    block_on(async {
        let c = client()?;
        match cmd {
            TokenCommand::Create {
                role,
                labels,
                ttl,
                uses,
            } => {
                let t: TokenResponse = c
                    .json(
                        c.request(Method::POST, &paths::tokens())
                            .json(&TokenRequest {
                                role,
                                labels: labels.into_iter().collect(),
                                ttl_secs: ttl.map(|t| t.as_secs().max(1)),
                                uses,
                            }),
                    )
                    .await?;
                println!("{}", t.token);
                eprintln!(
                    "token {} ({}){}",
                    t.id,
                    role.as_str(),
                    t.expires_unix
                        .map(|e| format!(", expires {}", unix_time(e)))
                        .unwrap_or_default()
                );
            }
            TokenCommand::List { output } => {
                let tokens: Vec<roam_proto::TokenInfo> =
                    c.json(c.request(Method::GET, &paths::tokens())).await?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&tokens)?),
                    Output::Table => {
                        let mut table = Table::new();
                        table.set_header(["ID", "ROLE", "LABELS", "EXPIRES", "USES LEFT"]);
                        for t in tokens {
                            table.add_row([
                                t.id,
                                t.role.as_str().to_string(),
                                t.labels
                                    .iter()
                                    .map(|(k, v)| format!("{k}={v}"))
                                    .collect::<Vec<_>>()
                                    .join(","),
                                t.expires_unix
                                    .map(unix_time)
                                    .unwrap_or_else(|| "never".into()),
                                t.uses_left.map_or("-".into(), |n| n.to_string()),
                            ]);
                        }
                        println!("{table}");
                    }
                }
            }
            TokenCommand::Revoke { id } => {
                c.send(c.request(Method::DELETE, &paths::token(&id)?))
                    .await?;
                println!("token {id} revoked");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `roam deploy`
pub fn deploy(args: DeployArgs) -> anyhow::Result<ExitCode> {
    block_on(async {
        let c = client()?;
        let rollout = roam_proto::RolloutPolicy {
            max_unavailable: args.max_unavailable,
            discard_state: args.discard_state,
        };
        let flag_source = args
            .file
            .as_ref()
            .map(|f| f.to_string_lossy().into_owned())
            .filter(|f| is_oci(f));
        let spec = if let Some(manifest) = &args.manifest {
            let m = Manifest::load(manifest)?;
            let source = flag_source.clone().or_else(|| {
                m.module
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned())
                    .filter(|s| is_oci(s))
            });
            let digest = match (&source, m.module_path(manifest), &m.digest) {
                (Some(_), _, _) => String::new(),
                (None, Some(path), _) => upload(&c, &path).await?,
                (None, None, Some(d)) => d.clone(),
                (None, None, None) => bail!(
                    "manifest `{}` needs `module` (a path or an oci:// reference) or `digest`",
                    manifest.display()
                ),
            };
            let memory = match args.memory {
                Some(bytes) => bytes,
                None => m.memory()?,
            };
            let mut env = m.env;
            env.extend(args.env.iter().cloned());
            let flags = grants(&args.grants)?;
            let mut send = m.grants.send;
            send.extend(flags.send);
            send.dedup();
            WorkloadSpec {
                name: args.name.clone().unwrap_or(m.name),
                digest,
                replicas: args.replicas.unwrap_or(m.replicas),
                selector: args.selector.clone().unwrap_or(m.selector),
                memory,
                spread_by: args.spread_by.clone().or(m.spread_by),
                env,
                grants: Grants {
                    kv: m.grants.kv || flags.kv,
                    timers: m.grants.timers || flags.timers,
                    send,
                },
                durability: args.durability.or(m.durability).unwrap_or_default(),
                checkpoint_interval_ms: match (args.checkpoint_interval, &m.checkpoint_interval) {
                    (Some(d), _) => Some(millis(d)),
                    (None, Some(text)) => Some(millis(
                        humantime::parse_duration(text)
                            .with_context(|| format!("checkpoint_interval `{text}`"))?,
                    )),
                    (None, None) => None,
                },
                rollout: rollout.clone(),
                revision: 0,
                source: source.clone(),
            }
        } else if let Some(example) = &args.example {
            let (path, needs) = example_module(example)?;
            let mut grant_list = args.grants.clone();
            grant_list.extend(needs.iter().map(|g| g.to_string()));
            WorkloadSpec {
                name: args.name.clone().unwrap_or_else(|| example.clone()),
                digest: upload(&c, &path).await?,
                replicas: args.replicas.unwrap_or(1),
                selector: args.selector.clone().unwrap_or_default(),
                memory: args.memory.unwrap_or(DEFAULT_MEMORY),
                spread_by: args.spread_by.clone(),
                env: args.env.iter().cloned().collect(),
                grants: grants(&grant_list)?,
                durability: args.durability.unwrap_or_default(),
                checkpoint_interval_ms: args.checkpoint_interval.map(millis),
                rollout: rollout.clone(),
                revision: 0,
                source: None,
            }
        } else {
            let Some(file) = &args.file else {
                bail!(
                    "give a module (`roam deploy app.wasm --name app`), an example (`--example counter`) or a manifest (`-f workload.toml`)"
                );
            };
            let name = args
                .name
                .clone()
                .context("--name is required when deploying a module file")?;
            let source = flag_source.clone();
            WorkloadSpec {
                name,
                digest: match &source {
                    Some(_) => String::new(),
                    None => upload(&c, file).await?,
                },
                replicas: args.replicas.unwrap_or(1),
                selector: args.selector.clone().unwrap_or_default(),
                memory: args.memory.unwrap_or(DEFAULT_MEMORY),
                spread_by: args.spread_by.clone(),
                env: args.env.iter().cloned().collect(),
                grants: grants(&args.grants)?,
                durability: args.durability.unwrap_or_default(),
                checkpoint_interval_ms: args.checkpoint_interval.map(millis),
                rollout: rollout.clone(),
                revision: 0,
                source: source.clone(),
            }
        };
        let spec: WorkloadSpec = c
            .json(c.request(Method::POST, &paths::workloads()).json(&spec))
            .await?;
        println!(
            "workload `{}` deployed ({}, {} replica(s), revision {})",
            spec.name, spec.digest, spec.replicas, spec.revision
        );
        if args.wait {
            wait_ready(&c, &spec, args.timeout).await?;
            if spec.revision > 1 {
                super::rollout::wait(&c, &spec.name, args.timeout).await?;
            }
        }
        println!("try: roam invoke {} /", spec.name);
        Ok(ExitCode::SUCCESS)
    })
}

/// `roam deploy --wait`: until each of `spec`'s replicas is placed and
/// serving, as a bar of replicas ready; an error with the hosts' reasons
/// after `timeout`.
async fn wait_ready(
    c: &Client,
    spec: &WorkloadSpec,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let name = &spec.name;
    let wanted = u64::from(spec.replicas);
    let mut progress = super::progress::Progress::bar(&format!("{name}: replicas ready"), wanted);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (info, instances) = tokio::join!(
            c.json::<WorkloadInfo>(c.request(Method::GET, &paths::workload(name)?)),
            c.json::<Vec<InstanceInfo>>(c.request(Method::GET, &paths::instances())),
        );
        if let (Ok(info), Ok(instances)) = (info, instances) {
            let ready: Vec<&str> = instances
                .iter()
                .filter(|i| i.workload == *name && i.ready)
                .map(|i| i.host.as_str())
                .collect();
            let count = ready.len() as u64;
            if count >= wanted && info.hosts.len() as u64 >= wanted {
                progress.finish(count, format!("on {}", ready.join(", ")));
                return Ok(());
            }
            let message = if (info.hosts.len() as u64) < wanted && !info.rejected.is_empty() {
                format!(
                    "placed on {}/{wanted}; {} host(s) rejected it (roam describe workload {name})",
                    info.hosts.len(),
                    info.rejected.len()
                )
            } else {
                format!("placed on {}", info.hosts.join(", "))
            };
            if std::time::Instant::now() > deadline {
                let reasons: Vec<String> = info
                    .rejected
                    .iter()
                    .map(|(host, why)| format!("{host}: {why}"))
                    .collect();
                progress.finish(count, message);
                bail!(
                    "`{name}`: {count} of {wanted} replica(s) ready after {}; {}",
                    humantime::format_duration(timeout),
                    if reasons.is_empty() {
                        "no host rejected it (still starting?)".to_string()
                    } else {
                        format!("rejected by {}", reasons.join("; "))
                    }
                );
            }
            progress.show(count, message);
        } else if std::time::Instant::now() > deadline {
            bail!(
                "`{name}`: the scheduler did not answer within {}",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `roam describe workload NAME`
pub fn describe(name: &str, output: Output) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let c = client()?;
        let w: WorkloadInfo = c
            .json(c.request(Method::GET, &paths::workload(name)?))
            .await?;
        if let Output::Json = output {
            println!("{}", serde_json::to_string_pretty(&w)?);
            return Ok(ExitCode::SUCCESS);
        }
        println!("Name:      {}", w.spec.name);
        println!("Module:    {}", w.spec.digest);
        println!("Replicas:  {}/{}", w.hosts.len(), w.spec.replicas);
        println!(
            "Selector:  {}",
            if w.spec.selector.is_empty() {
                "<none>"
            } else {
                &w.spec.selector
            }
        );
        println!("Memory:    {} MiB", w.spec.memory >> 20);
        match (w.spec.durability, w.spec.checkpoint_interval_ms) {
            (d, Some(ms)) => println!("Durability: {d} (checkpoint at least every {ms} ms)"),
            (d, None) => println!("Durability: {d}"),
        }
        println!(
            "Runs on:   {}",
            if w.hosts.is_empty() {
                "<nowhere>".to_string()
            } else {
                w.hosts.join(", ")
            }
        );
        if !w.protection.is_empty() {
            println!("Standbys:");
            for (primary, p) in &w.protection {
                let age = p.checkpoint_age_ms.map_or_else(
                    || "no checkpoint yet".to_string(),
                    |ms| format!("last checkpoint {ms} ms ago"),
                );
                match &p.standby {
                    Some(standby) => println!(
                        "  {primary}: standby on {standby}, {age} ({})",
                        if p.protected {
                            "protected"
                        } else {
                            "unprotected"
                        }
                    ),
                    None => println!("  {primary}: no standby (unprotected)"),
                }
            }
        }
        if !w.rejected.is_empty() {
            println!("Other hosts:");
            for (host, reason) in &w.rejected {
                println!("  {host}: {reason}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `roam logs NAME [-f] [--tail N] [-o json]`: each record once, labelled
/// with its host and replica timeline, with its time; with `-f`, then the
/// records after the last one, as they come, whatever their number (the
/// scheduler's cursor says where to go on from).
pub fn logs(
    name: &str,
    follow: bool,
    tail: Option<u32>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    use roam_proto::logs::{LogsQuery, WorkloadLogs};
    block_on(async move {
        let c = client()?;
        let mut query = LogsQuery { cursor: None, tail };
        loop {
            let page: WorkloadLogs = c
                .json(
                    c.request(Method::GET, &paths::workload_logs(name)?)
                        .query(&query),
                )
                .await?;
            for m in &page.missed {
                eprintln!(
                    "roam logs: {} record(s) of replica {} on {} were no longer kept",
                    m.records,
                    short(&m.timeline),
                    m.host
                );
            }
            for r in &page.records {
                match output {
                    Output::Json => println!("{}", serde_json::to_string(r)?),
                    Output::Table => println!(
                        "{} {} {} {:<5} {}",
                        time_ms(r.line.time_ms),
                        r.host,
                        short(&r.line.timeline),
                        r.line.level,
                        r.line.message
                    ),
                }
            }
            if !follow {
                return Ok(ExitCode::SUCCESS);
            }
            query = LogsQuery {
                cursor: Some(page.cursor),
                tail: None,
            };
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    })
}

/// A replica's timeline as shown: its first 6 hex digits.
fn short(timeline: &str) -> &str {
    timeline.get(..6).unwrap_or(timeline)
}

/// RFC 3339 UTC with milliseconds.
fn time_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// `roam invoke NAME [PATH] [--data BODY] [--method M]`
pub fn invoke(
    name: &str,
    path: &str,
    data: Option<String>,
    method: Option<String>,
) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let c = client()?;
        let method = match (method, &data) {
            (Some(m), _) => {
                Method::from_bytes(m.to_uppercase().as_bytes()).context("bad method")?
            }
            (None, Some(_)) => Method::POST,
            (None, None) => Method::GET,
        };
        let path = path.trim_start_matches('/');
        // The ingress takes no credential and passes `Authorization` on
        // to the workload: the operator's token stays here.
        let mut rb = c.request_anonymous(method, &paths::ingress(name, path)?);
        if let Some(d) = data {
            rb = rb.body(d);
        }
        let r = c.dispatch(rb).await?;
        let status = r.status();
        let body = roam_tls::answer::bytes(r, roam_proto::MAX_HTTP_BODY).await?;
        let body = String::from_utf8_lossy(&body);
        print!("{body}");
        if !body.ends_with('\n') {
            println!();
        }
        Ok(if status.is_success() {
            ExitCode::SUCCESS
        } else {
            eprintln!("error: {status}");
            ExitCode::FAILURE
        })
    })
}

/// `roam delete NAME`
pub fn delete(name: &str) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let c = client()?;
        c.send(c.request(Method::DELETE, &paths::workload(name)?))
            .await?;
        println!("workload `{name}` deleted");
        Ok(ExitCode::SUCCESS)
    })
}

/// `roam cordon|uncordon HOST`
pub fn cordon(host: &str, on: bool) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let c = client()?;
        let action = if on {
            NodeAction::Cordon
        } else {
            NodeAction::Uncordon
        };
        c.send(c.request(Method::POST, &paths::node_action(host, action)?))
            .await?;
        println!("host `{host}` {}ed", action.as_str());
        Ok(ExitCode::SUCCESS)
    })
}
