//! The source's side of a live migration: pre-copy, the freeze, the commit
//! point, activating the target and handing off.
//!
//! State machine (see `docs/migration-protocol.md`):
//!
//! ```text
//!  send ──▶ Sending ──frozen, commit message sent──▶ Committing ──target serves──▶ Committed
//!              │  ▲                                    │  ▲  │
//!   abort ─────┘  └─ (gives up by itself)     no answer▼  │  │ (scheduler's commit)
//!              ▼                                    Prepared ─┘
//!          Cancelled ──loop stops──▶ Aborted ◀── scheduler's abort (target can no longer serve)
//! ```
//!
//! Sending the commit message is the commit point: the last part of the
//! final delta, marked [`headers::ACTIVATE`], on which the target applies
//! the final state and serves at once, answering only once it serves.
//! From then on the source never resumes by itself — only the scheduler's
//! abort resumes it, and the scheduler sends that only when the target can
//! no longer serve. Requests held while frozen go to the target as soon as
//! the commit message is on its way (the target holds them until it
//! serves, or refuses them before dispatch, and then they are held here
//! again), so the downtime clients see is one round trip. A crash of the
//! source before the commit point loses nothing the target serves (it was
//! never activated); after it, the target serves or the scheduler finds
//! out whether it does. Stop-and-copy keeps a separate activation: its
//! final state is round 0.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use roam_proto::headers::{self, Index};
use roam_proto::pages::{MAX_VERDICT, PAGE_SIZE, Verdict};
use roam_proto::reply::error;
use roam_proto::{
    CommitOutcome, Compression, MigrationDecision, MigrationOptions, MigrationProgress,
    ProgressPhase, SendMigration, SourcePhase, paths,
};
use roam_runtime::abi::codec::{Request, Response as WorkloadResponse};
use roam_runtime::driver::{DriverError, Forwarded, Forwarder, LiveMemory, WorkloadHandle};
use roam_runtime::snapshot::codec;
use roam_runtime::snapshot::{MemoryImage, Snapshot};
use tokio::sync::mpsc;

use super::PART;
use super::convergence::{Convergence, Link};
use super::error::SendError;
use super::pages::{FrameWriter, Sent, Share, timed, write_captured, write_live};
use crate::control::not_here;
use crate::daemon::Host;
use crate::fault::Fault;

/// Connections the source keeps open to the target from the start, for
/// round 0's page streams and the requests it forwards from its commit
/// message on: one opened only then would cost a round trip on the link
/// (two over TLS).
const WARM_CONNECTIONS: usize = 16;

/// How often they are used again: under the pool's idle timeout
/// (`roam_tls::CLIENT_POOL_IDLE`).
const WARM_EVERY: Duration = Duration::from_secs(2);

/// Longest pre-copy waits, once it converged, for the scheduler's order to
/// freeze (its ingress sends the workload's requests to the target from
/// then on). The workload serves meanwhile; without the order (a scheduler
/// that does not send it, or lost it) it freezes after this all the same.
const FREEZE_ORDER_WAIT: Duration = Duration::from_secs(1);

/// Open (or keep open) [`WARM_CONNECTIONS`] connections to the target:
/// as many `GET /v1/migrations/{id}` at once, in the background.
fn warm(host: &Host, id: &str, out: &Outgoing) {
    let Ok(path) = paths::migration(id) else {
        return;
    };
    let url = path.on(&out.target_url);
    let probes: Vec<_> = (0..WARM_CONNECTIONS)
        .map(|_| {
            host.http
                .get(url.clone())
                .bearer_auth(&out.key)
                .timeout(ACTIVATE_TIMEOUT)
        })
        .collect();
    tokio::spawn(futures_util::future::join_all(probes.into_iter().map(
        |probe| async move {
            // Read to the end: the connection goes back to the pool.
            if let Ok(r) = probe.send().await {
                let _ = r.bytes().await;
            }
        },
    )));
}

/// Longest the source waits for the target to take the commit.
const ACTIVATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where an outgoing migration is.
#[derive(Clone, Copy, Debug)]
enum SourceState {
    /// Pre-copying; `frozen_at` once frozen for the last delta.
    Sending { frozen_at: Option<Instant> },
    /// The scheduler's abort arrived while sending: the pre-copy loop
    /// stops at its next check, then the source serves on.
    Cancelled,
    /// Past the commit point, the target's answer not known: frozen, never
    /// resumes by itself; the scheduler decides.
    Prepared { frozen_at: Instant },
    /// The commit message (or, after a stop-and-copy, the activation) is
    /// on its way to the target; settles on `Prepared` or `Committed`.
    Committing,
    /// Handed off: microseconds from the freeze to the hand-off.
    Committed { downtime_us: Option<u64> },
    /// Gave up or aborted; serves on.
    Aborted,
}

impl SourceState {
    fn phase(self) -> SourcePhase {
        match self {
            // Still sending as far as anyone asking can tell: it gives up
            // at its next check.
            SourceState::Sending { .. } | SourceState::Cancelled => SourcePhase::Sending,
            SourceState::Prepared { .. } => SourcePhase::Prepared,
            SourceState::Committing => SourcePhase::Committing,
            SourceState::Committed { .. } => SourcePhase::Committed,
            SourceState::Aborted => SourcePhase::Aborted,
        }
    }
}

