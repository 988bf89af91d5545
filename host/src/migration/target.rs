//! The target's side of a live migration: prepare (reserve a slot), receive
//! rounds and page streams into the reserved instance, activate.
//!
//! State machine (see `docs/migration-protocol.md`):
//!
//! ```text
//!  prepare ──▶ Round{0} ──parts──▶ Round{0, applied} ──pages──▶ Pages ──all streams ended──▶ Round{1}
//!                                                                                           │
//!   Round{n} ──parts, snapshot applied──▶ Round{n+1} … ──final round applied──▶ Ready ──activate──▶ (serving)
//! ```
//!
//! Any refused part or frame removes the migration (the instance never
//! runs); so does the source's `DELETE` or the scheduler's abort before
//! activation. A migration nobody commits or aborts for [`STALE`] is
//! dropped at the next prepare. A crash of the target loses what it
//! received: before activation the source serves on; after it, the
//! workload is lost with the host, like any other workload there.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use roam_proto::Place;
use roam_proto::headers::{self, Index};
use roam_proto::pages::{PAGE_SIZE, Verdict};
use roam_proto::reply::error;
use roam_proto::{CommitOutcome, FromQuery, PrepareMigration, StartInstance, TargetPhase};
use roam_runtime::abi::codec::MoveKind;
use roam_runtime::snapshot::codec::{self, DecodeLimits};
use roam_runtime::{Digest, Instance, Module, Workload};

use super::error::{ActivateError, KeyError, ReceiveError};
use super::pages::FrameReader;
use super::{Activated, PART, STALE};
use crate::daemon::Host;
use crate::fault::Fault;

/// How long one round part's body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Room for host state (key-value data, inbox, timers) beyond the memory cap.
const STATE_OVERHEAD: u64 = 64 << 20;
const PAGE: u64 = PAGE_SIZE as u64;

/// A migration being received.
pub(super) struct Incoming {
    pub(super) workload: String,
    pub(super) key: String,
    spec: StartInstance,
    module: Module,
    /// Reserved at prepare; holds the state received so far.
    instance: Instance,
    source: Place,
    state: Receive,
    /// Last prepare or round.
    touched: Instant,
}

/// Where a received migration is.
enum Receive {
    /// Expecting part `part` of round `round`.
    Round {
        round: u32,
        part: u32,
        snapshot: Joined,
    },
    /// Round 0's page streams (its last part, `parts - 1`) are arriving.
    Pages { parts: u32, intake: Intake },
    /// The final round was applied: the final state, not serving.
    Ready,
}

/// A round's encoded snapshot.
enum Joined {
    /// Parts joined so far (possibly none).
    Partial(Vec<u8>),
    /// Decoded and applied onto the reserved instance.
    Applied,
}

/// Round 0's page streams as they arrive.
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

impl Incoming {
    /// As the status answer names it.
    pub(super) fn phase(&self) -> TargetPhase {
        match self.state {
            Receive::Ready => TargetPhase::Ready,
            _ => TargetPhase::Receiving,
        }
    }

    pub(super) fn is_ready(&self) -> bool {
        matches!(self.state, Receive::Ready)
    }

    /// The generation it will serve at.
    pub(super) fn generation(&self) -> u64 {
        self.spec.generation
    }

    /// The part `x-roam-part: I/N` names, if it is the one expected next in
    /// `round` (`parts` for a page stream, which must be the last part).
    fn expect_part(&self, round: u32, headers: &HeaderMap) -> Result<Index, ReceiveError> {
        let at: Index = header(headers, headers::PART)
            .and_then(|v| v.parse().ok())
            .ok_or(ReceiveError::Header(headers::PART))?;
        let expected = match &self.state {
            Receive::Ready => return Err(ReceiveError::AfterFinal),
            Receive::Round {
                round: expected, ..
            } if *expected != round => {
                return Err(ReceiveError::WrongRound {
                    arrived: round,
                    expected: *expected,
                });
            }
            Receive::Round { part, .. } => *part,
            Receive::Pages { .. } if round != 0 => {
                return Err(ReceiveError::WrongRound {
                    arrived: round,
                    expected: 0,
                });
            }
            Receive::Pages { parts, .. } => parts - 1,
        };
        if at.index != expected {
            return Err(ReceiveError::WrongPart {
                part: at.index,
                parts: at.count,
                expected,
            });
        }
        Ok(at)
    }

