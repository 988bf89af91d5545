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
use std::sync::atomic::Ordering;

use roam_proto::Heartbeat;

mod common;
use common::fleet::{Fleet, measure_with, spawn_beats, window};
use common::thread_cpu_seconds;

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
    let (beats, stop) = spawn_beats(&http, &format!("http://{addr}"), &tokens, n).await;
    eprintln!("heartbeats: measuring a bare HTTP server with {n} hosts for 10 s");
    let figures = window(&beats, || thread_cpu_seconds(tid)).await;
    stop.store(true, Ordering::Relaxed);
    for b in beats.tasks {
        b.abort();
    }
    figures
}

/// Whether the row labelled `label` runs: every row, or those whose label
/// contains an argument that is not an option (`cargo bench --bench
/// heartbeats -- 'TLS, liveness'`).
fn selected(label: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    filters.is_empty() || filters.iter().any(|f| label.contains(f.as_str()))
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
        "| simulated hosts | joins/s | heartbeats/s taken | scheduler CPU (share of one core) | failure detection: beats stopped → `host_down` | re-placing what 100 dead hosts held |"
    );
    println!("|---|---|---|---|---|---|");
    let datagrams = Fleet {
        tls: true,
        datagrams: true,
    };
    let reports = Fleet {
        tls: true,
        datagrams: false,
    };
    // The re-placement scenario runs in plaintext: its start calls go to
    // one fake server for every host, which cannot present ten thousand
    // host certificates. Detection does not depend on the transport.
    let plaintext = Fleet {
        tls: false,
        datagrams: true,
    };
    for (label, n, workloads, fleet) in [
        (
            "1000, TLS, liveness datagrams",
            1_000usize,
            0usize,
            datagrams,
        ),
        ("10000, TLS, liveness datagrams", 10_000, 0, datagrams),
        (
            "10000, TLS, every heartbeat a full report (hosts before datagrams)",
            10_000,
            0,
            reports,
        ),
        (
            "10000, plaintext, liveness datagrams, 100 hosts stopped",
            10_000,
            20_000,
            plaintext,
        ),
    ] {
        if !selected(label) {
            continue;
        }
        let f = rt.block_on(measure_with(n, workloads, &[], 0, fleet));
        let replaced = match f.replaced {
            Some((lost, spread, after)) => format!(
                "{lost} workloads, first to last restart {spread:.2} s, last {after:.2} s after detection"
            ),
            None => "-".into(),
        };
        let detection = f.detection.map_or("-".into(), |d| {
            format!("{d:.2} s (timeout 10 s, period 1 s)")
        });
        println!(
            "| {label} | {:.0} | {:.0} | {:.1}% | {detection} | {replaced} |",
            f.joins,
            f.beats,
            f.cpu * 100.0
        );
    }
    let label = "10000, baseline: bare axum server on one thread, plaintext (parse, answer 204)";
    if !selected(label) {
        return;
    }
    let (cpu, rate) = rt.block_on(bare_server(10_000));
    println!("| {label} | - | {rate:.0} | {:.1}% | - | - |", cpu * 100.0);
}
