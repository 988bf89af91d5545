//! The host's `/metrics` (the Prometheus text format, behind the cluster's
//! scrape credential, `access.rs`): each workload's requests, latency,
//! failures, memory and checkpoint age, and the host's own figures
//! (instances, standbys, slots, memory, checkpoints sent). `docs/metrics.md`
//! says what each one means.
//!
//! Cardinality is bounded however many instances run here: at most
//! `--metrics-workloads` workloads (default 1,000) have series of their
//! own, taken in the order they start here and given back when they leave;
//! the figures of any more are summed under `workload="_other"`, a name no
//! workload can have (names are DNS labels). One workload has 28 series
//! (5 request counters, a histogram of 14 buckets, 4 failure counters,
//! memory, checkpoint age), so a host exports at most ~28,000 of them plus
//! a handful of its own.
//!
//! The request path pays two atomic additions and one histogram
//! observation; everything else is read when scraped, from what the
//! drivers keep anyway ([`roam_runtime::driver::WorkloadStats`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use roam_proto::reply::error;
use roam_runtime::driver::WorkloadStats;

use crate::daemon::Host;

/// Upper bounds (seconds) of the request latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The label value of the workloads past the cap, summed.
pub const OTHER: &str = "_other";

/// Status classes, the `code` label of the request counter.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Request figures of one workload, or of every workload past the cap.
#[derive(Debug)]
pub(crate) struct Series {
    by_class: [AtomicU64; 5],
    latency: Histogram,
}

impl Series {
    fn new() -> Series {
        Series {
            by_class: Default::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
        }
    }

    /// One request answered with `status` after `took`.
    pub(crate) fn request(&self, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(took.as_secs_f64());
    }
}

/// The host's metrics: how many workloads have series of their own, the
/// series of the rest, and counters of what is not a workload's.
#[derive(Debug)]
pub(crate) struct Metrics {
    on: bool,
    limit: usize,
    labelled: AtomicUsize,
    other: Arc<Series>,
    checkpoints: AtomicU64,
    checkpoint_bytes: AtomicU64,
    checkpoint_failures: AtomicU64,
}

/// A workload's place in the metrics, held with it while it runs here:
/// series of its own, or the shared `_other`; dropped, it frees its place.
#[derive(Debug)]
pub(crate) struct Tracking {
    metrics: Arc<Metrics>,
    series: Option<Arc<Series>>,
    labelled: bool,
}

impl Tracking {
    /// A stand-in counting into the same series that holds no place: it
    /// stays with a copy being replaced in place (an upgrade) while the
    /// place itself moves to the new copy.
    pub(crate) fn stand_in(&self) -> Tracking {
        Tracking {
            metrics: self.metrics.clone(),
            series: self.series.clone(),
            labelled: false,
        }
    }

    /// Where its requests are counted (`None`: metrics are off).
    pub(crate) fn series(&self) -> Option<&Arc<Series>> {
        self.series.as_ref()
    }

