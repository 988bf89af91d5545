//! Live migration on a host: the source's pre-copy loop and the target's
//! receiving end.
//!
//! The scheduler drives both ends (see `ARCHITECTURE.md`, "Live
//! migration"):
//! 1. `POST /v1/migrations/{id}/prepare` on the target: fetch and compile
//!    the module, reserve an instance slot, remember the migration's key.
//! 2. `POST /v1/migrations/{id}/send` on the source: a full capture (its
//!    state as `PUT /v1/migrations/{id}/rounds/0`, its pages over
//!    `page_streams` upgraded `POST .../pages` streams of checksummed
//!    frames, see [`receive_pages`]), then rounds of dirty pages as `PUT
//!    /v1/migrations/{id}/rounds/{n}` (authenticated with the key, each part
//!    with its length bounded and an xxh3 checksum); then the source freezes
//!    (holds new requests and messages), sends the last delta, and answers
//!    `prepared` once the target applied it.
//! 3. `POST .../commit` on the target (it starts serving at the new
//!    generation) and then on the source (it hands what it held, and what
//!    still reaches it, to the target and drops its copy); or `.../abort` on
//!    both (the target drops what it received, the source serves on).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post, put};
use roam_proto::{
    CommitOutcome, MigrationDecision, MigrationOptions, MigrationProgress, MigrationStatus,
    MigrationStatusQuery, PrepareMigration, SendMigration, StartInstance,
};
use tokio::sync::mpsc;

use super::{Agent, error};
use crate::abi::HostInfo;
use crate::abi::codec::{Request, Response};
use crate::driver::{DriverError, Forwarded, Forwarder, LiveMemory, WorkloadHandle};
use crate::instance::Instance;
use crate::module::{Digest, Module};
use crate::snapshot::codec::{self, DecodeLimits};
use crate::snapshot::{MemoryImage, Snapshot};
use crate::workload::Workload;

/// Largest part of a round sent in one request.
const PART: usize = 16 << 20;
/// Room for host state (key-value data, inbox, timers) beyond the memory cap.
const STATE_OVERHEAD: u64 = 64 << 20;
/// A delta must shrink by at least this share to count as converging.
const CONVERGE: f64 = 0.9;
/// Rounds without converging before the source stops pre-copying.
const STALLED_ROUNDS: u32 = 3;
/// A received migration nobody commits or aborts for this long is dropped
/// (its slot freed); a forwarding key is kept this long after the commit.
const STALE: std::time::Duration = std::time::Duration::from_secs(600);

/// What a host knows of the migrations it takes part in.
#[derive(Default)]
pub(super) struct Migrations {
    /// As target: migrations being received, by id.
    incoming: tokio::sync::Mutex<HashMap<String, Incoming>>,
    /// As source: migrations being sent, by id.
    outgoing: Mutex<HashMap<String, Arc<Outgoing>>>,
    /// As source: workloads that moved away → target URL.
    moved: Mutex<HashMap<String, String>>,
    /// As target: keys of committed migrations, for messages the source
    /// forwards (id → (workload, key)).
    forwarding: Mutex<HashMap<String, (String, String, Instant)>>,
    /// As source: committed migrations → downtime, for a repeated commit.
    committed: Mutex<HashMap<String, (Option<u64>, Instant)>>,
    /// As target: held while a received workload is activated.
    activating: tokio::sync::Mutex<()>,
}

impl Migrations {
    /// Where `workload` went, if it moved away from this host.
    pub(super) fn moved_to(&self, workload: &str) -> Option<String> {
        self.moved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(workload)
            .cloned()
    }

    /// `workload` runs here (again): it is no longer "moved away".
    pub(super) fn arrived(&self, workload: &str) {
        self.moved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(workload);
    }

    /// The downtime a committed outgoing migration recorded, if it was
    /// committed here.
    fn committed_before(&self, id: &str) -> Option<Option<u64>> {
        self.committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|(d, _)| *d)
    }

    /// As target: `id` was committed here (the workload serves here).
    fn activated(&self, id: &str) -> bool {
        self.forwarding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    fn outgoing(&self, id: &str) -> Option<Arc<Outgoing>> {
        self.outgoing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }
}

struct Incoming {
    workload: String,
    key: String,
    spec: StartInstance,
    module: Module,
    /// Reserved at prepare; holds the state received so far.
    instance: Instance,
    source: HostInfo,
    /// Next round expected, and the parts of it received so far.
    round: u32,
    part: u32,
    buffer: Vec<u8>,
    /// This round's snapshot was applied.
    applied: bool,
    /// The final round was applied.
    ready: bool,
    /// Round 0's page streams, while they arrive.
    intake: Option<Intake>,
    /// Last prepare or round.
    touched: Instant,
}

impl Incoming {
    /// Round 0's page streams, while they arrive.
    fn intake(&mut self) -> Result<&mut Intake, String> {
        self.intake
            .as_mut()
            .ok_or_else(|| "the migration's page streams ended".to_string())
    }
}

/// Round 0's page streams as they arrive (see [`receive_pages`]).
struct Intake {
    /// Streams announced; bit `i` of `opened` is set once stream `i`
    /// connected; streams that ended with every frame checked.
    streams: u32,
    opened: u32,
    ended: u32,
    /// Bytes of pages landed, by all streams, of at most `total`.
    landed: u64,
    total: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutPhase {
    Sending,
    /// Frozen; the target holds the final state: the commit point.
    Prepared,
    /// Activating the target (see [`activate_target`]); settles back to
    /// `Prepared` or on to `Committed`.
    Committing,
    Committed,
    Aborted,
}

/// Phase, when the workload froze, downtime once handed off.
type OutState = (OutPhase, Option<Instant>, Option<u64>);

struct Outgoing {
    workload: String,
    handle: WorkloadHandle,
    target_url: String,
    key: String,
    /// The workload's generation on the target.
    generation: u64,
    cancelled: AtomicBool,
    state: Mutex<OutState>,
    /// Woken when the phase leaves `Committing`.
    settled: tokio::sync::Notify,
}

impl Outgoing {
    fn phase(&self) -> OutPhase {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn set_phase(&self, phase: OutPhase) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 = phase;
        self.settled.notify_waiters();
    }

    /// Run `f` on the state once no activation of the target is under way,
    /// so a commit or an abort from the scheduler acts on its outcome.
    async fn when_settled<R>(&self, mut f: impl FnMut(&mut OutState) -> R) -> R {
        loop {
            // Registered before the check: a wake-up in between is kept.
            let settled = self.settled.notified();
            {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if state.0 != OutPhase::Committing {
                    return f(&mut state);
                }
            }
            settled.await;
        }
    }
}

/// Routes the scheduler calls (behind the host secret).
pub(super) fn control_routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/v1/migrations/{id}/prepare", post(prepare))
        .route("/v1/migrations/{id}/send", post(send))
        .route("/v1/migrations/{id}/commit", post(commit))
        .route("/v1/migrations/{id}/abort", post(abort))
        .route("/v1/migrations/{id}/status", get(status))
}

/// Routes the source calls on the target (behind the migration's key).
pub(super) fn stream_routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/v1/migrations/{id}/rounds/{round}", put(receive_round))
        .layer(axum::extract::DefaultBodyLimit::max(PART + 4096))
        .route("/v1/migrations/{id}/pages", post(receive_pages))
        .route("/v1/migrations/{id}/messages", post(forwarded_message))
        .route("/v1/migrations/{id}/activate", post(activate))
        .route("/v1/migrations/{id}", axum::routing::delete(source_abort))
}

// ---------------------------------------------------------------- target --

