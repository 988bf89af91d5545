//! Failover: what each durability costs a workload under load, and what a
//! kill -9 of its host costs it.
//!
//! 1. **Cost.** `counter` (`POST /a`) and the 64 MiB `membench` (`POST
//!    /dirty?kib=0`, while another client dirties it at 10 MB/s), each
//!    deployed with durability `none`, `async` and `sync` in turn, driven by
//!    `wrk` at 1 and 32 connections through the primary host's ingress:
//!    requests/s, p50/p99, and the checkpoint bytes per second its standby
//!    acknowledged (as the host reports them).
//! 2. **Kill -9.** A client sends requests one after another through the
//!    scheduler's ingress and never resends an acknowledged one; the
//!    primary's host is killed: the time to the first answer after the
//!    kill (RTO), split into detection (kill to the failover decision) and
//!    promotion (the standby's own time), the requests acknowledged before
//!    the kill that the failover lost (RPO), beside `none`, which restarts
//!    empty elsewhere.
//! 3. **Promotion vs a full restore** of the same memory: decode and
//!    restore a 64 MiB membench snapshot in this process, the work a
//!    promotion does not do (the standby applied the checkpoints as they
//!    came).
//!
//! `cargo bench -p roam --bench failover` (`ROAM_BENCH_QUICK=1`: 3 s runs);
//! needs `wrk` (scripts/bench installs it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark reports failure by panicking"
)]

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{Proc, Run, Scheduler, wrk};

const DURABILITIES: [&str; 3] = ["none", "async", "sync"];

/// Poll `done` every 20 ms until it holds, for at most `secs`.
fn wait(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The instance record of `workload` (one replica).
fn instance(s: &Scheduler, workload: &str) -> Option<serde_json::Value> {
    s.get("/v1/instances")
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["workload"] == workload)
        .cloned()
}

/// The URL of host `name`.
fn host_url(s: &Scheduler, name: &str) -> String {
    s.get("/v1/nodes")
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .and_then(|n| n["url"].as_str())
        .unwrap()
        .to_string()
}

/// Whether `workload`'s replica on `host` is protected by a standby.
fn protected(s: &Scheduler, workload: &str, host: &str) -> bool {
    s.get("/v1/workloads")
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["spec"]["name"] == workload)
        .is_some_and(|w| w["protection"][host]["protected"] == true)
}

/// Deploy `module` as `name` with `durability` and wait until it serves
/// (protected when durable); its host.
fn deploy(s: &Scheduler, module: &str, name: &str, memory: &str, durability: &str) -> String {
    s.roam(&[
        "deploy",
        module,
        "--name",
        name,
        "--memory",
        memory,
        "--durability",
        durability,
    ]);
    let mut host = String::new();
    wait(60, "the workload to run", || {
        match instance(s, name).and_then(|i| i["host"].as_str().map(str::to_string)) {
            Some(h) => {
                host = h;
                true
            }
            None => false,
        }
    });
    let url = format!("{}/w/{name}/", s.url);
    wait(60, "the workload to answer", || {
        s.http
            .get(&url)
            .call()
            .is_ok_and(|r| r.status().as_u16() == 200)
    });
    if durability != "none" {
        wait(60, "the replica to be protected", || {
            protected(s, name, &host)
        });
    }
    host
}

fn post(http: &ureq::Agent, url: &str) -> Option<String> {
    let mut r = http.post(url).send("").ok()?;
    (r.status().as_u16() == 200).then(|| r.body_mut().read_to_string().unwrap_or_default())
}

/// A client that dirties `membench` at `mb_s` MB/s: 100 requests a second.
fn dirtier(http: ureq::Agent, url: String, mb_s: u64, stop: Arc<AtomicBool>) {
    let kib = mb_s * 1024 / 100;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let _ = post(&http, &format!("{url}/dirty?kib={kib}"));
        next += Duration::from_millis(10);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
}

/// One row of the cost table.
struct Cost {
    workload: &'static str,
    durability: &'static str,
    connections: usize,
    run: Run,
    checkpoint_mb_s: f64,
    /// What the workload wrote (membench), for the checkpoint rate's sake.
    dirtied_mb_s: f64,
}

