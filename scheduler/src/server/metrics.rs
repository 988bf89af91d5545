//! `/metrics` in the Prometheus text format (prometheus-client): hosts,
//! workloads, replicas, placements, lost replicas, failovers, heartbeats
//! (full reports and liveness datagrams), and live
//! migrations (phases, downtime, total time, bytes, rounds, outcomes).
//! Every label takes a fixed set of values (outcomes, phases, host
//! states), so the series do not grow with hosts or workloads; each
//! host's own figures are on that host's `/metrics`. `docs/metrics.md`
//! says what each one means.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use roam_proto::migration::FailoverOutcome;
use roam_proto::reply::error;
use roam_proto::{MigrationPhase, NodeStatus};

use super::Scheduler;

/// Upper bounds (seconds) of the downtime histogram's buckets.
const DOWNTIME_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Upper bounds (seconds) of the total-time histogram's buckets.
const TOTAL_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];
/// Upper bounds of the pre-copy rounds histogram's buckets.
const ROUND_BUCKETS: [f64; 8] = [1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0];

/// Every phase, the `phase` label's values.
const PHASES: [MigrationPhase; 9] = [
    MigrationPhase::Preparing,
    MigrationPhase::Precopy,
    MigrationPhase::Stopping,
    MigrationPhase::Prepared,
    MigrationPhase::Committed,
    MigrationPhase::Done,
    MigrationPhase::Failed,
    MigrationPhase::Aborted,
    MigrationPhase::Resolving,
];

type Labels = [(&'static str, &'static str); 1];

/// The scheduler's counters and histograms, registered once (each handle
/// shares its figures with the registry); gauges are read when scraped.
#[derive(Debug)]
pub(super) struct Metrics {
    downtime: Histogram,
    total: Histogram,
    bytes: Histogram,
    rounds: Histogram,
    outcomes: Family<Labels, Counter>,
    phases: Family<Labels, Counter>,
    failovers: Family<Labels, Counter>,
    /// Heartbeats taken as full reports (HTTP).
    pub(super) reports: Counter,
    /// Heartbeats taken as liveness datagrams.
    pub(super) datagrams: Counter,
    /// Datagrams dropped unanswered (not a beat, unknown id, a MAC that
    /// does not verify, a replay, or this replica does not lead).
    pub(super) datagrams_refused: Counter,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut m = Metrics {
            downtime: Histogram::new(DOWNTIME_BUCKETS),
            total: Histogram::new(TOTAL_BUCKETS),
            // 1 MiB to 16 GiB.
            bytes: Histogram::new(exponential_buckets(1048576.0, 4.0, 8)),
            rounds: Histogram::new(ROUND_BUCKETS),
            outcomes: Family::default(),
            phases: Family::default(),
            failovers: Family::default(),
            reports: Counter::default(),
            datagrams: Counter::default(),
            datagrams_refused: Counter::default(),
            registry: Registry::default(),
        };
        let r = &mut m.registry;
        r.register(
            "roam_migration_downtime_seconds",
            "Time a migrating workload did not dispatch (source frozen until handed off), of migrations done.",
            m.downtime.clone(),
        );
        r.register(
            "roam_migration_duration_seconds",
            "Time from a migration's start to its end, of migrations done.",
            m.total.clone(),
        );
        r.register(
            "roam_migration_bytes",
            "Bytes a migration sent, of migrations done.",
            m.bytes.clone(),
        );
        r.register(
            "roam_migration_rounds",
            "Pre-copy rounds of a migration, of migrations done.",
            m.rounds.clone(),
        );
        r.register(
            "roam_migrations",
            "Migrations ended, by outcome (done, failed, aborted).",
            m.outcomes.clone(),
        );
        r.register(
            "roam_migration_phases",
            "Phases migrations entered, by phase.",
            m.phases.clone(),
        );
        r.register(
            "roam_failovers",
            "Failovers, by outcome: promoted (the standby took over with the state) or restarted (without it).",
            m.failovers.clone(),
        );
        let heartbeats: Family<Labels, Counter> = Family::default();
        m.reports = heartbeats.get_or_create(&[("via", "report")]).clone();
        m.datagrams = heartbeats.get_or_create(&[("via", "datagram")]).clone();
        r.register(
            "roam_heartbeats",
            "Host heartbeats taken, by how they came: a full report (HTTP) or a liveness datagram.",
            heartbeats,
        );
        r.register(
            "roam_liveness_datagrams_refused",
            "Liveness datagrams dropped unanswered: malformed, unknown id, a MAC that does not verify, a replay, or this replica does not lead.",
            m.datagrams_refused.clone(),
        );
        // Every value of each label from the start, so a rate over a
        // series that is still zero reads 0, not nothing.
        for phase in PHASES {
            if phase.finished() {
                let _ = m.outcomes.get_or_create(&[("outcome", phase.as_str())]);
            }
            let _ = m.phases.get_or_create(&[("phase", phase.as_str())]);
        }
        for outcome in [FailoverOutcome::Promoted, FailoverOutcome::Restarted] {
            let _ = m.failovers.get_or_create(&[("outcome", outcome.as_str())]);
        }
        m
    }
}

