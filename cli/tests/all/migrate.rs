//! Live migration between real host processes on loopback.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roam_tests::artifacts;

use crate::cluster::{Cluster, PATIENT, eu_cluster, poll};
use crate::relay::{BLACKHOLE, CORRUPT, CORRUPT_PAGES, CUT, CUT_PAGES, PASS, relayed_cluster};

/// The host a workload runs on now, per the scheduler.
pub(crate) fn host_of(c: &Cluster, workload: &str) -> String {
    let (status, body) = c.api("GET", "/v1/instances", Some(&c.admin));
    assert_eq!(status, 200, "{body}");
    let all: serde_json::Value = serde_json::from_str(&body).unwrap();
    let hosts: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["workload"] == workload)
        .map(|i| i["host"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hosts.len(), 1, "{workload} runs on {hosts:?}");
    hosts[0].clone()
}

/// `roam migrate` to `to`; the JSON summary.
pub(crate) fn migrate(c: &Cluster, workload: &str, to: &str) -> serde_json::Value {
    let (ok, out, err) = c.roam(&["migrate", workload, "--to", to, "-o", "json"]);
    assert!(ok, "migration of {workload} to {to} failed: {out}{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["phase"], "done", "{summary}");
    summary
}

/// Deploy `counter` allowed on any EU host; return once it serves.
pub(crate) fn deploy_eu_counter(c: &Cluster) {
    deploy_counter(c, "jurisdiction=EU");
}

/// Deploy `counter` on hosts matching `selector`; return once it serves.
pub(crate) fn deploy_counter(c: &Cluster, selector: &str) {
    deploy(
        c,
        &[
            artifacts::COUNTER,
            "--name",
            "counter",
            "--selector",
            selector,
        ],
    );
    poll(Duration::from_secs(60), "counter to serve", || {
        c.get("counter", "/").0 == 200
    });
}

pub(crate) fn deploy(c: &Cluster, args: &[&str]) {
    let mut all = vec!["deploy"];
    all.extend_from_slice(args);
    let (ok, _, err) = c.roam(&all);
    assert!(ok, "{err}");
}

/// Deploy the mandelbrot example (which needs timers) as `name` on hosts
/// matching `selector`.
pub(crate) fn deploy_mandelbrot(c: &Cluster, name: &str, selector: &str) {
    deploy(
        c,
        &[
            artifacts::MANDELBROT,
            "--name",
            name,
            "--grant",
            "timers",
            "--selector",
            selector,
        ],
    );
}

/// Which copies of `workload` the hosts themselves report running.
pub(crate) fn copies(c: &Cluster, workload: &str) -> Vec<String> {
    c.nodes()
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"] != "down")
        .filter(|n| {
            n["instances"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i == workload)
        })
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}

pub(crate) fn other_eu(host: &str) -> &'static str {
    if host == "eu-1" { "eu-2" } else { "eu-1" }
}