async fn prepare(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Json(req): Json<PrepareMigration>,
) -> HttpResponse {
    if agent.workloads.lock().await.contains_key(&req.workload) {
        return error(
            StatusCode::CONFLICT,
            format!("`{}` already runs on this host", req.workload),
        );
    }
    let Some(digest) = Digest::parse(&req.instance.digest) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("`{}` is not a sha256 digest", req.instance.digest),
        );
    };
    if req.key.len() < 16 {
        return error(StatusCode::BAD_REQUEST, "migration key too short");
    }
    let began = Instant::now();
    let module = match agent.module(&digest).await {
        Ok(m) => m,
        Err(e) => return e,
    };
    let fetched = began.elapsed();
    let config = agent.instance_config(&req.workload, &req.instance);
    let instance = match agent.runtime.reserve(&module, config).await {
        Ok(i) => i,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    tracing::info!(migration = %id, workload = %req.workload, module_ms = fetched.as_secs_f64() * 1e3, reserve_ms = (began.elapsed() - fetched).as_secs_f64() * 1e3, "prepared to receive");
    let mut incoming = agent.migrations.incoming.lock().await;
    incoming.retain(|id, e| {
        let keep = e.touched.elapsed() < STALE;
        if !keep {
            tracing::warn!(migration = %id, "dropping a received migration nobody committed or aborted");
        }
        keep
    });
    incoming.insert(
        id,
        Incoming {
            workload: req.workload,
            key: req.key,
            spec: req.instance,
            module,
            instance,
            source: HostInfo {
                host: req.source.host,
                site: req.source.site,
            },
            round: 0,
            part: 0,
            buffer: Vec::new(),
            applied: false,
            ready: false,
            intake: None,
            touched: Instant::now(),
        },
    );
    StatusCode::OK.into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `I/N` (a part of a round, a page stream of several) as numbers.
fn index_of(value: &str) -> Option<(u32, u32)> {
    let (i, n) = value.split_once('/')?;
    Some((i.parse().ok()?, n.parse().ok()?))
}

/// The received migration `id` if `headers` carry its key, marked as
/// touched now; else the status and reason refusing the request.
fn presented<'a>(
    incoming: &'a mut HashMap<String, Incoming>,
    id: &str,
    headers: &HeaderMap,
) -> Result<&'a mut Incoming, (StatusCode, String)> {
    let Some(entry) = incoming.get_mut(id) else {
        return Err((StatusCode::NOT_FOUND, format!("no migration `{id}` here")));
    };
    if !super::presents(headers, &entry.key) {
        return Err((StatusCode::UNAUTHORIZED, "wrong migration key".into()));
    }
    entry.touched = Instant::now();
    Ok(entry)
}

/// `PUT /v1/migrations/{id}/rounds/{round}`: one part of one round.
/// Headers: `x-roam-part: I/N`, `x-roam-total: BYTES` (the whole round),
/// `x-roam-checksum: HEX` (xxh3-64 of this part), `x-roam-final: 1` on the
/// last round. Any mismatch drops everything received for the migration.
async fn receive_round(
    State(agent): State<Arc<Agent>>,
    Path((id, round)): Path<(String, u32)>,
    headers: HeaderMap,
    body: Body,
) -> HttpResponse {
    let mut incoming = agent.migrations.incoming.lock().await;
    let entry = match presented(&mut incoming, &id, &headers) {
        Ok(e) => e,
        Err((status, reason)) => return error(status, reason),
    };
    let started = Instant::now();
    match apply_part(entry, round, &headers, body).await {
        Ok(applied) => {
            if applied {
                tracing::debug!(migration = %id, round, apply_ms = started.elapsed().as_secs_f64() * 1e3, "round applied");
            }
            if applied && header(&headers, "x-roam-final") == Some("1") {
                entry.ready = true;
                tracing::info!(migration = %id, rounds = round + 1, "final state received");
            }
            StatusCode::OK.into_response()
        }
        Err(e) => {
            tracing::warn!(migration = %id, error = %e, "migration stream refused; dropping it");
            incoming.remove(&id);
            error(StatusCode::BAD_REQUEST, e)
        }
    }
}

/// Check one part (a piece of the round's encoded snapshot; pieces are
/// joined up to `x-roam-total` bytes, then decoded and applied) and apply
/// what it completes. Returns whether the round ended.
async fn apply_part(
    entry: &mut Incoming,
    round: u32,
    headers: &HeaderMap,
    body: Body,
) -> Result<bool, String> {
    let (part, parts) = expect_part(entry, round, headers)?;
    let checksum = header(headers, "x-roam-checksum")
        .and_then(|c| u64::from_str_radix(c, 16).ok())
        .ok_or("header `x-roam-checksum` missing or malformed")?;
    let body = axum::body::to_bytes(body, PART)
        .await
        .map_err(|e| format!("round {round} part {part}: {e}"))?;
    if xxhash_rust::xxh3::xxh3_64(&body) != checksum {
        return Err(format!("round {round} part {part}: checksum mismatch"));
    }
    apply_snapshot_part(entry, round, headers, &body)?;
    end_part(entry, round, parts)
}

/// The part `x-roam-part: I/N` names, if it is the one `entry` expects
/// next in `round`.
fn expect_part(entry: &Incoming, round: u32, headers: &HeaderMap) -> Result<(u32, u32), String> {
    if entry.ready {
        return Err("the final round was already applied".into());
    }
    if round != entry.round {
        return Err(format!(
            "round {round} arrived, round {} expected",
            entry.round
        ));
    }
    let (part, parts) = header(headers, "x-roam-part")
        .and_then(index_of)
        .ok_or("header `x-roam-part: I/N` missing or malformed")?;
    if part != entry.part || parts == 0 || part >= parts {
        return Err(format!(
            "part {part}/{parts} arrived, part {} expected",
            entry.part
        ));
    }
    Ok((part, parts))
}

/// Count a received part of `parts`; returns whether the round ended.
fn end_part(entry: &mut Incoming, round: u32, parts: u32) -> Result<bool, String> {
    entry.part += 1;
    if entry.part < parts {
        return Ok(false);
    }
    if !entry.applied || !entry.buffer.is_empty() {
        return Err(format!("round {round} ended without a complete snapshot"));
    }
    entry.round += 1;
    entry.part = 0;
    entry.applied = false;
    Ok(true)
}

/// A piece of the round's encoded snapshot; decode and apply it once whole.
fn apply_snapshot_part(
    entry: &mut Incoming,
    round: u32,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    if entry.applied {
        return Err(format!("round {round} has a second snapshot"));
    }
    let total: u64 = header(headers, "x-roam-total")
        .and_then(|t| t.parse().ok())
        .ok_or("header `x-roam-total` missing or malformed")?;
    let limit = entry.spec.memory.saturating_add(STATE_OVERHEAD);
    if total > limit {
        return Err(format!(
            "round of {total} bytes is over the {limit} bytes this workload can hold"
        ));
    }
    if entry.buffer.is_empty() {
        entry.buffer = Vec::with_capacity(total as usize);
    }
    if entry.buffer.len() as u64 + body.len() as u64 > total {
        return Err(format!(
            "round {round} is longer than its announced {total} bytes"
        ));
    }
    entry.buffer.extend_from_slice(body);
    if (entry.buffer.len() as u64) < total {
        return Ok(());
    }
    let limits = DecodeLimits {
        max_memory_bytes: entry.spec.memory,
        ..DecodeLimits::default()
    };
    let snapshot = codec::decode(&entry.buffer, Some(&entry.module.digest()), &limits)
        .map_err(|e| format!("round {round}: {e}"))?;
    if (round == 0) != snapshot.is_full() {
        return Err(format!(
            "round {round} must be a {}",
            if round == 0 { "full snapshot" } else { "delta" }
        ));
    }
    entry
        .instance
        .apply(&snapshot)
        .map_err(|e| format!("round {round}: {e}"))?;
    entry.buffer = Vec::new();
    entry.applied = true;
    if round == 0 {
        // The pages arriving fault in as huge pages (one fault and clear
        // per 2 MiB); after the streams, faults take small pages again.
        entry.instance.set_huge_pages(true);
    }
    Ok(())
}

/// Most pages one frame of a page stream may carry (a source sends at most
/// [`WINDOW_PAGES`]).
const FRAME_PAGES: u32 = 256;
/// A page stream that moves no bytes for this long is given up.
const STREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
/// The frame that ends a page stream: `FIRST` = `u64::MAX`, `COUNT` = 0.
const END_OF_PAGES: u64 = u64::MAX;
const PAGE: u64 = crate::snapshot::PAGE_SIZE as u64;

/// A frame header: `FIRST` page (u64 LE), `COUNT` pages (u32 LE), 0 (u32).
fn frame_head(first: u64, count: u32) -> [u8; 16] {
    let mut head = [0u8; 16];
    head[..8].copy_from_slice(&first.to_le_bytes());
    head[8..12].copy_from_slice(&count.to_le_bytes());
    head
}

/// `fut`, or an error once it waited [`STREAM_IDLE`].
async fn timed<T>(
    what: &str,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(STREAM_IDLE, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("the page stream broke while {what}: {e}")),
        Err(_) => Err(format!(
            "the page stream stalled for {} s while {what}",
            STREAM_IDLE.as_secs()
        )),
    }
}