    /// Whether it has series of its own.
    pub(crate) fn labelled(&self) -> bool {
        self.labelled
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        if self.labelled {
            self.metrics.labelled.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Metrics {
    /// `on`: whether anything is recorded (`--no-metrics` turns it off);
    /// `limit`: workloads with series of their own.
    pub(crate) fn new(on: bool, limit: usize) -> Arc<Metrics> {
        Arc::new(Metrics {
            on,
            limit,
            labelled: AtomicUsize::new(0),
            other: Arc::new(Series::new()),
            checkpoints: AtomicU64::new(0),
            checkpoint_bytes: AtomicU64::new(0),
            checkpoint_failures: AtomicU64::new(0),
        })
    }

    /// A place for a workload that starts here.
    pub(crate) fn track(self: &Arc<Self>) -> Tracking {
        if !self.on {
            return Tracking {
                metrics: self.clone(),
                series: None,
                labelled: false,
            };
        }
        let labelled = self
            .labelled
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok();
        let series = if labelled {
            Arc::new(Series::new())
        } else {
            self.other.clone()
        };
        Tracking {
            metrics: self.clone(),
            series: Some(series),
            labelled,
        }
    }

    /// A checkpoint of `bytes` taken by a standby (`None`: it was refused,
    /// or did not arrive).
    pub(crate) fn checkpoint(&self, bytes: Option<u64>) {
        match bytes {
            Some(b) => {
                self.checkpoints.fetch_add(1, Ordering::Relaxed);
                self.checkpoint_bytes.fetch_add(b, Ordering::Relaxed);
            }
            None => {
                self.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One workload's figures (or the sum of those past the cap), as scraped.
#[derive(Debug)]
struct Row {
    name: String,
    series: Arc<Series>,
    failures: [u64; 4],
    memory: u64,
    checkpoint_age_ms: Option<u64>,
}

impl Row {
    fn add(&mut self, stats: &WorkloadStats) {
        for (sum, n) in self.failures.iter_mut().zip(failures(stats)) {
            *sum += n;
        }
        self.memory += stats.memory();
    }
}

fn failures(stats: &WorkloadStats) -> [u64; 4] {
    [
        stats.cpu_budget_stops(),
        stats.memory_limit_hits(),
        stats.traps(),
        stats.abi_violations(),
    ]
}

/// The `kind` label of the failure counter, in [`failures`]' order.
const FAILURE_KINDS: [&str; 4] = ["cpu_budget", "memory_limit", "trap", "abi"];

/// Everything `/metrics` shows, read at once.
#[derive(Debug)]
struct Scrape {
    rows: Vec<Row>,
    instances: u64,
    standbys: u64,
    slots: u64,
    reserved: u64,
    capacity: u64,
    checkpoints: u64,
    checkpoint_bytes: u64,
    checkpoint_failures: u64,
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(host): State<Arc<Host>>) -> Response {
    if !host.metrics.on {
        return error(
            StatusCode::NOT_FOUND,
            "metrics are off on this host (roam host --no-metrics)",
        );
    }
    let (reserved, _) = host.statuses().await;
    let standbys = host.standbys.lock().await.len() as u64;
    let mut rows = Vec::new();
    let mut other = Row {
        name: OTHER.to_string(),
        series: host.metrics.other.clone(),
        failures: [0; 4],
        memory: 0,
        checkpoint_age_ms: None,
    };
    let instances = {
        let workloads = host.workloads.lock().await;
        for (name, running) in workloads.iter() {
            let stats = running.handle.stats();
            match running.tracking.series() {
                Some(series) if running.tracking.labelled() => rows.push(Row {
                    name: name.clone(),
                    series: series.clone(),
                    failures: failures(&stats),
                    memory: stats.memory(),
                    checkpoint_age_ms: host.link_of(name).1,
                }),
                _ => other.add(&stats),
            }
        }
        workloads.len() as u64
    };
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    rows.push(other);
    let m = &host.metrics;
    let scrape = Scrape {
        rows,
        instances,
        standbys,
        slots: u64::from(host.config.slots),
        reserved,
        capacity: host.config.capacity_memory,
        checkpoints: m.checkpoints.load(Ordering::Relaxed),
        checkpoint_bytes: m.checkpoint_bytes.load(Ordering::Relaxed),
        checkpoint_failures: m.checkpoint_failures.load(Ordering::Relaxed),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut body, &registry) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
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

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(m)
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(m)
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = enc.encode_descriptor(
            "roam_workload_requests",
            "Requests a workload answered through this host's ingress, by status class.",
            None,
            MetricType::Counter,
        )?;
        for row in &self.rows {
            for (class, n) in CLASSES.iter().zip(&row.series.by_class) {
                let labels = [("workload", row.name.as_str()), ("code", *class)];
                ConstCounter::new(n.load(Ordering::Relaxed)).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "roam_workload_request_duration_seconds",
            "Time from a request's dispatch to the workload to its answer, on this host.",
            None,
            MetricType::Histogram,
        )?;
        for row in &self.rows {
            let labels = [("workload", row.name.as_str())];
            row.series.latency.encode(m.encode_family(&labels)?)?;
        }
        let mut m = enc.encode_descriptor(
            "roam_workload_failures",
            "Calls into a workload that failed, by kind: CPU budget used up, memory over its cap, trap, ABI broken.",
            None,
            MetricType::Counter,
        )?;
        for row in &self.rows {
            for (kind, n) in FAILURE_KINDS.iter().zip(row.failures) {
                let labels = [("workload", row.name.as_str()), ("kind", *kind)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "roam_workload_memory_bytes",
            "A workload's linear memory after its last event.",
            None,
            MetricType::Gauge,
        )?;
        for row in &self.rows {
            let labels = [("workload", row.name.as_str())];
            ConstGauge::new(i64::try_from(row.memory).unwrap_or(i64::MAX))
                .encode(m.encode_family(&labels)?)?;
        }
        let mut m = enc.encode_descriptor(
            "roam_workload_checkpoint_age_seconds",
            "Time since a workload's standby last took a checkpoint (workloads with a standby).",
            None,
            MetricType::Gauge,
        )?;
        for row in &self.rows {
            if let Some(ms) = row.checkpoint_age_ms {
                let labels = [("workload", row.name.as_str())];
                ConstGauge::new(ms as f64 / 1000.0).encode(m.encode_family(&labels)?)?;
            }
        }
        gauge(
            &mut enc,
            "roam_host_instances",
            "Workload instances running on this host.",
            self.instances,
        )?;
        gauge(
            &mut enc,
            "roam_host_standbys",
            "Standbys kept on this host.",
            self.standbys,
        )?;
        gauge(
            &mut enc,
            "roam_host_slots",
            "Instance slots of this host (--slots).",
            self.slots,
        )?;
        gauge(
            &mut enc,
            "roam_host_slots_used",
            "Slots taken by instances and standbys.",
            self.instances + self.standbys,
        )?;
        gauge(
            &mut enc,
            "roam_host_memory_capacity_bytes",
            "Memory this host offers workloads (--capacity-memory).",
            self.capacity,
        )?;
        gauge(
            &mut enc,
            "roam_host_memory_reserved_bytes",
            "Memory reserved by the instances and standbys here (each its workload's memory limit).",
            self.reserved,
        )?;
        gauge(
            &mut enc,
            "roam_host_memory_used_bytes",
            "Linear memory of the instances here, summed.",
            self.rows.iter().map(|r| r.memory).sum(),
        )?;
        gauge(
            &mut enc,
            "roam_host_labelled_workloads",
            "Workloads with series of their own (the rest are summed as workload=\"_other\").",
            self.rows.len().saturating_sub(1) as u64,
        )?;
        counter(
            &mut enc,
            "roam_host_checkpoints",
            "Checkpoints of workloads here taken by their standbys.",
            self.checkpoints,
        )?;
        counter(
            &mut enc,
            "roam_host_checkpoint_bytes",
            "Bytes of those checkpoints.",
            self.checkpoint_bytes,
        )?;
        counter(
            &mut enc,
            "roam_host_checkpoint_failures",
            "Checkpoints a standby refused or did not receive.",
            self.checkpoint_failures,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_cap_workloads_share_other_and_a_place_comes_back_when_one_leaves() {
        let m = Metrics::new(true, 2);
        let a = m.track();
        let b = m.track();
        let c = m.track();
        assert!(a.labelled() && b.labelled() && !c.labelled());
        assert!(Arc::ptr_eq(c.series().unwrap(), &m.other));
        drop(a);
        let d = m.track();
        assert!(d.labelled(), "a's place is free again");
        assert!(!m.track().labelled());
    }

    #[test]
    fn off_records_nothing() {
        let m = Metrics::new(false, 10);
        assert!(m.track().series().is_none());
    }

    #[test]
    fn a_status_is_counted_in_its_class_and_nonsense_in_the_nearest() {
        let s = Series::new();
        for status in [200, 204, 404, 503, 0, 999] {
            s.request(status, Duration::from_millis(1));
        }
        let counts: Vec<u64> = s
            .by_class
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [1, 2, 0, 1, 2]);
    }
}
