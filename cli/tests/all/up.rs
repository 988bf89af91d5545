//! `roam up --ha` (issue 19): one command brings up an etcd of three
//! members (TLS, client certificates, auth on), three schedulers on it and
//! three sites' hosts, and writes a client config listing every scheduler.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use roam_tests::artifacts;

use crate::cluster::{Proc, poll};

/// A loopback port with the two after it free now.
fn three_free_ports() -> u16 {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        let rest: Vec<_> = (1..3)
            .filter_map(|i| port.checked_add(i))
            .filter_map(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if rest.len() == 2 {
            return port;
        }
    }
}

/// The CLI as the user of `home` (its client config) runs it.
fn roam(home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_roam"))
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("ROAM_ADDR")
        .env_remove("ROAM_TOKEN")
        .env_remove("ROAM_CA")
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("roam {args:?} -> {:?}\n{o}{e}", out.status);
    (out.status.success(), o, e)
}

/// The client URLs of the local etcd in `etcd`.
fn endpoints(etcd: &Path) -> Vec<String> {
    let members: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(etcd.join("cluster.json")).unwrap()).unwrap();
    members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("https://127.0.0.1:{}", m["client"]))
        .collect()
}

/// `etcdctl` against the local etcd in `etcd` as the client `who` (a
/// certificate in its `pki/`, or none).
fn etcdctl(etcd: &Path, who: Option<&str>, args: &[&str]) -> (bool, String) {
    etcdctl_at(etcd, &endpoints(etcd).join(","), who, args)
}

/// [`etcdctl`] against `endpoints`.
fn etcdctl_at(etcd: &Path, endpoints: &str, who: Option<&str>, args: &[&str]) -> (bool, String) {
    let pki = etcd.join("pki");
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg(format!("--cacert={}", pki.join("ca.crt").display()))
        .arg("--dial-timeout=2s")
        .arg("--command-timeout=3s");
    if let Some(who) = who {
        command
            .arg(format!(
                "--cert={}",
                pki.join(format!("{who}.crt")).display()
            ))
            .arg(format!(
                "--key={}",
                pki.join(format!("{who}.key")).display()
            ));
    }
    let out = command
        .args(args)
        .output()
        .expect("etcdctl (Debian `etcd-client`)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Processes whose command line names `dir`.
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let cmdline = std::fs::read(e.ok()?.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some(cmdline)
        })
        .collect()
}