fn cost(quick: bool) -> Vec<Cost> {
    let seconds = if quick { 3 } else { 8 };
    let s = Scheduler::start(&[]);
    let _h1 = s.host("h1", &[]);
    let _h2 = s.host("h2", &[]);
    wait(30, "two hosts", || {
        s.get("/v1/nodes").as_array().unwrap().len() == 2
    });
    let script = s.dir.path().join("post.lua");
    std::fs::write(&script, "wrk.method = \"POST\"\n").unwrap();
    let mut rows = Vec::new();
    let cases: [(&str, &str, &str, &str, u64); 2] = [
        ("counter", roam_tests::artifacts::COUNTER, "16MiB", "/a", 0),
        (
            "membench 64 MiB, 10 MB/s",
            roam_tests::artifacts::MEMBENCH,
            "128MiB",
            // Requests that write nothing: the dirty rate is the other
            // client's 10 MB/s.
            "/dirty?kib=0",
            10,
        ),
    ];
    // `ROAM_BENCH_CASE=membench/async`: only the cost rows whose workload
    // contains the first word and whose durability is the second (and no
    // kills).
    let only = std::env::var("ROAM_BENCH_CASE").ok();
    for (workload, module, memory, path, dirty_mb_s) in cases {
        for durability in DURABILITIES {
            if let Some((w, d)) = only.as_deref().and_then(|o| o.split_once('/'))
                && !(workload.contains(w) && durability == d)
            {
                continue;
            }
            let name = format!("w-{durability}");
            let host = deploy(&s, module, &name, memory, durability);
            let url = format!("{}/w/{name}", host_url(&s, &host));
            // This process's own clients go through the scheduler's
            // ingress (the host's certificate names the host, not the
            // address `wrk` dials without checking).
            let ingress = format!("{}/w/{name}", s.url);
            let stop = Arc::new(AtomicBool::new(false));
            let dirtying = (dirty_mb_s > 0).then(|| {
                assert!(post(&s.http, &format!("{ingress}/fill?mib=64")).is_some());
                let (http, url, stop) = (s.http.clone(), ingress.clone(), stop.clone());
                std::thread::spawn(move || dirtier(http, url, dirty_mb_s, stop))
            });
            for connections in [1, 32] {
                let bytes = || {
                    instance(&s, &name).map_or(0, |i| i["checkpoint_bytes"].as_u64().unwrap_or(0))
                };
                // membench counts the pages it wrote.
                let writes = || {
                    let mut r = s.http.get(format!("{ingress}/")).call().unwrap();
                    let body = r.body_mut().read_to_string().unwrap();
                    body.split("\"writes\":")
                        .nth(1)
                        .and_then(|t| t.trim_end_matches('}').parse::<u64>().ok())
                        .unwrap_or(0)
                };
                // The host reports with its next heartbeat.
                std::thread::sleep(Duration::from_millis(600));
                let (before, written, began) = (bytes(), writes(), Instant::now());
                let run = wrk(&format!("{url}{path}"), Some(&script), connections, seconds);
                std::thread::sleep(Duration::from_millis(600));
                let after = bytes();
                let dirtied_mb_s =
                    (writes() - written) as f64 * 4096.0 / began.elapsed().as_secs_f64() / 1e6;
                rows.push(Cost {
                    workload,
                    durability,
                    connections,
                    run,
                    checkpoint_mb_s: after.saturating_sub(before) as f64
                        / began.elapsed().as_secs_f64()
                        / 1e6,
                    dirtied_mb_s,
                });
            }
            stop.store(true, Ordering::Relaxed);
            if let Some(t) = dirtying {
                t.join().unwrap();
            }
            s.roam(&["delete", &name]);
            wait(30, "the workload to go", || instance(&s, &name).is_none());
        }
    }
    rows
}

/// What a kill -9 of the primary's host cost.
struct Kill {
    case: String,
    rto_ms: f64,
    detection_ms: Option<f64>,
    promotion_ms: Option<f64>,
    lost: u64,
    lost_window_ms: f64,
    acked: usize,
    kept_state: bool,
}