/// `POST /v1/migrations/{id}/pages`, an HTTP upgrade (`upgrade:
/// roam-pages`) to a raw stream carrying round 0's memory pages, the last
/// part of round 0 (`x-roam-part: I/N`, `x-roam-total`: most bytes of pages,
/// `x-roam-final: 1` for a stop-and-copy). The pages may come over several
/// such streams at once (`x-roam-stream: I/N`, each stream once; the part
/// ends when all N ended). A stream is a run of frames — a [`frame_head`],
/// `COUNT` pages, and the xxh3-64 of head and pages (u64 LE) — ended by a
/// frame naming [`END_OF_PAGES`] whose last field counts the pages that
/// stream sent (zero pages are not sent). Each frame is checked against
/// the memory's bounds before its pages are read, and against its checksum
/// before they land in the reserved instance; all streams together carry at
/// most `x-roam-total` bytes. The target answers `ok` or `error: REASON` on
/// each stream and closes it; on an error it drops the instance, which
/// never runs.
async fn receive_pages(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    mut request: axum::extract::Request,
) -> HttpResponse {
    let headers = request.headers().clone();
    let checked = {
        let mut incoming = agent.migrations.incoming.lock().await;
        let entry = match presented(&mut incoming, &id, &headers) {
            Ok(e) => e,
            Err((status, reason)) => return error(status, reason),
        };
        let checked = open_page_stream(entry, &headers);
        if checked.is_err() {
            incoming.remove(&id);
        }
        checked
    };
    let stream = match checked {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(migration = %id, error = %e, "migration stream refused; dropping it");
            return error(StatusCode::BAD_REQUEST, e);
        }
    };
    let Some(upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        agent.migrations.incoming.lock().await.remove(&id);
        return error(
            StatusCode::BAD_REQUEST,
            "expected an upgrade to `roam-pages`",
        );
    };
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let io = match upgrade.await {
            Ok(u) => hyper_util::rt::TokioIo::new(u),
            Err(e) => {
                tracing::warn!(migration = %id, error = %e, "page stream upgrade failed");
                agent.migrations.incoming.lock().await.remove(&id);
                return;
            }
        };
        // Frame heads and checksums are small reads: buffer them (reads of
        // pages larger than the buffer bypass it).
        let mut io = tokio::io::BufReader::with_capacity(64 << 10, io);
        let started = Instant::now();
        let verdict = receive_stream(&agent, &id, &headers, &mut io, &stream).await;
        tracing::debug!(migration = %id, stream = stream.index, announced = stream.total, stream_ms = started.elapsed().as_secs_f64() * 1e3, "pages received");
        let line = match verdict {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("error: {}\n", e.replace('\n', " ")),
        };
        let _ = io.write_all(line.as_bytes()).await;
        let _ = io.shutdown().await;
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [("connection", "upgrade"), ("upgrade", "roam-pages")],
    )
        .into_response()
}

/// One page stream, as its headers announced it.
struct PageStream {
    /// Parts of round 0 (the pages are the last).
    parts: u32,
    /// Most bytes of pages, all streams together.
    total: u64,
    /// Pages in the reserved instance's memory.
    memory_pages: u64,
    index: u32,
}

/// Check a page stream's headers against what `entry` expects — the last
/// part of round 0, after its snapshot, with at most the memory's bytes, a
/// stream not opened before — and count it as opened.
fn open_page_stream(entry: &mut Incoming, headers: &HeaderMap) -> Result<PageStream, String> {
    let (_, parts) = expect_part(entry, 0, headers)?;
    if !entry.applied || entry.part + 1 != parts {
        return Err("pages may only end round 0, after its snapshot".into());
    }
    let total: u64 = header(headers, "x-roam-total")
        .and_then(|t| t.parse().ok())
        .ok_or("header `x-roam-total` missing or malformed")?;
    let (_, memory_len) = entry
        .instance
        .memory_range()
        .ok_or("the module has no memory")?;
    if total > memory_len as u64 || !total.is_multiple_of(PAGE) {
        return Err(format!(
            "{total} bytes of pages do not fit a memory of {memory_len} bytes"
        ));
    }
    let (index, streams) = match header(headers, "x-roam-stream") {
        None => (0, 1),
        Some(v) => index_of(v).ok_or("header `x-roam-stream: I/N` malformed")?,
    };
    if streams == 0 || streams > roam_proto::MAX_PAGE_STREAMS || index >= streams {
        return Err(format!(
            "page stream {index}/{streams}: at most {} streams, numbered from 0",
            roam_proto::MAX_PAGE_STREAMS
        ));
    }
    let intake = entry.intake.get_or_insert(Intake {
        streams,
        opened: 0,
        ended: 0,
        landed: 0,
        total,
    });
    if intake.streams != streams || intake.total != total {
        return Err(format!(
            "page stream {index}/{streams} of {total} bytes; {}/{} bytes announced before",
            intake.streams, intake.total
        ));
    }
    if intake.opened & (1 << index) != 0 {
        return Err(format!("page stream {index} was opened before"));
    }
    intake.opened |= 1 << index;
    Ok(PageStream {
        parts,
        total,
        memory_pages: memory_len as u64 / PAGE,
        index,
    })
}

/// Why a page stream stops when its migration is no longer received here.
const ENDED: &str = "the migration ended while its pages were sent";

/// Land one page stream's frames in the reserved instance; the last stream
/// to end ends round 0. Any failure drops the migration.
async fn receive_stream(
    agent: &Agent,
    id: &str,
    headers: &HeaderMap,
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    stream: &PageStream,
) -> Result<(), String> {
    let landed = land_frames(agent, id, headers, io, stream).await;
    let mut incoming = agent.migrations.incoming.lock().await;
    let Ok(entry) = presented(&mut incoming, id, headers) else {
        return Err(landed.err().unwrap_or_else(|| ENDED.into()));
    };
    let ended = landed.and_then(|()| {
        let intake = entry.intake()?;
        intake.ended += 1;
        if intake.ended < intake.streams {
            return Ok(());
        }
        entry.intake = None;
        entry.instance.set_huge_pages(false);
        if end_part(entry, 0, stream.parts)? && header(headers, "x-roam-final") == Some("1") {
            entry.ready = true;
        }
        Ok(())
    });
    if let Err(e) = &ended {
        tracing::warn!(migration = %id, error = %e, "migration stream refused; dropping it");
        incoming.remove(id);
    }
    ended
}

/// Read frames and copy each, once checked, into the reserved instance.
async fn land_frames(
    agent: &Agent,
    id: &str,
    headers: &HeaderMap,
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    stream: &PageStream,
) -> Result<(), String> {
    let mut frames = FrameReader::new(io, stream.total, stream.memory_pages);
    while let Some((first, pages)) = frames.next().await? {
        let mut incoming = agent.migrations.incoming.lock().await;
        let entry = presented(&mut incoming, id, headers).map_err(|_| ENDED)?;
        let intake = entry.intake()?;
        intake.landed += pages.len() as u64;
        if intake.landed > intake.total {
            return Err(format!(
                "more than the announced {} bytes of pages",
                intake.total
            ));
        }
        let at = (first * PAGE) as usize;
        entry
            .instance
            .memory_data_mut()
            .get_mut(at..at + pages.len())
            .ok_or("a frame lies outside the memory")?
            .copy_from_slice(pages);
    }
    Ok(())
}

/// Reads one page stream's frames, each checked against the memory's
/// bounds before its pages are read and against its checksum after.
struct FrameReader<'a, R> {
    io: &'a mut R,
    /// One frame's pages.
    pages: Vec<u8>,
    /// Most bytes of pages, and bytes read so far.
    total: u64,
    received: u64,
    memory_pages: u64,
}

impl<'a, R: tokio::io::AsyncRead + Unpin> FrameReader<'a, R> {
    fn new(io: &'a mut R, total: u64, memory_pages: u64) -> Self {
        FrameReader {
            io,
            pages: Vec::new(),
            total,
            received: 0,
            memory_pages,
        }
    }