/// A migration being sent.
pub(super) struct Outgoing {
    pub(super) workload: String,
    handle: WorkloadHandle,
    /// The target host's name.
    target: String,
    /// What the source dials for the target (over TLS its identity name,
    /// so its certificate must name it: `roam_tls::transport`).
    target_url: String,
    key: String,
    /// The workload's generation on the target.
    generation: u64,
    state: Mutex<SourceState>,
    /// Woken when the state leaves `Committing`.
    settled: tokio::sync::Notify,
    /// The scheduler's order to freeze, or its abort (a permit is kept if
    /// it comes before pre-copy waits for it).
    freeze_order: tokio::sync::Notify,
}

impl Outgoing {
    pub(super) fn phase(&self) -> SourcePhase {
        self.state().phase()
    }

    fn state(&self) -> SourceState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, state: SourceState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
        self.settled.notify_waiters();
    }

    /// Still under way (not ended either way).
    fn active(&self) -> bool {
        matches!(
            self.phase(),
            SourcePhase::Sending | SourcePhase::Prepared | SourcePhase::Committing
        )
    }

    /// Run `f` on the state once no activation of the target is under way,
    /// so a commit or an abort from the scheduler acts on its outcome.
    async fn when_settled<R>(&self, mut f: impl FnMut(&mut SourceState) -> R) -> R {
        loop {
            // Registered before the check: a wake-up in between is kept.
            let settled = self.settled.notified();
            {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if !matches!(*state, SourceState::Committing) {
                    return f(&mut state);
                }
            }
            settled.await;
        }
    }

    fn check(&self, progress: &mpsc::Sender<MigrationProgress>) -> Result<(), SendError> {
        if matches!(self.state(), SourceState::Cancelled) {
            Err(SendError::Aborted)
        } else if progress.is_closed() {
            Err(SendError::SchedulerGone)
        } else {
            Ok(())
        }
    }

    fn frozen_now(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let SourceState::Sending { frozen_at } = &mut *state {
            *frozen_at = Some(Instant::now());
        }
    }
}