    /// Count a received part of `parts`; returns whether the round ended
    /// (then the next round is expected, or, with `last`, the migration is
    /// ready).
    fn end_part(&mut self, round: u32, parts: u32, last: bool) -> Result<bool, ReceiveError> {
        let (part, applied) = match &mut self.state {
            Receive::Round { part, snapshot, .. } => {
                *part += 1;
                (*part, matches!(snapshot, Joined::Applied))
            }
            // The page streams are round 0's last part, after its snapshot.
            Receive::Pages { .. } => (parts, true),
            Receive::Ready => return Err(ReceiveError::AfterFinal),
        };
        if part < parts {
            return Ok(false);
        }
        if !applied {
            return Err(ReceiveError::Incomplete { round });
        }
        self.state = if last {
            Receive::Ready
        } else {
            Receive::Round {
                round: round + 1,
                part: 0,
                snapshot: Joined::Partial(Vec::new()),
            }
        };
        Ok(true)
    }

    /// A piece of the round's encoded snapshot; decode and apply it once whole.
    fn apply_snapshot_part(
        &mut self,
        round: u32,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), ReceiveError> {
        let Receive::Round { snapshot, .. } = &mut self.state else {
            return Err(ReceiveError::PagesNotLast);
        };
        let Joined::Partial(buffer) = snapshot else {
            return Err(ReceiveError::SecondSnapshot { round });
        };
        let total: u64 = header(headers, headers::TOTAL)
            .and_then(|t| t.parse().ok())
            .ok_or(ReceiveError::Header(headers::TOTAL))?;
        let limit = self.spec.memory.saturating_add(STATE_OVERHEAD);
        if total > limit {
            return Err(ReceiveError::TooLarge { total, limit });
        }
        if buffer.is_empty() {
            // Bounded above: at most the memory cap plus the state overhead.
            *buffer = Vec::with_capacity(total as usize);
        }
        if buffer.len() as u64 + body.len() as u64 > total {
            return Err(ReceiveError::Longer { round, total });
        }
        buffer.extend_from_slice(body);
        if (buffer.len() as u64) < total {
            return Ok(());
        }
        let limits = DecodeLimits {
            max_memory_bytes: self.spec.memory,
            ..DecodeLimits::default()
        };
        let decoded = codec::decode(buffer, Some(&self.module.digest()), &limits)
            .map_err(|source| ReceiveError::Decode { round, source })?;
        if (round == 0) != decoded.is_full() {
            return Err(ReceiveError::Kind { round });
        }
        self.instance
            .apply(&decoded)
            .map_err(|source| ReceiveError::Apply { round, source })?;
        *snapshot = Joined::Applied;
        if round == 0 {
            // The pages arriving fault in as huge pages (one fault and clear
            // per 2 MiB); after the streams, faults take small pages again.
            self.instance.set_huge_pages(true);
        }
        Ok(())
    }

