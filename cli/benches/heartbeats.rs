//! Heartbeat ingest at fleet scale: `cargo bench -p roam --bench heartbeats`.
//!
//! Starts a real `roam scheduler` process, joins N simulated hosts (300
//! sites, one join token per site) over loopback, lets each heartbeat once a
//! second with the real protocol, and reads the scheduler's CPU time from
//! `/proc/PID/stat` over a 10 s window: the share of one core that N hosts'
//! heartbeats cost. At 10,000 hosts it then deploys 20,000 workloads that
//! may run on 200 of them, stops the heartbeats of 100 of those at once and
//! times the restarts of what they held (first to last). The simulated
//! hosts, and one HTTP server answering the scheduler's start calls for all
//! of them, run in this process. Baseline in the same run: the same 10,000
//! hosts' heartbeats answered by a bare axum server on one thread of this
//! process (parse, answer 204) — the floor of one HTTP request per beat.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark reports failure by panicking"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use roam_proto::{Capacity, Heartbeat, JoinRequest, TokenRequest, TokenResponse};

mod common;
use common::{Scheduler, cpu_seconds, thread_cpu_seconds};

/// Start and stop calls the scheduler made on the simulated hosts:
/// (host index, workload, when).
type Calls = Arc<std::sync::Mutex<Vec<(usize, String, Instant)>>>;

/// One HTTP server for every simulated host: `/h/{host}/v1/instances/{w}`.
async fn fake_hosts() -> (String, Calls) {
    use axum::extract::{Path, State};
    let calls: Calls = Arc::default();
    let app = axum::Router::new()
        .route(
            "/h/{host}/v1/instances/{workload}",
            axum::routing::put(
                |State(calls): State<Calls>, Path((host, workload)): Path<(usize, String)>| async move {
                    calls.lock().unwrap().push((host, workload, Instant::now()));
                    axum::http::StatusCode::CREATED
                },
            )
            .delete(|| async { axum::http::StatusCode::OK }),
        )
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

/// Pool label of simulated host `i`: the first 200 hosts take the
/// re-placement scenario's workloads.
fn pool(i: usize) -> &'static str {
    match i {
        0..100 => "p0",
        100..200 => "p1",
        _ => "none",
    }
}

struct Figures {
    joins: f64,
    beats: f64,
    cpu: f64,
    /// (workloads lost with 100 hosts, seconds from the first restart to the
    /// last, seconds from the heartbeat timeout to the last restart).
    replaced: Option<(usize, f64, f64)>,
}