/// Server-sent events of the scheduler, one `data:` payload per item.
fn events(s: &Scheduler) -> mpsc::Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    let url = format!("{}/v1/events", s.url);
    let (http, admin) = (s.http.clone(), s.admin.clone());
    std::thread::spawn(move || {
        let Ok(r) = http
            .get(&url)
            .header("authorization", format!("Bearer {admin}"))
            .call()
        else {
            return;
        };
        for line in BufReader::new(r.into_body().into_reader())
            .lines()
            .map_while(Result::ok)
        {
            if let Some(data) = line.strip_prefix("data:")
                && tx.send((Instant::now(), data.trim().to_string())).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// The count in `{"path":"/a","count":N}` (0 for other answers).
fn count(body: &str) -> u64 {
    body.split("\"count\":")
        .nth(1)
        .and_then(|t| t.trim_end_matches('}').parse().ok())
        .unwrap_or(0)
}

fn kill(durability: &str, membench: bool) -> Kill {
    let s = Scheduler::start(&["--heartbeat-timeout", "2s"]);
    let mut hosts: Vec<(String, Proc)> = ["h1", "h2", "h3"]
        .iter()
        .map(|n| (n.to_string(), s.host(n, &[]).0))
        .collect();
    wait(30, "three hosts", || {
        s.get("/v1/nodes").as_array().unwrap().len() == 3
    });
    let (module, memory) = if membench {
        (roam_tests::artifacts::MEMBENCH, "128MiB")
    } else {
        (roam_tests::artifacts::COUNTER, "16MiB")
    };
    let name = "victim";
    let primary = deploy(&s, module, name, memory, durability);
    let ingress = format!("{}/w/{name}", s.url);
    let stop = Arc::new(AtomicBool::new(false));
    let dirtying = membench.then(|| {
        assert!(post(&s.http, &format!("{ingress}/fill?mib=64")).is_some());
        let (http, url, stop) = (s.http.clone(), ingress.clone(), stop.clone());
        std::thread::spawn(move || dirtier(http, url, 10, stop))
    });
    if membench && durability != "none" {
        // The fill is in a checkpoint before the kill.
        std::thread::sleep(Duration::from_millis(500));
    }
    let events = events(&s);
    // Counter: each answer carries the count; membench: the dirtier is the
    // load, and this client only watches for answers.
    let path = if membench { "/dirty?kib=0" } else { "/a" };
    let client = {
        let (http, url, stop) = (s.http.clone(), format!("{ingress}{path}"), stop.clone());
        std::thread::spawn(move || {
            let mut acked: Vec<(Instant, u64)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(body) = post(&http, &url) {
                    acked.push((Instant::now(), count(&body)));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    hosts.retain(|(n, _)| *n != primary);
    let killed = Instant::now();
    // The failover event (durable), or the restart elsewhere (none).
    let (mut detection_ms, mut promotion_ms) = (None, None);
    if durability != "none" {
        let deadline = killed + Duration::from_secs(30);
        while let Ok((at, e)) =
            events.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if e.contains("\"type\":\"failover\"") {
                let took: f64 = e
                    .split("\"took_ms\":")
                    .nth(1)
                    .and_then(|t| t.split([',', '}']).next())
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0.0);
                promotion_ms = Some(took);
                detection_ms = Some(at.duration_since(killed).as_secs_f64() * 1e3 - took);
                break;
            }
        }
    }
    let mut after_kill = String::new();
    wait(30, "an answer after the kill", || {
        match s.http.get(&format!("{ingress}/")).call() {
            Ok(mut r) if r.status().as_u16() == 200 => {
                after_kill = r.body_mut().read_to_string().unwrap_or_default();
                true
            }
            _ => false,
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let acked = client.join().unwrap();
    if let Some(t) = dirtying {
        t.join().unwrap();
    }
    let before: Vec<&(Instant, u64)> = acked.iter().filter(|a| a.0 < killed).collect();
    let after: Vec<&(Instant, u64)> = acked.iter().filter(|a| a.0 >= killed).collect();
    let first_after = after.first().expect("an answer after the kill");
    let last = before.last().map_or(0, |a| a.1);
    let lost = if membench {
        0
    } else {
        last.saturating_sub(first_after.1.saturating_sub(1))
    };
    // How far back before the kill the lost acknowledgements reach.
    let lost_window_ms = before
        .iter()
        .find(|a| a.1 >= first_after.1)
        .map_or(0.0, |a| killed.duration_since(a.0).as_secs_f64() * 1e3);
    Kill {
        case: format!(
            "{}, `{durability}`",
            if membench {
                "membench 64 MiB, 10 MB/s"
            } else {
                "counter"
            }
        ),
        rto_ms: first_after.0.duration_since(killed).as_secs_f64() * 1e3,
        detection_ms,
        promotion_ms,
        lost,
        lost_window_ms,
        acked: before.len(),
        kept_state: if membench {
            after_kill.contains("\"len\":67108864")
        } else {
            first_after.1 > 1
        },
    }
}

/// Milliseconds to decode and restore a full snapshot of a 64 MiB
/// membench (median of `n`), in this process.
fn full_restore_ms(n: usize) -> f64 {
    use roam_runtime::abi::codec::Request;
    use roam_runtime::snapshot::codec::{self, DecodeLimits};
    use roam_runtime::{InstanceConfig, Runtime, RuntimeConfig, Workload};
    let rt = Runtime::new(RuntimeConfig {
        slots: 4,
        max_instance_memory: 128 << 20,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let module = rt
        .load_blocking(&std::fs::read(roam_tests::artifacts::MEMBENCH).unwrap())
        .unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio.block_on(async {
        let mut config = InstanceConfig::new("mb");
        config.memory_limit = 128 << 20;
        let mut w = Workload::start(&rt, &module, config.clone()).await.unwrap();
        let fill = Request {
            method: "POST".into(),
            path: "/fill".into(),
            query: "mib=64".into(),
            ..Request::default()
        };
        assert_eq!(w.http(&fill).await.unwrap().status, 200);
        let bytes = codec::encode(&w.instance_mut().capture().unwrap());
        let mut times = Vec::new();
        for _ in 0..n {
            let began = Instant::now();
            let snapshot =
                codec::decode(&bytes, Some(&module.digest()), &DecodeLimits::default()).unwrap();
            let restored = Workload::restore(&rt, &module, config.clone(), &snapshot, None)
                .await
                .unwrap();
            times.push(began.elapsed().as_secs_f64() * 1e3);
            drop(restored);
        }
        common::percentile(&mut times, 0.5)
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var("ROAM_BENCH_QUICK").is_ok();
    let rows = cost(quick);
    println!(
        "Durability under load: `wrk` POSTs through the primary host's ingress (TLS), {} s per run; membench is dirtied at 10 MB/s by another client meanwhile; checkpoint MB/s is what the standby acknowledged, as the host reports it; {} cores shared by both hosts, the scheduler and the load generators.\n",
        if quick { 3 } else { 8 },
        common::cores()
    );
    println!(
        "| workload | durability | connections | requests/s | × `none` | p50 ms | p50 − `none` ms | p99 ms | checkpoint MB/s | pages written, MB/s |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        let none = rows
            .iter()
            .find(|n| {
                n.workload == r.workload && n.connections == r.connections && n.durability == "none"
            })
            .unwrap_or(r);
        println!(
            "| {} | `{}` | {} | {:.0} | {:.2}× | {:.3} | {:+.3} | {:.3} | {:.2} | {} |",
            r.workload,
            r.durability,
            r.connections,
            r.run.rps,
            r.run.rps / none.run.rps,
            r.run.p50_ms,
            r.run.p50_ms - none.run.p50_ms,
            r.run.p99_ms,
            r.checkpoint_mb_s,
            if r.workload == "counter" {
                "—".to_string()
            } else {
                format!("{:.2}", r.dirtied_mb_s)
            },
        );
    }

    if std::env::var_os("ROAM_BENCH_CASE").is_some() {
        return;
    }
    let restore = full_restore_ms(if quick { 3 } else { 5 });
    let kills = [
        kill("none", false),
        kill("async", false),
        kill("sync", false),
        kill("none", true),
        kill("sync", true),
    ];
    println!(
        "\nKill -9 of the primary's host (`--heartbeat-timeout 2s`) under a client sending requests one after another through the scheduler's ingress; RTO is the kill to the first answer after it; detection is the kill to the scheduler's failover decision, promotion the standby's own time; a full restore of the same 64 MiB (decode + restore, median, in one process) took {restore:.1} ms in this run.\n"
    );
    println!(
        "| workload, durability | RTO ms | detection ms | promotion ms | promotion ÷ full restore | acknowledged before the kill | lost (RPO) | state kept |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for k in &kills {
        let opt = |v: Option<f64>, digits: usize| {
            v.map_or("—".to_string(), |v| format!("{v:.digits$}"))
        };
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {}{} | {} |",
            k.case,
            k.rto_ms,
            opt(k.detection_ms, 0),
            opt(k.promotion_ms, 1),
            opt(k.promotion_ms.map(|p| p / restore), 3),
            k.acked,
            if k.case.starts_with("membench") {
                "—".to_string()
            } else {
                k.lost.to_string()
            },
            if k.lost > 0 && k.kept_state {
                format!(" (acknowledged in the last {:.0} ms)", k.lost_window_ms)
            } else {
                String::new()
            },
            if k.kept_state {
                "yes"
            } else {
                "no (restarted empty)"
            },
        );
    }
}