    /// Round 0's page streams, while they arrive.
    fn intake(&mut self) -> Result<&mut Intake, ReceiveError> {
        match &mut self.state {
            Receive::Pages { intake, .. } => Ok(intake),
            _ => Err(ReceiveError::StreamsEnded),
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Incoming {
    /// The host the migration comes from.
    pub(super) fn source_host(&self) -> &str {
        &self.source.host
    }
}

/// The received migration `id` if `headers` carry its key, marked as
/// touched now.
pub(super) fn presented<'a>(
    incoming: &'a mut HashMap<String, Incoming>,
    id: &str,
    headers: &HeaderMap,
) -> Result<&'a mut Incoming, KeyError> {
    let Some(entry) = incoming.get_mut(id) else {
        return Err(KeyError::Unknown(id.to_string()));
    };
    if !roam_proto::reply::presents(headers, &entry.key) {
        return Err(KeyError::Wrong);
    }
    entry.touched = Instant::now();
    Ok(entry)
}

/// `POST /v1/migrations/{id}/prepare` (scheduler): fetch and compile the
/// module, reserve an instance slot, remember the migration's key.
pub(super) async fn prepare(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
    Json(req): Json<PrepareMigration>,
) -> Response {
    if let Err(e) = roam_proto::check_protocol("the scheduler", req.protocol) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    if host.workloads.lock().await.contains_key(&req.workload) {
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
    let module = match host.module(&digest).await {
        Ok(m) => m,
        Err(e) => return e.reply(),
    };
    let fetched = began.elapsed();
    let config = host.instance_config(&req.workload, &req.instance);
    let instance = match host.runtime.reserve(&module, config).await {
        Ok(i) => i,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    tracing::info!(migration = %id, workload = %req.workload, module_ms = fetched.as_secs_f64() * 1e3, reserve_ms = (began.elapsed() - fetched).as_secs_f64() * 1e3, "prepared to receive");
    let mut incoming = host.migrations.incoming.lock().await;
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
            source: req.source,
            state: Receive::Round {
                round: 0,
                part: 0,
                snapshot: Joined::Partial(Vec::new()),
            },
            touched: Instant::now(),
        },
    );
    StatusCode::OK.into_response()
}

/// `PUT /v1/migrations/{id}/rounds/{round}`: one part of one round.
/// Headers: [`headers::PART`] `I/N`, [`headers::TOTAL`] (the whole round's
/// bytes), [`headers::CHECKSUM`] (xxh3-64 of this part), [`headers::FINAL`]
/// `1` on the last round. Any mismatch drops everything received.
pub(super) async fn receive_round(
    State(host): State<Arc<Host>>,
    Path((id, round)): Path<(String, u32)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // The key first, then the body read with no lock held: the registry of
    // incoming migrations is host-wide, and a slow sender must not hold up
    // every other migration (or an abort) while its bytes trickle in.
    let arrived = Instant::now();
    if let Err(e) = presented(&mut *host.migrations.incoming.lock().await, &id, &headers) {
        return error(e.status(), e.to_string());
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, PART)).await {
        Ok(Ok(b)) => b,
        failed => {
            let reason = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("not received within {BODY_TIMEOUT:?}"),
            };
            let why = ReceiveError::Body {
                round,
                part: 0,
                reason,
            };
            return refuse_round(&host, &id, why).await;
        }
    };
    let body = match decoded(&headers, body).await {
        Ok(body) => body,
        Err(reason) => {
            let why = ReceiveError::Body {
                round,
                part: 0,
                reason,
            };
            return refuse_round(&host, &id, why).await;
        }
    };
    let mut incoming = host.migrations.incoming.lock().await;
    let entry = match presented(&mut incoming, &id, &headers) {
        Ok(e) => e,
        Err(e) => return error(e.status(), e.to_string()),
    };
    let started = Instant::now();
    let commit = header(&headers, headers::ACTIVATE) == Some("1");
    if commit {
        tracing::debug!(migration = %id, round, bytes = body.len(), since_headers_ms = arrived.elapsed().as_secs_f64() * 1e3, "commit message read");
    }
    let applied = apply_part(entry, round, &headers, &body).and_then(|ended| {
        if commit && !entry.is_ready() {
            return Err(ReceiveError::Commit { round });
        }
        Ok(ended)
    });
    match applied {
        Ok(ended) => {
            if ended {
                tracing::debug!(migration = %id, round, apply_ms = started.elapsed().as_secs_f64() * 1e3, "round applied");
            }
            if !entry.is_ready() {
                return StatusCode::OK.into_response();
            }
            tracing::info!(migration = %id, rounds = round + 1, "final state received");
            if !commit {
                return StatusCode::OK.into_response();
            }
            // The commit message: serve now, answer once serving. In a task
            // of its own, so that a source that hangs up cannot stop an
            // activation half-way.
            let generation = entry.generation();
            drop(incoming);
            let activation = tokio::spawn({
                let (host, id) = (host.clone(), id.clone());
                async move { activate_incoming(&host, &id, generation).await }
            });
            match activation.await {
                Ok(Ok(outcome)) => Json(outcome).into_response(),
                Ok(Err(e)) => error(e.status(), e.to_string()),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        Err(e) => {
            tracing::warn!(migration = %id, error = %e, "migration stream refused; dropping it");
            incoming.remove(&id);
            host.migrations.arrival_changed();
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

/// A part's body as sent, or decompressed (`content-encoding: zstd`) into
/// at most [`PART`] bytes: a body that would decompress to more is refused
/// before more is written.
async fn decoded(headers: &HeaderMap, body: Bytes) -> Result<Bytes, String> {
    match headers
        .get(axum::http::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or_default())
    {
        None => Ok(body),
        Some(headers::ZSTD_ENCODING) => tokio::task::spawn_blocking(move || {
            zstd::bulk::decompress(&body, PART)
                .map(Bytes::from)
                .map_err(|e| {
                    format!("a compressed part that does not decompress within {PART} bytes: {e}")
                })
        })
        .await
        .map_err(|e| e.to_string())?,
        Some(other) => Err(format!(
            "content-encoding {other:?} is not {:?}",
            headers::ZSTD_ENCODING
        )),
    }
}

/// Drop migration `id` for `why`, and say so.
async fn refuse_round(host: &Host, id: &str, why: ReceiveError) -> Response {
    tracing::warn!(migration = %id, error = %why, "migration stream refused; dropping it");
    host.migrations.incoming.lock().await.remove(id);
    host.migrations.arrival_changed();
    error(StatusCode::BAD_REQUEST, why.to_string())
}

/// Check one part (a piece of the round's encoded snapshot; pieces are
/// joined up to the total, then decoded and applied) and apply what it
/// completes. Returns whether the round ended.
fn apply_part(
    entry: &mut Incoming,
    round: u32,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<bool, ReceiveError> {
    let at = entry.expect_part(round, headers)?;
    let checksum = header(headers, headers::CHECKSUM)
        .and_then(|c| u64::from_str_radix(c, 16).ok())
        .ok_or(ReceiveError::Header(headers::CHECKSUM))?;
    if xxhash_rust::xxh3::xxh3_64(body) != checksum {
        return Err(ReceiveError::Checksum {
            round,
            part: at.index,
        });
    }
    entry.apply_snapshot_part(round, headers, body)?;
    let last = header(headers, headers::FINAL) == Some("1");
    entry.end_part(round, at.count, last)
}

/// `POST /v1/migrations/{id}/pages`, an HTTP upgrade to
/// [`headers::PAGES_UPGRADE`]: a raw stream carrying round 0's memory pages,
/// the last part of round 0 ([`headers::PART`] `I/N`, [`headers::TOTAL`]:
/// most bytes of pages, [`headers::FINAL`] `1` for a stop-and-copy). The
/// pages may come over several such streams at once ([`headers::STREAM`]
/// `I/N`, each stream once; the part ends when all N ended). The frames are
/// `roam_proto::pages`; all streams together carry at most the total. The
/// target answers a [`Verdict`] on each stream and closes it; on a refusal
/// it drops the instance, which never runs.
pub(super) async fn receive_pages(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
    mut request: axum::extract::Request,
) -> Response {
    let headers = request.headers().clone();
    let checked = {
        let mut incoming = host.migrations.incoming.lock().await;
        let entry = match presented(&mut incoming, &id, &headers) {
            Ok(e) => e,
            Err(e) => return error(e.status(), e.to_string()),
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
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let Some(upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        host.migrations.incoming.lock().await.remove(&id);
        return error(
            StatusCode::BAD_REQUEST,
            format!("expected an upgrade to `{}`", headers::PAGES_UPGRADE),
        );
    };
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let io = match upgrade.await {
            Ok(u) => hyper_util::rt::TokioIo::new(u),
            Err(e) => {
                tracing::warn!(migration = %id, error = %e, "page stream upgrade failed");
                host.migrations.incoming.lock().await.remove(&id);
                return;
            }
        };
        // Frame heads and checksums are small reads: buffer them (reads of
        // pages larger than the buffer bypass it).
        let mut io = tokio::io::BufReader::with_capacity(64 << 10, io);
        let started = Instant::now();
        let verdict = receive_stream(&host, &id, &headers, &mut io, &stream).await;
        tracing::debug!(migration = %id, stream = stream.index, announced = stream.total, stream_ms = started.elapsed().as_secs_f64() * 1e3, "pages received");
        let line = match verdict {
            Ok(()) => Verdict::Ok,
            Err(e) => Verdict::Refused(e.to_string()),
        };
        let _ = io.write_all(line.line().as_bytes()).await;
        let _ = io.shutdown().await;
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (axum::http::header::CONNECTION, "upgrade"),
            (axum::http::header::UPGRADE, headers::PAGES_UPGRADE),
        ],
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
    /// A stop-and-copy: round 0 is the final round.
    last: bool,
}

/// Check a page stream's headers against what `entry` expects — the last
/// part of round 0, after its snapshot, with at most the memory's bytes, a
/// stream not opened before — and count it as opened.
fn open_page_stream(entry: &mut Incoming, headers: &HeaderMap) -> Result<PageStream, ReceiveError> {
    let at = entry.expect_part(0, headers)?;
    let total: u64 = header(headers, headers::TOTAL)
        .and_then(|t| t.parse().ok())
        .ok_or(ReceiveError::Header(headers::TOTAL))?;
    let (index, streams) = match header(headers, headers::STREAM) {
        None => (0, 1),
        Some(v) => {
            let i: Index = v
                .parse()
                .map_err(|_| ReceiveError::Header(headers::STREAM))?;
            (i.index, i.count)
        }
    };
    if streams > roam_proto::MAX_PAGE_STREAMS {
        return Err(ReceiveError::StreamIndex { index, streams });
    }
    if let Receive::Round { part, snapshot, .. } = &entry.state {
        if !matches!(snapshot, Joined::Applied) || part + 1 != at.count {
            return Err(ReceiveError::PagesNotLast);
        }
        let (_, memory_len) = entry
            .instance
            .memory_range()
            .ok_or(ReceiveError::NoMemory)?;
        if total > memory_len as u64 || !total.is_multiple_of(PAGE) {
            return Err(ReceiveError::PagesDontFit {
                total,
                memory: memory_len as u64,
            });
        }
        entry.state = Receive::Pages {
            parts: at.count,
            intake: Intake {
                streams,
                opened: 0,
                ended: 0,
                landed: 0,
                total,
            },
        };
    }
    let Receive::Pages { parts, .. } = entry.state else {
        return Err(ReceiveError::PagesNotLast);
    };
    if parts != at.count {
        return Err(ReceiveError::PagesNotLast);
    }
    let (_, memory_len) = entry
        .instance
        .memory_range()
        .ok_or(ReceiveError::NoMemory)?;
    let intake = entry.intake()?;
    if intake.streams != streams || intake.total != total {
        return Err(ReceiveError::StreamMismatch {
            index,
            streams,
            total,
            before_streams: intake.streams,
            before_total: intake.total,
        });
    }
    if intake.opened & (1 << index) != 0 {
        return Err(ReceiveError::Reopened(index));
    }
    intake.opened |= 1 << index;
    Ok(PageStream {
        parts,
        total,
        memory_pages: memory_len as u64 / PAGE,
        index,
        last: header(headers, headers::FINAL) == Some("1"),
    })
}

/// Land one page stream's frames in the reserved instance; the last stream
/// to end ends round 0. Any failure drops the migration.
async fn receive_stream(
    host: &Host,
    id: &str,
    headers: &HeaderMap,
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    stream: &PageStream,
) -> Result<(), ReceiveError> {
    let landed = land_frames(host, id, headers, io, stream).await;
    let mut incoming = host.migrations.incoming.lock().await;
    let Ok(entry) = presented(&mut incoming, id, headers) else {
        return Err(landed.err().unwrap_or(ReceiveError::Ended));
    };
    let ended = landed.and_then(|()| {
        let intake = entry.intake()?;
        intake.ended += 1;
        if intake.ended < intake.streams {
            return Ok(());
        }
        entry.instance.set_huge_pages(false);
        entry.end_part(0, stream.parts, stream.last).map(|_| ())
    });
    if let Err(e) = &ended {
        tracing::warn!(migration = %id, error = %e, "migration stream refused; dropping it");
        incoming.remove(id);
    }
    ended
}

/// Read frames and copy each, once checked, into the reserved instance.
async fn land_frames(
    host: &Host,
    id: &str,
    headers: &HeaderMap,
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    stream: &PageStream,
) -> Result<(), ReceiveError> {
    let mut frames = FrameReader::new(io, stream.total, stream.memory_pages);
    while let Some((first, pages)) = frames.next().await? {
        let mut incoming = host.migrations.incoming.lock().await;
        let entry = presented(&mut incoming, id, headers).map_err(|_| ReceiveError::Ended)?;
        let intake = entry.intake()?;
        intake.landed += pages.len() as u64;
        if intake.landed > intake.total {
            return Err(ReceiveError::OverTotal(intake.total));
        }
        let at = (first * PAGE) as usize;
        entry
            .instance
            .memory_data_mut()
            .get_mut(at..at + pages.len())
            .ok_or(ReceiveError::FrameOutside)?
            .copy_from_slice(pages);
    }
    Ok(())
}

/// `POST /v1/migrations/{id}/messages`: a message the source forwards
/// after the commit, with the migration key.
pub(super) async fn forwarded_message(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
    Query(q): Query<FromQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let workload = match host.migrations.activated_with_key(&id, &headers) {
        Ok(workload) => workload,
        Err(e) => return error(e.status(), e.to_string()),
    };
    crate::control::deliver(&host, &workload, &q, body).await
}

/// Activate the received migration `id`: the workload serves here from now
/// on at `generation`. Activated by the source or by the scheduler (the
/// second waits for the first, so an answer of "committed" always means
/// "serving"); a repeated activation answers as the first did.
pub(super) async fn activate_incoming(
    host: &Arc<Host>,
    id: &str,
    generation: u64,
) -> Result<CommitOutcome, ActivateError> {
    Fault::Commit.pause().await;
    let activated = activate_locked(host, id, generation).await;
    host.migrations
        .starting
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    // Requests waiting for the workload look again.
    host.migrations.arrival_changed();
    activated
}

/// [`activate_incoming`], one at a time.
async fn activate_locked(
    host: &Arc<Host>,
    id: &str,
    generation: u64,
) -> Result<CommitOutcome, ActivateError> {
    let _activating = host.migrations.activating.lock().await;
    let entry = {
        let mut incoming = host.migrations.incoming.lock().await;
        match incoming.get(id) {
            Some(e) if e.is_ready() => {
                let entry = incoming.remove(id);
                // Recorded under the lock an abort takes: from here on an
                // abort is refused.
                if let Some(e) = &entry {
                    host.migrations.record_activated(
                        id,
                        Activated {
                            workload: e.workload.clone(),
                            key: e.key.clone(),
                            source: e.source.host.clone(),
                            at: Instant::now(),
                        },
                    );
                    *host
                        .migrations
                        .starting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) =
                        Some((e.workload.clone(), generation));
                }
                entry
            }
            Some(_) => return Err(ActivateError::NotReady(id.to_string())),
            None => None,
        }
    };
    let Some(entry) = entry else {
        // Activated before (a retried commit), or unknown.
        return if host.migrations.activated(id) {
            Ok(CommitOutcome::default())
        } else {
            Err(ActivateError::Unknown(id.to_string()))
        };
    };
    Fault::Activate.pause().await;
    let mut instance = entry.instance;
    instance.set_generation(generation);
    let config = instance.config().clone();
    let workload = match Workload::resume(instance, Some((&entry.source, MoveKind::Migrated))).await
    {
        Ok(w) => w,
        Err(e) => {
            host.migrations.forget_activated(id);
            return Err(ActivateError::Resume(e));
        }
    };
    let spec = StartInstance {
        generation,
        ..entry.spec
    };
    host.run_workload(entry.module, config, workload, spec, false)
        .await;
    tracing::info!(migration = %id, workload = %entry.workload, generation, "migration committed: serving here");
    Ok(CommitOutcome::default())
}

/// `POST /v1/migrations/{id}/activate` from the source (with the key): it
/// reached the commit point; serve at the generation the scheduler gave at
/// prepare.
pub(super) async fn activate(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let generation = {
        let mut incoming = host.migrations.incoming.lock().await;
        match presented(&mut incoming, &id, &headers) {
            Ok(entry) => entry.spec.generation,
            Err(KeyError::Unknown(_)) => {
                drop(incoming);
                // Activated before (a retry, or the scheduler's commit)?
                return match host.migrations.activated_with_key(&id, &headers) {
                    Ok(_) => {
                        // Wait for an activation under way; it may fail.
                        let _activating = host.migrations.activating.lock().await;
                        if host.migrations.activated(&id) {
                            Json(CommitOutcome::default()).into_response()
                        } else {
                            error(StatusCode::NOT_FOUND, format!("no migration `{id}` here"))
                        }
                    }
                    Err(e) => error(e.status(), e.to_string()),
                };
            }
            Err(e) => return error(e.status(), e.to_string()),
        }
    };
    match activate_incoming(&host, &id, generation).await {
        Ok(outcome) => Json(outcome).into_response(),
        Err(e) => error(e.status(), e.to_string()),
    }
}

/// `GET /v1/migrations/{id}` from the source (with the key): `204` while
/// the migration is received here. The source calls it to open
/// connections ahead of its commit message, so the requests it forwards
/// meanwhile pay no connection set-up on the link.
pub(super) async fn probe(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match presented(&mut *host.migrations.incoming.lock().await, &id, &headers) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(e.status(), e.to_string()),
    }
}

/// `DELETE /v1/migrations/{id}` from the source (with the key): it gave up;
/// drop what was received.
pub(super) async fn source_abort(
    State(host): State<Arc<Host>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut incoming = host.migrations.incoming.lock().await;
    match presented(&mut incoming, &id, &headers) {
        Ok(_) => {
            incoming.remove(&id);
            host.migrations.arrival_changed();
            tracing::info!(migration = %id, "the source gave up; dropped what was received");
            StatusCode::OK.into_response()
        }
        Err(KeyError::Wrong) => error(StatusCode::UNAUTHORIZED, "wrong migration key"),
        Err(KeyError::Unknown(_)) => StatusCode::OK.into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn with(encoding: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(e) = encoding {
            headers.insert(axum::http::header::CONTENT_ENCODING, e.parse().unwrap());
        }
        headers
    }

    /// A compressed part arrives as the part; one that would decompress
    /// past a part's bound, does not decompress, or names another encoding
    /// is refused.
    #[tokio::test]
    async fn compressed_parts_are_bounded_and_checked() {
        let part: Vec<u8> = (0..100_000u32).map(|i| (i % 97) as u8).collect();
        let packed = Bytes::from(zstd::bulk::compress(&part, 1).unwrap());
        let zstd = with(Some(headers::ZSTD_ENCODING));
        assert_eq!(decoded(&zstd, packed.clone()).await.unwrap(), part);
        assert_eq!(decoded(&with(None), packed.clone()).await.unwrap(), packed);
        let bomb = Bytes::from(zstd::bulk::compress(&vec![0u8; PART + 1], 1).unwrap());
        assert!(decoded(&zstd, bomb).await.is_err());
        assert!(
            decoded(&zstd, packed.slice(..packed.len() / 2))
                .await
                .is_err()
        );
        assert!(decoded(&with(Some("gzip")), packed).await.is_err());
    }
}
