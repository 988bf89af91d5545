//! `roam up`: a whole local cluster in one command — a scheduler and three
//! hosts on loopback, labelled as three sites (two in jurisdiction EU, one
//! outside it). Writes the client config every other verb reads, prints the
//! next commands, and stops everything on Ctrl-C.
//!
//! `roam up --ha`: the same with a control plane that survives losing any
//! one machine: an etcd of three members (`local_etcd`: TLS, client
//! certificates, auth on), three scheduler replicas on it (on the listen
//! port and the two after it), hosts and a client config that list all
//! three.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use reqwest::Method;
use roam_proto::paths;
use roam_proto::{NodeInfo, NodeStatus, TokenRequest, TokenResponse};

use super::client::{Client, ClientConfig};
use super::config::ConfigFile;

/// Arguments of `roam up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Scheduler address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Where the cluster keeps its state.
    #[arg(long, default_value = "roam-data/up")]
    pub data_dir: PathBuf,
    /// Three schedulers on an etcd of three members (TLS, client
    /// certificates, auth on), listening on `--listen`'s port and the two
    /// after it.
    #[arg(long)]
    pub ha: bool,
    /// An OCI registry (`host:port`) the schedulers reach over plain HTTP
    /// (a local one for `roam deploy oci://…`).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
}

/// Scheduler replicas with `--ha`.
const REPLICAS: u16 = 3;