/// How long a new migration waits for a cancelled one of the same workload
/// to stop.
const CANCELLED_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `POST /v1/migrations/{id}/send` (scheduler): stream the workload to the
/// target; the answer is the progress lines.
pub(super) async fn send(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
    Json(req): Json<SendMigration>,
) -> Response {
    let handle = match host.workloads.lock().await.get(&req.workload) {
        Some(r) => r.handle.clone(),
        None => return not_here(&req.workload),
    };
    let target_url = match host.peer_base(&req.target, &req.target_url) {
        Ok(u) => u,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let out = Arc::new(Outgoing {
        workload: req.workload.clone(),
        handle,
        target: req.target.clone(),
        target_url,
        key: req.key.clone(),
        generation: req.generation,
        state: Mutex::new(SourceState::Sending { frozen_at: None }),
        settled: tokio::sync::Notify::new(),
        freeze_order: tokio::sync::Notify::new(),
    });
    // A migration of it that the scheduler aborted while it was sending
    // stops at its next check: a new one waits for that (a scheduler that
    // restarted aborts the old one and may start another at once).
    let waiting_until = std::time::Instant::now() + CANCELLED_WAIT;
    loop {
        let cancelled = {
            let mut outgoing = host
                .migrations
                .outgoing
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            outgoing.retain(|_, o| o.workload != req.workload || o.active());
            match outgoing.values().find(|o| o.workload == req.workload) {
                None => {
                    outgoing.insert(id.clone(), out.clone());
                    break;
                }
                Some(o) => matches!(o.state(), SourceState::Cancelled),
            }
        };
        if !cancelled || std::time::Instant::now() >= waiting_until {
            return error(
                StatusCode::CONFLICT,
                format!("`{}` is already migrating", req.workload),
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (tx, rx) = mpsc::channel::<MigrationProgress>(64);
    tokio::spawn(run_source(host, id, out, req, tx));
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let p = rx.recv().await?;
        let mut line = serde_json::to_vec(&p).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), rx))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

async fn run_source(
    host: Arc<Host>,
    id: String,
    out: Arc<Outgoing>,
    req: SendMigration,
    progress: mpsc::Sender<MigrationProgress>,
) {
    let mut report = MigrationProgress::default();
    let mut result = precopy(&host, &id, &out, &req.options, &progress, &mut report).await;
    let mut frozen = Instant::now();
    if let Ok(end) = &result {
        // Under the lock an abort also takes: past the commit point, or
        // aborted, not both.
        let mut state = out.state.lock().unwrap_or_else(|e| e.into_inner());
        match *state {
            SourceState::Sending { frozen_at } => {
                let frozen_at = frozen_at.unwrap_or(frozen);
                frozen = frozen_at;
                *state = match end {
                    Some(_) => SourceState::Committing,
                    None => SourceState::Prepared { frozen_at },
                };
            }
            _ => result = Err(SendError::Aborted),
        }
    }
    match result {
        Ok(end) => {
            report.phase = ProgressPhase::Prepared;
            tracing::info!(migration = %id, workload = %out.workload, rounds = report.round, bytes = report.bytes_sent, "migration past its commit point; holding requests");
            let _ = progress.send(report.clone()).await;
            match end {
                Some(last) => commit(&host, &id, &out, (last, frozen), report, &progress).await,
                None => activate_target(&host, &id, &out, report, &progress).await,
            }
        }
        Err(e) => {
            tracing::warn!(migration = %id, workload = %out.workload, error = %e, "migration failed; serving on");
            out.handle.resume().await;
            out.set(SourceState::Aborted);
            host.migrations
                .outgoing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            if let Ok(path) = paths::migration(&id) {
                let _ = host
                    .http
                    .delete(path.on(&out.target_url))
                    .bearer_auth(&out.key)
                    .send()
                    .await;
            }
            report.phase = ProgressPhase::Failed;
            report.error = Some(e.to_string());
            let _ = progress.send(report).await;
        }
    }
}

/// The final delta of a live migration, captured frozen and not sent yet:
/// it goes as the commit message.
struct FinalDelta {
    bytes: Vec<u8>,
    compress: bool,
}

/// The pre-copy loop; on success the source is frozen, and either holds
/// the final delta (`Some`) or, after a stop-and-copy, the target holds
/// the final state (`None`).
async fn precopy(
    host: &Host,
    id: &str,
    out: &Outgoing,
    options: &MigrationOptions,
    progress: &mpsc::Sender<MigrationProgress>,
    report: &mut MigrationProgress,
) -> Result<Option<FinalDelta>, SendError> {
    if !options.stop_and_copy && crate::fault::fail_precopy() {
        return Err(SendError::Workload(
            "live migration failed on purpose (ROAM_FAULT_FAIL_PRECOPY)".into(),
        ));
    }
    // Connections to the target, open by the time the page streams (which
    // take one each) and the commit's forwarded requests need them.
    warm(host, id, out);
    let mut warmed = Instant::now();
    let mut last_capture = Instant::now();
    // Round 0 reads the pages from the live memory while the workload runs
    // (the kernel tracks what it writes meanwhile). Where it cannot, and for
    // stop-and-copy, the memory is copied first into buffers faulted in
    // beforehand, so the workload pauses only for a memcpy.
    let live = if options.stop_and_copy {
        None
    } else {
        out.handle
            .capture_live()
            .await
            .inspect_err(|e| tracing::debug!(migration = %id, error = %e, "no live copy; copying the memory first"))
            .ok()
    };
    let (full, live) = match live {
        Some((state, memory)) => (state, Some(memory)),
        None => {
            let size = out
                .handle
                .memory_size()
                .await
                .map_err(SendError::Workload)?;
            let buffers = tokio::task::spawn_blocking(move || MemoryImage::prefaulted(size))
                .await
                .map_err(|e| SendError::Workload(e.to_string()))?;
            tracing::debug!(migration = %id, bytes = size, populate_ms = last_capture.elapsed().as_secs_f64() * 1e3, "capture buffer ready");
            if options.stop_and_copy {
                report.phase = ProgressPhase::Stopping;
                out.frozen_now();
                let all = out
                    .handle
                    .freeze_full(buffers)
                    .await
                    .map_err(SendError::Workload)?;
                let sent = send_full(host, id, out, all, None, true, options).await?;
                report.last_round_bytes = sent.bytes;
                report.bytes_sent = sent.bytes;
                report.wire_bytes = sent.wire;
                return out.check(progress).map(|()| None);
            }
            last_capture = Instant::now();
            let full = out
                .handle
                .capture_full(buffers)
                .await
                .map_err(SendError::Workload)?;
            (full, None)
        }
    };
    let captured = last_capture.elapsed();
    let sent = send_full(host, id, out, full, live, false, options).await?;
    report.last_round_bytes = sent.bytes;
    report.wire_bytes += sent.wire;
    // Deltas are compressed where round 0's pages ended compressed.
    let compress = match options.compression {
        Compression::Auto => sent.compressing,
        Compression::Never => false,
        Compression::Always => true,
    };
    let round0 = last_capture.elapsed().saturating_sub(captured);
    tracing::info!(migration = %id, bytes = report.last_round_bytes, wire = sent.wire, capture_ms = captured.as_secs_f64() * 1e3, send_ms = round0.as_secs_f64() * 1e3, "round 0 (full) sent");
    // What the link moves, as round 0 measured it (its round trips
    // included: a rate on the low side), and the shortest request so far:
    // the convergence rule weighs each delta's transfer against a round
    // trip.
    let rate = sent.wire as f64 / round0.as_secs_f64().max(1e-6);
    let mut round_trip = sent.round_trip;
    report.bytes_sent += report.last_round_bytes;
    let _ = progress.send(report.clone()).await;
    let mut convergence = Convergence::new(
        report.last_round_bytes,
        options.max_rounds,
        options.max_final_bytes,
    );
    loop {
        out.check(progress)?;
        if warmed.elapsed() >= WARM_EVERY {
            warmed = Instant::now();
            warm(host, id, out);
        }
        let now = Instant::now();
        let delta = out
            .handle
            .capture_delta()
            .await
            .map_err(SendError::Workload)?;
        let elapsed = now.duration_since(last_capture).as_secs_f64().max(1e-6);
        last_capture = now;
        report.dirty_rate = (delta.pages * PAGE_SIZE as u64) as f64 / elapsed;
        report.round += 1;
        report.last_round_bytes = delta.bytes.len() as u64;
        let (wire, shortest) =
            send_round(host, id, out, report.round, delta.bytes, false, compress).await?;
        round_trip = round_trip.min(shortest);
        let link = Link {
            transfer: Duration::from_secs_f64(wire as f64 / rate.max(1.0)),
            round_trip,
        };
        let stop = convergence.after_round(report.last_round_bytes, link);
        report.wire_bytes += wire;
        report.bytes_sent += report.last_round_bytes;
        let _ = progress.send(report.clone()).await;
        if let Some(why) = stop {
            tracing::debug!(migration = %id, round = report.round, ?why, "pre-copy stops");
            break;
        }
    }
    out.check(progress)?;
    // The scheduler, told, sends the workload's requests to the target
    // (which holds them until it serves) and then orders the freeze: the
    // requests it sent here before arrive first and are served here, and
    // those held at the target need no round trip through this host after
    // the commit. The workload serves until the order comes.
    report.phase = ProgressPhase::Stopping;
    let _ = progress.send(report.clone()).await;
    let asked = Instant::now();
    let ordered = tokio::time::timeout(FREEZE_ORDER_WAIT, out.freeze_order.notified())
        .await
        .is_ok();
    tracing::debug!(migration = %id, ordered, waited_ms = asked.elapsed().as_secs_f64() * 1e3, "freezing");
    out.check(progress)?;
    out.frozen_now();
    let last = out.handle.freeze().await.map_err(SendError::Workload)?;
    report.round += 1;
    report.last_round_bytes = last.bytes.len() as u64;
    out.check(progress)?;
    Ok(Some(FinalDelta {
        bytes: last.bytes,
        compress,
    }))
}

/// `POST /v1/migrations/{id}/freeze` (scheduler): pre-copy converged and
/// the ingress now sends the workload's requests to the target; freeze
/// (at once if pre-copy waits for it, or as soon as it does).
pub(super) fn freeze_ordered(out: &Outgoing) {
    out.freeze_order.notify_one();
}

/// Where a part goes.
#[derive(Clone, Copy)]
struct Part {
    round: u32,
    part: usize,
    parts: usize,
    /// Of the final round.
    last: bool,
    /// The commit message: the final round's last part, on which the
    /// target serves.
    commit: bool,
}

impl Part {
    fn index(&self) -> Index {
        Index {
            index: self.part as u32,
            count: self.parts as u32,
        }
    }
}

/// Send round 0: the snapshot without its pages (small: globals, tables,
/// host state, memory size) in checked parts, then the pages over page
/// streams (`pages.rs`) — from `live` memory, else from the capture's
/// buffer — which the target reads straight into the reserved instance:
/// no encoding, joining or decoding of the bulk, no round trip between
/// frames. Returns the bytes sent.
async fn send_full(
    host: &Host,
    id: &str,
    out: &Outgoing,
    mut full: Snapshot,
    live: Option<LiveMemory>,
    last: bool,
    options: &MigrationOptions,
) -> Result<RoundBytes, SendError> {
    let (pages, data) = match full.memories.first_mut() {
        Some(m) => (std::mem::take(&mut m.pages), std::mem::take(&mut m.data)),
        None => (Vec::new(), Vec::new()),
    };
    let state = Bytes::from(codec::encode(&full));
    let state_parts = state.len().div_ceil(PART).max(1);
    let streamed = !full.memories.is_empty();
    let parts = state_parts + usize::from(streamed);
    let head = Part {
        round: 0,
        part: 0,
        parts,
        last,
        commit: false,
    };
    let mut sent = RoundBytes {
        bytes: state.len() as u64,
        wire: state.len() as u64,
        compressing: false,
        round_trip: Duration::MAX,
    };
    for i in 0..state_parts {
        let piece = state.slice(i * PART..((i + 1) * PART).min(state.len()));
        let part = Part { part: i, ..head };
        let (_, took) = send_part(host, id, out, &part, piece, state.len(), false).await?;
        sent.round_trip = sent.round_trip.min(took);
    }
    if streamed {
        let part = Part {
            part: state_parts,
            ..head
        };
        let began = Instant::now();
        let source = match live {
            Some(memory) => PageSource::Live(memory),
            None => PageSource::Captured(pages, data),
        };
        let pages = send_pages(
            host,
            id,
            out,
            &part,
            source,
            (options.page_streams, options.compression),
        )
        .await?;
        sent.bytes += pages.pages * PAGE_SIZE as u64;
        sent.wire += pages.wire;
        sent.compressing = pages.compressing;
        tracing::debug!(migration = %id, bytes = pages.pages * PAGE_SIZE as u64, wire = pages.wire, stream_ms = began.elapsed().as_secs_f64() * 1e3, "pages sent");
    }
    Ok(sent)
}

/// What a round moved: bytes of state and pages, and bytes on the wire for
/// them (fewer where pages were compressed).
#[derive(Clone, Copy, Debug)]
struct RoundBytes {
    bytes: u64,
    wire: u64,
    /// The page streams ended compressing (the link is the bottleneck).
    compressing: bool,
    /// The shortest request of the round (at least a round trip).
    round_trip: Duration,
}

/// Where round 0's pages come from.
enum PageSource {
    /// Copied at the capture: page indices, their bytes in order.
    Captured(Vec<u64>, Vec<u8>),
    /// Read from the running workload's memory (given back to the driver
    /// once every stream is done with it).
    Live(LiveMemory),
}

/// Stream round 0's pages to the target as its last part, over `streams`
/// connections at once, and wait for every verdict. Returns what they sent.
async fn send_pages(
    host: &Host,
    id: &str,
    out: &Outgoing,
    at: &Part,
    source: PageSource,
    (streams, mode): (u32, Compression),
) -> Result<Sent, SendError> {
    let streams = streams.clamp(1, roam_proto::MAX_PAGE_STREAMS);
    // At most this many bytes of pages (zero pages are not sent).
    let most = match &source {
        PageSource::Captured(_, data) => data.len(),
        PageSource::Live(memory) => memory.len(),
    };
    let url = paths::migration_step(id, paths::MigrationStep::Pages)
        .map_err(|e| SendError::Task(e.to_string()))?
        .on(&out.target_url);
    let source = Arc::new(source);
    let mut sending = tokio::task::JoinSet::new();
    for index in 0..streams {
        let mut request = host
            .http
            .post(&url)
            .bearer_auth(&out.key)
            .header(axum::http::header::CONNECTION, "upgrade")
            .header(axum::http::header::UPGRADE, headers::PAGES_UPGRADE)
            .header(headers::PART, at.index().to_string())
            .header(headers::TOTAL, most.to_string())
            .header(
                headers::STREAM,
                Index {
                    index,
                    count: streams,
                }
                .to_string(),
            );
        if at.last {
            request = request.header(headers::FINAL, "1");
        }
        sending.spawn(send_stream(request, source.clone(), index, streams, mode));
    }
    let mut pages = Sent::default();
    while let Some(sent) = sending.join_next().await {
        match sent {
            Ok(Ok(n)) => pages += n,
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(SendError::Task(e.to_string())),
        }
    }
    Ok(pages)
}

/// One page stream: its share of the pages, the end frame, the target's
/// verdict. Returns what it sent.
async fn send_stream(
    request: reqwest::RequestBuilder,
    source: Arc<PageSource>,
    index: u32,
    streams: u32,
    mode: Compression,
) -> Result<Sent, SendError> {
    use tokio::io::AsyncReadExt;
    let setup = Instant::now();
    let r = request.send().await.map_err(|e| SendError::Unreachable {
        round: 0,
        error: crate::identity::chain(&e),
    })?;
    if r.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = r.status();
        return Err(SendError::Refused {
            round: 0,
            status,
            body: roam_tls::answer::error_text(r).await,
        });
    }
    let mut io = r
        .upgrade()
        .await
        .map_err(|e| SendError::NoUpgrade(e.to_string()))?;
    let share = Share {
        index: u64::from(index),
        streams: u64::from(streams),
    };
    let mut frames = FrameWriter::new(&mut io, setup.elapsed(), mode);
    let written = match &*source {
        PageSource::Captured(pages, data) => write_captured(&mut frames, pages, data, share).await,
        PageSource::Live(memory) => write_live(&mut frames, memory, share).await,
    };
    drop(source);
    let written = match written {
        Ok(_) => frames.end().await,
        Err(e) => Err(e),
    };
    // The verdict says why, also when writing failed because the target
    // gave up first.
    let mut verdict = Vec::new();
    let read = timed(
        "reading the verdict",
        (&mut io).take(MAX_VERDICT).read_to_end(&mut verdict),
    )
    .await;
    match Verdict::parse(&String::from_utf8_lossy(&verdict)) {
        Some(Verdict::Ok) => written,
        Some(Verdict::Refused(reason)) => Err(SendError::PagesRefused(reason)),
        None => Err(match (written, read) {
            (Err(e), _) => e,
            (Ok(_), Err(e)) => SendError::PageStream(e),
            (Ok(_), Ok(_)) => SendError::NoVerdict,
        }),
    }
}

/// Send one round's encoded snapshot in checked parts; the target applies
/// it when the last arrives. With `commit` it is the final round, and its
/// last part the commit message: the target serves on it. With `compress`,
/// each part that shrinks by a tenth goes compressed. Returns the bytes on
/// the wire, and the shortest part's request.
async fn send_round(
    host: &Host,
    id: &str,
    out: &Outgoing,
    round: u32,
    bytes: Vec<u8>,
    commit: bool,
    compress: bool,
) -> Result<(u64, Duration), SendError> {
    let bytes = Bytes::from(bytes);
    let total = bytes.len();
    let parts = total.div_ceil(PART).max(1);
    let mut wire = 0;
    let mut shortest = Duration::MAX;
    for part in 0..parts {
        let chunk = bytes.slice(part * PART..((part + 1) * PART).min(total));
        let at = Part {
            round,
            part,
            parts,
            last: commit,
            commit: commit && part + 1 == parts,
        };
        let (sent, took) = send_part(host, id, out, &at, chunk, total, compress).await?;
        wire += sent;
        shortest = shortest.min(took);
    }
    Ok((wire, shortest))
}

/// Parts shorter than this go as they are.
const COMPRESS_PARTS_FROM: usize = 16 << 10;

/// Send one part (`body`, a piece of a round of `total` bytes), compressed
/// with `compress` when that shrinks it by a tenth; the checksum is of the
/// part itself. Returns the bytes of the body sent, and how long the
/// request took (at least a round trip).
async fn send_part(
    host: &Host,
    id: &str,
    out: &Outgoing,
    at: &Part,
    body: Bytes,
    total: usize,
    compress: bool,
) -> Result<(u64, Duration), SendError> {
    // Not before the final delta: the source is frozen, past its commit
    // point, and a test acting "after the commit point" means after the
    // commit message left.
    if at.part == 0 && !(at.last && at.round > 0) {
        Fault::Round.pause().await;
    }
    let round = at.round;
    let url = paths::migration_round(id, round)
        .map_err(|e| SendError::Unreachable {
            round,
            error: e.to_string(),
        })?
        .on(&out.target_url);
    let checksum = xxhash_rust::xxh3::xxh3_64(&body);
    let mut request = host
        .http
        .put(url)
        .bearer_auth(&out.key)
        .header(headers::PART, at.index().to_string())
        .header(headers::CHECKSUM, format!("{checksum:016x}"))
        .header(headers::TOTAL, total.to_string());
    if at.last {
        request = request.header(headers::FINAL, "1");
    }
    if at.commit {
        // The target answers once it serves: its activation's time, and
        // the body's at no less than 1 MiB/s.
        let body_time = Duration::from_secs(body.len() as u64 >> 20);
        request = request
            .header(headers::ACTIVATE, "1")
            .timeout(ACTIVATE_TIMEOUT + body_time);
    }
    let mut body = body;
    if compress && body.len() >= COMPRESS_PARTS_FROM {
        let plain = body.clone();
        let packed = tokio::task::spawn_blocking(move || zstd::bulk::compress(&plain, 1))
            .await
            .map_err(|e| SendError::Task(e.to_string()))?;
        if let Ok(packed) = packed
            && packed.len() < body.len() / 10 * 9
        {
            body = Bytes::from(packed);
            request = request.header(axum::http::header::CONTENT_ENCODING, headers::ZSTD_ENCODING);
        }
    }
    let sent = body.len() as u64;
    if at.commit {
        tracing::debug!(bytes = total, wire = sent, "sending the commit message");
    }
    let began = Instant::now();
    let r = request
        .body(body)
        .send()
        .await
        .map_err(|e| SendError::Unreachable {
            round,
            error: crate::identity::chain(&e),
        })?;
    if !r.status().is_success() {
        let status = r.status();
        return Err(SendError::Refused {
            round,
            status,
            body: roam_tls::answer::error_text(r).await,
        });
    }
    Ok((sent, began.elapsed()))
}

/// After the hand-off: what reaches the old copy goes to the new host.
fn forwarder(
    host: &Arc<Host>,
    id: &str,
    out: &Outgoing,
    target: &str,
    generation: u64,
) -> Forwarder {
    let http = host.http.clone();
    let target = target.to_string();
    let workload = out.workload.clone();
    let key = out.key.clone();
    let messages = paths::migration_step(id, paths::MigrationStep::Messages)
        .map(|p| p.on(&target))
        .ok();
    Arc::new(move |event: Forwarded| {
        let (http, target, workload, key, messages) = (
            http.clone(),
            target.clone(),
            workload.clone(),
            key.clone(),
            messages.clone(),
        );
        tokio::spawn(async move {
            match event {
                Forwarded::Http(request, reply) => {
                    let result =
                        match forward_http(&http, &target, &workload, generation, request).await {
                            Ok(Delivery::Answered(r) | Delivery::NotDispatched(r)) => Ok(r),
                            Ok(Delivery::NotSent(e)) | Err(e) => {
                                Err(DriverError::Unavailable(workload.clone(), e))
                            }
                        };
                    let _ = reply.send(result);
                }
                Forwarded::Message(from, id, body, reply) => {
                    let result = match messages {
                        None => Err("the migration id cannot name a path".to_string()),
                        Some(url) => match http
                            .post(url)
                            .query(&roam_proto::FromQuery {
                                from,
                                stream: id.stream,
                                seq: id.seq,
                            })
                            .bearer_auth(&key)
                            .body(body)
                            .send()
                            .await
                        {
                            Ok(r) if r.status().is_success() => Ok(()),
                            Ok(r) => Err(format!("the new host answered {}", r.status())),
                            Err(e) => Err(format!("the new host is unreachable: {e}")),
                        },
                    };
                    let _ = reply.send(result.map_err(|e| DriverError::Unavailable(workload, e)));
                }
            }
        });
    })
}

/// What the new host did with a forwarded request.
enum Delivery {
    /// The workload's answer, or an error after dispatch.
    Answered(WorkloadResponse),
    /// A refusal before the workload saw it
    /// ([`headers::NOT_DISPATCHED`]): it was not applied.
    NotDispatched(WorkloadResponse),
    /// The connection was refused: it was not sent.
    NotSent(String),
}

/// Send `request` to `workload` on `target` at `generation`. An error is a
/// request whose fate is not known (sent, no answer).
async fn forward_http(
    http: &reqwest::Client,
    target: &str,
    workload: &str,
    generation: u64,
    request: Request,
) -> Result<Delivery, String> {
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| format!("method `{}` cannot be forwarded", request.method))?;
    let mut rest = request.path.clone();
    if !request.query.is_empty() {
        rest.push('?');
        rest.push_str(&request.query);
    }
    let url = paths::ingress(workload, &rest)
        .map_err(|e| e.to_string())?
        .on(target);
    tracing::debug!(%workload, generation, "forwarding a held request to the new host");
    let mut builder = http.request(method, url).body(request.body);
    for (k, v) in &request.headers {
        if k != "host" && k != "content-length" && !headers::is_roam_header(k) {
            builder = builder.header(k.as_str(), v.as_str());
        }
    }
    let r = match builder
        .header(headers::GENERATION, generation.to_string())
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            return Ok(Delivery::NotSent(format!(
                "the new host is unreachable: {e}"
            )));
        }
        Err(e) => return Err(format!("the new host is unreachable: {e}")),
    };
    let dispatched = !r.headers().contains_key(headers::NOT_DISPATCHED);
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .filter(|(k, _)| *k != "content-length" && *k != "transfer-encoding" && *k != "date")
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let body = roam_tls::answer::bytes(r, roam_proto::MAX_HTTP_BODY)
        .await
        .map_err(|e| format!("the new host's answer: {e}"))?;
    let response = WorkloadResponse {
        status,
        headers,
        body,
    };
    Ok(if dispatched {
        Delivery::Answered(response)
    } else {
        Delivery::NotDispatched(response)
    })
}

