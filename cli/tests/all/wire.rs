//! Someone on the wire, against real daemons: a relay that reads what
//! crosses it, one that answers in a peer's place with a certificate of its
//! own, and one that flips a bit.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use roam_tls::Identity;
use roam_tls::ca::Ca;

use crate::cluster::{Cluster, PATIENT, poll};
use crate::migrate::{copies, deploy, host_of, kv_cache_holding, start_migration, wait_phase};
use crate::relay::{CORRUPT, PASS, Relay, free_port, relayed_cluster};

/// A known secret in a workload's environment.
const ENV_SECRET: &str = "s3cr3t-env-value-7f1c9a";
/// A known pattern in a workload's memory (as a stored value).
const PAGE_PATTERN: &str = "roam-known-page-pattern:0123456789abcdef;";

/// The scheduler's address, from its URL.
fn scheduler_addr(c: &Cluster) -> SocketAddr {
    c.url.split("://").nth(1).unwrap().parse().unwrap()
}

/// What a relay between the hosts, and one between a host and the
/// scheduler, see of a cluster at work: eu-2 joins through `to_scheduler`
/// with a token the test knows, and is reached (by the scheduler and by
/// eu-1) through `to_host`; kv-cache, holding a MiB of a known pattern and
/// a secret in its environment, moves from eu-1 to eu-2.
struct Observed {
    c: Cluster,
    to_host: Relay,
    to_scheduler: Relay,
    join_secret: String,
    module: Vec<u8>,
}

fn observe(plain: bool) -> Observed {
    let envs = [("HEARTBEAT_TIMEOUT", PATIENT)];
    let mut c = if plain {
        Cluster::start_plain(&envs)
    } else {
        Cluster::start_with(&envs)
    };
    let scheme = if plain { "http" } else { "https" };
    c.add_host("eu-1", "eu-west-1", "EU");
    let port = free_port();
    let to_host = Relay::start(port, scheme);
    let to_scheduler = Relay::start(scheduler_addr(&c), scheme);
    let token = c.join_token(&[("site", "eu-central-1"), ("jurisdiction", "EU")]);
    c.add_host_with(
        "eu-2",
        "eu-central-1",
        "EU",
        &[
            "--listen",
            &port.to_string(),
            "--advertise",
            &to_host.addr,
            "--join",
            &to_scheduler.addr,
        ],
        &[("ROAM_JOIN_TOKEN", &token)],
    );
    c.wait_ready(2);
    let env = format!("API_KEY={ENV_SECRET}");
    let big = PAGE_PATTERN.repeat((1 << 20) / PAGE_PATTERN.len());
    kv_cache_holding(&c, &big, &["--env", &env]);
    let (ok, out, err) = c.roam(&["migrate", "kv-cache", "--to", "eu-2", "-o", "json"]);
    assert!(ok, "{out}{err}");
    assert_eq!(host_of(&c, "kv-cache"), "eu-2");
    assert_eq!(c.get("kv-cache", "/big"), (200, big));
    let module = std::fs::read(roam_tests::artifacts::KV_CACHE).unwrap();
    Observed {
        c,
        to_host,
        to_scheduler,
        join_secret: token.split('.').next().unwrap().to_string(),
        module,
    }
}

/// A window of the module's bytes long enough to be found only in it.
fn module_window(module: &[u8]) -> &[u8] {
    let mid = module.len() / 2;
    &module[mid..mid + 64]
}