/// The simulated sites: (site, jurisdiction, provider).
const SITES: [(&str, &str, &str); 3] = [
    ("eu-west-1", "EU", "edge-a"),
    ("eu-central-1", "EU", "edge-b"),
    ("us-east-1", "US", "edge-c"),
];

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > deadline {
            bail!("{what} did not come up within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Run `roam up`.
pub fn main(args: UpArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the roam binary")?;
    let data = &args.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("cannot create `{}`", data.display()))?;
    let mut children = Children(Vec::new());
    let first = if args.ha {
        data.join("scheduler-0")
    } else {
        data.join("scheduler")
    };
    let listens: Vec<SocketAddr> = if args.ha {
        (0..REPLICAS)
            .map(|i| {
                let port = args.listen.port().checked_add(i).with_context(|| {
                    format!("--listen {}: no room for {REPLICAS} ports", args.listen)
                })?;
                Ok(SocketAddr::new(args.listen.ip(), port))
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        vec![args.listen]
    };
    let etcd = if args.ha {
        Some(super::local_etcd::start(
            &data.join("etcd"),
            &mut children.0,
        )?)
    } else {
        None
    };
    let token_file = first.join("admin.token");
    // The cluster's scrape credential, kept across runs (`docs/metrics.md`).
    let scrape_file = std::path::absolute(data.join("metrics.token"))?;
    if !scrape_file.exists() {
        roam_scheduler::server::write_private(&scrape_file, &roam_scheduler::auth::new_token()?)?;
    }
    for (i, listen) in listens.iter().enumerate() {
        let mut scheduler = Command::new(&exe);
        scheduler
            .args(["scheduler", "--metrics-token-file"])
            .arg(&scrape_file);
        for registry in &args.insecure_registries {
            scheduler.args(["--insecure-registry", registry]);
        }
        scheduler.args(["--listen", &listen.to_string(), "--data-dir"]);
        match &etcd {
            Some(etcd) => {
                scheduler
                    .arg(data.join(format!("scheduler-{i}")))
                    .arg("--store")
                    .arg(format!("etcd={}", etcd.endpoints.join(",")))
                    .args(["--etcd-prefix", super::local_etcd::PREFIX])
                    .args(etcd.scheduler_flags())
                    .args(["--replica", &format!("scheduler-{i}")]);
            }
            None => {
                scheduler.arg(&first);
            }
        }
        children.0.push(
            scheduler
                .stdin(Stdio::null())
                .spawn()
                .context("cannot start the scheduler")?,
        );
        // The first creates the cluster (its CA and admin token) before
        // the others start.
        if i == 0 {
            wait_for("the scheduler", Duration::from_secs(30), || {
                token_file.exists()
            })?;
        }
    }
    let addrs: Vec<String> = listens.iter().map(|l| format!("https://{l}")).collect();
    let addr = addrs.join(",");
    let token = std::fs::read_to_string(&token_file)?.trim().to_string();
    // The scheduler writes its CA before the admin token.
    let ca = std::path::absolute(first.join("ca.crt"))?;
    let config = ClientConfig {
        addr: addr.clone(),
        token,
        ca: Some(ca.clone()),
    };
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = Client::new(config.clone())?;
    let start = Instant::now();
    loop {
        let ok = tokio
            .block_on(client.json::<Vec<NodeInfo>>(client.request(Method::GET, &paths::nodes())));
        if ok.is_ok() {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "the scheduler at {addr} does not answer: {:#}",
                ok.err().map(|e| e.to_string()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    for (site, jurisdiction, provider) in SITES {
        let labels = [
            ("site", site),
            ("jurisdiction", jurisdiction),
            ("provider", provider),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let join: TokenResponse = tokio.block_on(
            client.json(
                client
                    .request(Method::POST, &paths::tokens())
                    .json(&TokenRequest {
                        labels,
                        ..TokenRequest::default()
                    }),
            ),
        )?;
        let name = format!("host-{site}");
        children.0.push(
            Command::new(&exe)
                .args([
                    "host",
                    "--join",
                    &addr,
                    "--name",
                    &name,
                    "--listen",
                    "127.0.0.1:0",
                    "--data-dir",
                ])
                .arg(data.join("hosts").join(&name))
                .env("ROAM_JOIN_TOKEN", &join.token)
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start host `{name}`"))?,
        );
    }
    let start = Instant::now();
    loop {
        let nodes = tokio
            .block_on(client.json::<Vec<NodeInfo>>(client.request(Method::GET, &paths::nodes())))?;
        if nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Ready)
            .count()
            == SITES.len()
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("hosts did not join within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let context = if args.ha { "up-ha" } else { "up" };
    let written = write_config(context, &config)?;
    let built: Vec<&str> = super::ops::EXAMPLES
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| {
            super::ops::examples_dir()
                .join(format!("{}.wasm", n.replace('-', "_")))
                .exists()
        })
        .collect();
    println!();
    match &etcd {
        Some(etcd) => println!(
            "Roam is up: schedulers {}, one leading, on etcd {} (TLS, client certificates, auth on; {}), 3 hosts (eu-west-1 EU, eu-central-1 EU, us-east-1 US).",
            addrs.join(" "),
            etcd.endpoints.join(" "),
            etcd.pki.display()
        ),
        None => println!(
            "Roam is up: scheduler {addr}, 3 hosts (eu-west-1 EU, eu-central-1 EU, us-east-1 US)."
        ),
    }
    println!(
        "Client context `{context}` (admin token) written to {} and made current (readable only by you; roam config get-contexts).",
        written.display()
    );
    println!(
        "Prometheus scrape credential (every /metrics, docs/metrics.md): {}",
        scrape_file.display()
    );
    println!();
    if built.is_empty() {
        println!(
            "No examples are built yet: cargo build --release --target wasm32-wasip1 -p counter"
        );
    } else {
        println!("Examples deployable by name: {}", built.join(", "));
    }
    println!();
    let roam = exe.display();
    println!("Next, in another terminal:");
    println!("  {roam} get nodes");
    println!("  {roam} deploy --example counter --selector 'jurisdiction=EU'");
    println!("  {roam} invoke counter /apples --data ''");
    println!("  {roam} describe workload counter");
    println!(
        "  curl --cacert {} -X POST {}/w/counter/apples",
        ca.display(),
        addrs[0]
    );
    println!(
        "  {roam} migrate counter --selector 'jurisdiction=EU'   # live, to the other EU site"
    );
    println!("  {roam} get migrations");
    println!("  {roam} drain host-eu-west-1");
    if etcd.is_some() {
        println!("  {roam} get schedulers   # which replica leads; stop it and another takes over");
    }
    println!();
    println!("Press Ctrl-C to stop the cluster.");
    // Ctrl-C, or a service manager's (or `timeout`'s) SIGTERM: either way
    // nothing it started is left running.
    tokio.block_on(async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    });
    drop(children);
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Add (or replace) the context `name` for this cluster and make it
/// current; the other contexts stay.
fn write_config(name: &str, config: &ClientConfig) -> anyhow::Result<PathBuf> {
    let mut file = ConfigFile::load()?;
    file.contexts.insert(name.to_string(), config.clone());
    file.current = Some(name.to_string());
    file.save()
}