    /// The next frame: its first page and its pages; `None` after the end
    /// frame, which must count the pages read.
    async fn next(&mut self) -> Result<Option<(u64, &[u8])>, String> {
        use tokio::io::AsyncReadExt;
        let mut head = [0u8; 16];
        timed("reading a frame", self.io.read_exact(&mut head)).await?;
        let first = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
        let count = u32::from_le_bytes(head[8..12].try_into().unwrap_or_default());
        let end = count == 0 && first == END_OF_PAGES;
        if !end {
            if count == 0
                || count > FRAME_PAGES
                || head[12..] != [0; 4]
                || first
                    .checked_add(u64::from(count))
                    .is_none_or(|end| end > self.memory_pages)
            {
                return Err(format!(
                    "a frame names pages {first}..+{count}, outside the memory's {} pages or over {FRAME_PAGES} pages",
                    self.memory_pages
                ));
            }
            self.received += u64::from(count) * PAGE;
            if self.received > self.total {
                return Err(format!(
                    "more than the announced {} bytes of pages",
                    self.total
                ));
            }
        }
        let len = if end {
            0
        } else {
            count as usize * PAGE as usize
        };
        self.pages.resize(len, 0);
        timed("reading pages", self.io.read_exact(&mut self.pages)).await?;
        let mut sum = [0u8; 8];
        timed("reading a checksum", self.io.read_exact(&mut sum)).await?;
        let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
        hasher.update(&head);
        hasher.update(&self.pages);
        if u64::from_le_bytes(sum) != hasher.digest() {
            return Err(format!(
                "the frame of pages {first}..+{count}: checksum mismatch"
            ));
        }
        if !end {
            return Ok(Some((first, &self.pages)));
        }
        let sent = u32::from_le_bytes(head[12..].try_into().unwrap_or_default());
        if u64::from(sent) * PAGE == self.received {
            Ok(None)
        } else {
            Err(format!(
                "{} pages received, {sent} sent",
                self.received / PAGE
            ))
        }
    }
}

/// A message the source forwards after the commit, with the migration key.
async fn forwarded_message(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(q): Query<super::FromQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    let workload = {
        let forwarding = agent
            .migrations
            .forwarding
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match forwarding.get(&id) {
            Some((w, key, _)) if super::presents(&headers, key) => w.clone(),
            Some(_) => return error(StatusCode::UNAUTHORIZED, "wrong migration key"),
            None => return error(StatusCode::NOT_FOUND, format!("no migration `{id}` here")),
        }
    };
    let Some(handle) = agent.bus.get(&workload) else {
        return super::not_here(&workload);
    };
    match handle.message(&q.from, body.to_vec()).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn commit_incoming(agent: &Arc<Agent>, id: &str, generation: u64) -> HttpResponse {
    // The source and the scheduler may both activate: the second waits for
    // the first, so an answer of "committed" always means "serving".
    let _activating = agent.migrations.activating.lock().await;
    let entry = {
        let mut incoming = agent.migrations.incoming.lock().await;
        match incoming.get(id) {
            Some(e) if e.ready => {
                let entry = incoming.remove(id);
                // Recorded under the lock an abort takes: from here on an
                // abort is refused.
                if let Some(e) = &entry {
                    let mut forwarding = agent
                        .migrations
                        .forwarding
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    forwarding.retain(|_, (_, _, at)| at.elapsed() < STALE);
                    forwarding.insert(
                        id.to_string(),
                        (e.workload.clone(), e.key.clone(), Instant::now()),
                    );
                }
                entry
            }
            Some(_) => {
                return error(
                    StatusCode::CONFLICT,
                    format!("migration `{id}` has not received its final state"),
                );
            }
            None => None,
        }
    };
    // Test hook: a slow activation, so fault tests can act meanwhile.
    if entry.is_some()
        && let Some(ms) = fault_delay("ROAM_FAULT_ACTIVATE_DELAY_MS")
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let Some(mut entry) = entry else {
        // Committed before (a retried commit), or unknown.
        return if agent.migrations.activated(id) {
            Json(CommitOutcome::default()).into_response()
        } else {
            error(StatusCode::NOT_FOUND, format!("no migration `{id}` here"))
        };
    };
    entry.instance.set_generation(generation);
    let config = entry.instance.config().clone();
    let workload = match Workload::resume(entry.instance, Some(&entry.source)).await {
        Ok(w) => w,
        Err(e) => {
            agent
                .migrations
                .forwarding
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("cannot resume the received workload: {e}"),
            );
        }
    };
    agent
        .run_workload(
            entry.module,
            config,
            workload,
            entry.spec.digest,
            entry.spec.memory,
            generation,
        )
        .await;
    tracing::info!(migration = %id, workload = %entry.workload, generation, "migration committed: serving here");
    Json(CommitOutcome::default()).into_response()
}

/// `POST /v1/migrations/{id}/activate` from the source (with the key): it
/// reached the commit point; serve at the generation the scheduler gave at
/// prepare.
async fn activate(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> HttpResponse {
    let generation = {
        let mut incoming = agent.migrations.incoming.lock().await;
        match presented(&mut incoming, &id, &headers) {
            Ok(entry) => entry.spec.generation,
            Err((StatusCode::NOT_FOUND, e)) => {
                drop(incoming);
                // Activated before (a retry, or the scheduler's commit)?
                let key_matches = agent
                    .migrations
                    .forwarding
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&id)
                    .map(|(_, key, _)| super::presents(&headers, key));
                return match key_matches {
                    Some(true) => {
                        // Wait for an activation under way.
                        let _activating = agent.migrations.activating.lock().await;
                        if agent.migrations.activated(&id) {
                            Json(CommitOutcome::default()).into_response()
                        } else {
                            error(StatusCode::NOT_FOUND, e)
                        }
                    }
                    Some(false) => error(StatusCode::UNAUTHORIZED, "wrong migration key"),
                    None => error(StatusCode::NOT_FOUND, e),
                };
            }
            Err((status, e)) => return error(status, e),
        }
    };
    commit_incoming(&agent, &id, generation).await
}

// ---------------------------------------------------------------- source --