/// While the commit message is on its way: requests go to the target
/// ahead of its answer (it holds them until it serves). One it refuses
/// before dispatch, or that cannot reach it, comes back to the source's
/// driver, held again: served if the migration is aborted, forwarded after
/// the hand-off.
fn forwarder_ahead(host: &Host, out: &Outgoing) -> Forwarder {
    let http = host.http.clone();
    let target = out.target_url.clone();
    let workload = out.workload.clone();
    let generation = out.generation;
    let handle = out.handle.clone();
    Arc::new(move |event: Forwarded| {
        let (http, target, workload, handle) = (
            http.clone(),
            target.clone(),
            workload.clone(),
            handle.clone(),
        );
        tokio::spawn(async move {
            let Forwarded::Http(request, reply) = event else {
                // Messages wait for the hand-off.
                handle.give_back(event).await;
                return;
            };
            let copy = request.clone();
            let began = Instant::now();
            let delivered = forward_http(&http, &target, &workload, generation, request).await;
            tracing::debug!(%workload, ms = began.elapsed().as_secs_f64() * 1e3, answered = matches!(delivered, Ok(Delivery::Answered(_))), "request forwarded ahead of the commit");
            match delivered {
                Ok(Delivery::Answered(r)) => {
                    let _ = reply.send(Ok(r));
                }
                Ok(Delivery::NotDispatched(_) | Delivery::NotSent(_)) => {
                    handle.give_back(Forwarded::Http(copy, reply)).await;
                }
                Err(e) => {
                    let _ = reply.send(Err(DriverError::Unavailable(workload, e)));
                }
            }
        });
    })
}

