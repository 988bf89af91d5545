//! `/metrics` in the Prometheus text format: hosts, workloads, replicas,
//! placements, lost replicas, and live migrations (downtime and duration
//! histograms, outcomes).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use roam_proto::MigrationPhase;

use super::Scheduler;

/// Upper bounds (seconds) of the downtime histogram's buckets.
const DOWNTIME_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Upper bounds (seconds) of the total-time histogram's buckets.
const TOTAL_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];

/// A Prometheus histogram.
#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.counts.len() != bounds.len() {
            self.counts = vec![0; bounds.len()];
        }
        for (i, b) in bounds.iter().enumerate() {
            if value <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, name: &str, help: &str, bounds: &[f64]) -> String {
        let mut out = format!("# HELP {name} {help}\n# TYPE {name} histogram\n");
        for (i, b) in bounds.iter().enumerate() {
            let n = self.counts.get(i).copied().unwrap_or(0);
            out.push_str(&format!("{name}_bucket{{le=\"{b}\"}} {n}\n"));
        }
        out.push_str(&format!(
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}\n",
            self.count, self.sum, self.count
        ));
        out
    }
}

/// Migration figures for `/metrics`.
#[derive(Clone, Debug, Default)]
pub(super) struct MigrationMetrics {
    downtime: Histogram,
    total: Histogram,
    done: u64,
    failed: u64,
    aborted: u64,
}

impl MigrationMetrics {
    /// An ended migration, by its final phase.
    pub(super) fn ended(&mut self, phase: MigrationPhase, total_ms: u64, downtime_us: Option<u64>) {
        match phase {
            MigrationPhase::Done => {
                self.done += 1;
                self.total.observe(&TOTAL_BUCKETS, total_ms as f64 / 1000.0);
                if let Some(d) = downtime_us {
                    self.downtime.observe(&DOWNTIME_BUCKETS, d as f64 / 1e6);
                }
            }
            MigrationPhase::Aborted => self.aborted += 1,
            _ => self.failed += 1,
        }
    }

    fn render(&self) -> String {
        let mut out = self.downtime.render(
            "roam_migration_downtime_seconds",
            "Time a migrating workload did not dispatch (source frozen until handed off).",
            &DOWNTIME_BUCKETS,
        );
        out.push_str(&self.total.render(
            "roam_migration_duration_seconds",
            "Time from a migration's start to its end.",
            &TOTAL_BUCKETS,
        ));
        out.push_str(&format!(
            "# HELP roam_migrations_total Migrations ended, by outcome.\n# TYPE roam_migrations_total counter\n\
             roam_migrations_total{{outcome=\"done\"}} {}\nroam_migrations_total{{outcome=\"failed\"}} {}\nroam_migrations_total{{outcome=\"aborted\"}} {}\n",
            self.done, self.failed, self.aborted
        ));
        out
    }
}

pub(super) async fn metrics(State(s): State<Arc<Scheduler>>) -> Response {
    let views = s.host_views();
    let ready = views.iter().filter(|v| v.alive).count();
    let instances: usize = s
        .assignments
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|h| h.len())
        .sum();
    let body = format!(
        "# HELP roam_hosts Hosts known to the scheduler.\n# TYPE roam_hosts gauge\nroam_hosts{{status=\"ready\"}} {ready}\nroam_hosts{{status=\"down\"}} {}\n\
         # HELP roam_workloads Workloads in the desired state.\n# TYPE roam_workloads gauge\nroam_workloads {}\n\
         # HELP roam_instances Replicas placed.\n# TYPE roam_instances gauge\nroam_instances {instances}\n\
         # HELP roam_placements_total Replicas started by the reconciler.\n# TYPE roam_placements_total counter\nroam_placements_total {}\n\
         # HELP roam_replicas_lost_total Replicas lost with their host.\n# TYPE roam_replicas_lost_total counter\nroam_replicas_lost_total {}\n",
        views.len() - ready,
        s.specs().len(),
        s.placements.load(Ordering::Relaxed),
        s.host_losses.load(Ordering::Relaxed),
    ) + &s
        .migration_metrics
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .render();
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}