/// Over TLS, a relay between two hosts, and one between a host and the
/// scheduler, see none of what crossed them in clear: not the join token,
/// not a workload's environment, not its module, not a page of its memory.
/// The same relays in a cluster run with `--insecure-plaintext` see all of
/// it, which shows the assertions can fail.
#[test]
fn a_relay_on_the_wire_sees_no_secret_and_no_page() {
    let seen = |o: &Observed| {
        (
            o.to_host.saw(PAGE_PATTERN.as_bytes()),
            o.to_host.saw(ENV_SECRET.as_bytes()),
            o.to_scheduler.saw(o.join_secret.as_bytes()),
            o.to_scheduler.saw(module_window(&o.module)),
        )
    };
    let plain = observe(true);
    assert_eq!(seen(&plain), (true, true, true, true));
    drop(plain);

    let tls = observe(false);
    // A MiB of state crossed the relay in front of eu-2, and eu-2 joined
    // and fetched its module through the other.
    assert!(
        tls.to_host.forwarded() > 1 << 20,
        "{}",
        tls.to_host.forwarded()
    );
    assert!(tls.to_scheduler.forwarded() > tls.module.len());
    assert_eq!(seen(&tls), (false, false, false, false));
    // What crossed is TLS records (application data, TLS 1.2 framing).
    assert!(tls.to_host.saw(&[0x17, 0x03, 0x03]));
    drop(tls.c);
}

/// A certificate from another CA carrying every name a peer might be
/// dialled by.
fn other_ca_cert() -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let names = ["127.0.0.1", "localhost", "eu-2.host.roam"].map(String::from);
    let creds = ca
        .issue(&Identity::Scheduler, &names, Duration::from_secs(3600))
        .unwrap();
    (creds.chain_pem, creds.key_pem)
}