async fn send(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Json(req): Json<SendMigration>,
) -> HttpResponse {
    let handle = match agent.workloads.lock().await.get(&req.workload) {
        Some(r) => r.handle.clone(),
        None => return super::not_here(&req.workload),
    };
    let out = Arc::new(Outgoing {
        workload: req.workload.clone(),
        handle,
        target_url: req.target_url.clone(),
        key: req.key.clone(),
        generation: req.generation,
        cancelled: AtomicBool::new(false),
        state: Mutex::new((OutPhase::Sending, None, None)),
        settled: tokio::sync::Notify::new(),
    });
    {
        let mut outgoing = agent
            .migrations
            .outgoing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        outgoing.retain(|_, o| {
            o.workload != req.workload
                || matches!(
                    o.phase(),
                    OutPhase::Sending | OutPhase::Prepared | OutPhase::Committing
                )
        });
        if outgoing.values().any(|o| o.workload == req.workload) {
            return error(
                StatusCode::CONFLICT,
                format!("`{}` is already migrating", req.workload),
            );
        }
        outgoing.insert(id.clone(), out.clone());
    }
    let (tx, rx) = mpsc::channel::<MigrationProgress>(64);
    tokio::spawn(run_source(agent, id, out, req, tx));
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let p = rx.recv().await?;
        let mut line = serde_json::to_vec(&p).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), rx))
    });
    (
        [("content-type", "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

async fn run_source(
    agent: Arc<Agent>,
    id: String,
    out: Arc<Outgoing>,
    req: SendMigration,
    progress: mpsc::Sender<MigrationProgress>,
) {
    let mut report = MigrationProgress {
        phase: "precopy".into(),
        ..MigrationProgress::default()
    };
    let mut result = precopy(&agent, &id, &out, &req.options, &progress, &mut report).await;
    if result.is_ok() {
        // Under the lock an abort also takes: prepared, or aborted, not both.
        let mut state = out.state.lock().unwrap_or_else(|e| e.into_inner());
        if out.cancelled.load(Ordering::SeqCst) {
            result = Err("aborted".into());
        } else {
            state.0 = OutPhase::Prepared;
        }
    }
    match result {
        Ok(()) => {
            report.phase = "prepared".into();
            tracing::info!(migration = %id, workload = %out.workload, rounds = report.round, bytes = report.bytes_sent, "migration prepared; holding requests");
            let _ = progress.send(report.clone()).await;
            // Test hook: hold the commit, so fault tests can act between
            // the commit point and the target's activation.
            if let Some(ms) = fault_delay("ROAM_FAULT_COMMIT_DELAY_MS") {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            activate_target(&agent, &id, &out, report, &progress).await;
        }
        Err(e) => {
            tracing::warn!(migration = %id, workload = %out.workload, error = %e, "migration failed; serving on");
            out.handle.resume().await;
            out.set_phase(OutPhase::Aborted);
            agent
                .migrations
                .outgoing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            let _ = agent
                .http
                .delete(format!("{}/v1/migrations/{id}", out.target_url))
                .bearer_auth(&out.key)
                .send()
                .await;
            report.phase = "failed".into();
            report.error = Some(e);
            let _ = progress.send(report).await;
        }
    }
}

/// The pre-copy loop; on success the source is frozen and the target holds
/// the final state.
async fn precopy(
    agent: &Agent,
    id: &str,
    out: &Outgoing,
    options: &MigrationOptions,
    progress: &mpsc::Sender<MigrationProgress>,
    report: &mut MigrationProgress,
) -> Result<(), String> {
    let check = |progress: &mpsc::Sender<MigrationProgress>| {
        if out.cancelled.load(Ordering::SeqCst) {
            Err("aborted".to_string())
        } else if progress.is_closed() {
            Err("the scheduler went away before the migration was prepared".to_string())
        } else {
            Ok(())
        }
    };
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
            let size = out.handle.memory_size().await?;
            let buffers = tokio::task::spawn_blocking(move || prefaulted(size))
                .await
                .map_err(|e| e.to_string())?;
            tracing::debug!(migration = %id, bytes = size, populate_ms = last_capture.elapsed().as_secs_f64() * 1e3, "capture buffer ready");
            if options.stop_and_copy {
                report.phase = "stopping".into();
                let frozen_at = Instant::now();
                let all = out.handle.freeze_full(buffers).await?;
                out.state.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(frozen_at);
                report.last_round_bytes =
                    send_full(agent, id, out, all, None, true, options.page_streams).await?;
                report.bytes_sent = report.last_round_bytes;
                return check(progress);
            }
            last_capture = Instant::now();
            (out.handle.capture_full(buffers).await?, None)
        }
    };
    let captured = last_capture.elapsed();
    report.last_round_bytes =
        send_full(agent, id, out, full, live, false, options.page_streams).await?;
    tracing::info!(migration = %id, bytes = report.last_round_bytes, capture_ms = captured.as_secs_f64() * 1e3, send_ms = (last_capture.elapsed() - captured).as_secs_f64() * 1e3, "round 0 (full) sent");
    report.bytes_sent += report.last_round_bytes;
    let _ = progress.send(report.clone()).await;
    let mut previous = report.last_round_bytes;
    let mut stalled = 0;
    loop {
        check(progress)?;
        let now = Instant::now();
        let delta = out.handle.capture_delta().await?;
        let elapsed = now.duration_since(last_capture).as_secs_f64().max(1e-6);
        last_capture = now;
        report.dirty_rate = (delta.pages * crate::snapshot::PAGE_SIZE as u64) as f64 / elapsed;
        report.round += 1;
        report.last_round_bytes = delta.bytes.len() as u64;
        let small = report.last_round_bytes <= options.max_final_bytes;
        if (report.last_round_bytes as f64) < previous as f64 * CONVERGE {
            stalled = 0;
        } else {
            stalled += 1;
        }
        previous = report.last_round_bytes;
        send_round(agent, id, out, report.round, delta.bytes, false).await?;
        report.bytes_sent += report.last_round_bytes;
        let _ = progress.send(report.clone()).await;
        if small || report.round >= options.max_rounds || stalled >= STALLED_ROUNDS {
            break;
        }
    }
    check(progress)?;
    report.phase = "stopping".into();
    let _ = progress.send(report.clone()).await;
    let frozen_at = Instant::now();
    let last = out.handle.freeze().await?;
    out.state.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(frozen_at);
    report.round += 1;
    report.last_round_bytes = last.bytes.len() as u64;
    send_round(agent, id, out, report.round, last.bytes, true).await?;
    report.bytes_sent += report.last_round_bytes;
    check(progress)
}

/// Memory images with room for `size` bytes of memory, every page of it
/// already touched: capturing into them costs no page faults.
fn prefaulted(size: u64) -> Vec<MemoryImage> {
    let size = size as usize;
    let data: Vec<u8> = Vec::with_capacity(size);
    crate::dirty::populate_huge(data.as_ptr() as usize, data.capacity());
    let pages = Vec::with_capacity(size / crate::snapshot::PAGE_SIZE + 1);
    vec![MemoryImage {
        index: 0,
        byte_len: 0,
        pages,
        data,
    }]
}

/// Send round 0: the snapshot without its pages (small: globals, tables,
/// host state, memory size) in checked parts, then the pages on one
/// upgraded stream (see [`receive_pages`]) — from `live` memory, else from
/// the capture's buffer — which the target reads straight into the reserved
/// instance: no encoding, joining or decoding of the bulk, no round trip
/// between frames. Returns the bytes sent.
async fn send_full(
    agent: &Agent,
    id: &str,
    out: &Outgoing,
    mut full: Snapshot,
    live: Option<LiveMemory>,
    last: bool,
    streams: u32,
) -> Result<u64, String> {
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
    };
    for i in 0..state_parts {
        let piece = state.slice(i * PART..((i + 1) * PART).min(state.len()));
        let part = Part { part: i, ..head };
        let total = [("x-roam-total", state.len().to_string())];
        send_part(agent, id, out, &part, piece, &total).await?;
    }
    let mut sent = state.len() as u64;
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
        let pages = send_pages(agent, id, out, &part, source, streams).await?;
        sent += pages * PAGE;
        tracing::debug!(migration = %id, bytes = pages * PAGE, stream_ms = began.elapsed().as_secs_f64() * 1e3, "pages sent");
    }
    Ok(sent)
}

/// Where round 0's pages come from.
enum PageSource {
    /// Copied at the capture: page indices, their bytes in order.
    Captured(Vec<u64>, Vec<u8>),
    /// Read from the running workload's memory (given back to the driver
    /// once every stream is done with it).
    Live(LiveMemory),
}

/// Pages in one window: the unit the page streams share out (window `w`
/// goes over stream `w % streams`), and the most pages one frame carries.
/// 256 KiB: a window's copy stays in the core's cache while it is
/// checked for zero pages, checksummed and written.
const WINDOW_PAGES: u64 = 64;

/// Stream round 0's pages to the target as its last part, over `streams`
/// connections at once, and wait for every verdict. Returns the pages sent.
async fn send_pages(
    agent: &Agent,
    id: &str,
    out: &Outgoing,
    at: &Part,
    source: PageSource,
    streams: u32,
) -> Result<u64, String> {
    let streams = streams.clamp(1, roam_proto::MAX_PAGE_STREAMS);
    // At most this many bytes of pages (zero pages are not sent).
    let most = match &source {
        PageSource::Captured(_, data) => data.len(),
        PageSource::Live(memory) => memory.len(),
    };
    let source = Arc::new(source);
    let mut sending = tokio::task::JoinSet::new();
    for index in 0..streams {
        let mut request = agent
            .http
            .post(format!("{}/v1/migrations/{id}/pages", out.target_url))
            .bearer_auth(&out.key)
            .header("connection", "upgrade")
            .header("upgrade", "roam-pages")
            .header("x-roam-part", format!("{}/{}", at.part, at.parts))
            .header("x-roam-total", most.to_string())
            .header("x-roam-stream", format!("{index}/{streams}"));
        if at.last {
            request = request.header("x-roam-final", "1");
        }
        sending.spawn(send_stream(request, source.clone(), index, streams));
    }
    let mut pages = 0;
    while let Some(sent) = sending.join_next().await {
        match sent {
            Ok(Ok(n)) => pages += n,
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("round 0: a page stream failed: {e}")),
        }
    }
    Ok(pages)
}

/// One page stream: its share of the pages, the end frame, the target's
/// verdict. Returns the pages sent.
async fn send_stream(
    request: reqwest::RequestBuilder,
    source: Arc<PageSource>,
    index: u32,
    streams: u32,
) -> Result<u64, String> {
    use tokio::io::AsyncReadExt;
    let r = request
        .send()
        .await
        .map_err(|e| format!("round 0: target unreachable: {e}"))?;
    if r.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = r.status();
        return Err(format!(
            "round 0: target answered {status}: {}",
            r.text().await.unwrap_or_default()
        ));
    }
    let mut io = r
        .upgrade()
        .await
        .map_err(|e| format!("round 0: no page stream: {e}"))?;
    let share = Share {
        index: u64::from(index),
        streams: u64::from(streams),
    };
    let written = match &*source {
        PageSource::Captured(pages, data) => write_captured(&mut io, pages, data, share).await,
        PageSource::Live(memory) => write_live(&mut io, memory, share).await,
    };
    drop(source);
    let written = match written {
        Ok(n) => write_end(&mut io, n).await.map(|()| n),
        Err(e) => Err(e),
    };
    // The verdict says why, also when writing failed because the target
    // gave up first.
    let mut verdict = Vec::new();
    let read = timed(
        "reading the verdict",
        (&mut io).take(4096).read_to_end(&mut verdict),
    )
    .await;
    let verdict = String::from_utf8_lossy(&verdict);
    match verdict.trim_end() {
        "ok" => written,
        v if v.starts_with("error: ") => {
            Err(format!("round 0: target refused the pages: {}", &v[7..]))
        }
        _ => Err(format!(
            "round 0: {}",
            written
                .err()
                .or(read.err())
                .unwrap_or_else(|| "the target gave no verdict".into())
        )),
    }
}