async fn measure(n: usize, workloads: usize, workers: Option<usize>) -> Figures {
    let (hosts_url, calls) = fake_hosts().await;
    let workers = workers.map(|w| format!("--workers={w}"));
    // Plaintext: the fake hosts heartbeat with join tokens, not with ten
    // thousand host certificates.
    let mut args = vec![
        "--heartbeat",
        "1s",
        "--heartbeat-timeout",
        "10s",
        "--insecure-plaintext",
    ];
    args.extend(workers.as_deref());
    let scheduler = Scheduler::start(&args);
    let (url, admin, pid) = (
        scheduler.url.clone(),
        scheduler.admin.clone(),
        scheduler.proc.pid(),
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let mut tokens = Vec::new();
    for site in 0..300 {
        let labels = [
            ("site".to_string(), format!("site-{site:03}")),
            ("provider".to_string(), format!("p{}", site % 20)),
            (
                "jurisdiction".to_string(),
                ["EU", "US", "APAC"][site % 3].to_string(),
            ),
        ]
        .into();
        let t: TokenResponse = http
            .post(format!("{url}/v1/tokens"))
            .bearer_auth(&admin)
            .json(&TokenRequest {
                labels,
                ..TokenRequest::default()
            })
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(t.token);
    }
    let tokens = Arc::new(tokens);
    // Join everyone, 64 at a time.
    let joined = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (http, url, tokens, sem, hosts_url) = (
            http.clone(),
            url.clone(),
            tokens.clone(),
            sem.clone(),
            hosts_url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let r = http
                .post(format!("{url}/v1/hosts/join"))
                .bearer_auth(&tokens[i % 300])
                .json(&JoinRequest {
                    engine_kind: String::new(),
                    name: format!("host-{i:05}"),
                    url: format!("{hosts_url}/h/{i}"),
                    labels: [("pool".to_string(), pool(i).to_string())].into(),
                    capacity: Capacity {
                        memory: 64 << 30,
                        slots: 1000,
                    },
                    arch: "x86_64".into(),
                    engine: "bench".into(),
                    ..JoinRequest::default()
                })
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "join: {}", r.status());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let join_rate = n as f64 / joined.elapsed().as_secs_f64();
    let (beats, stop) = spawn_beats(&http, &url, &tokens, n);
    eprintln!("heartbeats: measuring {n} hosts for 10 s (scheduler pid {pid})");
    let (cpu, rate) = window(&beats, || cpu_seconds(pid)).await;
    let beats = beats.tasks;
    let mut replaced = None;
    if workloads > 0 {
        // Deploy workloads that may run on the 200 pool hosts, wait until all
        // run, stop the heartbeats of the 100 `p0` hosts at once, and time the
        // restarts of everything they held.
        let module = std::fs::read(roam_tests::artifacts::COUNTER).unwrap();
        let m: roam_proto::ModuleRef = http
            .put(format!("{url}/v1/modules"))
            .bearer_auth(&admin)
            .body(module)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sem = Arc::new(tokio::sync::Semaphore::new(32));
        let mut deploys = Vec::new();
        for w in 0..workloads {
            let (http, url, admin, digest, sem) = (
                http.clone(),
                url.clone(),
                admin.clone(),
                m.digest.clone(),
                sem.clone(),
            );
            deploys.push(tokio::spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let spec = roam_proto::WorkloadSpec {
                    name: format!("w-{w:05}"),
                    digest,
                    replicas: 1,
                    selector: "pool in (p0,p1)".into(),
                    memory: 1 << 20,
                    ..roam_proto::WorkloadSpec::default()
                };
                let r = http
                    .post(format!("{url}/v1/workloads"))
                    .bearer_auth(&admin)
                    .json(&spec)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "deploy: {}", r.status());
            }));
        }
        for d in deploys {
            d.await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        while calls.lock().unwrap().len() < workloads {
            assert!(Instant::now() < deadline, "workloads were not all placed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let lost: std::collections::BTreeSet<String> = calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(h, _, _)| *h < 100)
            .map(|(_, w, _)| w.clone())
            .collect();
        let killed_at = Instant::now();
        for b in beats.iter().take(100) {
            b.abort();
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let times: Vec<Instant> = calls
                .lock()
                .unwrap()
                .iter()
                .filter(|(h, w, t)| *h >= 100 && *t > killed_at && lost.contains(w))
                .map(|(_, _, t)| *t)
                .collect();
            if times.len() >= lost.len() {
                let first = times.iter().min().copied().unwrap_or(killed_at);
                let last = times.iter().max().copied().unwrap_or(killed_at);
                // The scheduler declares a host down 10 s (the timeout)
                // after its last heartbeat, which came at most 1 s before
                // the kill: detection is at kill + 9..10 s.
                let detected = killed_at + Duration::from_secs(10);
                replaced = Some((
                    lost.len(),
                    last.duration_since(first).as_secs_f64(),
                    last.saturating_duration_since(detected).as_secs_f64(),
                ));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "lost workloads were not re-placed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for b in beats {
        b.abort();
    }
    drop(scheduler);
    Figures {
        joins: join_rate,
        beats: rate,
        cpu,
        replaced,
    }
}

/// The simulated hosts' heartbeat tasks and how many beats were answered
/// with a success.
struct Beats {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    sent: Arc<AtomicU64>,
}

/// Every host heartbeats once a second, spread evenly over the second, with
/// the real request (path, join token, JSON body). Setting the flag returned
/// stops them.
fn spawn_beats(
    http: &reqwest::Client,
    url: &str,
    tokens: &Arc<Vec<String>>,
    n: usize,
) -> (Beats, Arc<std::sync::atomic::AtomicBool>) {
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (http, url, tokens, sent, stop) = (
            http.clone(),
            url.to_string(),
            tokens.clone(),
            sent.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let offset = Duration::from_micros((i as u64 * 1_000_000) / n as u64);
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + offset,
                Duration::from_secs(1),
            );
            let beat = Heartbeat {
                capacity: Capacity {
                    memory: 64 << 30,
                    slots: 1000,
                },
                arch: "x86_64".into(),
                engine: "bench".into(),
                memory_used: 0,
                instances: Vec::new(),
                standbys: Vec::new(),
            };
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Ok(r) = http
                    .post(format!("{url}/v1/hosts/host-{i:05}/heartbeat"))
                    .bearer_auth(&tokens[i % tokens.len()])
                    .json(&beat)
                    .send()
                    .await
                    && r.status().is_success()
                {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    (Beats { tasks, sent }, stop)
}

/// Let the rate settle for 3 s, then measure 10 s: (share of one core that
/// `cpu` grew by, heartbeats answered per second).
async fn window(beats: &Beats, cpu: impl Fn() -> f64) -> (f64, f64) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu0, beats0, t0) = (cpu(), beats.sent.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    (
        (cpu() - cpu0) / elapsed,
        (beats.sent.load(Ordering::Relaxed) - beats0) as f64 / elapsed,
    )
}

/// The floor under the scheduler's figure: the same heartbeats, over the
/// same HTTP stack (axum, hyper, tokio, serde_json), answered by a server
/// that only parses the body and answers 204 — no token check, no host
/// table — on one thread of this process. Returns (share of one core,
/// heartbeats per second).
async fn bare_server(n: usize) -> (f64, f64) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/v1/hosts/{name}/heartbeat",
                axum::routing::post(|axum::Json(_): axum::Json<Heartbeat>| async {
                    axum::http::StatusCode::NO_CONTENT
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            tx.send((listener.local_addr().unwrap(), tid)).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    let (addr, tid) = rx.recv().unwrap();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let tokens = Arc::new(vec!["bench".to_string()]);
    let (beats, stop) = spawn_beats(&http, &format!("http://{addr}"), &tokens, n);
    eprintln!("heartbeats: measuring a bare HTTP server with {n} hosts for 10 s");
    let figures = window(&beats, || thread_cpu_seconds(tid)).await;
    stop.store(true, Ordering::Relaxed);
    for b in beats.tasks {
        b.abort();
    }
    figures
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| simulated hosts | joins/s | heartbeats/s received | scheduler CPU (share of one core) | re-placing what 100 dead hosts held |"
    );
    println!("|---|---|---|---|---|");
    for (n, workloads, workers) in [
        (1_000usize, 0usize, None),
        (10_000, 20_000, None),
        (10_000, 0, Some(1)),
    ] {
        let f = rt.block_on(measure(n, workloads, workers));
        let label = match workers {
            Some(w) => format!("{n}, `--workers {w}`"),
            None => n.to_string(),
        };
        let replaced = match f.replaced {
            Some((lost, spread, after)) => format!(
                "{lost} workloads, first to last restart {spread:.2} s, last {after:.2} s after the timeout"
            ),
            None => "-".into(),
        };
        println!(
            "| {label} | {:.0} | {:.0} | {:.1}% | {replaced} |",
            f.joins,
            f.beats,
            f.cpu * 100.0
        );
    }
    let (cpu, rate) = rt.block_on(bare_server(10_000));
    println!(
        "| 10000, baseline: bare axum server on one thread (parse, answer 204) | - | {rate:.0} | {:.1}% | - |",
        cpu * 100.0
    );
}
