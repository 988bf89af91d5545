//! `roam up`: a whole local cluster in one command — a scheduler and three
//! hosts on loopback, labelled as three sites (two in jurisdiction EU, one
//! outside it). Writes the client config every other verb reads, prints the
//! next commands, and stops everything on Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use reqwest::Method;
use roam_proto::paths;
use roam_proto::{NodeInfo, NodeStatus, TokenRequest, TokenResponse};

use super::client::{Client, ClientConfig, config_path};

/// Arguments of `roam up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Scheduler address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Where the cluster keeps its state.
    #[arg(long, default_value = "roam-data/up")]
    pub data_dir: PathBuf,
}

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
    let addr = format!("https://{}", args.listen);
    let mut children = Children(Vec::new());
    children.0.push(
        Command::new(&exe)
            .args([
                "scheduler",
                "--listen",
                &args.listen.to_string(),
                "--data-dir",
            ])
            .arg(data.join("scheduler"))
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start the scheduler")?,
    );
    let token_file = data.join("scheduler").join("admin.token");
    wait_for("the scheduler", Duration::from_secs(30), || {
        token_file.exists()
    })?;
    let token = std::fs::read_to_string(&token_file)?.trim().to_string();
    // The scheduler writes its CA before the admin token.
    let ca = std::path::absolute(data.join("scheduler").join("ca.crt"))?;
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

    let written = write_config(&config)?;
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
    println!(
        "Roam is up: scheduler {addr}, 3 hosts (eu-west-1 EU, eu-central-1 EU, us-east-1 US)."
    );
    println!(
        "Client config (admin token) written to {} (readable only by you).",
        written.display()
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
        "  curl --cacert {} -X POST {addr}/w/counter/apples",
        ca.display()
    );
    println!(
        "  {roam} migrate counter --selector 'jurisdiction=EU'   # live, to the other EU site"
    );
    println!("  {roam} get migrations");
    println!("  {roam} drain host-eu-west-1");
    println!();
    println!("Press Ctrl-C to stop the cluster.");
    tokio.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    drop(children);
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn write_config(config: &ClientConfig) -> anyhow::Result<PathBuf> {
    let path = config_path().context("no HOME or XDG_CONFIG_HOME to write the client config to")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    roam_scheduler::server::write_private(&path, &serde_json::to_string_pretty(config)?)?;
    Ok(path)
}