/// Past the commit point of a live migration: send the final delta as the
/// commit message, the held requests on their way to the target
/// meanwhile; once the target answers that it serves, hand off. Without
/// that answer the source stays frozen (`Prepared`) and the scheduler
/// decides.
async fn commit(
    host: &Arc<Host>,
    id: &str,
    out: &Arc<Outgoing>,
    (last, frozen_at): (FinalDelta, Instant),
    mut report: MigrationProgress,
    progress: &mpsc::Sender<MigrationProgress>,
) {
    out.handle.forward_ahead(forwarder_ahead(host, out)).await;
    let round = report.round;
    let sent = send_round(host, id, out, round, last.bytes, true, last.compress).await;
    let taken = sent.map(|(wire, _)| {
        report.wire_bytes += wire;
        report.bytes_sent += report.last_round_bytes;
    });
    settle(
        host,
        id,
        out,
        frozen_at,
        taken.map_err(|e| e.to_string()),
        report,
        progress,
    )
    .await;
}

/// The target's answer to the commit: on success hand off and report
/// `committed` with the downtime; otherwise stay frozen (`Prepared`) and
/// report the error, for the scheduler to decide.
async fn settle(
    host: &Arc<Host>,
    id: &str,
    out: &Arc<Outgoing>,
    frozen_at: Instant,
    taken: Result<(), String>,
    mut report: MigrationProgress,
    progress: &mpsc::Sender<MigrationProgress>,
) {
    match taken {
        Ok(()) => {
            let downtime_us = Some(frozen_at.elapsed().as_micros() as u64);
            out.set(SourceState::Committed { downtime_us });
            hand_off(host, id, out, out.generation, &out.target_url, downtime_us).await;
            report.phase = ProgressPhase::Committed;
            report.downtime_us = downtime_us;
        }
        Err(e) => {
            out.set(SourceState::Prepared { frozen_at });
            tracing::warn!(migration = %id, error = %e, "the target did not take the commit; the scheduler decides");
            report.error = Some(format!("the target did not take the commit: {e}"));
        }
    }
    let _ = progress.send(report).await;
}

