//! The control plane on etcd (issue 19): `cargo bench -p roam --bench
//! control_plane` (`scripts/bench control-plane`). Real processes: an etcd
//! of three members, `roam scheduler` replicas, a real `roam host`, and
//! the simulated fleet of the heartbeats bench.
//!
//! 1. **Leader failover.** Three replicas (lease TTL 3 s) and one host; a
//!    counter is under load through a follower's ingress. Each round kills
//!    the leader (SIGKILL) and times, from the kill: until another replica
//!    leads, and until a workload deployed right then (through the new
//!    leader) answers through the ingress — the new leader reconciling.
//!    The killed replica is started again before the next round. Failed
//!    ingress requests are counted across every round.
//! 2. **etcd beside redb, same run.** Deploy to first response (a real host,
//!    one workload at a time), and at fleet scale (10,000 simulated hosts,
//!    20,000 workloads on 200 of them): placements per second, and the
//!    restarts of what 100 hosts that died at once held.
//! 3. **Heartbeat ingest with three replicas** on etcd: the leader's CPU and
//!    each follower's, beside one scheduler on redb.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark reports failure by panicking"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use roam_scheduler::store::testing::EtcdCluster;

mod common;
use common::fleet::{Figures, measure};
use common::{Proc, Scheduler, agent, percentile, spawn};

/// The lease TTL the failover rounds use (`--leader-ttl`).
const TTL_SECS: u64 = 3;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn quick() -> bool {
    std::env::var_os("ROAM_BENCH_QUICK").is_some()
}