/// Run a host that joins through `addr` until it exits; whether it
/// succeeded and what it said.
fn join_through(c: &Cluster, addr: &str) -> (bool, String) {
    let token = c.join_token(&[("site", "eu-west-1"), ("jurisdiction", "EU")]);
    let data = c.dir.path().join("eu-3");
    let mut child = Command::new(env!("CARGO_BIN_EXE_roam"))
        .args([
            "host",
            "--join",
            addr,
            "--name",
            "eu-3",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("ROAM_JOIN_TOKEN", &token)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let _ = std::fs::remove_dir_all(&data);
    (status.success(), err)
}

/// A relay that answers in a peer's place, with a certificate from another
/// CA or with another host's valid certificate, learns nothing on any kind
/// of connection: the CLI, a host joining the scheduler, the scheduler
/// calling a host, and one host streaming a migration to another all
/// refuse it during the handshake, before a byte of a request.
#[test]
fn a_relay_with_another_certificate_is_refused_on_every_connection() {
    let (c, to_host) = relayed_cluster(false, &[("ROAM_FAULT_ROUND_DELAY_MS", "2000")]);
    let to_scheduler = Relay::start(scheduler_addr(&c), "https");
    let eu1 = c.dir.path().join("eu-1").join("tls");
    let host_cert = (
        std::fs::read_to_string(eu1.join("host.crt")).unwrap(),
        std::fs::read_to_string(eu1.join("host.key")).unwrap(),
    );
    deploy(
        &c,
        &[
            roam_tests::artifacts::COUNTER,
            "--name",
            "counter",
            "--selector",
            "site=eu-west-1",
        ],
    );
    poll(Duration::from_secs(30), "counter to serve", || {
        c.invoke("counter", "/a").0 == 200
    });
    // Placed on eu-1; allowed on eu-2 from now on.
    deploy(
        &c,
        &[
            roam_tests::artifacts::COUNTER,
            "--name",
            "counter",
            "--selector",
            "jurisdiction=EU",
        ],
    );
    // Through the relays while they forward: the CLI works, and eu-2 is
    // reached (by eu-1, then by the scheduler) through its relay.
    let (ok, _, err) = c.roam_at(&to_scheduler.addr, &["get", "nodes"]);
    assert!(ok, "{err}");

    for (what, (chain, key)) in [
        ("another CA", other_ca_cert()),
        ("eu-1's certificate", host_cert),
    ] {
        // The CLI.
        to_scheduler.impersonate(&chain, &key);
        let (ok, _, err) = c.roam_at(&to_scheduler.addr, &["get", "nodes"]);
        assert!(!ok && err.contains("certificate"), "{what}: {err}");
        // A host joining.
        let (ok, err) = join_through(&c, &to_scheduler.addr);
        assert!(!ok, "{what}: a host joined through the impostor: {err}");

        // A migration to eu-2: eu-1, held 2 s before its first round,
        // dials eu-2 once the relay has turned (and the scheduler's own
        // connection to eu-2 is cut, so its next call dials afresh too).
        to_host.mode.store(PASS, Ordering::Relaxed);
        let id = start_migration(&c, "counter", "eu-2");
        wait_phase(&c, &id, &["prepared", "precopy"]);
        to_host.impersonate(&chain, &key);
        to_host.cut_open();
        let m = wait_phase(&c, &id, &["failed", "aborted", "done"]);
        assert_eq!(m["phase"], "failed", "{what}: {m}");
        // eu-1's stream to eu-2 is what failed, on the certificate.
        let why = m["error"].as_str().unwrap_or_default();
        assert!(
            why.contains("round 0") && why.contains("certificate"),
            "{what}: {m}"
        );
        assert_eq!(host_of(&c, "counter"), "eu-1", "{what}");
        assert_eq!(
            c.invoke("counter", "/a").0,
            200,
            "{what}: the source serves"
        );
        poll(Duration::from_secs(10), "one copy, on eu-1", || {
            copies(&c, "counter") == vec!["eu-1".to_string()]
        });

        // The scheduler starting a workload on eu-2: it tries, through the
        // impostor, and nothing starts. (Connections it opened to eu-2 for
        // the migration before the relay turned are cut: it dials afresh.)
        to_host.cut_open();
        let before = to_host.caught.connections.load(Ordering::Relaxed);
        let (ok, _, err) = c.roam(&[
            "deploy",
            roam_tests::artifacts::COUNTER,
            "--name",
            "on-eu-2",
            "--selector",
            "site=eu-central-1",
        ]);
        assert!(ok, "{err}");
        poll(Duration::from_secs(20), "the scheduler to try eu-2", || {
            to_host.caught.connections.load(Ordering::Relaxed) > before
        });
        assert_ne!(
            c.invoke("on-eu-2", "/a").0,
            200,
            "{what}: started through the impostor"
        );
        let (ok, _, err) = c.roam(&["delete", "on-eu-2"]);
        assert!(ok, "{err}");

        for (relay, name) in [(&to_scheduler, "the scheduler's"), (&to_host, "eu-2's")] {
            let caught = &relay.caught;
            assert!(
                caught.connections.load(Ordering::Relaxed) > 0,
                "{what}: {name}"
            );
            assert_eq!(
                caught.handshakes.load(Ordering::Relaxed),
                0,
                "{what}: {name}"
            );
            assert_eq!(
                caught.decrypted.load(Ordering::Relaxed),
                0,
                "{what}: {name}"
            );
            relay.caught.connections.store(0, Ordering::Relaxed);
        }
        to_scheduler.mode.store(PASS, Ordering::Relaxed);
        to_host.mode.store(PASS, Ordering::Relaxed);
    }
}

/// Over TLS, a relay that flips one bit of a migration's stream makes the
/// migration fail (the record does not authenticate) with the source still
/// serving, its state intact.
#[test]
fn a_flipped_bit_on_the_wire_fails_the_migration_and_the_source_serves() {
    let (c, relay) = relayed_cluster(false, &[]);
    let big = "x".repeat(1 << 20);
    kv_cache_holding(&c, &big, &[]);
    relay.mode.store(CORRUPT, Ordering::Relaxed);
    let (ok, out, err) = c.roam(&["migrate", "kv-cache", "--to", "eu-2", "-o", "json"]);
    assert!(!ok, "a corrupted stream must fail the migration: {out}");
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["phase"], "failed", "{m}{err}");
    assert_eq!(host_of(&c, "kv-cache"), "eu-1");
    assert_eq!(c.get("kv-cache", "/big"), (200, big.clone()));
    poll(Duration::from_secs(10), "one copy, on eu-1", || {
        copies(&c, "kv-cache") == vec!["eu-1".to_string()]
    });
    relay.mode.store(PASS, Ordering::Relaxed);
    let (ok, out, err) = c.roam(&["migrate", "kv-cache", "--to", "eu-2", "-o", "json"]);
    assert!(ok, "{out}{err}");
    assert_eq!(c.get("kv-cache", "/big"), (200, big));
}