#[test]
fn roam_up_ha_runs_three_schedulers_on_a_secured_etcd_and_survives_losing_the_leader() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("up");
    // A context the user had before: `roam up` adds its own beside it.
    let token = home.path().join("other.token");
    std::fs::write(&token, "roam_other\n").unwrap();
    let (ok, _, err) = roam(
        home.path(),
        &[
            "config",
            "set-context",
            "other",
            "--addr",
            "https://127.0.0.1:1",
            "--token-file",
            token.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let port = three_free_ports();
    let listen = format!("127.0.0.1:{port}");
    let mut up = Command::new(env!("CARGO_BIN_EXE_roam"))
        .args(["up", "--ha", "--listen", &listen, "--data-dir"])
        .arg(&data)
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let up = Proc::new(up);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("roam up: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = rx
        .iter()
        .find(|l| l.starts_with("Roam is up"))
        .expect("roam up exited before it was up");
    assert!(ready.contains("auth on"), "{ready}");

    // The client config lists the three schedulers; one leads.
    let (ok, out, err) = roam(home.path(), &["get", "schedulers", "-o", "json"]);
    assert!(ok, "{out}{err}");
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    let replicas = info["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{info}");
    assert_eq!(replicas.iter().filter(|r| r["leader"] == true).count(), 1);
    assert_eq!(info["store_healthy"], true, "{info}");
    assert!(
        info["store"]
            .as_str()
            .unwrap()
            .contains("TLS with a client certificate"),
        "{info}"
    );
    let (ok, out, err) = roam(home.path(), &["get", "nodes", "-o", "json"]);
    assert!(ok, "{out}{err}");
    let nodes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 3, "{nodes}");
    // Both contexts are kept, `roam up`'s current; tokens are not shown.
    let (ok, out, err) = roam(home.path(), &["config", "get-contexts"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("other") && out.contains("https://127.0.0.1:1"),
        "{out}"
    );
    let current: Vec<&str> = out.lines().filter(|l| l.contains('*')).collect();
    assert!(current.len() == 1 && current[0].contains("up-ha"), "{out}");
    assert!(!out.contains("roam_other"), "{out}");
    // Switching goes to the other cluster; --context picks one per command.
    let (ok, _, _) = roam(home.path(), &["config", "use-context", "other"]);
    assert!(ok);
    let (ok, _, err) = roam(home.path(), &["get", "nodes"]);
    assert!(!ok && err.contains("127.0.0.1:1"), "{err}");
    let (ok, _, err) = roam(home.path(), &["--context", "up-ha", "get", "nodes"]);
    assert!(ok, "{err}");
    let (ok, _, err) = roam(home.path(), &["--context", "nope", "get", "nodes"]);
    assert!(!ok && err.contains("no context `nope`"), "{err}");
    let (ok, _, _) = roam(home.path(), &["config", "use-context", "up-ha"]);
    assert!(ok);
    let (ok, out, err) = roam(
        home.path(),
        &[
            "deploy",
            artifacts::COUNTER,
            "--name",
            "counter",
            "--selector",
            "jurisdiction=EU",
        ],
    );
    assert!(ok, "{out}{err}");
    poll(Duration::from_secs(60), "counter to serve", || {
        let (ok, out, _) = roam(home.path(), &["invoke", "counter", "/apples", "--data", ""]);
        ok && out.contains("\"count\"")
    });

    // etcd: TLS only, a client certificate required, and its auth on: the
    // schedulers' user `roam` reads Roam's keys and nothing else.
    let etcd = data.join("etcd");
    let (ok, text) = etcdctl(&etcd, None, &["get", "/roam/", "--prefix", "--keys-only"]);
    assert!(!ok, "no client certificate, yet: {text}");
    let (ok, text) = etcdctl(
        &etcd,
        Some("roam"),
        &["get", "/roam/workloads/counter", "--keys-only"],
    );
    assert!(ok && text.contains("/roam/workloads/counter"), "{text}");
    let (ok, text) = etcdctl(&etcd, Some("roam"), &["put", "/elsewhere", "x"]);
    assert!(!ok && text.contains("permission denied"), "{text}");
    let (ok, text) = etcdctl(&etcd, Some("root"), &["user", "list"]);
    assert!(
        ok && text.contains("roam") && text.contains("root"),
        "{text}"
    );

    // Backup and restore as docs/control-plane.md says: a snapshot of one
    // member taken as `root`, restored into a new data directory and
    // started alone, holds Roam's keys and the same auth.
    let snapshot = home.path().join("roam.db");
    let (ok, text) = etcdctl_at(
        &etcd,
        &endpoints(&etcd)[0],
        Some("root"),
        &["snapshot", "save", snapshot.to_str().unwrap()],
    );
    assert!(ok, "{text}");
    let restored = home.path().join("restored");
    let (client, peer) = (
        format!("https://127.0.0.1:{}", crate::control_plane::free_port()),
        format!("https://127.0.0.1:{}", crate::control_plane::free_port()),
    );
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "snapshot",
            "restore",
            snapshot.to_str().unwrap(),
            "--name",
            "r",
        ])
        .arg(format!("--data-dir={}", restored.display()))
        .arg(format!("--initial-cluster=r={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let pki = etcd.join("pki");
    let restored_etcd = Proc::new(
        Command::new("etcd")
            .args(["--name", "r", "--data-dir"])
            .arg(&restored)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("r={peer}")])
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(pki.join("ca.crt"))
            .arg("--cert-file")
            .arg(pki.join("etcd.crt"))
            .arg("--key-file")
            .arg(pki.join("etcd.key"))
            .arg("--peer-cert-file")
            .arg(pki.join("etcd.crt"))
            .arg("--peer-key-file")
            .arg(pki.join("etcd.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    poll(
        Duration::from_secs(30),
        "the restored etcd to hold Roam's keys",
        || {
            let (ok, text) = etcdctl_at(
                &etcd,
                &client,
                Some("roam"),
                &["get", "/roam/workloads/counter", "--keys-only"],
            );
            ok && text.contains("/roam/workloads/counter")
        },
    );
    let (ok, text) = etcdctl_at(&etcd, &client, Some("roam"), &["put", "/elsewhere", "x"]);
    assert!(!ok && text.contains("permission denied"), "{text}");
    drop(restored_etcd);

    // Kill the leading scheduler: the CLI, given all three, goes on with
    // the one that takes over.
    let leader = replicas.iter().find(|r| r["leader"] == true).unwrap()["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("https://")
        .to_string();
    let victim = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?)
                .replace('\0', " ");
            (cmdline.contains(" scheduler ") && cmdline.contains(&format!("--listen {leader} ")))
                .then_some(pid)
        })
        .next()
        .expect("the leading scheduler's process");
    // SAFETY: a signal to a process this test's `roam up` started.
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    let (ok, out, err) = roam(home.path(), &["invoke", "counter", "/apples", "--data", ""]);
    assert!(ok && out.contains("\"count\""), "{out}{err}");
    poll(Duration::from_secs(30), "another scheduler to lead", || {
        let (ok, out, _) = roam(home.path(), &["get", "schedulers", "-o", "json"]);
        ok && serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|v| {
            v["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["leader"] == true && !r["url"].as_str().unwrap().ends_with(&leader))
        })
    });
    let (ok, out, err) = roam(home.path(), &["get", "workloads"]);
    assert!(ok && out.contains("counter"), "{out}{err}");

    // SIGTERM stops everything it started.
    // SAFETY: a signal to our own child.
    assert_eq!(
        unsafe { libc::kill(up.child.id() as i32, libc::SIGTERM) },
        0
    );
    poll(Duration::from_secs(30), "nothing left running", || {
        processes_under(&data).is_empty()
    });
    drop(up);
}