/// After a stop-and-copy the source is prepared (the target acknowledged
/// round 0, the final state) and never resumes by itself. It activates the
/// target itself and hands off, without a round trip through the
/// scheduler (which learns it from the `committed` progress line). If the
/// target does not take it, the source stays prepared and the scheduler
/// decides.
async fn activate_target(
    host: &Arc<Host>,
    id: &str,
    out: &Arc<Outgoing>,
    report: MigrationProgress,
    progress: &mpsc::Sender<MigrationProgress>,
) {
    let frozen_at = {
        let mut state = out.state.lock().unwrap_or_else(|e| e.into_inner());
        let SourceState::Prepared { frozen_at } = *state else {
            // The scheduler decided first.
            return;
        };
        *state = SourceState::Committing;
        frozen_at
    };
    let activated = match paths::migration_step(id, paths::MigrationStep::Activate) {
        Err(e) => Err(e.to_string()),
        Ok(path) => match host
            .http
            .post(path.on(&out.target_url))
            .bearer_auth(&out.key)
            .timeout(ACTIVATE_TIMEOUT)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => {
                let status = r.status();
                Err(format!(
                    "{status}: {}",
                    roam_tls::answer::error_text(r).await
                ))
            }
            Err(e) => Err(format!("unreachable: {e}")),
        },
    };
    settle(host, id, out, frozen_at, activated, report, progress).await;
}