/// The windows one page stream carries: `w % streams == index`.
#[derive(Clone, Copy)]
struct Share {
    index: u64,
    streams: u64,
}

impl Share {
    fn carries(self, page: u64) -> bool {
        (page / WINDOW_PAGES) % self.streams == self.index
    }
}

/// One frame: `bytes` (whole pages, at most [`FRAME_PAGES`]) for the pages
/// from `first` on, its head and checksum in one vectored write.
async fn write_frame(
    io: &mut (impl tokio::io::AsyncWrite + Unpin),
    first: u64,
    bytes: &[u8],
) -> Result<(), String> {
    use std::io::IoSlice;
    use tokio::io::AsyncWriteExt;
    let head = frame_head(first, (bytes.len() / crate::snapshot::PAGE_SIZE) as u32);
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    hasher.update(&head);
    hasher.update(bytes);
    let sum = hasher.digest().to_le_bytes();
    let mut parts = [IoSlice::new(&head), IoSlice::new(bytes), IoSlice::new(&sum)];
    let mut parts = &mut parts[..];
    while !parts.is_empty() {
        let n = timed("writing pages", io.write_vectored(parts)).await?;
        if n == 0 {
            return Err("the page stream closed while writing pages".into());
        }
        IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

/// The end frame, with the number of pages sent.
async fn write_end(
    io: &mut (impl tokio::io::AsyncWrite + Unpin),
    pages: u64,
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut head = frame_head(END_OF_PAGES, 0);
    let pages = u32::try_from(pages).map_err(|_| "too many pages for one stream")?;
    head[12..].copy_from_slice(&pages.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&head).to_le_bytes();
    timed("writing the end", io.write_all(&head)).await?;
    timed("writing the end", io.write_all(&sum)).await?;
    timed("flushing", io.flush()).await
}

/// Write this stream's `share` of the captured `pages` (their bytes in
/// order in `data`) as frames of consecutive pages inside one window.
/// Returns the pages written.
async fn write_captured(
    io: &mut (impl tokio::io::AsyncWrite + Unpin),
    pages: &[u64],
    data: &[u8],
    share: Share,
) -> Result<u64, String> {
    const SIZE: usize = crate::snapshot::PAGE_SIZE;
    let mut written = 0;
    let mut i = 0;
    while i < pages.len() {
        let first = pages[i];
        let window_end = (first / WINDOW_PAGES + 1) * WINDOW_PAGES;
        let mut count = 1;
        while i + count < pages.len()
            && pages[i + count] == first + count as u64
            && first + (count as u64) < window_end
        {
            count += 1;
        }
        if share.carries(first) {
            let bytes = data
                .get(i * SIZE..(i + count) * SIZE)
                .ok_or("the capture holds fewer bytes than pages")?;
            write_frame(io, first, bytes).await?;
            written += count as u64;
        }
        i += count;
    }
    Ok(written)
}

/// Write this stream's `share` of the running workload's memory: each
/// window copied first (so a frame's checksum covers exactly the bytes
/// sent) into a buffer that stays in cache, its runs of non-zero pages
/// sent as frames. Returns the pages written.
async fn write_live(
    io: &mut (impl tokio::io::AsyncWrite + Unpin),
    memory: &LiveMemory,
    share: Share,
) -> Result<u64, String> {
    const SIZE: usize = crate::snapshot::PAGE_SIZE;
    const WINDOW: usize = WINDOW_PAGES as usize * SIZE;
    let mut window = vec![0u8; WINDOW];
    let mut written = 0u64;
    let delay = fault_delay("ROAM_FAULT_WINDOW_DELAY_MS").map(std::time::Duration::from_millis);
    let mut at = share.index as usize * WINDOW;
    while at < memory.len() {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let n = memory.read(at, &mut window);
        let first = (at / SIZE) as u64;
        let nonzero: Vec<bool> = window[..n]
            .chunks(SIZE)
            .map(|p| !crate::snapshot::is_zero(p))
            .collect();
        let mut p = 0;
        while p < nonzero.len() {
            if !nonzero[p] {
                p += 1;
                continue;
            }
            let start = p;
            while p < nonzero.len() && nonzero[p] {
                p += 1;
            }
            let bytes = &window[start * SIZE..(p * SIZE).min(n)];
            write_frame(io, first + start as u64, bytes).await?;
            written += (p - start) as u64;
        }
        at += WINDOW * share.streams as usize;
    }
    Ok(written)
}

/// Where a part goes.
#[derive(Clone, Copy)]
struct Part {
    round: u32,
    part: usize,
    parts: usize,
    last: bool,
}

/// Send one round's encoded snapshot in checked parts; the target applies
/// it when the last arrives.
async fn send_round(
    agent: &Agent,
    id: &str,
    out: &Outgoing,
    round: u32,
    bytes: Vec<u8>,
    last: bool,
) -> Result<(), String> {
    let bytes = Bytes::from(bytes);
    let total = bytes.len();
    let parts = total.div_ceil(PART).max(1);
    for part in 0..parts {
        let chunk = bytes.slice(part * PART..((part + 1) * PART).min(total));
        let at = Part {
            round,
            part,
            parts,
            last,
        };
        send_part(
            agent,
            id,
            out,
            &at,
            chunk,
            &[("x-roam-total", total.to_string())],
        )
        .await?;
    }
    Ok(())
}

/// One authenticated, checksummed part.
async fn send_part(
    agent: &Agent,
    id: &str,
    out: &Outgoing,
    at: &Part,
    body: Bytes,
    headers: &[(&str, String)],
) -> Result<(), String> {
    if at.part == 0
        && let Some(ms) = fault_delay("ROAM_FAULT_ROUND_DELAY_MS")
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let round = at.round;
    let checksum = xxhash_rust::xxh3::xxh3_64(&body);
    let mut request = agent
        .http
        .put(format!(
            "{}/v1/migrations/{id}/rounds/{round}",
            out.target_url
        ))
        .bearer_auth(&out.key)
        .header("x-roam-part", format!("{}/{}", at.part, at.parts))
        .header("x-roam-checksum", format!("{checksum:016x}"));
    for (k, v) in headers {
        request = request.header(*k, v.as_str());
    }
    if at.last {
        request = request.header("x-roam-final", "1");
    }
    let r = request
        .body(body)
        .send()
        .await
        .map_err(|e| format!("round {round}: target unreachable: {e}"))?;
    if !r.status().is_success() {
        let status = r.status();
        return Err(format!(
            "round {round}: target answered {status}: {}",
            r.text().await.unwrap_or_default()
        ));
    }
    Ok(())
}

fn forwarder(agent: &Arc<Agent>, id: &str, out: &Outgoing, generation: u64) -> Forwarder {
    let http = agent.http.clone();
    let target = out.target_url.clone();
    let workload = out.workload.clone();
    let key = out.key.clone();
    let id = id.to_string();
    Arc::new(move |event: Forwarded| {
        let (http, target, workload, key, id) = (
            http.clone(),
            target.clone(),
            workload.clone(),
            key.clone(),
            id.clone(),
        );
        tokio::spawn(async move {
            match event {
                Forwarded::Http(request, reply) => {
                    let result = forward_http(&http, &target, &workload, generation, request)
                        .await
                        .map_err(|e| DriverError::Unavailable(workload.clone(), e));
                    let _ = reply.send(result);
                }
                Forwarded::Message(from, body, reply) => {
                    let sent = http
                        .post(format!("{target}/v1/migrations/{id}/messages"))
                        .query(&[("from", from.as_str())])
                        .bearer_auth(&key)
                        .body(body)
                        .send()
                        .await;
                    let result = match sent {
                        Ok(r) if r.status().is_success() => Ok(()),
                        Ok(r) => Err(format!("the new host answered {}", r.status())),
                        Err(e) => Err(format!("the new host is unreachable: {e}")),
                    };
                    let _ = reply.send(result.map_err(|e| DriverError::Unavailable(workload, e)));
                }
            }
        });
    })
}

async fn forward_http(
    http: &reqwest::Client,
    target: &str,
    workload: &str,
    generation: u64,
    request: Request,
) -> Result<Response, String> {
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| format!("method `{}` cannot be forwarded", request.method))?;
    let mut url = format!("{target}/w/{workload}{}", request.path);
    if !request.query.is_empty() {
        url.push('?');
        url.push_str(&request.query);
    }
    let mut builder = http.request(method, url).body(request.body);
    for (k, v) in &request.headers {
        if k != "host" && k != "content-length" && !roam_proto::is_roam_header(k) {
            builder = builder.header(k.as_str(), v.as_str());
        }
    }
    let r = builder
        .header(roam_proto::GENERATION_HEADER, generation.to_string())
        .send()
        .await
        .map_err(|e| format!("the new host is unreachable: {e}"))?;
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .filter(|(k, _)| *k != "content-length" && *k != "transfer-encoding" && *k != "date")
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let body = r
        .bytes()
        .await
        .map_err(|e| format!("the new host's answer broke off: {e}"))?;
    Ok(Response {
        status,
        headers,
        body: body.to_vec(),
    })
}

/// Longest the source waits for the target to take the commit.
const ACTIVATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The source is prepared — the commit point: the target holds the final
/// state and this host never resumes by itself. It activates the target
/// itself and hands off, without a round trip through the scheduler (which
/// learns it from the `committed` progress line). If the target does not
/// take it, the source stays prepared and the scheduler decides: it retries
/// the target, or resumes the source at a higher generation.
async fn activate_target(
    agent: &Arc<Agent>,
    id: &str,
    out: &Arc<Outgoing>,
    mut report: MigrationProgress,
    progress: &mpsc::Sender<MigrationProgress>,
) {
    {
        let mut state = out.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 != OutPhase::Prepared {
            // The scheduler decided first.
            return;
        }
        state.0 = OutPhase::Committing;
    }
    let activated = match agent
        .http
        .post(format!("{}/v1/migrations/{id}/activate", out.target_url))
        .bearer_auth(&out.key)
        .timeout(ACTIVATE_TIMEOUT)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let status = r.status();
            Err(format!("{status}: {}", r.text().await.unwrap_or_default()))
        }
        Err(e) => Err(format!("unreachable: {e}")),
    };
    match activated {
        Ok(()) => {
            let downtime = {
                let mut state = out.state.lock().unwrap_or_else(|e| e.into_inner());
                state.0 = OutPhase::Committed;
                state.2 = state.1.map(|t| t.elapsed().as_micros() as u64);
                state.2
            };
            out.settled.notify_waiters();
            hand_off(agent, id, out, out.generation, &out.target_url, downtime).await;
            report.phase = "committed".into();
            report.downtime_us = downtime;
        }
        Err(e) => {
            out.set_phase(OutPhase::Prepared);
            tracing::warn!(migration = %id, error = %e, "the target did not take the commit; the scheduler decides");
            report.error = Some(format!("the target did not take the commit: {e}"));
        }
    }
    let _ = progress.send(report).await;
}

