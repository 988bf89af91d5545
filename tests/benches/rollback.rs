//! What keeping a last good state costs a workload's requests: requests
//! per second through the driver (one at a time, as a workload serves them)
//! with no checkpoints, the `durability = none` checkpoint (a full capture
//! when idle, at most every second) and the durable one (a write-tracked
//! delta after every event), in the same run, interleaved in rounds.
//!
//! `cargo bench -p roam-tests --bench rollback` prints a markdown table
//! (`docs/BENCHMARKS.md`, "Rollback checkpoints").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "benchmark harness"
)]

use std::time::{Duration, Instant};

use roam_runtime::abi::Grants;
use roam_runtime::abi::codec::Request;
use roam_runtime::driver::{self, Checkpoints, DriverOptions, WorkloadHandle};
use roam_runtime::{InstanceConfig, Runtime, RuntimeConfig, Workload};
use roam_tests::artifacts;

const ROUNDS: usize = 9;
const REQUESTS: usize = 4000;

struct Case {
    name: &'static str,
    module: &'static str,
    setup: &'static [(&'static str, &'static str, &'static str)],
    request: (&'static str, &'static str, &'static str),
}

const CASES: &[Case] = &[
    Case {
        name: "counter (POST /a)",
        module: artifacts::COUNTER,
        setup: &[],
        request: ("POST", "/a", ""),
    },
    Case {
        name: "membench 64 MiB, 4 KiB dirtied per request",
        module: artifacts::MEMBENCH,
        setup: &[("POST", "/fill", "mib=64")],
        request: ("POST", "/dirty", "kib=4"),
    },
    Case {
        name: "membench 64 MiB, 256 KiB dirtied per request",
        module: artifacts::MEMBENCH,
        setup: &[("POST", "/fill", "mib=64")],
        request: ("POST", "/dirty", "kib=256"),
    },
];

const MODES: [(&str, Checkpoints); 3] = [
    ("off", Checkpoints::Off),
    (
        "none: full capture when idle, ≤ 1 s old",
        Checkpoints::Every(Duration::from_secs(1)),
    ),
    (
        "async/sync: delta after every event",
        Checkpoints::EachEvent,
    ),
];

fn req((method, path, query): (&str, &str, &str)) -> Request {
    Request {
        method: method.into(),
        path: path.into(),
        query: query.into(),
        ..Request::default()
    }
}

async fn start(rt: &Runtime, case: &Case, checkpoints: Checkpoints) -> WorkloadHandle {
    let module = rt
        .load_blocking(&std::fs::read(case.module).unwrap())
        .unwrap();
    let mut config = InstanceConfig::new("bench");
    config.memory_limit = 128 << 20;
    config.grants = Grants::all();
    let w = Workload::start(rt, &module, config.clone()).await.unwrap();
    let h = driver::spawn(
        rt.clone(),
        module,
        config,
        w,
        DriverOptions {
            checkpoints,
            ..DriverOptions::default()
        },
    );
    for &setup in case.setup {
        assert!(h.http(req(setup)).await.unwrap().status < 300);
    }
    h
}

/// Requests per second, one request at a time.
async fn rate(h: &WorkloadHandle, case: &Case) -> f64 {
    let began = Instant::now();
    for _ in 0..REQUESTS {
        let r = h.http(req(case.request)).await.unwrap();
        assert!(r.status < 300);
    }
    REQUESTS as f64 / began.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rt = Runtime::new(RuntimeConfig {
        slots: 8,
        max_instance_memory: 128 << 20,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("| workload | checkpoints | requests/s (median of {ROUNDS}) | ÷ off |");
    println!("|---|---|---|---|");
    for case in CASES {
        let handles: Vec<WorkloadHandle> = tokio.block_on(async {
            let mut hs = Vec::new();
            for (_, mode) in MODES {
                hs.push(start(&rt, case, mode).await);
            }
            hs
        });
        // One round unmeasured: page faults, caches, the first checkpoint.
        for h in &handles {
            tokio.block_on(rate(h, case));
        }
        let mut rates = vec![Vec::new(); MODES.len()];
        // Each round starts with another mode: where a handle comes in the
        // order changes its rate (by up to 40% on this machine), so no mode
        // keeps one place.
        for round in 0..ROUNDS {
            for k in 0..handles.len() {
                let i = (round + k) % handles.len();
                rates[i].push(tokio.block_on(rate(&handles[i], case)));
            }
        }
        let medians: Vec<f64> = rates.into_iter().map(median).collect();
        for (i, (mode, _)) in MODES.iter().enumerate() {
            println!(
                "| {} | {mode} | {:.0} | {:.2}× |",
                case.name,
                medians[i],
                medians[i] / medians[0]
            );
        }
        tokio.block_on(async {
            for h in handles {
                h.stop().await;
            }
        });
    }
}