/// From the commit on this host never serves the workload: requests routed
/// here are refused as stale, those it held go to the target.
async fn hand_off(
    host: &Arc<Host>,
    id: &str,
    out: &Arc<Outgoing>,
    generation: u64,
    target: &str,
    downtime: Option<u64>,
) {
    host.migrations.moved_away(&out.workload, target);
    {
        let mut workloads = host.workloads.lock().await;
        if workloads
            .get(&out.workload)
            .is_some_and(|r| r.handle.same(&out.handle))
        {
            workloads.remove(&out.workload);
        }
    }
    host.bus.unregister(&out.workload);
    out.handle
        .handoff(forwarder(host, id, out, &out.target_url, generation))
        .await;
    // The driver forwards until the last handle to it is gone: drop ours.
    host.migrations.record_committed(id, downtime);
    host.migrations
        .outgoing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id);
    tracing::info!(migration = %id, workload = %out.workload, downtime_us = ?downtime, "migration committed: handed off");
}

/// The scheduler's commit, on the source (it may have handed off already).
pub(super) async fn commit_outgoing(
    host: &Arc<Host>,
    id: &str,
    out: Arc<Outgoing>,
    decision: &MigrationDecision,
) -> Response {
    let decided = out
        .when_settled(|state| match *state {
            SourceState::Committed { downtime_us } => Ok((false, downtime_us)),
            SourceState::Prepared { frozen_at } => {
                let downtime_us = Some(frozen_at.elapsed().as_micros() as u64);
                *state = SourceState::Committed { downtime_us };
                Ok((true, downtime_us))
            }
            other => Err(other.phase()),
        })
        .await;
    let downtime = match decided {
        Ok((false, downtime)) => downtime,
        Ok((true, downtime)) => {
            out.settled.notify_waiters();
            let target = if decision.target_url.is_empty() {
                out.target_url.clone()
            } else {
                match host.peer_base(&out.target, &decision.target_url) {
                    Ok(u) => u,
                    Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
                }
            };
            hand_off(host, id, &out, decision.generation, &target, downtime).await;
            downtime
        }
        Err(phase) => {
            return error(
                StatusCode::CONFLICT,
                format!("migration `{id}` is {phase:?}, not prepared"),
            );
        }
    };
    Json(CommitOutcome {
        downtime_us: downtime,
    })
    .into_response()
}

