//! The scheduler's decisions at fleet scale, in one process and on one
//! core: `cargo bench -p roam-scheduler --bench fleet`.
//!
//! For N hosts spread over 300 sites, 20 providers and three jurisdictions
//! it measures (1) one placement decision against all N hosts (p50/p99;
//! `placement::best`, what the reconciler calls),
//! (2) a reconcile round that places N workloads from nothing (label
//! selectors, some with 3 replicas spread across sites), as placements per
//! second, and (3) the round that re-places every workload of 100 hosts that
//! died at once. The HTTP side (heartbeats, start calls) is not in here.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark reports failure by panicking"
)]

use std::time::{Duration, Instant};

use roam_scheduler::placement::{self, HostView, PlacementRequest};
use roam_scheduler::reconcile::{self, Command, Desired, Replica};
use roam_scheduler::selector::Selector;

const JURISDICTIONS: [&str; 3] = ["EU", "US", "APAC"];

fn hosts(n: usize) -> Vec<HostView> {
    (0..n)
        .map(|i| {
            let site = i % 300;
            HostView {
                id: format!("host-{i:05}"),
                labels: std::sync::Arc::new(
                    [
                        ("site".to_string(), format!("site-{site:03}")),
                        ("provider".to_string(), format!("p{}", site % 20)),
                        (
                            "jurisdiction".to_string(),
                            JURISDICTIONS[site % 3].to_string(),
                        ),
                        ("arch".to_string(), "x86_64".to_string()),
                    ]
                    .into(),
                ),
                alive: true,
                cordoned: false,
                memory_total: 64 << 30,
                memory_used: 0,
                slots_total: 1000,
                slots_used: 0,
            }
        })
        .collect()
}

fn workloads(n: usize) -> Vec<Desired> {
    (0..n)
        .map(|i| {
            let (selector, replicas, spread) = match i % 4 {
                0 => ("jurisdiction=EU", 1, None),
                1 => ("jurisdiction in (EU,US),provider!=p3", 1, None),
                2 => ("", 3, Some("site".to_string())),
                _ => ("jurisdiction=APAC,arch=x86_64", 1, None),
            };
            Desired {
                name: format!("w-{i:05}"),
                replicas,
                selector: Selector::parse(selector).unwrap(),
                memory: 64 << 20,
                spread_by: spread,
            }
        })
        .collect()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!(
        "| hosts | one decision p50 / p99 | baseline: ranking every host, p50 | placing N workloads from nothing | re-placing the workloads of 100 dead hosts |"
    );
    println!("|---|---|---|---|---|");
    for n in [1_000usize, 10_000] {
        let hosts = hosts(n);
        let specs = workloads(n);

        let (mut decisions, mut ranking) = (Vec::new(), Vec::new());
        for spec in specs.iter().take(1000) {
            let request = PlacementRequest {
                workload: spec.name.clone(),
                selector: spec.selector.clone(),
                memory: spec.memory,
                spread_by: spec.spread_by.clone(),
                placed_on: Vec::new(),
            };
            let t = Instant::now();
            let placed = placement::best(&request, &hosts);
            decisions.push(t.elapsed());
            assert!(placed.is_some());
            // Baseline: rank every host, with a reason for each rejected one.
            let t = Instant::now();
            let ranked = placement::place(&request, &hosts);
            ranking.push(t.elapsed());
            assert!(!ranked.ranked.is_empty());
        }
        let p50 = percentile(&mut decisions, 0.5);
        let p99 = percentile(&mut decisions, 0.99);
        let base50 = percentile(&mut ranking, 0.5);

        let t = Instant::now();
        let plan = reconcile::reconcile(&specs, &[], &hosts);
        let place_time = t.elapsed();
        let running: Vec<Replica> = plan
            .commands
            .iter()
            .filter_map(|c| match c {
                Command::Start { workload, host } => Some(Replica {
                    workload: workload.clone(),
                    host: host.clone(),
                }),
                Command::Stop { .. } | Command::Move { .. } => None,
            })
            .collect();
        let placed = running.len();

        let mut after = hosts.clone();
        for h in after.iter_mut().take(100) {
            h.alive = false;
        }
        let lost = running
            .iter()
            .filter(|r| after.iter().any(|h| h.id == r.host && !h.alive))
            .count();
        let t = Instant::now();
        let replan = reconcile::reconcile(&specs, &running, &after);
        let replace_time = t.elapsed();
        let restarted = replan
            .commands
            .iter()
            .filter(|c| matches!(c, Command::Start { .. }))
            .count();
        assert_eq!(restarted, lost, "every lost replica is placed again");
        println!(
            "| {n} | {:.1} / {:.1} µs | {:.1} µs ({:.0}× slower) | {placed} placements in {:.2} s = {:.0}/s | {lost} replicas in {:.2} s |",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            base50.as_secs_f64() * 1e6,
            base50.as_secs_f64() / p50.as_secs_f64(),
            place_time.as_secs_f64(),
            placed as f64 / place_time.as_secs_f64(),
            replace_time.as_secs_f64(),
        );
    }
}