/// From the commit on this host never serves the workload: requests routed
/// here are refused as stale, those it held go to the target.
async fn hand_off(
    agent: &Arc<Agent>,
    id: &str,
    out: &Arc<Outgoing>,
    generation: u64,
    target: &str,
    downtime: Option<u64>,
) {
    agent
        .migrations
        .moved
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(out.workload.clone(), target.to_string());
    {
        let mut workloads = agent.workloads.lock().await;
        if workloads
            .get(&out.workload)
            .is_some_and(|r| r.handle.same(&out.handle))
        {
            workloads.remove(&out.workload);
        }
    }
    agent.bus.unregister(&out.workload);
    out.handle
        .handoff(forwarder(agent, id, out, generation))
        .await;
    // The driver forwards until the last handle to it is gone: drop ours.
    {
        let mut committed = agent
            .migrations
            .committed
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        committed.retain(|_, (_, at)| at.elapsed() < STALE);
        committed.insert(id.to_string(), (downtime, Instant::now()));
    }
    agent
        .migrations
        .outgoing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id);
    tracing::info!(migration = %id, workload = %out.workload, downtime_us = ?downtime, "migration committed: handed off");
}

/// The scheduler's commit, on the source (it may have handed off already).
async fn commit_outgoing(
    agent: &Arc<Agent>,
    id: &str,
    out: Arc<Outgoing>,
    decision: &MigrationDecision,
) -> HttpResponse {
    let decided = out
        .when_settled(|state| match state.0 {
            OutPhase::Committed => Ok((false, state.2)),
            OutPhase::Prepared => {
                state.0 = OutPhase::Committed;
                state.2 = state.1.map(|t| t.elapsed().as_micros() as u64);
                Ok((true, state.2))
            }
            phase => Err(phase),
        })
        .await;
    let downtime = match decided {
        Ok((false, downtime)) => downtime,
        Ok((true, downtime)) => {
            let target = if decision.target_url.is_empty() {
                out.target_url.clone()
            } else {
                decision.target_url.clone()
            };
            hand_off(agent, id, &out, decision.generation, &target, downtime).await;
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

async fn commit(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Json(decision): Json<MigrationDecision>,
) -> HttpResponse {
    if let Some(out) = agent.migrations.outgoing(&id) {
        return commit_outgoing(&agent, &id, out, &decision).await;
    }
    if let Some(downtime_us) = agent.migrations.committed_before(&id) {
        return Json(CommitOutcome { downtime_us }).into_response();
    }
    commit_incoming(&agent, &id, decision.generation).await
}

/// What this host knows of a migration, for a restarted scheduler deciding
/// whether it reached its commit point (see `MigrationStatus`).
async fn status(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Query(q): Query<MigrationStatusQuery>,
) -> HttpResponse {
    let answer = |role: &str, phase: &str| {
        Json(MigrationStatus {
            role: role.into(),
            phase: phase.into(),
        })
        .into_response()
    };
    if let Some(out) = agent.migrations.outgoing(&id) {
        let phase = match out.phase() {
            OutPhase::Sending => "sending",
            OutPhase::Prepared => "prepared",
            OutPhase::Committing => "committing",
            OutPhase::Committed => "committed",
            OutPhase::Aborted => "aborted",
        };
        return answer("source", phase);
    }
    if agent.migrations.committed_before(&id).is_some() {
        return answer("source", "committed");
    }
    if let Some(entry) = agent.migrations.incoming.lock().await.get(&id) {
        return answer("target", if entry.ready { "ready" } else { "receiving" });
    }
    let committed_here = agent.migrations.activated(&id);
    // Long after the commit only the workload itself is left to show it.
    let serving = committed_here
        || agent
            .workloads
            .lock()
            .await
            .get(&q.workload)
            .is_some_and(|r| q.generation > 0 && r.generation >= q.generation);
    if serving {
        return answer("target", "serving");
    }
    answer("", "")
}

async fn abort(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    Json(decision): Json<MigrationDecision>,
) -> HttpResponse {
    if agent.migrations.committed_before(&id).is_some() {
        return error(
            StatusCode::CONFLICT,
            format!("migration `{id}` was committed; it cannot be aborted"),
        );
    }
    {
        // Under the lock the target's activation takes.
        let mut incoming = agent.migrations.incoming.lock().await;
        if agent.migrations.activated(&id) {
            return error(
                StatusCode::CONFLICT,
                format!("migration `{id}` was committed here; it cannot be aborted"),
            );
        }
        if incoming.remove(&id).is_some() {
            tracing::info!(migration = %id, "migration aborted: dropped what was received");
        }
    }
    if let Some(out) = agent.migrations.outgoing(&id) {
        let phase = out
            .when_settled(|state| {
                let phase = state.0;
                match phase {
                    OutPhase::Sending => out.cancelled.store(true, Ordering::SeqCst),
                    OutPhase::Prepared => state.0 = OutPhase::Aborted,
                    OutPhase::Committing | OutPhase::Committed | OutPhase::Aborted => {}
                }
                phase
            })
            .await;
        match phase {
            OutPhase::Committing | OutPhase::Committed => {
                return error(
                    StatusCode::CONFLICT,
                    format!("migration `{id}` was committed; it cannot be aborted"),
                );
            }
            OutPhase::Sending => {}
            OutPhase::Prepared => {
                if decision.generation > 0
                    && let Some(r) = agent.workloads.lock().await.get_mut(&out.workload)
                {
                    r.generation = decision.generation;
                }
                out.handle.resume().await;
                agent
                    .migrations
                    .outgoing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                tracing::info!(migration = %id, workload = %out.workload, "migration aborted: serving on");
            }
            OutPhase::Aborted => {}
        }
    }
    StatusCode::OK.into_response()
}

/// `DELETE /v1/migrations/{id}` from the source (with the key): it gave up;
/// drop what was received.
async fn source_abort(
    State(agent): State<Arc<Agent>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> HttpResponse {
    let mut incoming = agent.migrations.incoming.lock().await;
    match incoming.get(&id) {
        Some(e) if super::presents(&headers, &e.key) => {
            incoming.remove(&id);
            tracing::info!(migration = %id, "the source gave up; dropped what was received");
            StatusCode::OK.into_response()
        }
        Some(_) => error(StatusCode::UNAUTHORIZED, "wrong migration key"),
        None => StatusCode::OK.into_response(),
    }
}

/// A test hook: a delay (milliseconds) from the environment, so fault tests
/// can act while a migration is in a given phase.
pub(crate) fn fault_delay(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages as the source writes them: 300 pages in runs of 1..100, so
    /// frames of 1..64 pages; the memory has 1000 pages.
    fn stream() -> (Vec<u64>, Vec<u8>, Vec<u8>) {
        let mut pages = Vec::new();
        let mut next = 3u64;
        for run in [1u64, 100, 2, 64, 65, 68] {
            pages.extend(next..next + run);
            next += run + 7;
        }
        let data: Vec<u8> = (0..pages.len() * 4096)
            .map(|i| (i * 31 / 7) as u8)
            .collect();
        let mut wire = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let n = write_captured(&mut wire, &pages, &data, ALL).await?;
            write_end(&mut wire, n).await
        })
        .unwrap();
        (pages, data, wire)
    }

    const ALL: Share = Share {
        index: 0,
        streams: 1,
    };

    /// Land a page stream in a memory of 1000 pages, as the target does.
    fn read(wire: &[u8], total: usize) -> Result<Vec<u8>, String> {
        let mut memory = vec![0u8; 1000 * 4096];
        read_into(&mut memory, wire, total)?;
        Ok(memory)
    }

    fn read_into(memory: &mut [u8], wire: &[u8], total: usize) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let pages = memory.len() as u64 / PAGE;
        rt.block_on(async {
            let mut io = wire;
            let mut frames = FrameReader::new(&mut io, total as u64, pages);
            while let Some((first, bytes)) = frames.next().await? {
                let at = first as usize * 4096;
                memory[at..at + bytes.len()].copy_from_slice(bytes);
            }
            Ok(())
        })
    }

    /// Live memory: zero pages are skipped, runs cross window edges, and
    /// what lands is the memory.
    #[test]
    fn live_memory_streams_its_non_zero_pages() {
        let mut bytes = vec![0u8; 700 * 4096];
        for p in (0..250).chain(255..260).chain([300, 301, 699]) {
            bytes[p * 4096..(p + 1) * 4096].fill((p % 200) as u8 + 1);
        }
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        let memory = LiveMemory::lend_for_test(bytes);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let mut wire = Vec::new();
        let pages = rt
            .block_on(async {
                let n = write_live(&mut wire, &memory, ALL).await?;
                write_end(&mut wire, n).await.map(|()| n)
            })
            .unwrap();
        assert_eq!(pages, 250 + 5 + 3);
        assert!(
            wire.len() < (pages as usize + 8) * 4096,
            "zero pages are not sent"
        );
        let memory = read(&wire, bytes.len()).unwrap();
        assert_eq!(&memory[..bytes.len()], bytes);
    }

    /// Several streams: each carries only its windows, none is left out,
    /// and together they rebuild the memory — live or captured.
    #[test]
    fn page_streams_share_the_memory_out_by_window() {
        let mut bytes = vec![0u8; 1000 * 4096];
        for p in (0..1000).filter(|p| p % 7 != 3) {
            bytes[p * 4096..(p + 1) * 4096].fill((p % 250) as u8 + 1);
        }
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        let sent: Vec<u64> = (0..1000u64).filter(|p| p % 7 != 3).collect();
        let data: Vec<u8> = sent
            .iter()
            .flat_map(|&p| bytes[p as usize * 4096..(p as usize + 1) * 4096].to_vec())
            .collect();
        let memory = LiveMemory::lend_for_test(bytes);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        for streams in [1u64, 2, 3, 8] {
            let mut live = vec![0u8; bytes.len()];
            let mut captured = vec![0u8; bytes.len()];
            let mut total = 0;
            for index in 0..streams {
                let share = Share { index, streams };
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let (n, m) = rt
                    .block_on(async {
                        let n = write_live(&mut a, &memory, share).await?;
                        write_end(&mut a, n).await?;
                        let m = write_captured(&mut b, &sent, &data, share).await?;
                        write_end(&mut b, m).await?;
                        Ok::<_, String>((n, m))
                    })
                    .unwrap();
                assert_eq!(n, m, "{index}/{streams}");
                total += n;
                // Only this stream's windows arrive.
                let mut alone = vec![0u8; bytes.len()];
                read_into(&mut alone, &a, bytes.len()).unwrap();
                for (p, page) in alone.chunks(4096).enumerate() {
                    let mine = share.carries(p as u64) && p % 7 != 3;
                    assert_eq!(
                        page.iter().any(|&b| b != 0),
                        mine,
                        "page {p} on {index}/{streams}"
                    );
                }
                read_into(&mut live, &a, bytes.len()).unwrap();
                read_into(&mut captured, &b, bytes.len()).unwrap();
            }
            assert_eq!(total, sent.len() as u64, "{streams} streams");
            assert!(live == bytes, "{streams} streams rebuild the live memory");
            assert!(captured == bytes, "{streams} streams rebuild the capture");
        }
    }

    #[test]
    fn page_frames_land_where_they_belong() {
        let (pages, data, wire) = stream();
        let memory = read(&wire, data.len()).unwrap();
        for (i, &p) in pages.iter().enumerate() {
            let p = p as usize;
            assert_eq!(
                memory[p * 4096..(p + 1) * 4096],
                data[i * 4096..(i + 1) * 4096]
            );
        }
        assert!(
            memory[..3 * 4096].iter().all(|&b| b == 0),
            "untouched pages stay"
        );
    }

    #[test]
    fn a_corrupted_cut_or_oversized_page_stream_is_refused() {
        let (_, data, wire) = stream();
        // Any flipped byte: in a header, the pages or a checksum.
        for at in (0..wire.len())
            .step_by(997)
            .chain([0, 8, 12, 16, wire.len() - 1])
        {
            let mut bad = wire.clone();
            bad[at] ^= 0x40;
            assert!(read(&bad, data.len()).is_err(), "flipped byte {at}");
        }
        // Cut anywhere.
        for len in [0, 10, 16, 5000, wire.len() / 2, wire.len() - 1] {
            assert!(read(&wire[..len], data.len()).is_err(), "cut at {len}");
        }
        // More bytes than announced; an end frame that counts other pages
        // than arrived (checksum made to match).
        assert!(read(&wire, data.len() - 4096).is_err());
        assert!(
            read(&wire, data.len() + 4096).is_ok(),
            "the total is a bound"
        );
        let mut bad = wire.clone();
        let end = bad.len() - 24;
        bad[end + 12] ^= 1;
        let sum = xxhash_rust::xxh3::xxh3_64(&bad[end..end + 16]).to_le_bytes();
        bad[end + 16..].copy_from_slice(&sum);
        let err = read(&bad, data.len()).unwrap_err();
        assert!(err.contains("pages received"), "{err}");
        // A frame past the memory's end or over FRAME_PAGES, even with a
        // matching checksum, is refused before anything is read into memory.
        for (first, count) in [(999u64, 2u32), (u64::MAX - 1, 2), (0, FRAME_PAGES + 1)] {
            let head = frame_head(first, count);
            let mut frame = head.to_vec();
            let pages = vec![1u8; count as usize * 4096];
            frame.extend(&pages);
            let mut h = xxhash_rust::xxh3::Xxh3Default::new();
            h.update(&head);
            h.update(&pages);
            frame.extend(h.digest().to_le_bytes());
            let err = read(&frame, pages.len()).unwrap_err();
            assert!(err.contains("outside"), "{err}");
        }
    }
}