impl Metrics {
    /// An ended migration, by its final phase.
    pub(super) fn ended(
        &self,
        phase: MigrationPhase,
        total_ms: u64,
        downtime_us: Option<u64>,
        bytes: u64,
        rounds: u32,
    ) {
        self.outcomes
            .get_or_create(&[("outcome", phase.as_str())])
            .inc();
        if phase == MigrationPhase::Done {
            self.total.observe(total_ms as f64 / 1000.0);
            self.bytes.observe(bytes as f64);
            self.rounds.observe(f64::from(rounds));
            if let Some(d) = downtime_us {
                self.downtime.observe(d as f64 / 1e6);
            }
        }
    }

    /// A migration entered `phase`.
    pub(super) fn entered(&self, phase: MigrationPhase) {
        self.phases
            .get_or_create(&[("phase", phase.as_str())])
            .inc();
    }

    /// A failover ended.
    pub(super) fn failover(&self, outcome: FailoverOutcome) {
        self.failovers
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }
}

/// What is counted by looking, when scraped.
#[derive(Debug)]
struct Gauges {
    ready: u64,
    down: u64,
    cordoned: u64,
    workloads: u64,
    instances: u64,
    placements: u64,
    lost: u64,
    in_flight: [u64; PHASES.len()],
    leader: bool,
}

impl Collector for Gauges {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(
            "roam_hosts",
            "Hosts known to the scheduler, by status.",
            None,
            MetricType::Gauge,
        )?;
        for (status, n) in [
            (NodeStatus::Ready, self.ready),
            (NodeStatus::Down, self.down),
        ] {
            let labels = [("status", status.to_string())];
            ConstGauge::new(n as i64).encode(m.encode_family(&labels)?)?;
        }
        let plain = [
            (
                "roam_hosts_cordoned",
                "Hosts cordoned (no new placements).",
                self.cordoned,
            ),
            (
                "roam_workloads",
                "Workloads in the desired state.",
                self.workloads,
            ),
            ("roam_instances", "Replicas placed.", self.instances),
            (
                "roam_scheduler_leader",
                "1 on the replica that leads, 0 on a follower.",
                u64::from(self.leader),
            ),
        ];
        for (name, help, n) in plain {
            let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(n as i64).encode(m)?;
        }
        let mut m = enc.encode_descriptor(
            "roam_migrations_in_flight",
            "Migrations not yet ended, by phase.",
            None,
            MetricType::Gauge,
        )?;
        for (phase, n) in PHASES.iter().zip(self.in_flight) {
            if !phase.finished() {
                ConstGauge::new(n as i64).encode(m.encode_family(&[("phase", phase.as_str())])?)?;
            }
        }
        for (name, help, n) in [
            (
                "roam_placements",
                "Replicas started by the reconciler.",
                self.placements,
            ),
            (
                "roam_replicas_lost",
                "Replicas lost with their host.",
                self.lost,
            ),
        ] {
            let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(n).encode(m)?;
        }
        Ok(())
    }
}

/// The shortest scrape credential taken.
const MIN_SCRAPE_CREDENTIAL: usize = 16;
/// The longest.
const MAX_SCRAPE_CREDENTIAL: usize = 4096;

/// Read the scrape credential from `path` (surrounding whitespace
/// ignored); its sha256, hex.
pub(super) fn load_scrape_credential(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use sha2::Digest as _;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the scrape credential `{}`", path.display()))?;
    anyhow::ensure!(
        meta.len() <= MAX_SCRAPE_CREDENTIAL as u64,
        "the scrape credential `{}` is over {MAX_SCRAPE_CREDENTIAL} bytes",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the scrape credential `{}`", path.display()))?;
    let token = text.trim();
    anyhow::ensure!(
        token.len() >= MIN_SCRAPE_CREDENTIAL && token.bytes().all(|b| b.is_ascii_graphic()),
        "the scrape credential `{}` must be one line of at least {MIN_SCRAPE_CREDENTIAL} printable characters, without spaces",
        path.display()
    );
    Ok(hex::encode(sha2::Sha256::digest(token.as_bytes())))
}

/// `GET /metrics`.
pub(super) async fn metrics(State(s): State<Arc<Scheduler>>) -> Response {
    let views = s.host_views();
    let ready = views.iter().filter(|v| v.alive).count() as u64;
    let cordoned = views.iter().filter(|v| v.cordoned).count() as u64;
    let instances: usize = s
        .assignments
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|h| h.len())
        .sum();
    let mut in_flight = [0u64; PHASES.len()];
    for m in s
        .migrations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
    {
        if let Some(i) = PHASES.iter().position(|p| *p == m.phase) {
            in_flight[i] += 1;
        }
    }
    let gauges = Gauges {
        ready,
        down: views.len() as u64 - ready,
        cordoned,
        workloads: s.specs().len() as u64,
        instances: instances as u64,
        placements: s.placements.load(Ordering::Relaxed),
        lost: s.host_losses.load(Ordering::Relaxed),
        in_flight,
        leader: s.leadership.leads(),
    };
    // What is counted, then what is looked at now.
    let mut gauges_registry = Registry::default();
    gauges_registry.register_collector(Box::new(gauges));
    let mut body = String::new();
    for registry in [&s.metrics.registry, &gauges_registry] {
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut body, registry) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}