#[test]
fn a_counter_moves_live_with_its_state_and_rule_breaking_targets_are_refused() {
    let c = eu_cluster();
    deploy_eu_counter(&c);
    c.invoke("counter", "/apples");
    c.invoke("counter", "/apples");
    let source = host_of(&c, "counter");

    // A target that breaks the rules is refused with the reason, and the
    // source is untouched.
    let (ok, out, err) = c.roam(&["migrate", "counter", "--to", "us-1"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("cannot take `counter`") && err.contains("jurisdiction"),
        "{err}"
    );
    assert_eq!(host_of(&c, "counter"), source);
    assert_eq!(
        c.invoke("counter", "/apples").1,
        r#"{"path":"/apples","count":3}"#
    );

    let target = other_eu(&source);
    // Options out of range are refused before anything moves.
    for streams in [0, 9] {
        let mut r = c
            .agent
            .post(format!("{}/v1/migrations", c.url))
            .header("authorization", format!("Bearer {}", c.admin))
            .send(format!(
                r#"{{"workload":"counter","to":"{target}","options":{{"page_streams":{streams}}}}}"#
            ))
            .unwrap();
        let body = r.body_mut().read_to_string().unwrap();
        assert_eq!(r.status().as_u16(), 400, "{body}");
        assert!(body.contains("page_streams"), "{body}");
    }
    assert_eq!(host_of(&c, "counter"), source);

    let summary = migrate(&c, "counter", target);
    assert_eq!(summary["source"], source.as_str());
    assert_eq!(summary["target"], target);
    assert!(summary["bytes_sent"].as_u64().unwrap() > 0, "{summary}");
    assert!(summary["downtime_us"].as_u64().is_some(), "{summary}");
    assert_eq!(host_of(&c, "counter"), target);
    assert_eq!(
        c.invoke("counter", "/apples").1,
        r#"{"path":"/apples","count":4}"#
    );
    one_copy_on(&c, target);
    // The restore hook was told where it moved.
    let (_, logs, _) = c.roam(&["logs", "counter"]);
    assert!(
        logs.contains(&format!(
            "to eu-{}",
            if target == "eu-1" {
                "west-1"
            } else {
                "central-1"
            }
        )),
        "{logs}"
    );

    // The operator can find it afterwards, and /metrics counts it.
    let id = summary["id"].as_str().unwrap();
    let (ok, out, _) = c.roam(&["get", "migrations"]);
    assert!(ok && out.contains(id), "{out}");
    let (ok, out, _) = c.roam(&["describe", "migration", id]);
    assert!(
        ok && out.contains("Downtime:") && out.contains("done"),
        "{out}"
    );
    let (_, metrics) = c.api("GET", "/metrics", Some(crate::cluster::SCRAPE));
    assert!(
        metrics.contains("roam_migration_downtime_seconds_count 1")
            && metrics.contains("roam_migration_rounds_count 1")
            && metrics.contains("roam_migration_bytes_count 1")
            && metrics.contains("roam_migrations_total{outcome=\"done\"} 1")
            && metrics.contains("roam_migration_phases_total{phase=\"precopy\"} 1")
            && metrics.contains("roam_migrations_in_flight{phase=\"precopy\"} 0"),
        "{metrics}"
    );
}

#[test]
fn a_workload_moved_back_and_forth_fifty_times_keeps_its_state() {
    // The hosts keep freed slots' written memory resident: from the third
    // hop on, the counter lands in the slot it left there, zeroed in place.
    let mut c = Cluster::start_with(&[("HEARTBEAT_TIMEOUT", PATIENT)]);
    let keep = ["--keep-resident", "16MiB"];
    c.add_host_with("eu-1", "eu-west-1", "EU", &keep, &[]);
    c.add_host_with("eu-2", "eu-central-1", "EU", &keep, &[]);
    c.wait_ready(2);
    deploy_eu_counter(&c);
    let mut at = host_of(&c, "counter");
    for hop in 1..=50u32 {
        let to = other_eu(&at);
        migrate(&c, "counter", to);
        at = to.to_string();
        assert_eq!(
            c.invoke("counter", "/hops").1,
            format!(r#"{{"path":"/hops","count":{hop}}}"#),
            "after hop {hop}"
        );
    }
    assert_eq!(host_of(&c, "counter"), at);
}

/// Memory that compresses crosses compressed when asked (`--compression
/// always`: on loopback `auto` sends pages as they are) and lands exactly;
/// `never` sends every byte.
#[test]
fn a_workload_moved_compressed_lands_exactly_in_fewer_bytes() {
    let c = eu_cluster();
    deploy(
        &c,
        &[
            artifacts::MEMBENCH,
            "--name",
            "mb",
            "--memory",
            "64MiB",
            "--selector",
            "jurisdiction=EU",
        ],
    );
    poll(Duration::from_secs(60), "membench to fill", || {
        c.invoke("mb", "/fill?mib=16&content=json").0 == 200
    });
    let (status, before) = c.get("mb", "/?full=1");
    assert_eq!(status, 200, "{before}");
    let mut at = host_of(&c, "mb");
    for (mode, most) in [("always", 0.5), ("never", 1.1), ("always", 0.5)] {
        let to = other_eu(&at);
        let (ok, out, err) = c.roam(&[
            "migrate",
            "mb",
            "--to",
            to,
            "--compression",
            mode,
            "-o",
            "json",
        ]);
        assert!(ok, "{out}{err}");
        let m: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(m["phase"], "done", "{m}");
        let (bytes, wire) = (
            m["bytes_sent"].as_f64().unwrap(),
            m["wire_bytes"].as_f64().unwrap(),
        );
        assert!(bytes >= 16.0 * 1048576.0, "{m}");
        assert!(
            wire < most * bytes && (mode == "always" || wire >= bytes),
            "--compression {mode}: {wire} bytes on the wire for {bytes}"
        );
        at = to.to_string();
        assert_eq!(host_of(&c, "mb"), at);
        assert_eq!(
            c.get("mb", "/?full=1"),
            (200, before.clone()),
            "after {mode}"
        );
    }
    // A mode that does not exist is refused before anything moves.
    let (ok, _, err) = c.roam(&[
        "migrate",
        "mb",
        "--to",
        other_eu(&at),
        "--compression",
        "lz4",
    ]);
    assert!(!ok && err.contains("lz4"), "{err}");
    assert_eq!(host_of(&c, "mb"), at);
}

/// A Cranelift host (native code) and a Pulley host (the portable
/// interpreter) take a running workload from each other, both ways, with
/// its state; hosts report their engine as a label that placement selects
/// on, and `roam get nodes` shows it.
#[test]
fn a_workload_moves_between_a_cranelift_and_a_pulley_host_both_ways() {
    let mut c = Cluster::start_with(&[("HEARTBEAT_TIMEOUT", PATIENT)]);
    c.add_host("native", "eu-west-1", "EU");
    c.add_host_with("interp", "eu-west-2", "EU", &["--engine", "pulley"], &[]);
    c.wait_ready(2);
    let (ok, nodes, err) = c.roam(&["get", "nodes"]);
    assert!(ok, "{err}");
    let line = |name: &str| {
        nodes
            .lines()
            .find(|l| l.contains(name))
            .unwrap()
            .to_string()
    };
    assert!(line("interp").contains("pulley"), "{nodes}");
    assert!(line("native").contains("cranelift"), "{nodes}");

    deploy_counter(&c, "engine=pulley");
    assert_eq!(host_of(&c, "counter"), "interp");
    // The selector holds: the Cranelift host is refused with the reason.
    let (ok, _, err) = c.roam(&["migrate", "counter", "--to", "native"]);
    assert!(!ok && err.contains("engine"), "{err}");

    deploy(&c, &[artifacts::COUNTER, "--name", "anywhere"]);
    poll(Duration::from_secs(30), "anywhere to serve", || {
        c.get("anywhere", "/").0 == 200
    });
    let mut at = host_of(&c, "anywhere");
    for hop in 1..=4u32 {
        assert_eq!(
            c.invoke("anywhere", "/hops").1,
            format!(r#"{{"path":"/hops","count":{hop}}}"#),
            "before hop {hop}, on {at}"
        );
        let to = if at == "native" { "interp" } else { "native" };
        migrate(&c, "anywhere", to);
        at = to.to_string();
        assert_eq!(host_of(&c, "anywhere"), at);
    }
    assert_eq!(
        c.invoke("anywhere", "/hops").1,
        r#"{"path":"/hops","count":5}"#
    );
}

/// Clients sending requests with unique ids through the ingress while the
/// workload moves: every acknowledged request is applied exactly once.
#[test]
fn requests_under_load_are_neither_lost_nor_duplicated() {
    let c = eu_cluster();
    deploy_eu_counter(&c);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (stop, acked, failed, url) =
            (stop.clone(), acked.clone(), failed.clone(), c.url.clone());
        let http = c.agent.clone();
        clients.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("/r-{client}-{n}");
                match http.post(format!("{url}/w/counter{id}")).send("") {
                    Ok(mut r) if r.status() == 200 => {
                        let body = r.body_mut().read_to_string().unwrap();
                        assert_eq!(body, format!(r#"{{"path":"{id}","count":1}}"#));
                        acked.lock().unwrap().push(id);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let started = std::time::Instant::now();
    let mut at = host_of(&c, "counter");
    for _ in 0..6 {
        let to = other_eu(&at);
        migrate(&c, "counter", to);
        at = to.to_string();
    }
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} acknowledged requests in {elapsed:.1} s ({:.0}/s), {} failed, across 6 migrations",
        acked.len(),
        acked.len() as f64 / elapsed,
        failed.load(Ordering::Relaxed)
    );
    assert!(acked.len() > 100, "too few requests to tell anything");
    exactly_once(&c, "counter", &acked);
}

/// Every acknowledged request id was applied once: its path counts 1 in
/// the counter, and no request path counts more.
pub(crate) fn exactly_once(c: &Cluster, workload: &str, acked: &[String]) {
    let (status, body) = c.get(workload, "/");
    assert_eq!(status, 200, "{body}");
    let counts: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let counts: BTreeMap<String, u64> = counts
        .iter()
        .map(|v| {
            (
                v["path"].as_str().unwrap().to_string(),
                v["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let twice: Vec<(&String, &u64)> = counts
        .iter()
        .filter(|(p, n)| p.starts_with("/r-") && **n != 1)
        .collect();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
}

#[test]
fn kv_data_and_timers_move_and_ttls_expire_on_time() {
    let c = eu_cluster();
    deploy(
        &c,
        &["--example", "kv-cache", "--selector", "jurisdiction=EU"],
    );
    poll(Duration::from_secs(30), "kv-cache to serve", || {
        c.get("kv-cache", "/k").1 == "no such key"
    });
    let put = |key: &str, ttl_ms: u64| {
        let r = c
            .agent
            .put(format!("{}/w/kv-cache/{key}?ttl={ttl_ms}", c.url))
            .send(format!("value of {key}"))
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    };
    put("long", 600_000);
    let put_at = std::time::Instant::now();
    put("short", 2_000);
    let source = host_of(&c, "kv-cache");
    migrate(&c, "kv-cache", other_eu(&source));
    assert_eq!(
        c.get("kv-cache", "/long"),
        (200, "value of long".to_string())
    );
    if put_at.elapsed() < Duration::from_millis(1_800) {
        assert_eq!(
            c.get("kv-cache", "/short"),
            (200, "value of short".to_string()),
            "expired early"
        );
    }
    poll(Duration::from_secs(10), "the short key to expire", || {
        c.get("kv-cache", "/short").0 == 404
    });
    let expired_after = put_at.elapsed();
    assert!(
        expired_after >= Duration::from_millis(2_000) && expired_after < Duration::from_secs(5),
        "a 2 s TTL expired after {expired_after:?}"
    );
    assert_eq!(c.get("kv-cache", "/long").0, 200);
}

#[test]
fn an_aggregator_keeps_its_windows_and_messages_sent_during_the_move() {
    let c = eu_cluster();
    deploy(
        &c,
        &[
            "--example",
            "sensor-aggregator",
            "--selector",
            "jurisdiction=EU",
        ],
    );
    deploy(
        &c,
        &["--example", "sensor-probe", "--selector", "site=us-east-1"],
    );
    poll(Duration::from_secs(30), "both to serve", || {
        c.get("sensor-aggregator", "/sensors").0 == 200
            && c.invoke("sensor-probe", "/read?sensor=warmup&value=0").0 == 202
    });
    let read = |v: u32| {
        let (status, body) = c.invoke("sensor-probe", &format!("/read?sensor=t1&value={v}"));
        assert_eq!(status, 202, "{body}");
    };
    for v in 1..=20 {
        read(v);
    }
    poll(Duration::from_secs(10), "20 readings", || {
        c.get("sensor-aggregator", "/sensors/t1")
            .1
            .contains("\"n\":20")
    });
    let source = host_of(&c, "sensor-aggregator");
    // Readings keep coming while it moves.
    let sender = {
        let url = c.url.clone();
        let http = c.agent.clone();
        std::thread::spawn(move || {
            for v in 21..=60 {
                let r = http
                    .post(format!("{url}/w/sensor-probe/read?sensor=t1&value={v}"))
                    .send("")
                    .unwrap();
                assert_eq!(r.status().as_u16(), 202);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    migrate(&c, "sensor-aggregator", other_eu(&source));
    sender.join().unwrap();
    poll(Duration::from_secs(10), "all 60 readings", || {
        c.get("sensor-aggregator", "/sensors/t1")
            .1
            .contains("\"n\":60")
    });
    let (_, stats) = c.get("sensor-aggregator", "/sensors/t1");
    assert!(
        stats.contains("\"min\":1") && stats.contains("\"max\":60"),
        "{stats}"
    );
}

pub(crate) fn mandelbrot_result(c: &Cluster, name: &str) -> String {
    poll(Duration::from_secs(120), "the job to finish", || {
        c.get(name, "/progress").1.contains("\"done\":true")
    });
    let (status, result) = c.get(name, "/result");
    assert_eq!(status, 200, "{result}");
    result
}

#[test]
fn a_mandelbrot_job_moved_mid_run_gives_the_unmoved_result() {
    let c = eu_cluster();
    for name in ["mandelbrot", "mandelbrot-ref"] {
        deploy_mandelbrot(&c, name, "jurisdiction=EU");
    }
    let job = "/start?width=1200&height=1200&iterations=2000";
    for name in ["mandelbrot", "mandelbrot-ref"] {
        poll(Duration::from_secs(30), "mandelbrot to serve", || {
            c.get(name, "/progress").0 == 200
        });
    }
    for name in ["mandelbrot", "mandelbrot-ref"] {
        assert_eq!(c.invoke(name, job).0, 202);
    }
    poll(Duration::from_secs(60), "the job to be under way", || {
        let p = c.get("mandelbrot", "/progress").1;
        !p.contains("\"rows_done\":0,") && p.contains("\"done\":false")
    });
    let source = host_of(&c, "mandelbrot");
    migrate(&c, "mandelbrot", other_eu(&source));
    let progress = c.get("mandelbrot", "/progress").1;
    assert!(!progress.contains("\"rows_done\":0,"), "{progress}");
    assert_eq!(
        mandelbrot_result(&c, "mandelbrot"),
        mandelbrot_result(&c, "mandelbrot-ref")
    );
}

// ------------------------------------------------------------------ faults --

/// Clients sending unique POSTs to `counter` until stopped; the ids whose
/// request was acknowledged.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub(crate) fn start(c: &Cluster, workload: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|client| {
                let (stop, acked) = (stop.clone(), acked.clone());
                let url = format!("{}/w/{workload}", c.url);
                let http = c.agent.clone();
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let id = format!("/r-{client}-{n}");
                        if let Ok(r) = http.post(format!("{url}{id}")).send("")
                            && r.status() == 200
                        {
                            acked.lock().unwrap().push(id);
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Load {
            stop,
            acked,
            threads,
        }
    }

    /// Stop, then check every acknowledged id was applied exactly once.
    pub(crate) fn check(self, c: &Cluster, workload: &str) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        assert!(!acked.is_empty(), "no request was acknowledged");
        exactly_once(c, workload, &acked);
        eprintln!(
            "{} acknowledged requests, none lost or applied twice",
            acked.len()
        );
    }
}

/// Start a migration without waiting; its id.
pub(crate) fn start_migration(c: &Cluster, workload: &str, to: &str) -> String {
    let (ok, out, err) = c.roam(&["migrate", workload, "--to", to, "--detach", "-o", "json"]);
    assert!(ok, "{err}");
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    m["id"].as_str().unwrap().to_string()
}

pub(crate) fn migration(c: &Cluster, id: &str) -> serde_json::Value {
    let (status, body) = c.api("GET", &format!("/v1/migrations/{id}"), Some(&c.admin));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

pub(crate) fn wait_phase(c: &Cluster, id: &str, phases: &[&str]) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    poll(
        Duration::from_secs(60),
        &format!("migration phase {phases:?}"),
        || {
            last = migration(c, id);
            phases.iter().any(|p| last["phase"] == *p)
        },
    );
    last
}

/// Two EU hosts whose rounds are slowed down (so a test can act mid-transfer),
/// with more of the hosts' test hooks in `host_env`.
fn slow_cluster(host_env: &[(&str, &str)]) -> Cluster {
    let mut c = Cluster::start_with(&[("HEARTBEAT_TIMEOUT", PATIENT)]);
    let mut slow = vec![("ROAM_FAULT_ROUND_DELAY_MS", "400")];
    slow.extend_from_slice(host_env);
    c.add_host_with("eu-1", "eu-west-1", "EU", &[], &slow);
    c.add_host_with("eu-2", "eu-central-1", "EU", &[], &slow);
    c.wait_ready(2);
    deploy_eu_counter(&c);
    c
}

/// A counter migrating under load on a slow cluster (more host hooks in
/// `host_env`), caught once its source froze: the cluster, source, target,
/// load and migration id.
fn frozen_under_load(host_env: &[(&str, &str)]) -> (Cluster, String, &'static str, Load, String) {
    let mut env = vec![MIGRATION_LOG];
    env.extend_from_slice(host_env);
    let c = slow_cluster(&env);
    let source = host_of(&c, "counter");
    let target = other_eu(&source);
    let load = Load::start(&c, "counter", 2);
    let id = start_migration(&c, "counter", target);
    wait_phase(&c, &id, &["prepared"]);
    holds_final_state(&c, target, &id);
    (c, source, target, load, id)
}

/// Hosts log their migrations' steps ([`holds_final_state`] reads them).
const MIGRATION_LOG: (&str, &str) = ("ROAM_LOG", "warn,roam_host::migration=info");

/// Wait until `target` (started with [`MIGRATION_LOG`]) holds migration
/// `id`'s final state: the source's commit message arrived (the source
/// reports `prepared` as it sends it).
fn holds_final_state(c: &Cluster, target: &str, id: &str) {
    poll(
        Duration::from_secs(30),
        "the target to hold the final state",
        || {
            c.hosts.iter().any(|(name, p)| {
                name == target
                    && p.logged("final state received")
                        .iter()
                        .any(|l| l.contains(id))
            })
        },
    );
}

/// The migration ends done: `counter` runs on `target` only and no
/// acknowledged request of `load` was lost or applied twice.
fn moved_under_load(c: &Cluster, id: &str, target: &str, load: Load) {
    let m = wait_phase(c, id, &["done", "failed", "aborted"]);
    assert_eq!(m["phase"], "done", "{m}");
    assert_eq!(host_of(c, "counter"), target);
    load.check(c, "counter");
    one_copy_on(c, target);
}

/// Wait until `counter` runs on `host` only.
fn one_copy_on(c: &Cluster, host: &str) {
    poll(
        Duration::from_secs(10),
        &format!("one copy, on {host}"),
        || copies(c, "counter") == vec![host.to_string()],
    );
}

#[test]
fn killing_the_target_during_the_transfer_leaves_the_source_serving() {
    let mut c = slow_cluster(&[]);
    let source = host_of(&c, "counter");
    let target = other_eu(&source);
    let load = Load::start(&c, "counter", 2);
    let id = start_migration(&c, "counter", target);
    wait_phase(&c, &id, &["precopy"]);
    c.kill_host(target);
    let m = wait_phase(&c, &id, &["failed", "done"]);
    assert_eq!(m["phase"], "failed", "{m}");
    assert_eq!(host_of(&c, "counter"), source);
    load.check(&c, "counter");
    assert_eq!(copies(&c, "counter"), vec![source.clone()]);
}

#[test]
fn killing_the_source_after_it_froze_commits_to_the_target() {
    let (mut c, source, target, load, id) =
        frozen_under_load(&[("ROAM_FAULT_COMMIT_DELAY_MS", "1500")]);
    c.kill_host(&source);
    moved_under_load(&c, &id, target, load);
}

/// A target lost after the commit point: the source, still frozen with
/// the final state, cannot activate it; it resumes at a generation above the
/// one the lost target was given, and nothing acknowledged is lost.
#[test]
fn killing_the_target_after_the_source_froze_resumes_the_source() {
    let (mut c, source, target, load, id) =
        frozen_under_load(&[("ROAM_FAULT_COMMIT_DELAY_MS", "1500")]);
    c.kill_host(target);
    let m = wait_phase(&c, &id, &["failed", "done"]);
    assert_eq!(m["phase"], "failed", "{m}");
    assert!(
        m["error"]
            .as_str()
            .unwrap()
            .contains("serves on at generation"),
        "{m}"
    );
    assert_eq!(host_of(&c, "counter"), source);
    load.check(&c, "counter");
    assert_eq!(copies(&c, "counter"), vec![source.clone()]);
}

#[test]
fn a_scheduler_restart_mid_migration_aborts_it_and_the_source_serves_on() {
    let mut c = slow_cluster(&[]);
    let source = host_of(&c, "counter");
    let target = other_eu(&source);
    assert_eq!(c.invoke("counter", "/before").0, 200);
    let id = start_migration(&c, "counter", target);
    wait_phase(&c, &id, &["precopy"]);
    c.restart_scheduler();
    let m = wait_phase(&c, &id, &["aborted"]);
    assert!(m["error"].as_str().unwrap().contains("restarted"), "{m}");
    poll(Duration::from_secs(30), "the source to serve", || {
        c.invoke("counter", "/before").1 == r#"{"path":"/before","count":2}"#
    });
    assert_eq!(host_of(&c, "counter"), source);
    assert_eq!(copies(&c, "counter"), vec![source.clone()]);
    // A later migration goes through.
    migrate(&c, "counter", target);
    assert_eq!(
        c.invoke("counter", "/before").1,
        r#"{"path":"/before","count":3}"#
    );
    one_copy_on(&c, target);
}

/// The commit point is the source's `prepared`, not a store write: a
/// scheduler restarted after it learns so from the hosts and completes the
/// migration, and the new generation survives a further restart.
#[test]
fn a_scheduler_restart_after_the_source_froze_completes_the_migration() {
    let mut c = slow_cluster(&[("ROAM_FAULT_COMMIT_DELAY_MS", "1500")]);
    let source = host_of(&c, "counter");
    let target = other_eu(&source);
    assert_eq!(c.invoke("counter", "/before").0, 200);
    let load = Load::start(&c, "counter", 2);
    let id = start_migration(&c, "counter", target);
    wait_phase(&c, &id, &["prepared"]);
    c.restart_scheduler();
    moved_under_load(&c, &id, target, load);
    // The generation was recorded: after another restart the ingress still
    // routes with the one the target serves at.
    c.restart_scheduler();
    let mut answer = (0, String::new());
    poll(Duration::from_secs(30), "the target to serve", || {
        answer = c.invoke("counter", "/before");
        answer.0 == 200
    });
    assert!(
        answer.1.starts_with(r#"{"path":"/before","count":"#),
        "{answer:?}"
    );
    let m = migration(&c, &id);
    assert_eq!(m["phase"], "done", "{m}");
    assert_eq!(host_of(&c, "counter"), target);
}

/// A scheduler restarted while the source activates the target (slowly):
/// the source answers `committing`, and the scheduler's own commit waits for
/// the activation under way instead of racing it.
#[test]
fn a_scheduler_restart_while_the_target_activates_completes_the_migration() {
    let (mut c, _, target, load, id) =
        frozen_under_load(&[("ROAM_FAULT_ACTIVATE_DELAY_MS", "6000")]);
    c.restart_scheduler();
    moved_under_load(&c, &id, target, load);
}

/// The scheduler loses its way to the source mid-transfer while the source
/// still heartbeats: the migration fails, but the abort cannot reach the
/// source (which might be frozen), so it stays `resolving` — the workload
/// left alone — until the source answers again; then it ends `failed`, the
/// source serving, one copy.
#[test]
fn an_abort_that_cannot_reach_the_source_is_resolved_once_it_can() {
    let (c, relay) = relayed_cluster(true, &[("ROAM_FAULT_ROUND_DELAY_MS", "400")]);
    deploy(
        &c,
        &["--example", "counter", "--selector", "site=eu-central-1"],
    );
    poll(Duration::from_secs(30), "counter to serve", || {
        c.invoke("counter", "/a").0 == 200
    });
    deploy(
        &c,
        &["--example", "counter", "--selector", "jurisdiction=EU"],
    );
    let id = start_migration(&c, "counter", "eu-1");
    wait_phase(&c, &id, &["precopy"]);
    relay.mode.store(BLACKHOLE, Ordering::Relaxed);
    let m = wait_phase(&c, &id, &["resolving", "failed", "done"]);
    assert_eq!(m["phase"], "resolving", "{m}");
    relay.mode.store(PASS, Ordering::Relaxed);
    let m = wait_phase(&c, &id, &["failed", "done", "aborted"]);
    assert_eq!(m["phase"], "failed", "{m}");
    assert_eq!(host_of(&c, "counter"), "eu-2");
    poll(Duration::from_secs(10), "one copy, on eu-2", || {
        copies(&c, "counter") == vec!["eu-2".to_string()]
    });
    assert_eq!(c.invoke("counter", "/a").1, r#"{"path":"/a","count":2}"#);
}

/// The scheduler loses its way to the target right after the commit point,
/// while the source's activation of it is under way (slowly) and its answer
/// is lost: the target serves, the source stays frozen, and the scheduler
/// cannot tell. It must not resume the source — the workload would run
/// twice — so the migration stays `resolving` until the target answers
/// again; then it completes: one copy, on the target, no acknowledged
/// request lost or applied twice.
#[test]
fn a_target_cut_off_from_the_scheduler_after_the_commit_point_is_never_doubled() {
    let (c, relay) = relayed_cluster(
        true,
        &[("ROAM_FAULT_ACTIVATE_DELAY_MS", "3000"), MIGRATION_LOG],
    );
    deploy(
        &c,
        &["--example", "counter", "--selector", "site=eu-west-1"],
    );
    poll(Duration::from_secs(30), "counter to serve", || {
        c.invoke("counter", "/a").0 == 200
    });
    deploy(
        &c,
        &["--example", "counter", "--selector", "jurisdiction=EU"],
    );
    let load = Load::start(&c, "counter", 2);
    let id = start_migration(&c, "counter", "eu-2");
    wait_phase(&c, &id, &["prepared"]);
    holds_final_state(&c, "eu-2", &id);
    // The source's commit message reached eu-2, which serves after 3 s;
    // from now on nothing reaches eu-2, and its answer is cut off.
    relay.mode.store(BLACKHOLE, Ordering::Relaxed);
    let m = wait_phase(&c, &id, &["resolving", "failed", "done", "aborted"]);
    assert_eq!(m["phase"], "resolving", "the source must not resume: {m}");
    // The target activated (its heartbeats, which do not cross the relay,
    // show it runs the workload) while the source still holds its frozen
    // copy: the scheduler still has not resumed the source.
    poll(
        Duration::from_secs(30),
        "the target to report its copy",
        || copies(&c, "counter") == vec!["eu-1".to_string(), "eu-2".to_string()],
    );
    let m = migration(&c, &id);
    assert_eq!(m["phase"], "resolving", "{m}");
    relay.mode.store(PASS, Ordering::Relaxed);
    let m = wait_phase(&c, &id, &["done", "failed", "aborted"]);
    assert_eq!(m["phase"], "done", "{m}");
    assert_eq!(host_of(&c, "counter"), "eu-2");
    load.check(&c, "counter");
    poll(Duration::from_secs(10), "one copy, on eu-2", || {
        copies(&c, "counter") == vec!["eu-2".to_string()]
    });
}

/// Deleting a workload while its memory streams to the target: the
/// migration ends (whichever way the race goes), no copy is left anywhere,
/// and both hosts serve on.
#[test]
fn deleting_a_workload_while_its_pages_stream_leaves_no_copy() {
    let mut c = Cluster::start_with(&[("HEARTBEAT_TIMEOUT", PATIENT)]);
    let slow = [("ROAM_FAULT_WINDOW_DELAY_MS", "300")];
    c.add_host_with("eu-1", "eu-west-1", "EU", &[], &slow);
    c.add_host_with("eu-2", "eu-central-1", "EU", &[], &slow);
    c.wait_ready(2);
    deploy_eu_counter(&c);
    assert_eq!(c.invoke("counter", "/a").0, 200);
    let source = host_of(&c, "counter");
    let id = start_migration(&c, "counter", other_eu(&source));
    wait_phase(&c, &id, &["precopy"]);
    let (ok, out, err) = c.roam(&["delete", "counter"]);
    assert!(ok, "{out}{err}");
    // Whichever way the race went, the migration ends.
    wait_phase(&c, &id, &["failed", "aborted", "done"]);
    poll(Duration::from_secs(30), "no copy of counter left", || {
        copies(&c, "counter").is_empty()
    });
    // Both hosts are up and take the workload again.
    let nodes = c.nodes();
    let up = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"] == "ready")
        .count();
    assert_eq!(up, 2, "{nodes}");
    deploy_eu_counter(&c);
    assert_eq!(
        c.invoke("counter", "/a").1,
        r#"{"path":"/a","count":1}"#,
        "a fresh counter"
    );
}

#[test]
fn a_cut_or_corrupted_stream_aborts_and_restores_nothing() {
    let (c, relay) = relayed_cluster(true, &[]);
    // A MiB of state, so every full copy crosses the relay's threshold.
    let big = "x".repeat(1 << 20);
    kv_cache_holding(&c, &big, &[]);
    for (mode, what) in [
        (CUT, "cut"),
        (CORRUPT, "corrupted"),
        (CUT_PAGES, "cut page stream"),
        (CORRUPT_PAGES, "corrupted page stream"),
    ] {
        relay.mode.store(mode, Ordering::Relaxed);
        let (ok, out, err) = c.roam(&["migrate", "kv-cache", "--to", "eu-2", "-o", "json"]);
        assert!(!ok, "a {what} stream must fail the migration: {out}");
        let m: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(m["phase"], "failed", "{what}: {m}{err}");
        eprintln!("{what}: {}", m["error"]);
        assert_eq!(host_of(&c, "kv-cache"), "eu-1");
        assert_eq!(c.get("kv-cache", "/big").1.len(), big.len());
        poll(Duration::from_secs(10), "one copy, on eu-1", || {
            copies(&c, "kv-cache") == vec!["eu-1".to_string()]
        });
    }
    relay.mode.store(PASS, Ordering::Relaxed);
    migrate(&c, "kv-cache", "eu-2");
    assert_eq!(c.get("kv-cache", "/big"), (200, big.clone()));

    // Draining never restarts a workload empty while its host answers:
    // when no copy gets through (live, then stop-and-copy), it stays where
    // it is, state and all, and the drain says so.
    migrate(&c, "kv-cache", "eu-1");
    relay.mode.store(CORRUPT, Ordering::Relaxed);
    let (ok, out, err) = c.roam(&["drain", "eu-1", "-o", "json"]);
    assert!(!ok, "{out}{err}");
    let outcomes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcomes[0]["outcome"], "failed", "{out}");
    assert!(
        outcomes[0]["detail"]
            .as_str()
            .unwrap()
            .contains("stop-and-copy failed"),
        "{out}"
    );
    relay.mode.store(PASS, Ordering::Relaxed);
    assert_eq!(host_of(&c, "kv-cache"), "eu-1");
    assert_eq!(c.get("kv-cache", "/big"), (200, big.clone()));
}

#[test]
fn draining_a_host_moves_its_workloads_live_within_their_rules() {
    let c = eu_cluster();
    deploy(
        &c,
        &[
            artifacts::COUNTER,
            "--name",
            "counter",
            "--selector",
            "site=eu-west-1",
        ],
    );
    deploy(
        &c,
        &["--example", "kv-cache", "--selector", "site=eu-west-1"],
    );
    poll(Duration::from_secs(30), "both to serve", || {
        c.get("counter", "/a").0 == 200 && c.get("kv-cache", "/k").0 == 404
    });
    assert_eq!(c.invoke("counter", "/a").1, r#"{"path":"/a","count":1}"#);
    let r = c
        .agent
        .put(format!("{}/w/kv-cache/k", c.url))
        .send("v")
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // Both may only run on eu-1: draining it moves nothing and says why.
    let (ok, out, err) = c.roam(&["drain", "eu-1"]);
    assert!(!ok && out.contains("no host can take"), "{out}{err}");
    assert_eq!(host_of(&c, "counter"), "eu-1");
    // Allowed anywhere in the EU, they move to eu-2 (not us-1).
    for w in ["counter", "kv-cache"] {
        let (status, body) = c.api("GET", &format!("/v1/workloads/{w}"), Some(&c.admin));
        assert_eq!(status, 200);
        let mut spec: serde_json::Value = serde_json::from_str(&body).unwrap();
        spec["spec"]["selector"] = "jurisdiction=EU".into();
        let r = c
            .agent
            .post(format!("{}/v1/workloads", c.url))
            .header("authorization", format!("Bearer {}", c.admin))
            .header("content-type", "application/json")
            .send(spec["spec"].to_string())
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    let (ok, out, err) = c.roam(&["drain", "eu-1", "-o", "json"]);
    assert!(ok, "{out}{err}");
    let outcomes: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(outcomes.len(), 2, "{out}");
    assert!(
        outcomes
            .iter()
            .all(|o| o["outcome"] == "migrated" && o["detail"] == "to eu-2"),
        "{out}"
    );
    assert_eq!(c.invoke("counter", "/a").1, r#"{"path":"/a","count":2}"#);
    assert_eq!(c.get("kv-cache", "/k"), (200, "v".to_string()));
    let nodes = c.nodes();
    let eu1 = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "eu-1")
        .unwrap();
    assert_eq!(eu1["status"], "cordoned");
}

/// `systemctl stop` (SIGTERM) on a host with three workloads: before it
/// exits, the host has the scheduler move all three away live, state and
/// all, and it exits cleanly.
#[test]
fn a_host_stopped_with_sigterm_moves_its_workloads_away_first() {
    let mut c = eu_cluster();
    let place = |selector: &str| {
        for name in ["counter", "counter-b"] {
            deploy(
                &c,
                &[artifacts::COUNTER, "--name", name, "--selector", selector],
            );
        }
        deploy(&c, &["--example", "kv-cache", "--selector", selector]);
    };
    place("site=eu-west-1");
    poll(Duration::from_secs(30), "all three to serve", || {
        c.invoke("counter", "/a").0 == 200
            && c.invoke("counter-b", "/b").0 == 200
            && c.get("kv-cache", "/k").0 == 404
    });
    let r = c
        .agent
        .put(format!("{}/w/kv-cache/k", c.url))
        .send("kept")
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // Allowed on eu-2 from now on; still on eu-1.
    place("jurisdiction=EU");
    for w in ["counter", "counter-b", "kv-cache"] {
        assert_eq!(host_of(&c, w), "eu-1");
    }
    let status = c.terminate_host("eu-1", Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    for w in ["counter", "counter-b", "kv-cache"] {
        assert_eq!(host_of(&c, w), "eu-2", "{w}");
    }
    assert_eq!(c.invoke("counter", "/a").1, r#"{"path":"/a","count":2}"#);
    assert_eq!(c.invoke("counter-b", "/b").1, r#"{"path":"/b","count":2}"#);
    assert_eq!(c.get("kv-cache", "/k"), (200, "kept".to_string()));
}

/// kv-cache (with `extra` deploy arguments) placed on eu-1, holding `value`
/// at `/big`, and allowed anywhere in the EU from then on.
pub(crate) fn kv_cache_holding(c: &Cluster, value: &str, extra: &[&str]) {
    let kv_cache = [&["--example", "kv-cache"][..], extra].concat();
    deploy(
        c,
        &[&kv_cache[..], &["--selector", "site=eu-west-1"]].concat(),
    );
    poll(Duration::from_secs(30), "kv-cache to serve", || {
        c.get("kv-cache", "/big").0 == 404
    });
    let r = c
        .agent
        .put(format!("{}/w/kv-cache/big", c.url))
        .send(value)
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    deploy(
        c,
        &[&kv_cache[..], &["--selector", "jurisdiction=EU"]].concat(),
    );
}

/// The commit message's companions. A request routed to the target for the
/// migration's new generation before the target serves — as the source
/// forwards the requests it held once its commit message is on its way —
/// waits there and is served once the target serves, continuing the
/// source's state. One routed there for a migration the target then drops
/// is refused before dispatch (so the source can take it back and serve
/// it), after the drop, not at once as "not here".
#[test]
fn requests_routed_ahead_of_the_commit_wait_for_it_or_come_back_undispatched() {
    let mut c = slow_cluster(&[MIGRATION_LOG, ("ROAM_FAULT_COMMIT_DELAY_MS", "2000")]);
    let source = host_of(&c, "counter");
    let target = other_eu(&source);
    let (status, before) = c.invoke("counter", "/a");
    assert_eq!(status, 200, "{before}");
    let id = start_migration(&c, "counter", target);
    let m = wait_phase(&c, &id, &["prepared"]);
    holds_final_state(&c, target, &id);
    // The target holds the final state and serves 2 s from now.
    let ahead = |host: &str, generation: u64| {
        let url = crate::failover::ingress("counter", "/a").on(&c.url_of(host));
        let agent = crate::cluster::unverified_agent(Some(Duration::from_secs(30)));
        move || {
            let sent = std::time::Instant::now();
            let mut r = agent
                .post(&url)
                .header(roam_proto::headers::GENERATION, generation.to_string())
                .send("")
                .unwrap();
            let undispatched = r
                .headers()
                .contains_key(roam_proto::headers::NOT_DISPATCHED);
            let body = r.body_mut().read_to_string().unwrap();
            (r.status().as_u16(), undispatched, body, sent.elapsed())
        }
    };
    let (status, undispatched, body, _) = ahead(target, m["generation"].as_u64().unwrap())();
    assert_eq!((status, undispatched), (200, false), "{body}");
    assert_eq!(
        counter_value(&body),
        counter_value(&before) + 1,
        "{before} then {body}"
    );
    let m = wait_phase(&c, &id, &["done", "failed", "aborted"]);
    assert_eq!(m["phase"], "done", "{m}");
    assert_eq!(host_of(&c, "counter"), target);

    // Back the other way, dropped mid-transfer: a scheduler restart aborts
    // it (target first).
    let back = start_migration(&c, "counter", &source);
    let m = wait_phase(&c, &back, &["precopy"]);
    let waiting = std::thread::spawn(ahead(&source, m["generation"].as_u64().unwrap()));
    c.restart_scheduler();
    let (status, undispatched, body, waited) = waiting.join().unwrap();
    assert!(undispatched, "{status}: {body}");
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    let m = wait_phase(&c, &back, &["done", "failed", "aborted"]);
    assert_ne!(m["phase"], "done", "{m}");
    // The workload serves on where it was, its state intact.
    let (status, after) = c.invoke("counter", "/a");
    assert_eq!(status, 200, "{after}");
    assert_eq!(
        counter_value(&after),
        counter_value(&before) + 2,
        "{before} then {after}"
    );
    assert_eq!(host_of(&c, "counter"), target);
}

/// Once pre-copy converged the scheduler sends the workload's requests to
/// the target before it orders the source to freeze: a request sent
/// meanwhile waits at the target and is served there once the commit
/// message is applied, never held at the source and sent on through it
/// (which costs clients a round trip between the hosts).
#[test]
fn requests_sent_once_a_migration_converged_wait_at_its_target() {
    let log = (
        "ROAM_LOG",
        "warn,roam_host::migration=debug,roam_host::ingress=debug",
    );
    let c = slow_cluster(&[
        log,
        ("NO_COLOR", "1"),
        ("ROAM_FAULT_COMMIT_DELAY_MS", "1500"),
    ]);
    let source = host_of(&c, "counter");
    let target = other_eu(&source);
    let (status, before) = c.invoke("counter", "/a");
    assert_eq!(status, 200, "{before}");
    let id = start_migration(&c, "counter", target);
    wait_phase(&c, &id, &["prepared"]);
    holds_final_state(&c, target, &id);
    let logged = |host: &str, needle: &str| -> Vec<String> {
        c.hosts
            .iter()
            .filter(|(name, _)| name == host)
            .flat_map(|(_, p)| p.logged(needle))
            .collect()
    };
    // The source froze on the scheduler's order, not after waiting it out.
    let froze = logged(&source, "freezing");
    assert!(
        froze
            .iter()
            .any(|l| l.contains(&id) && l.contains("ordered=true")),
        "{froze:?}"
    );
    // The target activates 1.5 s from its arrival: this request waits.
    let (status, body) = c.invoke("counter", "/a");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        counter_value(&body),
        counter_value(&before) + 1,
        "{before} then {body}"
    );
    let m = wait_phase(&c, &id, &["done", "failed", "aborted"]);
    assert_eq!(m["phase"], "done", "{m}");
    let waited = logged(target, "waited for its workload's arrival");
    assert!(
        waited.iter().any(|l| l.contains("arrived=true")),
        "the target held no request: {waited:?}"
    );
    let forwarded = logged(&source, "forwarding a held request");
    assert!(forwarded.is_empty(), "{forwarded:?}");
    one_copy_on(&c, target);
}

/// The count in counter's answer (`{"path":…,"count":N}`).
fn counter_value(body: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["count"].as_u64().unwrap()
}
