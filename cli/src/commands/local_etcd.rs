//! The etcd of `roam up --ha`: three members on loopback, reached over TLS
//! only, each client (and each member, by its peers) authenticated by a
//! certificate from a CA of its own (not the cluster's: a host certificate
//! opens nothing here), and etcd's own auth on: the schedulers act as the
//! user `roam`, who may read and write only the keys under `/roam/`.
//!
//! Everything lives in one directory: `cluster.json` (the members' names
//! and ports, chosen once), `pki/` (the CA; `etcd.crt` for the members;
//! `roam.crt` for the schedulers; `root.crt` for the one who turns auth on
//! or restores a backup), one data directory and one log per member. A
//! second `roam up --ha` on the same directory starts the same cluster
//! again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use roam_scheduler::store::{EtcdTls, Store};
use serde::{Deserialize, Serialize};

/// How many members.
const MEMBERS: usize = 3;

/// How long the certificates `roam up --ha` makes are valid.
const LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// The prefix of every key the schedulers write, and what user `roam`
/// may touch.
pub const PREFIX: &str = "/roam";

/// One member's name and loopback ports.
#[derive(Serialize, Deserialize)]
struct Member {
    name: String,
    client: u16,
    peer: u16,
}

impl Member {
    fn client_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client)
    }

    fn peer_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.peer)
    }
}

/// A running local etcd.
pub struct LocalEtcd {
    /// Its members' client URLs.
    pub endpoints: Vec<String>,
    /// `pki/` in its directory.
    pub pki: PathBuf,
}

impl LocalEtcd {
    /// The `--etcd-ca`, `--etcd-cert` and `--etcd-key` flags of a
    /// scheduler acting as `roam`.
    pub fn scheduler_flags(&self) -> Vec<String> {
        let file = |f: &str| self.pki.join(f).display().to_string();
        vec![
            "--etcd-ca".into(),
            file("ca.crt"),
            "--etcd-cert".into(),
            file("roam.crt"),
            "--etcd-key".into(),
            file("roam.key"),
        ]
    }
}

/// Start the local etcd kept in `dir` (made there the first time); its
/// processes go into `children`.
pub fn start(dir: &Path, children: &mut Vec<Child>) -> anyhow::Result<LocalEtcd> {
    let found = Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !found.is_ok_and(|s| s.success()) {
        bail!(
            "`roam up --ha` runs etcd, which is not installed here (Debian `etcd-server`; scripts/setup installs it)"
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let layout = dir.join("cluster.json");
    let (members, fresh) = if layout.exists() {
        let text = std::fs::read_to_string(&layout)
            .with_context(|| format!("cannot read `{}`", layout.display()))?;
        let members: Vec<Member> = serde_json::from_str(&text)
            .with_context(|| format!("`{}` is not what roam up wrote", layout.display()))?;
        (members, false)
    } else {
        let members = free_ports(MEMBERS * 2)?
            .chunks(2)
            .enumerate()
            .map(|(i, p)| Member {
                name: format!("etcd-{i}"),
                client: p[0],
                peer: p[1],
            })
            .collect::<Vec<_>>();
        std::fs::write(&layout, serde_json::to_string_pretty(&members)?)
            .with_context(|| format!("cannot write `{}`", layout.display()))?;
        (members, true)
    };
    let pki = dir.join("pki");
    if fresh {
        make_pki(&pki)?;
    }
    let initial = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect::<Vec<_>>()
        .join(",");
    let file = |f: &str| pki.join(f);
    for m in &members {
        let log = std::fs::File::create(dir.join(format!("{}.log", m.name)))?;
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(dir.join(&m.name))
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "roam-up"])
            // Clients and peers alike show a certificate from the CA.
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(file("ca.crt"))
            .arg("--cert-file")
            .arg(file("etcd.crt"))
            .arg("--key-file")
            .arg(file("etcd.key"))
            .arg("--peer-client-cert-auth")
            .arg("--peer-trusted-ca-file")
            .arg(file("ca.crt"))
            .arg("--peer-cert-file")
            .arg(file("etcd.crt"))
            .arg("--peer-key-file")
            .arg(file("etcd.key"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start etcd member {}", m.name))?;
        children.push(child);
    }
    let endpoints: Vec<String> = members.iter().map(Member::client_url).collect();
    let root = EtcdTls::read(&file("ca.crt"), &file("root.crt"), &file("root.key"))?;
    // Auth on (again, if an earlier start stopped before it was: it
    // changes nothing once done), as soon as the members have a leader.
    let start = Instant::now();
    loop {
        match Store::enable_etcd_auth(&endpoints, PREFIX, &root, "roam") {
            Ok(()) => break,
            Err(e) if start.elapsed() > Duration::from_secs(30) => {
                bail!(
                    "the local etcd did not come up within 30 s (see {}/etcd-*.log): {e}",
                    dir.display()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    Ok(LocalEtcd { endpoints, pki })
}

/// The CA, the members' certificate (for loopback) and the clients'
/// (`root`, `roam`: etcd takes a client certificate's common name as its
/// user).
fn make_pki(pki: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(pki)?;
    let (ca_pem, ca_key) = roam_tls::Ca::generate_named("Roam local etcd CA")?;
    let ca = roam_tls::Ca::from_pem(&ca_pem, &ca_key)?;
    let loopback = ["127.0.0.1".to_string(), "localhost".to_string()];
    for (file, common_name) in [("etcd", "etcd"), ("root", "root"), ("roam", "roam")] {
        let issued = ca.issue_named(common_name, &loopback, LIFETIME)?;
        roam_tls::write_private(&pki.join(format!("{file}.key")), &issued.key_pem)?;
        std::fs::write(pki.join(format!("{file}.crt")), &issued.chain_pem)?;
    }
    roam_tls::write_private(&pki.join("ca.key"), &ca_key)?;
    std::fs::write(pki.join("ca.crt"), &ca_pem)?;
    Ok(())
}

/// `n` loopback ports free now.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    // Held together, so that no two are the same.
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}
