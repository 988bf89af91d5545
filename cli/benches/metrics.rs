//! What metrics cost on the request path: the same hello handler through
//! `roam host`'s ingress (TLS) with metrics on (the default: each request
//! counted in its workload's series and latency histogram) and with
//! `--no-metrics`, driven by `wrk` on this machine, the two measured in
//! turn in each of seven rounds; each figure is the median of its rounds,
//! and "on ÷ off" the median of each round's ratio (the two runs of a
//! round are seconds apart, so the machine's drift cancels out).
//!
//! `cargo bench -p roam --bench metrics` (`ROAM_BENCH_QUICK=1`: 3 s runs);
//! `scripts/bench metrics` puts the table in `docs/BENCHMARKS.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark reports failure by panicking"
)]

mod common;
use common::{hello_cluster, median, ready, wrk};

/// Rounds of each measurement; the median is reported.
const ROUNDS: usize = 7;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var("ROAM_BENCH_QUICK").is_ok();
    let seconds = if quick { 3 } else { 10 };
    let start = |host_args: &[&str]| {
        let (s, host, url) = hello_cluster(&[], host_args);
        let url = format!("{url}/w/hello");
        ready(&url);
        (s, host, url)
    };
    let (_on, _on_host, on) = start(&[]);
    let (_off, _off_host, off) = start(&["--no-metrics"]);
    println!(
        "Metrics on the request path: hello handler through `roam host`'s ingress (TLS), `wrk -d{seconds}s`, metrics on (default) and off (`--no-metrics`) measured in turn, median of {ROUNDS} rounds (on ÷ off: the median of each round's ratio, and the rounds' range); {} cores shared by server and load generator.\n",
        common::cores()
    );
    println!("| connections | metrics | requests/s | on ÷ off | p50 ms | p99 ms |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for connections in [1, 32] {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // Which goes first alternates, so neither always runs warmer.
            if round % 2 == 0 {
                with.push(wrk(&on, None, connections, seconds));
                without.push(wrk(&off, None, connections, seconds));
            } else {
                without.push(wrk(&off, None, connections, seconds));
                with.push(wrk(&on, None, connections, seconds));
            }
        }
        let mut ratios: Vec<f64> = with
            .iter()
            .zip(&without)
            .map(|(on, off)| on.rps / off.rps)
            .collect();
        let ratio = common::percentile(&mut ratios, 0.5);
        for (name, runs) in [("off", &without), ("on", &with)] {
            let rps = median(runs, |r| r.rps);
            let vs = if name == "on" {
                format!(
                    "{ratio:.3}× (rounds {:.3}–{:.3})",
                    ratios[0],
                    ratios[ratios.len() - 1]
                )
            } else {
                String::new()
            };
            println!(
                "| {connections} | {name} | {rps:.0} | {vs} | {:.3} | {:.3} |",
                median(runs, |r| r.p50_ms),
                median(runs, |r| r.p99_ms),
            );
        }
    }
}