/// What the scheduler's abort did on the source.
pub(super) enum SourceAbort {
    /// Committed (or committing): it cannot be aborted.
    Refused,
    /// The pre-copy stops at its next check, or already had.
    Stopping,
    /// It was prepared: it serves again, at `generation` if that is set.
    Resumed,
}

/// The scheduler's abort, on the source. The scheduler sends it after the
/// commit point only once the target can no longer serve.
pub(super) async fn abort_outgoing(
    host: &Arc<Host>,
    id: &str,
    out: Arc<Outgoing>,
    generation: u64,
) -> SourceAbort {
    let before = out
        .when_settled(|state| {
            let before = *state;
            match before {
                SourceState::Sending { .. } => *state = SourceState::Cancelled,
                SourceState::Prepared { .. } => *state = SourceState::Aborted,
                _ => {}
            }
            before
        })
        .await;
    // Pre-copy waiting for the order to freeze stops waiting.
    out.freeze_order.notify_one();
    match before {
        SourceState::Committing | SourceState::Committed { .. } => SourceAbort::Refused,
        SourceState::Sending { .. } | SourceState::Cancelled | SourceState::Aborted => {
            SourceAbort::Stopping
        }
        SourceState::Prepared { .. } => {
            if generation > 0
                && let Some(r) = host.workloads.lock().await.get_mut(&out.workload)
            {
                r.status.generation = generation;
            }
            out.handle.resume().await;
            host.migrations
                .outgoing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
            tracing::info!(migration = %id, workload = %out.workload, "migration aborted: serving on");
            SourceAbort::Resumed
        }
    }
}