/// `METHOD url` with `token` and an optional JSON or byte body: (status,
/// body).
fn call(
    http: &ureq::Agent,
    method: &str,
    url: &str,
    token: &str,
    body: Option<Vec<u8>>,
) -> Option<(u16, String)> {
    let auth = format!("Bearer {token}");
    let mut r = match (method, body) {
        ("GET", _) => http.get(url).header("authorization", &auth).call(),
        ("PUT", Some(b)) => http.put(url).header("authorization", &auth).send(&b[..]),
        ("POST", Some(b)) => http
            .post(url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(&b[..]),
        ("POST", None) => http.post(url).header("authorization", &auth).send_empty(),
        (m, _) => panic!("{m}"),
    }
    .ok()?;
    Some((r.status().as_u16(), r.body_mut().read_to_string().ok()?))
}

/// Upload the counter module; its digest.
fn upload_counter(http: &ureq::Agent, url: &str, token: &str) -> String {
    let module = std::fs::read(roam_tests::artifacts::COUNTER).unwrap();
    let (status, body) = call(
        http,
        "PUT",
        &format!("{url}/v1/modules"),
        token,
        Some(module),
    )
    .unwrap();
    assert_eq!(status / 100, 2, "{body}");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    m["digest"].as_str().unwrap().to_string()
}

/// Deploy the counter as `name` through `url`.
fn deploy(http: &ureq::Agent, url: &str, token: &str, name: &str, digest: &str) -> bool {
    let spec = roam_proto::WorkloadSpec {
        name: name.to_string(),
        digest: digest.to_string(),
        replicas: 1,
        memory: 16 << 20,
        ..roam_proto::WorkloadSpec::default()
    };
    call(
        http,
        "POST",
        &format!("{url}/v1/workloads"),
        token,
        Some(serde_json::to_vec(&spec).unwrap()),
    )
    .is_some_and(|(s, _)| s / 100 == 2)
}

/// Whether `workload` answers through the ingress at `url`.
fn answers(http: &ureq::Agent, url: &str, workload: &str) -> bool {
    call(http, "POST", &format!("{url}/w/{workload}/hit"), "", None).is_some_and(|(s, _)| s == 200)
}

/// Three replicas on `etcd`, by fixed ports, so a killed one comes back at
/// the same URL.
struct Replicas {
    dir: tempfile::TempDir,
    args: Vec<Vec<String>>,
    procs: Vec<Option<Proc>>,
    urls: Vec<String>,
    admin: String,
    http: ureq::Agent,
}

impl Replicas {
    fn start(etcd: &EtcdCluster) -> Replicas {
        let dir = tempfile::tempdir().unwrap();
        let mut args = Vec::new();
        let mut procs = Vec::new();
        let mut urls = Vec::new();
        for i in 0..3 {
            let a: Vec<String> = [
                "scheduler",
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
                "--data-dir",
                dir.path().join(format!("s{i}")).to_str().unwrap(),
                "--store",
                &format!("etcd={}", etcd.urls()),
                "--etcd-prefix",
                "/failover",
                "--leader-ttl",
                &format!("{TTL_SECS}s"),
                "--heartbeat",
                "200ms",
                "--heartbeat-timeout",
                "3s",
            ]
            .map(String::from)
            .to_vec();
            let (p, url) = spawn(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
            args.push(a);
            procs.push(Some(p));
            urls.push(url);
        }
        let first = dir.path().join("s0");
        let admin = std::fs::read_to_string(first.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        let http = agent(Some(&first.join("ca.crt")));
        Replicas {
            dir,
            args,
            procs,
            urls,
            admin,
            http,
        }
    }

    /// The leader's index as live replica `asked` sees it.
    fn leader_seen_by(&self, asked: usize) -> Option<usize> {
        let (status, body) = call(
            &self.http,
            "GET",
            &format!("{}/v1/schedulers", self.urls[asked]),
            &self.admin,
            None,
        )?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let url = v["replicas"]
            .as_array()?
            .iter()
            .find(|r| r["leader"] == true)?["url"]
            .as_str()?
            .to_string();
        self.urls.iter().position(|u| *u == url)
    }

    /// The leader, as any live replica sees it.
    fn leader(&self) -> Option<usize> {
        (0..3)
            .filter(|i| self.procs[*i].is_some())
            .find_map(|i| self.leader_seen_by(i))
            .filter(|l| self.procs[*l].is_some())
    }

    fn wait_leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(l) = self.leader() {
                return l;
            }
            assert!(Instant::now() < deadline, "no replica leads");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Failover rounds: (seconds from kill to a new leader, to a workload
/// deployed then answering; ingress requests sent, failed).
fn failover(rounds: usize) -> (Vec<f64>, Vec<f64>, u64, u64) {
    let etcd = EtcdCluster::start(3);
    let mut r = Replicas::start(&etcd);
    let leader = r.wait_leader();
    let join = r.dir.path().join("h1");
    let (status, body) = call(
        &r.http,
        "POST",
        &format!("{}/v1/tokens", r.urls[leader]),
        &r.admin,
        Some(b"{}".to_vec()),
    )
    .unwrap();
    assert_eq!(status / 100, 2, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (_host, _) = spawn(
        &[
            "host",
            "--join",
            &r.urls.join(","),
            "--name",
            "h1",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            join.to_str().unwrap(),
        ],
        &[("ROAM_JOIN_TOKEN", token["token"].as_str().unwrap())],
    );
    let digest = upload_counter(&r.http, &r.urls[leader], &r.admin);
    assert!(deploy(&r.http, &r.urls[leader], &r.admin, "base", &digest));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !answers(&r.http, &r.urls[leader], "base") {
        assert!(Instant::now() < deadline, "base does not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut to_leader, mut to_serving) = (Vec::new(), Vec::new());
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    for round in 0..rounds {
        let old = r.wait_leader();
        let follower = (old + 1) % 3;
        // Load through a follower, for the whole round.
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let (http, url, stop, sent, failed) = (
                r.http.clone(),
                r.urls[follower].clone(),
                stop.clone(),
                sent.clone(),
                failed.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sent.fetch_add(1, Ordering::Relaxed);
                    if !answers(&http, &url, "base") {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        drop(r.procs[old].take());
        let killed = Instant::now();
        let new = loop {
            if let Some(l) = r.leader().filter(|l| *l != old) {
                break l;
            }
            if killed.elapsed() > Duration::from_secs(60) {
                for i in (0..3).filter(|i| r.procs[*i].is_some()) {
                    eprintln!(
                        "control-plane: replica {i} says: {:?}",
                        call(
                            &r.http,
                            "GET",
                            &format!("{}/v1/schedulers", r.urls[i]),
                            &r.admin,
                            None
                        )
                    );
                }
                panic!("no new leader 60 s after the kill");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        to_leader.push(killed.elapsed().as_secs_f64());
        let name = format!("r{round}");
        while !deploy(&r.http, &r.urls[new], &r.admin, &name, &digest) {
            assert!(killed.elapsed() < Duration::from_secs(60), "deploy refused");
            std::thread::sleep(Duration::from_millis(10));
        }
        while !answers(&r.http, &r.urls[follower], &name) {
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "{name} does not answer"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        to_serving.push(killed.elapsed().as_secs_f64());
        stop.store(true, Ordering::Relaxed);
        load.join().unwrap();
        eprintln!(
            "control-plane: round {round}: new leader after {:.2} s, serving after {:.2} s",
            to_leader[round], to_serving[round]
        );
        // The killed replica comes back (as a follower).
        let a: Vec<&str> = r.args[old].iter().map(String::as_str).collect();
        let (p, _) = spawn(&a, &[]);
        r.procs[old] = Some(p);
    }
    (
        to_leader,
        to_serving,
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    )
}

/// Seconds from a deploy to its first answer, `n` times, one scheduler on
/// `store` (extra arguments) and one real host.
fn deploy_to_first_response(extra: &[&str], n: usize) -> Vec<f64> {
    let s = Scheduler::start(extra);
    let (_host, _) = s.host("h1", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.get("/v1/nodes").as_array().is_none_or(|a| a.is_empty()) {
        assert!(Instant::now() < deadline, "the host did not join");
        std::thread::sleep(Duration::from_millis(50));
    }
    let digest = upload_counter(&s.http, &s.url, &s.admin);
    (0..n)
        .map(|i| {
            let name = format!("d{i}");
            let t = Instant::now();
            assert!(deploy(&s.http, &s.url, &s.admin, &name, &digest));
            while !answers(&s.http, &s.url, &name) {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "{name} does not answer"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            t.elapsed().as_secs_f64()
        })
        .collect()
}

fn p(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    percentile(&mut v, q)
}

fn fleet_row(store: &str, f: &Figures, base: Option<&Figures>) {
    let placed = f.placements.unwrap_or(0.0);
    let (lost, spread, after) = f.replaced.unwrap_or((0, 0.0, 0.0));
    let ratio = |x: f64, b: f64| {
        if b > 0.0 {
            format!(" ({:.2}×)", x / b)
        } else {
            String::new()
        }
    };
    let (pr, rr, ar) = match base {
        Some(b) => (
            ratio(b.placements.unwrap_or(0.0), placed),
            ratio(spread, b.replaced.map_or(0.0, |r| r.1)),
            ratio(after, b.replaced.map_or(0.0, |r| r.2)),
        ),
        None => (String::new(), String::new(), String::new()),
    };
    println!(
        "| {store} | {placed:.0}/s{pr} | {lost} workloads, first to last restart {spread:.2} s{rr}, last {after:.2} s after detection{ar} |"
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `control_plane-... --bench [PART]`: only the parts whose name
    // contains PART (failover, first-response, fleet, ingest).
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |part: &str| only.as_deref().is_none_or(|o| part.contains(o));
    let rounds = if quick() { 3 } else { 10 };
    let (hosts, workloads) = if quick() {
        (1_000, 2_000)
    } else {
        (10_000, 20_000)
    };
    let etcd = EtcdCluster::start(3);
    let store = format!("etcd={}", etcd.urls());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if wanted("failover") {
        failover_table(rounds);
    }
    if wanted("first-response") {
        first_response_table(&store);
    }
    let mut redb_cpu = None;
    if wanted("fleet") {
        let fleet_redb = rt.block_on(measure(hosts, workloads, &[], 0));
        let fleet_etcd = rt.block_on(measure(
            hosts,
            workloads,
            &["--store", &store, "--etcd-prefix", "/fleet"],
            0,
        ));
        println!(
            "{hosts} simulated hosts, {workloads} workloads on 200 of them, then 100 of those dead at once (heartbeat timeout 10 s):"
        );
        println!();
        println!("| store | placements | re-placing what 100 dead hosts held |");
        println!("|---|---|---|");
        fleet_row("redb (embedded)", &fleet_redb, None);
        fleet_row("etcd (three members)", &fleet_etcd, Some(&fleet_redb));
        println!();
        redb_cpu = Some((fleet_redb.beats, fleet_redb.cpu));
    }
    if wanted("ingest") {
        let (redb_beats, redb_cpu) = match redb_cpu {
            Some(b) => b,
            None => {
                let f = rt.block_on(measure(hosts, 0, &[], 0));
                (f.beats, f.cpu)
            }
        };
        ingest_table(&rt, hosts, &store, redb_beats, redb_cpu);
    }
}

fn failover_table(rounds: usize) {
    let (to_leader, to_serving, sent, failed) = failover(rounds);
    println!(
        "Leader failover, lease TTL {TTL_SECS} s, {rounds} kills of the leader (three replicas, an etcd of three members, one host):"
    );
    println!();
    println!("| from the kill to | p50 | p99 | max | against TTL + 1 s |");
    println!("|---|---|---|---|---|");
    let target = TTL_SECS as f64 + 1.0;
    for (what, v) in [
        ("another replica leads", &to_leader),
        (
            "a workload deployed then answers (the new leader reconciles)",
            &to_serving,
        ),
    ] {
        let max = v.iter().copied().fold(0.0, f64::max);
        println!(
            "| {what} | {:.2} s | {:.2} s | {max:.2} s | {:.2}× |",
            p(v, 0.5),
            p(v, 0.99),
            p(v, 0.99) / target
        );
    }
    println!();
    println!("Ingress through a follower meanwhile: {sent} requests, {failed} failed.");
    println!();
}

fn first_response_table(store: &str) {
    let n = if quick() { 5 } else { 20 };
    let redb = deploy_to_first_response(&[], n);
    let on_etcd = deploy_to_first_response(&["--store", store, "--etcd-prefix", "/first"], n);
    println!("Deploy to first response, {n} deploys one after another (one scheduler, one host):");
    println!();
    println!("| store | p50 | p99 |");
    println!("|---|---|---|");
    println!(
        "| redb (embedded) | {:.1} ms | {:.1} ms |",
        p(&redb, 0.5) * 1e3,
        p(&redb, 0.99) * 1e3
    );
    println!(
        "| etcd (three members) | {:.1} ms ({:.2}×) | {:.1} ms |",
        p(&on_etcd, 0.5) * 1e3,
        p(&on_etcd, 0.5) / p(&redb, 0.5),
        p(&on_etcd, 0.99) * 1e3
    );
    println!();
}

fn ingest_table(
    rt: &tokio::runtime::Runtime,
    hosts: usize,
    store: &str,
    redb_beats: f64,
    redb_cpu: f64,
) {
    // 3. Heartbeat ingest with three replicas.
    let three = rt.block_on(measure(
        hosts,
        0,
        &["--store", store, "--etcd-prefix", "/beats"],
        2,
    ));
    println!("Heartbeat ingest, {hosts} hosts beating once a second:");
    println!();
    println!(
        "| control plane | heartbeats/s | leader CPU (share of one core) | each follower's CPU |"
    );
    println!("|---|---|---|---|");
    println!(
        "| one scheduler, redb | {:.0} | {:.1}% | - |",
        redb_beats,
        redb_cpu * 100.0
    );
    println!(
        "| three replicas, etcd | {:.0} | {:.1}% ({:.2}×) | {} |",
        three.beats,
        three.cpu * 100.0,
        three.cpu / redb_cpu,
        three
            .follower_cpu
            .iter()
            .map(|c| format!("{:.1}%", c * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
