//! The driver: one task per workload that turns events into guest calls, one
//! at a time.
//!
//! A [`WorkloadHandle`] sends requests and messages to the task; the task
//! also fires due timers, routes the messages the workload sent (through a
//! [`Router`]) and delivers the ones it received. Between two events the
//! workload is at a safe point. With `roundtrip_snapshots` the driver
//! captures it after every event, encodes and decodes the snapshot and
//! continues in a fresh instance restored from it — what a migration does,
//! so a developer can check locally that a workload survives one.
//!
//! The driver keeps the workload's last good state beside it (a
//! [`Checkpoint`], per [`Checkpoints`]). When a guest call fails — a trap,
//! its CPU budget, its memory cap, a broken ABI — only that event fails:
//! the instance is rolled back to the last good state, the timer or message
//! that failed is left out of it (so it cannot fail again in a loop), and
//! the workload serves on. Only without any checkpoint does it restart from
//! its initial state. Both are counted ([`WorkloadHandle::failures`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

use crate::abi::codec::{Request, Response};
use crate::abi::{MessageId, OutboundMessage};
use crate::checkpoint::Checkpoint;
use crate::error::CallError;
use crate::instance::{Chain, InstanceConfig};
use crate::module::Module;
use crate::runtime::Runtime;
use crate::snapshot::codec::{self, DecodeLimits};
use crate::snapshot::{MemoryImage, Snapshot};
use crate::workload::{HandleError, Workload};

/// Delivers a message a workload sent, `(from, message)`, once: what became
/// of it. The driver keeps the message in the outbox until it is
/// [`Delivery::Delivered`], sends a destination its messages one at a time
/// in order, and tries again after a pause on [`Delivery::Retry`].
pub type Router = Arc<
    dyn Fn(&str, OutboundMessage) -> std::pin::Pin<Box<dyn Future<Output = Delivery> + Send>>
        + Send
        + Sync,
>;

/// What became of one attempt to deliver a sent message.
#[derive(Debug)]
pub enum Delivery {
    /// The receiver's host has it in the receiver's inbox (checkpointed
    /// on the receiver's standby when it has one), or had it before.
    Delivered,
    /// No workload of that name exists: the message goes back to its
    /// sender (see [`crate::abi::UNDELIVERABLE`]).
    Unknown(String),
    /// Not now (unreachable, not running anywhere yet, inbox full).
    Retry(String),
}

/// The first pause before a message is sent again; it doubles per failed
/// attempt to [`RESEND_MAX`].
const RESEND_FIRST: Duration = Duration::from_millis(50);
/// The longest pause between two attempts to deliver a message.
const RESEND_MAX: Duration = Duration::from_secs(2);

/// How often the driver brings the workload's last good state up to date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checkpoints {
    /// Never: a failed instance restarts from its initial state.
    Off,
    /// After a successful event, when the last checkpoint is older than
    /// this: a full capture (for workloads whose state is declared
    /// expendable, `durability = none`; a rollback may lose what the last
    /// interval did, and no dirty tracking runs between failures).
    Every(Duration),
    /// After every successful event (each message handled counts as one):
    /// a delta of the pages it wrote, from the kernel's write tracking,
    /// applied to a flat copy (durable workloads; a rollback loses nothing
    /// but the failed event).
    EachEvent,
}

/// How the driver runs a workload.
#[derive(Clone)]
pub struct DriverOptions {
    /// Capture, encode, decode and restore after every event.
    pub roundtrip_snapshots: bool,
    /// The last good state kept for rollbacks.
    pub checkpoints: Checkpoints,
    /// Where sent messages go.
    pub router: Option<Router>,
    /// Queue length of the handle.
    pub queue: usize,
    /// Output commit from the start: hold what the scope says until a
    /// standby's link comes ([`WorkloadHandle::commit_to`]) and
    /// acknowledges, or the scheduler grants "unprotected"
    /// (`commit_to(None, ..)`). A `sync` workload that has never been
    /// protected thus never answers from state that exists nowhere else.
    pub hold: Option<CommitScope>,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            roundtrip_snapshots: false,
            checkpoints: Checkpoints::Every(Duration::from_secs(1)),
            router: None,
            queue: 1024,
            hold: None,
        }
    }
}

/// An error from a driven workload, as text for the caller's response.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The guest failed on this event.
    #[error(transparent)]
    Handle(#[from] HandleError),
    /// The workload's queue refused the event.
    #[error("workload `{0}` is not accepting events: {1}")]
    Unavailable(String, String),
}

type HttpReply = oneshot::Sender<Result<Response, DriverError>>;
/// `(destination, message id, outcome)` of one delivery attempt.
type Outcome = (String, MessageId, Delivery);
type MessageReply = oneshot::Sender<Result<(), DriverError>>;

/// A request or message a frozen workload holds, or hands to its new host.
pub enum Forwarded {
    /// An HTTP request and where its response goes.
    Http(Request, HttpReply),
    /// A message `(from, id, body)` and where its acknowledgement goes.
    Message(String, MessageId, Vec<u8>, MessageReply),
}

/// Takes the requests and messages of a workload that moved: sends each to
/// the new host and answers its caller with what that host answered.
pub type Forwarder = Arc<dyn Fn(Forwarded) + Send + Sync>;

/// Output commit (`durability = sync`): a checkpoint for the standby and
/// where its acknowledgement goes. The host's link sends it and answers
/// `Ok` once the standby acknowledged it, or [`CommitRefused`] after a
/// failure (the driver then sends a full checkpoint). A link that is gone
/// (the scheduler said the workload is unprotected, or gave it another
/// standby) drops the request: the driver releases what it held.
pub type CommitRequest = (Snapshot, oneshot::Sender<Result<(), CommitRefused>>);

/// Where a driver sends its output-commit checkpoints.
pub type Committer = mpsc::Sender<CommitRequest>;

/// The standby did not take a checkpoint; send a full one.
#[derive(Debug)]
pub struct CommitRefused;

/// What output commit holds until the standby has the state behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitScope {
    /// Everything: answers, acknowledgements of messages received, and
    /// messages sent (`durability = sync`).
    All,
    /// Only the acknowledgements of messages received, so a sender forgets
    /// a message only once the receiver's standby has it (`durability =
    /// async`: its answers go out at once).
    Messages,
}

/// Events handled before one output commit at most (the group's answers
/// wait for it).
const GROUP_MAX: usize = 64;

/// How long a group waits, at most, for as many events as the last group
/// had before its commit starts (a busy workload's callers come back once
/// their answers are out; waiting for them makes fewer, larger commits —
/// PostgreSQL's `commit_delay`). A caller alone never waits: its group
/// had one event.
const GROUP_LINGER: Duration = Duration::from_micros(500);

/// A `Checkpoints::Every` workload's first full checkpoint waits this long
/// after its start: a workload that arrives by migration gets, at once,
/// every request held while it was frozen.
const FIRST_CHECKPOINT_AFTER: Duration = Duration::from_millis(200);

/// An answer or a sent message held until the standby acknowledged the
/// state that produced it.
enum Output {
    Http(HttpReply, Result<Response, DriverError>),
    Message(MessageReply, Result<(), DriverError>),
    /// Messages were sent: they leave the outbox only once committed.
    Sent,
}

/// A commit sent to the standby: what it releases once acknowledged.
struct Inflight {
    ack: oneshot::Receiver<Result<(), CommitRefused>>,
    /// The link it went through.
    via: Committer,
    outputs: Vec<Output>,
    /// The ids of the outbox's messages in the state it carries.
    outbox: std::collections::HashSet<MessageId>,
}

/// What woke the driver's loop.
enum Woke {
    /// A command, or `None` once every handle is gone.
    Command(Option<Command>),
    Timer,
    /// The group waited long enough for its commit.
    Linger,
    Outcome(Outcome),
    Acked(Result<Result<(), CommitRefused>, oneshot::error::RecvError>),
}

impl Output {
    /// Whether a caller waits for it.
    fn answers(&self) -> bool {
        !matches!(self, Output::Sent)
    }
}

/// An event of a group, kept to be run again if a later one fails.
enum Ran {
    /// A request and the place of its held answer in `outputs`.
    Http(Request, usize),
    /// A message taken into the inbox: `(from, id, body)`.
    Message(String, MessageId, Vec<u8>),
}

/// One capture taken for a migration.
#[derive(Debug)]
pub struct Capture {
    /// The encoded snapshot (full or delta).
    pub bytes: Vec<u8>,
    /// 4 KiB pages it carries.
    pub pages: u64,
}

/// A running workload's linear memory, lent out to be read while the
/// workload runs on (a migration's first round copies it without pausing
/// the workload). While it exists the driver neither drops nor replaces the
/// instance, so the memory stays mapped and the workload's own; it can
/// only grow, in place (the pooling allocator's slots have a fixed base).
#[derive(Debug)]
pub struct LiveMemory {
    ptr: usize,
    len: usize,
    _lent: tokio::sync::OwnedSemaphorePermit,
}

impl LiveMemory {
    /// Lend `bytes` as if they were a workload's memory (for tests of
    /// readers; `'static`, so they outlive every reader).
    pub fn lend(bytes: &'static [u8]) -> Option<LiveMemory> {
        let lent = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .ok()?;
        Some(LiveMemory {
            ptr: bytes.as_ptr() as usize,
            len: bytes.len(),
            _lent: lent,
        })
    }

    /// The memory's size when it was lent.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the memory was empty when it was lent.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy `out.len()` bytes from offset `at` into `out` (clamped to the
    /// lent size; returns the bytes copied). The workload may be writing
    /// the range meanwhile, so a page can be copied half old, half new:
    /// callers take the copy only for pages written since tracking began
    /// to be sent again, as the migration's write tracking guarantees.
    pub fn read(&self, at: usize, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len.saturating_sub(at));
        // SAFETY: `[ptr + at, ptr + at + n)` lies inside the memory as lent
        // (bounds clamped above); the memory stays mapped while `self` holds
        // the permit the driver waits for before dropping or replacing the
        // instance. Concurrent guest writes are plain byte stores to the same
        // anonymous mapping: the copy may see any mix of old and new bytes
        // (as with guest memory shared with a running vCPU in vm-memory), and
        // the destination is our own buffer.
        unsafe {
            std::ptr::copy_nonoverlapping((self.ptr + at) as *const u8, out.as_mut_ptr(), n);
        }
        n
    }
}

enum Command {
    Http(Request, HttpReply),
    Message(String, MessageId, Vec<u8>, MessageReply),
    Logs(
        std::collections::BTreeMap<u64, u64>,
        Option<usize>,
        oneshot::Sender<LogPage>,
    ),
    Snapshot(oneshot::Sender<Result<Vec<u8>, String>>),
    /// Migration: a delta since the last migration capture.
    Capture(oneshot::Sender<Result<Capture, String>>),
    /// Migration: a full capture into the given buffers, which starts dirty
    /// tracking; with `true`, also freeze (stop-and-copy).
    CaptureFull(
        Vec<MemoryImage>,
        bool,
        oneshot::Sender<Result<Snapshot, String>>,
    ),
    /// Migration: start dirty tracking and capture everything but the
    /// memory's pages, which the caller reads from the lent memory while
    /// the workload runs. Fails where the kernel cannot track writes.
    CaptureLive(oneshot::Sender<Result<(Snapshot, LiveMemory), String>>),
    /// Migration: capture the last delta and stop dispatching; hold what
    /// arrives until `Resume` or `Handoff`.
    Freeze(oneshot::Sender<Result<Capture, String>>),
    /// Linear memory size in bytes.
    MemorySize(oneshot::Sender<Result<u64, String>>),
    /// Standby stream: the checkpoint's change since the last export (all
    /// of it with `true`).
    Export(bool, oneshot::Sender<Result<Option<Snapshot>, String>>),
    /// Output commit through this link from now on (`None`: the workload
    /// is unprotected; release outputs at once).
    CommitTo(Option<Committer>, CommitScope),
    /// Upgrade: hand the state over as asked and stop dispatching; hold
    /// what arrives until `Resume` or `Handoff`.
    HandOver(HandoverKind, oneshot::Sender<Result<Handover, String>>),
    /// Migration aborted: serve again, held events first.
    Resume,
    /// Migration committed: forward held and later events, drop the instance.
    Handoff(Forwarder),
    /// Migration's commit message sent, outcome unknown: while frozen, give
    /// held and later requests (not messages) to the forwarder, keeping
    /// the instance (the migration may still end in `Resume`).
    ForwardAhead(Forwarder),
    /// An event given to [`Command::ForwardAhead`]'s forwarder that the new
    /// host refused before dispatch: held again (never forwarded ahead
    /// twice), served on `Resume`, forwarded on `Handoff`.
    Returned(Forwarded),
    Stop,
}

/// What an upgrade asks of the running version ([`WorkloadHandle::hand_over`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoverKind {
    /// Its whole state (the new revision runs the same module).
    Snapshot,
    /// Its upgrade hook's bytes, and its host-side state.
    Hooks,
    /// Its host-side state only (the new version starts its memory anew).
    HostOnly,
}

/// The running version's state, handed over for an upgrade.
#[derive(Debug)]
pub enum Handover {
    /// All of it.
    Snapshot(Snapshot),
    /// What `roam_upgrade_export` gave, and the host-side state.
    Hooks(Vec<u8>, Vec<crate::snapshot::HostSection>),
    /// The host-side state.
    HostOnly(Vec<crate::snapshot::HostSection>),
}

/// A workload's log records ([`WorkloadHandle::logs`]).
#[derive(Clone, Debug, Default)]
pub struct LogPage {
    /// Per log timeline it keeps records of (and its current one): the
    /// timeline, the number of the oldest record kept, the number of the
    /// next.
    pub timelines: Vec<(u64, u64, u64)>,
    /// The records asked for, oldest first.
    pub records: Vec<crate::abi::LogRecord>,
}

/// A cheap, cloneable handle to a driven workload.
#[derive(Clone, Debug)]
pub struct WorkloadHandle {
    name: String,
    tx: mpsc::Sender<Command>,
    failures: Arc<WorkloadStats>,
    /// Set by [`WorkloadHandle::stop`]: answers still held for a commit
    /// are dropped, never released, from then on.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Set by the driver while output commit holds outputs with no standby
    /// to commit them to (see [`WorkloadHandle::waiting_for_standby`]).
    waiting: Arc<std::sync::atomic::AtomicBool>,
}

/// Figures a driver keeps as it runs, read without asking it (metrics,
/// heartbeats): failures by kind and what became of them, the memory
/// after the last event.
#[derive(Debug, Default)]
pub struct WorkloadStats {
    rolled_back: AtomicU64,
    restarted: AtomicU64,
    cpu_budget: AtomicU64,
    memory_limit: AtomicU64,
    traps: AtomicU64,
    abi: AtomicU64,
    memory: AtomicU64,
    last: std::sync::Mutex<Option<String>>,
}

impl WorkloadStats {
    /// Calls stopped for using up their CPU budget.
    pub fn cpu_budget_stops(&self) -> u64 {
        self.cpu_budget.load(Ordering::Relaxed)
    }

    /// Calls that failed after the guest was refused memory over its cap.
    pub fn memory_limit_hits(&self) -> u64 {
        self.memory_limit.load(Ordering::Relaxed)
    }

    /// Calls that trapped (or exited) for any other reason.
    pub fn traps(&self) -> u64 {
        self.traps.load(Ordering::Relaxed)
    }

    /// Calls whose guest broke the ABI (bad pointer, malformed answer).
    pub fn abi_violations(&self) -> u64 {
        self.abi.load(Ordering::Relaxed)
    }

    /// Linear memory after the last event, bytes.
    pub fn memory(&self) -> u64 {
        self.memory.load(Ordering::Relaxed)
    }

    fn count(&self, e: &HandleError) {
        let counter = match e {
            HandleError::Call(CallError::CpuBudgetExceeded { .. }) => &self.cpu_budget,
            HandleError::Call(CallError::MemoryLimitExceeded { .. }) => &self.memory_limit,
            HandleError::Abi(_) => &self.abi,
            HandleError::Call(_) | HandleError::NoHandler(_) => &self.traps,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How often a workload's guest failed, and what became of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    /// Failures after which the instance was rolled back to its last good
    /// state.
    pub rolled_back: u64,
    /// Failures after which it restarted from its initial state (no
    /// checkpoint, or the checkpoint could not be restored).
    pub restarted: u64,
    /// The last failure, as text.
    pub last: Option<String>,
}

impl WorkloadHandle {
    /// The workload's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Send a request and wait for the response.
    pub async fn http(&self, request: Request) -> Result<Response, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Http(request, tx))
            .await
            .map_err(|_| DriverError::Unavailable(self.name.clone(), "stopped".into()))?;
        rx.await
            .map_err(|_| DriverError::Unavailable(self.name.clone(), "stopped".into()))?
    }

    /// Queue a message; resolves once it is in the workload's inbox (and so
    /// in its next snapshot; with output commit, in a checkpoint its
    /// standby acknowledged), or was before: a message whose `id` the
    /// workload took already is acknowledged and dropped.
    pub async fn message(
        &self,
        from: &str,
        id: MessageId,
        body: Vec<u8>,
    ) -> Result<(), DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Message(from.to_string(), id, body, tx))
            .await
            .map_err(|_| DriverError::Unavailable(self.name.clone(), "stopped".into()))?;
        rx.await
            .map_err(|_| DriverError::Unavailable(self.name.clone(), "stopped".into()))?
    }

    /// Recent log records (`LEVEL message` lines) and captured stdout/stderr.
    pub async fn logs(
        &self,
        after: std::collections::BTreeMap<u64, u64>,
        tail: Option<usize>,
    ) -> Result<LogPage, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Logs(after, tail, tx))
            .await
            .map_err(|_| DriverError::Unavailable(self.name.clone(), "stopped".into()))?;
        rx.await
            .map_err(|_| DriverError::Unavailable(self.name.clone(), "stopped".into()))
    }

    /// Capture the workload at its next safe point; the encoded snapshot.
    pub async fn snapshot(&self) -> Result<Vec<u8>, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Snapshot(tx))
            .await
            .map_err(|_| DriverError::Unavailable(self.name.clone(), "stopped".into()))?;
        rx.await
            .map_err(|_| DriverError::Unavailable(self.name.clone(), "stopped".into()))?
            .map_err(|e| DriverError::Unavailable(self.name.clone(), e))
    }

    /// The driver's running figures, shared: reading them asks nothing of
    /// the driver.
    pub fn stats(&self) -> Arc<WorkloadStats> {
        self.failures.clone()
    }

    /// How often the guest failed and was rolled back or restarted.
    pub fn failures(&self) -> Failures {
        Failures {
            rolled_back: self.failures.rolled_back.load(Ordering::Relaxed),
            restarted: self.failures.restarted.load(Ordering::Relaxed),
            last: self
                .failures
                .last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Whether output commit holds this workload's outputs with no link to
    /// a standby: it waits for one, or for the scheduler to grant
    /// "unprotected" (`commit_to(None, ..)`).
    pub fn waiting_for_standby(&self) -> bool {
        self.waiting.load(Ordering::Acquire)
    }

    /// Whether both handles drive the same task.
    pub fn same(&self, other: &WorkloadHandle) -> bool {
        self.tx.same_channel(&other.tx)
    }

    /// Stop the workload's task. Answers it holds for an output commit are
    /// dropped (their callers hear it stopped): this copy may be stale.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.tx.send(Command::Stop).await;
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Command,
    ) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| "the workload stopped".to_string())?;
        rx.await.map_err(|_| "the workload stopped".to_string())?
    }

    /// Migration: capture the whole workload at its next safe point into
    /// `buffers` and start tracking dirty pages. The caller encodes it, so
    /// the workload pauses only for the copy.
    pub async fn capture_full(&self, buffers: Vec<MemoryImage>) -> Result<Snapshot, String> {
        self.ask(|tx| Command::CaptureFull(buffers, false, tx))
            .await
    }

    /// Migration: start tracking dirty pages and capture the workload
    /// without its memory's pages, which the caller copies from the
    /// returned [`LiveMemory`] while the workload runs on (pages written
    /// meanwhile are in the next delta). The workload pauses only to switch
    /// tracking on. Fails where the kernel cannot track writes; then use
    /// [`WorkloadHandle::capture_full`].
    pub async fn capture_live(&self) -> Result<(Snapshot, LiveMemory), String> {
        self.ask(Command::CaptureLive).await
    }

    /// Migration: capture what changed since the previous migration capture.
    pub async fn capture_delta(&self) -> Result<Capture, String> {
        self.ask(Command::Capture).await
    }

    /// Migration: capture the final delta and stop dispatching. Requests and
    /// messages that arrive from now on are held (not answered) until
    /// [`WorkloadHandle::resume`] or [`WorkloadHandle::handoff`].
    pub async fn freeze(&self) -> Result<Capture, String> {
        self.ask(Command::Freeze).await
    }

    /// Stop-and-copy: stop dispatching and capture everything into
    /// `buffers`. Held events as with [`WorkloadHandle::freeze`].
    pub async fn freeze_full(&self, buffers: Vec<MemoryImage>) -> Result<Snapshot, String> {
        self.ask(|tx| Command::CaptureFull(buffers, true, tx)).await
    }

    /// The workload's linear memory size in bytes.
    pub async fn memory_size(&self) -> Result<u64, String> {
        self.ask(Command::MemorySize).await
    }

    /// For the workload's standby: what changed in its last good state
    /// since the previous export, as a delta on it (`None`: nothing did),
    /// or, the first time and with `full`, the whole state. Only for
    /// workloads checkpointed after every event
    /// ([`Checkpoints::EachEvent`]); refused while a migration owns the
    /// write tracking.
    pub async fn export(&self, full: bool) -> Result<Option<Snapshot>, String> {
        self.ask(|tx| Command::Export(full, tx)).await
    }

    /// Output commit: from now on hold what `scope` says until
    /// `committer`'s standby acknowledged the state that produced it (and,
    /// should the link go, until the next link or `None`), one
    /// checkpoint per group of events; `None`: release everything at once
    /// (no standby: unprotected).
    pub async fn commit_to(&self, committer: Option<Committer>, scope: CommitScope) {
        let _ = self.tx.send(Command::CommitTo(committer, scope)).await;
    }

    /// Migration aborted: serve again, the held events first, in order.
    pub async fn resume(&self) {
        let _ = self.tx.send(Command::Resume).await;
    }

    /// Upgrade: at the next safe point, with every output committed, hand
    /// the state over as `kind` says and hold later events (the same hold
    /// as a migration's freeze): [`WorkloadHandle::handoff`] to the new
    /// version, or [`WorkloadHandle::resume`] when it did not start. A
    /// failing export hook fails the call and rolls the workload back to
    /// its last good state; it serves on.
    pub async fn hand_over(&self, kind: HandoverKind) -> Result<Handover, String> {
        self.ask(|tx| Command::HandOver(kind, tx)).await
    }

    /// A [`Forwarder`] into this workload that keeps the order events are
    /// given in (an upgrade hands the old version's held and later events
    /// to the new one with it).
    pub fn forwarder(&self) -> Forwarder {
        let (tx, mut rx) = mpsc::unbounded_channel::<Forwarded>();
        let next = self.tx.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let command = match event {
                    Forwarded::Http(req, reply) => Command::Http(req, reply),
                    Forwarded::Message(from, id, body, reply) => {
                        Command::Message(from, id, body, reply)
                    }
                };
                // Gone: the callers' replies drop, and they hear so.
                if next.send(command).await.is_err() {
                    break;
                }
            }
        });
        Arc::new(move |event| {
            let _ = tx.send(event);
        })
    }

    /// Migration committed: give held and later events to `forwarder` and
    /// drop the instance.
    pub async fn handoff(&self, forwarder: Forwarder) {
        let _ = self.tx.send(Command::Handoff(forwarder)).await;
    }

    /// Migration's commit message on its way, its outcome not known yet:
    /// while frozen, give the held and later requests to `forwarder` (the
    /// new host holds them until it serves), so they do not wait for the
    /// outcome's round trip. Messages stay held. The instance stays:
    /// [`WorkloadHandle::resume`] still serves again, and the forwarder
    /// gives back what the new host refused before dispatch with
    /// [`WorkloadHandle::give_back`]. Ignored unless frozen.
    pub async fn forward_ahead(&self, forwarder: Forwarder) {
        let _ = self.tx.send(Command::ForwardAhead(forwarder)).await;
    }

    /// An event [`WorkloadHandle::forward_ahead`]'s forwarder could not
    /// place (the new host refused it before dispatch): held again while
    /// frozen, served once resumed, forwarded after the hand-off.
    pub async fn give_back(&self, event: Forwarded) {
        let _ = self.tx.send(Command::Returned(event)).await;
    }
}

struct Driver {
    rt: Runtime,
    module: Module,
    config: InstanceConfig,
    options: DriverOptions,
    workload: Workload,
    /// The last round-trip snapshot (`roundtrip_snapshots`).
    checkpoint: Option<Snapshot>,
    /// The last good state, per `options.checkpoints`.
    local: Local,
    /// Room for the first full checkpoint of a [`Checkpoints::Every`]
    /// workload, being faulted in off the driver (see
    /// [`MemoryImage::prefaulted`]): a workload that just arrived by
    /// migration would otherwise pause for the faults of a fresh 64 MiB
    /// on top of the copy, while serving the requests held for it.
    spare: Option<oneshot::Receiver<Vec<MemoryImage>>>,
    /// That room, once faulted in.
    spare_ready: Option<Vec<MemoryImage>>,
    /// A migration is under way. Its rounds and the local checkpoints are
    /// two delta chains over the kernel's write tracking; where the kernel
    /// cannot track writes the migration owns the page hashes, and no
    /// local checkpoint is taken meanwhile (see
    /// [`Driver::checkpoints_paused`]).
    migrating: bool,
    failures: Arc<WorkloadStats>,
    /// When this driver began (the age of "no checkpoint yet").
    started: Instant,
    /// When a full checkpoint last failed: the next try waits
    /// [`RETRY_CHECKPOINT`], so a workload that cannot be captured does not
    /// pay for a failed capture on every event.
    failed_at: Option<Instant>,
    /// The handles' queue, to see whether events wait.
    queue: mpsc::WeakSender<Command>,
    /// One permit, held by a [`LiveMemory`] while the memory is lent.
    lent: Arc<tokio::sync::Semaphore>,
    /// Output commit's link to the standby, if any.
    committer: Option<Committer>,
    /// Output commit holds outputs even without a link (a `sync` workload
    /// not granted "unprotected"): they wait for the next link.
    hold: bool,
    /// The next commit carries the whole checkpoint (a new link).
    full_next: bool,
    /// Shared with the handles: outputs are held with no link.
    waiting: Arc<std::sync::atomic::AtomicBool>,
    /// What output commit holds.
    scope: CommitScope,
    /// Destinations with a delivery attempt out (one at a time each, so
    /// each gets its messages in order).
    sending: std::collections::HashSet<String>,
    /// The pause before the next attempt, per destination that failed.
    resend: std::collections::HashMap<String, Duration>,
    /// Where delivery attempts report.
    outcomes: mpsc::UnboundedSender<Outcome>,
    /// Outputs held for the next commit (not sent to the standby yet).
    outputs: Vec<Output>,
    /// The commit the standby has not acknowledged yet: at most one, while
    /// the next group runs (a pipeline).
    inflight: Option<Inflight>,
    /// Messages of the outbox the standby acknowledged: while outputs are
    /// held, only these may go.
    committed: std::collections::HashSet<MessageId>,
    /// Answers the last acknowledged commit released: the next group
    /// waits for as many, up to [`GROUP_LINGER`].
    expect: usize,
    /// When the first output of the group was held.
    held_since: Option<Instant>,
    /// Output commit of everything (`sync`): the events run since the last
    /// checkpoint, whose answers are all held; the checkpoint is brought up
    /// to date once per group ([`Driver::settle`]), and a failure in the
    /// group rolls back to it and runs these again ([`Driver::replay`]).
    group: Vec<Ran>,
    /// Events ran since the last checkpoint (in a group).
    unsettled: bool,
    /// Running a group again after a failure: one checkpoint per event.
    replaying: bool,
    /// Shared with the handles: the workload is being stopped.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Per output stream (stdout, stderr): the byte cursor read up to,
    /// and the line not yet ended.
    output: [(u64, Vec<u8>); 2],
    /// The log cursor when the last export to the standby was taken.
    logs_exported: Option<u64>,
}

/// A [`Checkpoints::Every`] checkpoint waits for a moment with no events
/// queued, up to this many intervals.
const OVERDUE: u32 = 5;

/// How long after a failed full checkpoint the next is tried.
const RETRY_CHECKPOINT: Duration = Duration::from_secs(1);

enum Local {
    None,
    Full(Snapshot, Instant),
    Flat(Checkpoint),
}

/// Start driving `workload` on the current tokio runtime.
pub fn spawn(
    rt: Runtime,
    module: Module,
    config: InstanceConfig,
    mut workload: Workload,
    options: DriverOptions,
) -> WorkloadHandle {
    let (tx, rx) = mpsc::channel(options.queue.max(1));
    let (outcomes, outcomes_rx) = mpsc::unbounded_channel();
    let name = config.name.clone();
    let failures = Arc::new(WorkloadStats::default());
    failures
        .memory
        .store(workload.instance_mut().memory_size(), Ordering::Relaxed);
    let hold = options.hold;
    let spare = matches!(options.checkpoints, Checkpoints::Every(_)).then(|| {
        let size = workload.instance_mut().memory_size();
        let (tx, rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(MemoryImage::prefaulted(size));
        });
        rx
    });
    let output = (
        workload.instance().stdout().cursor(),
        workload.instance().stderr().cursor(),
    );
    let driver = Driver {
        rt,
        module,
        config,
        options,
        workload,
        checkpoint: None,
        local: Local::None,
        spare,
        spare_ready: None,
        migrating: false,
        failures: failures.clone(),
        started: Instant::now(),
        failed_at: None,
        queue: tx.downgrade(),
        lent: Arc::new(tokio::sync::Semaphore::new(1)),
        committer: None,
        hold: hold.is_some(),
        full_next: false,
        waiting: Arc::new(std::sync::atomic::AtomicBool::new(hold.is_some())),
        scope: hold.unwrap_or(CommitScope::All),
        sending: Default::default(),
        resend: Default::default(),
        outcomes,
        outputs: Vec::new(),
        inflight: None,
        committed: Default::default(),
        expect: 0,
        held_since: None,
        group: Vec::new(),
        unsettled: false,
        replaying: false,
        stopping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        output: [(output.0, Vec::new()), (output.1, Vec::new())],
        logs_exported: None,
    };
    let stopping = driver.stopping.clone();
    let waiting = driver.waiting.clone();
    // The first checkpoint is taken after an event, never before the first
    // request (a workload that just arrived serves at once), and not in its
    // first [`FIRST_CHECKPOINT_AFTER`].
    tokio::spawn(driver.run(rx, outcomes_rx));
    WorkloadHandle {
        name,
        tx,
        failures,
        stopping,
        waiting,
    }
}

/// Whether the driver dispatches events or holds them (frozen for the last
/// step of a migration). After a hand-off it leaves this loop and forwards
/// every event to the workload's new host instead.
enum Mode {
    Serving,
    /// Frozen: events held in order, and where requests go meanwhile
    /// ([`WorkloadHandle::forward_ahead`]), if anywhere.
    Held(Vec<Forwarded>, Option<Forwarder>),
}

impl Driver {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut outcomes: mpsc::UnboundedReceiver<Outcome>,
    ) {
        let mut mode = Mode::Serving;
        // A restored workload may hold messages that were never
        // acknowledged: they go out again.
        self.dispatch();
        let forwarder = loop {
            let next = match mode {
                Mode::Serving => self.workload.next_timer_in(),
                // A frozen workload's timers fire where it resumes.
                Mode::Held(..) => None,
            };
            let timer = async {
                match next {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            // Output commit: one checkpoint for the group of events run
            // since the last, once nothing more waits (or the group is
            // full); never make a caller wait for an event that is not
            // coming. The next group runs while the standby takes it.
            let mut linger = None;
            if self.inflight.is_none()
                && !self.outputs.is_empty()
                && (self.committer.is_some() || !self.hold)
            {
                let waited = self.held_since.map_or(GROUP_LINGER, |t| t.elapsed());
                let answers = self.outputs.iter().filter(|o| o.answers()).count();
                if self.outputs.len() >= GROUP_MAX
                    || (self.idle() && (answers >= self.expect || waited >= GROUP_LINGER))
                {
                    self.start_commit(false, Vec::new()).await;
                } else if self.idle() {
                    linger = Some(GROUP_LINGER - waited);
                }
            } else if self.inflight.is_some() && self.outputs.len() >= GROUP_MAX {
                self.finish_commit().await;
                continue;
            } else if self.unsettled && self.idle() {
                self.settle();
            }
            let mut inflight = self.inflight.take();
            let woke = tokio::select! {
                cmd = rx.recv() => Woke::Command(cmd),
                () = timer => Woke::Timer,
                () = async {
                    match linger {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                } => Woke::Linger,
                Some(outcome) = outcomes.recv() => Woke::Outcome(outcome),
                ack = async {
                    match inflight.as_mut() {
                        Some(i) => (&mut i.ack).await,
                        None => std::future::pending().await,
                    }
                } => Woke::Acked(ack),
            };
            let cmd = match woke {
                Woke::Command(cmd) => {
                    self.inflight = inflight;
                    Some(cmd)
                }
                Woke::Timer => {
                    self.inflight = inflight;
                    None
                }
                Woke::Linger => {
                    self.inflight = inflight;
                    continue;
                }
                Woke::Outcome(outcome) => {
                    self.inflight = inflight;
                    self.delivered(outcome, matches!(mode, Mode::Held(..)))
                        .await;
                    continue;
                }
                Woke::Acked(ack) => {
                    if let Some(done) = inflight {
                        self.acked(done, ack).await;
                    }
                    continue;
                }
            };
            if let Some(Some(cmd)) = &cmd
                && !matches!(
                    cmd,
                    Command::Http(..) | Command::Message(..) | Command::Returned(_)
                )
            {
                // Anything else sees (or moves) only committed state.
                self.settle();
                self.commit().await;
            }
            match cmd {
                Some(cmd) => match cmd {
                    None | Some(Command::Stop) => {
                        self.memory_back().await;
                        return;
                    }
                    Some(Command::Http(req, reply)) => match &mut mode {
                        Mode::Held(_, Some(ahead)) => ahead(Forwarded::Http(req, reply)),
                        Mode::Held(held, None) => held.push(Forwarded::Http(req, reply)),
                        Mode::Serving => self.http(req, reply).await,
                    },
                    Some(Command::Returned(event)) => match &mut mode {
                        Mode::Held(held, _) => held.push(event),
                        Mode::Serving => match event {
                            Forwarded::Http(req, reply) => self.http(req, reply).await,
                            Forwarded::Message(from, id, body, reply) => {
                                self.message(from, id, body, reply).await
                            }
                        },
                    },
                    Some(Command::ForwardAhead(ahead)) => match &mut mode {
                        Mode::Held(held, slot @ None) => {
                            // Requests go ahead; messages keep their order.
                            let (requests, rest): (Vec<_>, Vec<_>) = std::mem::take(held)
                                .into_iter()
                                .partition(|e| matches!(e, Forwarded::Http(..)));
                            *held = rest;
                            for request in requests {
                                ahead(request);
                            }
                            *slot = Some(ahead);
                        }
                        _ => {
                            tracing::warn!(workload = %self.config.name, "forwarding ahead from a workload that is not frozen (or already forwards); ignored")
                        }
                    },
                    Some(Command::Message(from, id, body, reply)) => match &mut mode {
                        Mode::Held(held, _) => held.push(Forwarded::Message(from, id, body, reply)),
                        Mode::Serving => self.message(from, id, body, reply).await,
                    },
                    Some(Command::Snapshot(reply)) => {
                        let paused = self.checkpoints_paused();
                        let result = if let (false, Local::Flat(c)) = (paused, &self.local) {
                            // Current after every event; capturing anew would
                            // restart the write tracking it follows.
                            Ok(codec::encode(&c.to_snapshot()))
                        } else if paused {
                            // A capture would move the page hashes under the
                            // migration's feet.
                            Err("the workload is migrating; try again when it is done".to_string())
                        } else {
                            self.workload
                                .instance_mut()
                                .capture()
                                .map(|s| codec::encode(&s))
                                .map_err(|e| e.to_string())
                        };
                        let _ = reply.send(result);
                    }
                    Some(Command::Logs(after, tail, reply)) => {
                        self.collect_output();
                        let _ = reply.send(self.logs(&after, tail));
                    }
                    Some(Command::Capture(reply)) => {
                        let result = match mode {
                            Mode::Held(..) => Err("the workload is frozen".to_string()),
                            Mode::Serving => self.migration_delta(),
                        };
                        let _ = reply.send(result);
                    }
                    Some(Command::CaptureFull(buffers, freeze, reply)) => {
                        let result = match mode {
                            Mode::Held(..) => Err("the workload is frozen".to_string()),
                            Mode::Serving => {
                                self.migrating = true;
                                let instance = self.workload.instance_mut();
                                instance.set_track_dirty(true);
                                instance
                                    .capture_with(buffers, Chain::Migration)
                                    .map_err(|e| e.to_string())
                            }
                        };
                        if freeze && result.is_ok() {
                            mode = Mode::Held(Vec::new(), None);
                        }
                        let _ = reply.send(result);
                    }
                    Some(Command::CaptureLive(reply)) => {
                        let result = match mode {
                            Mode::Held(..) => Err("the workload is frozen".to_string()),
                            Mode::Serving => {
                                self.migrating = true;
                                self.capture_live()
                            }
                        };
                        let _ = reply.send(result);
                    }
                    Some(Command::MemorySize(reply)) => {
                        let _ = reply.send(Ok(self.workload.instance_mut().memory_size()));
                    }
                    Some(Command::Export(full, reply)) => {
                        let result = match mode {
                            Mode::Held(..) => Err("the workload is frozen".to_string()),
                            Mode::Serving => self.export(full),
                        };
                        let _ = reply.send(result);
                    }
                    Some(Command::CommitTo(committer, scope)) => self.link(committer, scope),
                    Some(Command::Freeze(reply)) => {
                        let result = match mode {
                            Mode::Held(..) => Err("the workload is already frozen".to_string()),
                            Mode::Serving => self.migration_delta(),
                        };
                        if result.is_ok() {
                            mode = Mode::Held(Vec::new(), None);
                        }
                        let _ = reply.send(result);
                    }
                    Some(Command::HandOver(kind, reply)) => {
                        let result = match mode {
                            Mode::Held(..) => Err("the workload is frozen".to_string()),
                            Mode::Serving => self.hand_over(kind).await,
                        };
                        if result.is_ok() {
                            mode = Mode::Held(Vec::new(), None);
                        }
                        let _ = reply.send(result);
                    }
                    Some(Command::Resume) => {
                        let paused = self.checkpoints_paused();
                        self.migrating = false;
                        if !matches!(self.local, Local::Flat(_)) {
                            self.workload.instance_mut().set_track_dirty(false);
                        } else if paused {
                            // The migration moved the page hashes.
                            self.rebase();
                        }
                        if let Mode::Held(held, _) = std::mem::replace(&mut mode, Mode::Serving) {
                            for event in held {
                                match event {
                                    Forwarded::Http(req, reply) => self.http(req, reply).await,
                                    Forwarded::Message(from, id, body, reply) => {
                                        self.message(from, id, body, reply).await
                                    }
                                }
                            }
                        }
                        // Outcomes that came while frozen were not recorded.
                        self.dispatch();
                    }
                    Some(Command::Handoff(forwarder)) => {
                        if let Mode::Held(held, _) = std::mem::replace(&mut mode, Mode::Serving) {
                            // The new host acknowledged the state behind
                            // what is still held (no standby took it).
                            for output in std::mem::take(&mut self.outputs) {
                                self.release(output);
                            }
                            for event in held {
                                forwarder(event);
                            }
                            break forwarder;
                        }
                        tracing::error!(workload = %self.config.name, "handoff of a workload that is not frozen; ignored");
                    }
                },
                None => {
                    let failed = match self.workload.fire_due_timers().await {
                        Ok(_) => false,
                        Err(e) => {
                            tracing::warn!(workload = %self.config.name, error = %e, "timer handler failed");
                            self.note_failure(&e);
                            true
                        }
                    };
                    self.after_event(failed).await;
                }
            }
        };
        // The workload lives elsewhere now: free its slot, pass on whatever
        // still reaches this handle.
        let name = self.config.name.clone();
        self.memory_back().await;
        drop(self);
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Http(req, reply) => forwarder(Forwarded::Http(req, reply)),
                Command::Returned(event) => forwarder(event),
                Command::Message(from, id, body, reply) => {
                    forwarder(Forwarded::Message(from, id, body, reply))
                }
                Command::Logs(_, _, reply) => {
                    let _ = reply.send(LogPage::default());
                }
                Command::Snapshot(reply) => {
                    let _ = reply.send(Err(format!("workload `{name}` moved to another host")));
                }
                Command::Capture(reply) | Command::Freeze(reply) => {
                    let _ = reply.send(Err(format!("workload `{name}` moved to another host")));
                }
                Command::CaptureFull(_, _, reply) => {
                    let _ = reply.send(Err(format!("workload `{name}` moved to another host")));
                }
                Command::CaptureLive(reply) => {
                    let _ = reply.send(Err(format!("workload `{name}` moved to another host")));
                }
                Command::MemorySize(reply) => {
                    let _ = reply.send(Err(format!("workload `{name}` moved to another host")));
                }
                Command::Export(_, reply) => {
                    let _ = reply.send(Err(format!("workload `{name}` moved to another host")));
                }
                Command::HandOver(_, reply) => {
                    let _ = reply.send(Err(format!("workload `{name}` moved to another host")));
                }
                Command::CommitTo(..) => {}
                Command::Resume | Command::Handoff(_) | Command::ForwardAhead(_) => {}
                Command::Stop => break,
            }
        }
    }

    async fn http(&mut self, req: Request, reply: HttpReply) {
        let result = self.workload.http(&req).await;
        if let Err(e) = &result {
            self.note_failure(e);
        }
        let result = result.map_err(DriverError::from);
        let failed = result.is_err();
        // A failure's answer tells nothing of the state (it is rolled
        // back): only answers of events that ran wait for the commit.
        if failed {
            let _ = reply.send(result);
        } else {
            let grouped = self.grouping();
            self.output(Output::Http(reply, result));
            if grouped {
                self.group.push(Ran::Http(req, self.outputs.len() - 1));
            }
        }
        self.after_event(failed).await;
    }

    async fn message(&mut self, from: String, id: MessageId, body: Vec<u8>, reply: MessageReply) {
        // Kept to take it again if the group it joins is run again.
        let kept = if self.grouping() {
            body.clone()
        } else {
            Vec::new()
        };
        let result = self.workload.take(&from, id, body).map_err(|code| {
            DriverError::Unavailable(
                self.config.name.clone(),
                format!("inbox refused the message (code {code})"),
            )
        });
        // The sender hears "queued" once the standby has the message too (a
        // resend too: the state that took the first may not be committed).
        match result {
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(taken) => {
                self.output(Output::Message(reply, Ok(())));
                if !taken {
                    // Nothing ran: no event, no checkpoint.
                    return;
                }
                if self.grouping() {
                    self.group.push(Ran::Message(from, id, kept));
                }
            }
        }
        self.after_event(false).await;
    }

    /// Release an output now, or hold it for the next commit when a
    /// standby takes this workload's checkpoints (output commit).
    fn output(&mut self, output: Output) {
        let held = match output {
            Output::Message(..) => true,
            Output::Http(..) | Output::Sent => self.scope == CommitScope::All,
        };
        if (self.committer.is_some() || self.hold) && !self.checkpoints_paused() && held {
            if self.outputs.is_empty() {
                self.held_since = Some(Instant::now());
            }
            self.outputs.push(output);
        } else {
            self.release(output);
        }
    }

    fn release(&mut self, output: Output) {
        match output {
            Output::Http(reply, result) => {
                let _ = reply.send(result);
            }
            Output::Message(reply, result) => {
                let _ = reply.send(result);
            }
            Output::Sent => {}
        }
    }

    /// Whether no command waits in the handles' queue.
    fn idle(&self) -> bool {
        self.queue
            .upgrade()
            .is_none_or(|tx| tx.capacity() == tx.max_capacity())
    }

    /// Output commit of everything held, waited for: the commit in flight
    /// first, then the outputs held since.
    async fn commit(&mut self) {
        loop {
            if self.inflight.is_some() {
                self.finish_commit().await;
            } else if !self.outputs.is_empty() || self.unsettled {
                self.start_commit(false, Vec::new()).await;
                if self.inflight.is_none() {
                    return;
                }
            } else {
                return;
            }
        }
    }

    /// Wait for the commit in flight and act on its answer.
    async fn finish_commit(&mut self) {
        if let Some(mut inflight) = self.inflight.take() {
            let ack = (&mut inflight.ack).await;
            self.acked(inflight, ack).await;
        }
    }

    /// Output commit: send one checkpoint of everything run since the last
    /// to the standby; the held outputs (`outputs`, of a commit sent again,
    /// and those held now) go out once it acknowledged it
    /// ([`Driver::acked`]). Without a link they wait for the next one if
    /// the workload holds them ([`Driver::hold`]), and are released if it
    /// is unprotected.
    async fn start_commit(&mut self, full: bool, mut outputs: Vec<Output>) {
        self.settle();
        outputs.append(&mut self.outputs);
        if outputs.is_empty() {
            return;
        }
        if self.stopping.load(Ordering::Acquire) {
            // A copy being stopped may be stale: what it held is never
            // released (its callers hear it stopped).
            return;
        }
        let link = self
            .committer
            .clone()
            .filter(|_| !self.checkpoints_paused());
        let sent = match link {
            Some(committer) => {
                let full = full || std::mem::take(&mut self.full_next);
                match self.export(full) {
                    Ok(Some(snapshot)) => {
                        let (tx, ack) = oneshot::channel();
                        if committer.send((snapshot, tx)).await.is_ok() {
                            Some((ack, committer))
                        } else {
                            self.committer = None;
                            self.full_next = true;
                            self.note_waiting();
                            None
                        }
                    }
                    // The standby has this state already.
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(workload = %self.config.name, error = %e, "no checkpoint to commit; releasing the answers unprotected");
                        None
                    }
                }
            }
            None => None,
        };
        match sent {
            Some((ack, via)) => {
                let outbox = self
                    .workload
                    .instance()
                    .abi()
                    .outbox
                    .iter()
                    .map(|m| m.id)
                    .collect();
                self.inflight = Some(Inflight {
                    ack,
                    via,
                    outputs,
                    outbox,
                });
            }
            None if self.committer.is_none() && self.hold && !self.checkpoints_paused() => {
                // No link: they wait for the next one, or for the grant.
                self.outputs = outputs;
                self.held_since.get_or_insert_with(Instant::now);
            }
            None => {
                for output in outputs {
                    self.release(output);
                }
                self.dispatch();
            }
        }
    }

    /// The standby's answer to a commit: release its outputs (the loop then
    /// starts the next group's commit when it is due), or send it again in
    /// full with the outputs held since.
    async fn acked(
        &mut self,
        inflight: Inflight,
        ack: Result<Result<(), CommitRefused>, oneshot::error::RecvError>,
    ) {
        match ack {
            Ok(Ok(())) => {
                self.expect = inflight.outputs.iter().filter(|o| o.answers()).count();
                for output in inflight.outputs {
                    self.release(output);
                }
                // What was sent is committed now.
                self.committed = inflight.outbox;
                self.dispatch();
            }
            Ok(Err(CommitRefused)) => self.start_commit(true, inflight.outputs).await,
            Err(_) => {
                // The link is gone (unless another replaced it already).
                if self
                    .committer
                    .as_ref()
                    .is_some_and(|c| c.same_channel(&inflight.via))
                {
                    self.committer = None;
                    self.full_next = true;
                    self.note_waiting();
                }
                if self.stopping.load(Ordering::Acquire) {
                    self.outputs.clear();
                    return;
                }
                // Held again, before the later ones, for the next link (or
                // released, if the workload is unprotected by now).
                let mut outputs = inflight.outputs;
                outputs.append(&mut self.outputs);
                self.outputs = outputs;
                if self.committer.is_none() && !self.hold {
                    for output in std::mem::take(&mut self.outputs) {
                        self.release(output);
                    }
                    self.dispatch();
                }
            }
        }
    }

    /// A new link to a standby (`Some`), or the scheduler's grant to serve
    /// unprotected (`None`): what was held goes out now.
    fn link(&mut self, committer: Option<Committer>, scope: CommitScope) {
        self.hold = committer.is_some();
        self.full_next = committer.is_some();
        self.committer = committer;
        self.scope = scope;
        self.note_waiting();
        if !self.hold {
            for output in std::mem::take(&mut self.outputs) {
                self.release(output);
            }
            self.held_since = None;
            self.dispatch();
        }
    }

    /// Publish whether outputs wait with no link.
    fn note_waiting(&self) {
        self.waiting
            .store(self.hold && self.committer.is_none(), Ordering::Release);
    }

    /// Whether local checkpoints (and output commit) wait for a migration
    /// to end: only where the kernel cannot track writes, since the page
    /// hashes serve one delta chain.
    fn checkpoints_paused(&self) -> bool {
        self.migrating && !self.workload.instance().write_tracking()
    }

    /// Switch tracking on, capture all but the pages, lend the memory.
    fn capture_live(&mut self) -> Result<(Snapshot, LiveMemory), String> {
        let lent = self
            .lent
            .clone()
            .try_acquire_owned()
            .map_err(|_| "the memory is already lent".to_string())?;
        let instance = self.workload.instance_mut();
        instance.set_track_dirty(true);
        let snapshot = instance
            .capture_without_pages()
            .map_err(|e| e.to_string())?;
        let (ptr, len) = instance.memory_range().unwrap_or((0, 0));
        Ok((
            snapshot,
            LiveMemory {
                ptr,
                len,
                _lent: lent,
            },
        ))
    }

    /// Wait until no [`LiveMemory`] of this instance is out: call before
    /// dropping or replacing it.
    async fn memory_back(&mut self) {
        let _ = self.lent.acquire().await;
    }

    /// A delta since the last migration capture.
    fn migration_delta(&mut self) -> Result<Capture, String> {
        let snapshot = self
            .workload
            .instance_mut()
            .capture_delta_of(Chain::Migration)
            .map_err(|e| e.to_string())?;
        let pages = snapshot.memories.iter().map(|m| m.pages.len() as u64).sum();
        Ok(Capture {
            bytes: codec::encode(&snapshot),
            pages,
        })
    }

    /// Route sent messages, deliver received ones (each its own event),
    /// then keep the state as the last good one, or roll back.
    async fn after_event(&mut self, mut failed: bool) {
        if !failed {
            self.sent();
            while !self.workload.instance().abi().inbox.is_empty() {
                // A state with the next message still queued: if its
                // handler fails, the rollback leaves just that one out.
                self.keep(true);
                match self.workload.deliver_one().await {
                    Ok(true) => self.sent(),
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(workload = %self.config.name, error = %e, "message handler failed");
                        self.note_failure(&e);
                        failed = true;
                        break;
                    }
                }
            }
        }
        if failed || self.workload.instance().is_poisoned() {
            self.recover().await;
        } else if self.options.roundtrip_snapshots
            && let Err(e) = self.roundtrip().await
        {
            tracing::error!(workload = %self.config.name, error = %e, "snapshot round trip failed");
            self.recover().await;
        } else {
            self.keep(false);
        }
        let memory = self.workload.instance_mut().memory_size();
        self.failures.memory.store(memory, Ordering::Relaxed);
        self.collect_output();
        self.dispatch();
    }

    /// The host-side state and log records an upgrade carries over.
    fn moving_sections(&self) -> Vec<crate::snapshot::HostSection> {
        let instance = self.workload.instance();
        let mut sections = instance.host_sections();
        sections.push(instance.logs_section());
        sections
    }

    /// The state an upgrade takes ([`WorkloadHandle::hand_over`]).
    async fn hand_over(&mut self, kind: HandoverKind) -> Result<Handover, String> {
        if self.migrating {
            return Err("the workload is migrating; try again when it is done".into());
        }
        match kind {
            HandoverKind::Snapshot => {
                let mut snapshot = match &self.local {
                    // Current after every event.
                    Local::Flat(c) => c.to_snapshot(),
                    _ => self
                        .workload
                        .instance_mut()
                        .capture()
                        .map_err(|e| e.to_string())?,
                };
                snapshot.host.push(self.workload.instance().logs_section());
                Ok(Handover::Snapshot(snapshot))
            }
            HandoverKind::HostOnly => Ok(Handover::HostOnly(self.moving_sections())),
            HandoverKind::Hooks => match self.workload.export_state().await {
                Ok(bytes) => Ok(Handover::Hooks(bytes, self.moving_sections())),
                Err(e) => {
                    let message = format!("the running version's upgrade export failed: {e}");
                    if matches!(e, HandleError::NoHandler(_)) {
                        return Err(format!(
                            "the running version exports no `{}`: it cannot hand its state over (add the upgrade hooks, docs/abi.md, or deploy with --discard-state)",
                            crate::abi::EXPORT_UPGRADE_EXPORT
                        ));
                    }
                    tracing::warn!(workload = %self.config.name, error = %e, "upgrade export failed");
                    self.note_failure(&e);
                    self.recover().await;
                    Err(message)
                }
            },
        }
    }

    /// Record why the guest failed, for [`WorkloadHandle::failures`].
    fn note_failure(&self, e: &HandleError) {
        self.failures.count(e);
        *self.failures.last.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(e.to_string().chars().take(1024).collect());
    }

    /// Bring the last good state up to date, as `options.checkpoints` says.
    /// `between`: between two messages of one event, where only
    /// [`Checkpoints::EachEvent`] keeps one.
    fn keep(&mut self, between: bool) {
        if self.checkpoints_paused() || self.options.roundtrip_snapshots {
            return;
        }
        if self.grouping() {
            // Once per group, in `settle`.
            self.unsettled = true;
            return;
        }
        match (&mut self.local, self.options.checkpoints) {
            (Local::Flat(_), Checkpoints::EachEvent) => self.capture_into_checkpoint(),
            (Local::None, Checkpoints::EachEvent) => self.rebase(),
            (local, Checkpoints::Every(every)) if !between => {
                // A full capture pauses the workload for a copy of its
                // memory: take it when nothing waits, unless it is overdue.
                let age = match local {
                    Local::Full(_, at) => at.elapsed(),
                    // None yet: the first is due once the workload ran
                    // [`FIRST_CHECKPOINT_AFTER`], so that the burst a
                    // migration's arrival brings (the requests held while
                    // it was frozen) does not wait behind a copy of the
                    // whole memory.
                    _ if self.started.elapsed() >= FIRST_CHECKPOINT_AFTER => every,
                    _ => Duration::ZERO,
                };
                let first = !matches!(local, Local::Full(..));
                let idle = self.idle();
                // The first waits for its room to be faulted in, for at
                // most an interval from the start: a copy into fresh
                // memory pauses the workload several times as long (on
                // these VMs, under a migration's load, 80–250 ms for
                // 64 MiB, where the faulted-in room takes ~6 ms).
                let waits_for_room = first
                    && every > Duration::ZERO
                    && self.started.elapsed() < every
                    && self.spare_pending();
                if !waits_for_room
                    && (age >= every.saturating_mul(OVERDUE) || (idle && age >= every))
                {
                    self.rebase();
                }
            }
            _ => {}
        }
    }

    /// Whether events are checkpointed per group rather than one by one:
    /// every answer and sent message is held for the next commit (`sync`
    /// with a standby), so a failure can roll back to the group's start and
    /// run the group's other events again, none of them seen outside yet.
    fn grouping(&self) -> bool {
        self.committer.is_some()
            && self.scope == CommitScope::All
            && !self.checkpoints_paused()
            && !self.replaying
            && !self.options.roundtrip_snapshots
            && self.options.checkpoints == Checkpoints::EachEvent
            && matches!(self.local, Local::Flat(_))
    }

    /// Bring the checkpoint up to date with the group run since the last.
    fn settle(&mut self) {
        if std::mem::take(&mut self.unsettled) {
            self.group.clear();
            self.capture_into_checkpoint();
        }
    }

    /// One write-tracked delta since the last, applied to the flat
    /// checkpoint (a full one if that fails).
    fn capture_into_checkpoint(&mut self) {
        let Local::Flat(c) = &mut self.local else {
            return;
        };
        let applied = self
            .workload
            .instance_mut()
            .capture_delta()
            .map_err(|e| e.to_string())
            .and_then(|d| c.apply(&d).map_err(|e| e.to_string()));
        if let Err(e) = applied {
            tracing::warn!(workload = %self.config.name, error = %e, "checkpoint failed; taking a full one");
            self.rebase();
        }
    }

    /// Run again, one checkpoint each, the events of a group that a failure
    /// rolled back: each held answer is replaced by its new one (none was
    /// released), each message taken again.
    async fn replay(&mut self, group: Vec<Ran>) {
        self.replaying = true;
        for ran in group {
            match ran {
                Ran::Http(req, at) => {
                    let result = self.workload.http(&req).await;
                    if let Err(e) = &result {
                        self.note_failure(e);
                    }
                    let result = result.map_err(DriverError::from);
                    let failed = result.is_err();
                    if let Some(Output::Http(_, held)) = self.outputs.get_mut(at) {
                        *held = result;
                    }
                    Box::pin(self.after_event(failed)).await;
                }
                Ran::Message(from, id, body) => {
                    let _ = self.workload.take(&from, id, body);
                    Box::pin(self.after_event(false)).await;
                }
            }
        }
        self.replaying = false;
    }

    /// Whether the room for the first full checkpoint is still being
    /// faulted in (once it is, it moves to `spare_ready`).
    fn spare_pending(&mut self) -> bool {
        let Some(rx) = &mut self.spare else {
            return false;
        };
        match rx.try_recv() {
            Ok(buffers) => {
                self.spare = None;
                self.spare_ready = Some(buffers);
                false
            }
            Err(oneshot::error::TryRecvError::Empty) => true,
            Err(oneshot::error::TryRecvError::Closed) => {
                self.spare = None;
                false
            }
        }
    }

    /// Take a full checkpoint (and, for [`Checkpoints::EachEvent`], restart
    /// write tracking from it).
    fn rebase(&mut self) {
        if self.options.roundtrip_snapshots
            || self.checkpoints_paused()
            || self
                .failed_at
                .is_some_and(|at| at.elapsed() < RETRY_CHECKPOINT)
        {
            return;
        }
        // A first full checkpoint goes into the room faulted in meanwhile
        // if it is ready; a periodic one waits for it a while (`keep`),
        // any other is never put off for it.
        self.spare_pending();
        self.spare = None;
        let spare = self.spare_ready.take();
        let (began, spared) = (Instant::now(), spare.is_some());
        let instance = self.workload.instance_mut();
        let local = match self.options.checkpoints {
            Checkpoints::Off => return,
            Checkpoints::Every(_) => {
                let captured = match std::mem::replace(&mut self.local, Local::None) {
                    // Its buffers are faulted in already.
                    Local::Full(mut reuse, _) => instance.capture_into(&mut reuse).map(|()| reuse),
                    _ => match spare {
                        Some(buffers) => instance.capture_with(buffers, Chain::Checkpoint),
                        None => instance.capture(),
                    },
                };
                captured
                    .map(|s| Local::Full(s, Instant::now()))
                    .map_err(|e| e.to_string())
            }
            Checkpoints::EachEvent => {
                instance.set_track_dirty(true);
                let bound = self.config.memory_limit.max(1);
                instance
                    .capture()
                    .map_err(|e| e.to_string())
                    .and_then(|s| Checkpoint::new(&s, bound).map_err(|e| e.to_string()))
                    .map(Local::Flat)
            }
        };
        match local {
            Ok(local) => {
                tracing::debug!(workload = %self.config.name, spared, took_ms = began.elapsed().as_secs_f64() * 1e3, "checkpoint taken");
                self.local = local;
                self.failed_at = None;
            }
            Err(e) => {
                // A failed capture may have spent the old buffers or moved
                // the write tracking under the old checkpoint: drop it.
                tracing::warn!(workload = %self.config.name, error = %e, "cannot checkpoint the workload; a failure now would restart it");
                self.local = Local::None;
                self.failed_at = Some(Instant::now());
            }
        }
    }

    /// The standby's next checkpoint (see [`WorkloadHandle::export`]).
    fn export(&mut self, full: bool) -> Result<Option<Snapshot>, String> {
        if self.options.checkpoints != Checkpoints::EachEvent {
            return Err("the workload is not checkpointed after every event".to_string());
        }
        if self.checkpoints_paused() {
            return Err("the workload is migrating".to_string());
        }
        if !matches!(self.local, Local::Flat(_)) {
            self.failed_at = None;
            self.rebase();
        }
        match &mut self.local {
            Local::Flat(c) => {
                if full {
                    c.resend_full();
                }
                let mut out = c.export();
                // The standby keeps the log records too: all of them with a
                // full checkpoint, those written since with a delta.
                if let Some(snapshot) = &mut out {
                    let abi = self.workload.instance().abi();
                    let since = if snapshot.is_full() {
                        None
                    } else {
                        self.logs_exported
                    };
                    snapshot.host.push(crate::snapshot::HostSection {
                        name: crate::abi::LOGS_SECTION.to_string(),
                        data: abi.encode_logs(since),
                    });
                    self.logs_exported = Some(abi.log_cursor);
                }
                Ok(out)
            }
            _ => Err("the workload cannot be checkpointed".to_string()),
        }
    }

    /// The records after `after` (per timeline, the next number a reader
    /// wants; all of a timeline it does not name); with no cursor at all,
    /// the newest `tail` (all with `None`).
    fn logs(&self, after: &std::collections::BTreeMap<u64, u64>, tail: Option<usize>) -> LogPage {
        let abi = self.workload.instance().abi();
        let records = if after.is_empty() {
            let skip = abi.logs.len().saturating_sub(tail.unwrap_or(usize::MAX));
            abi.logs.iter().skip(skip).cloned().collect()
        } else {
            abi.logs
                .iter()
                .filter(|r| after.get(&r.timeline).is_none_or(|next| r.seq >= *next))
                .cloned()
                .collect()
        };
        let mut timelines: Vec<(u64, u64, u64)> = Vec::new();
        for r in &abi.logs {
            match timelines.iter_mut().find(|t| t.0 == r.timeline) {
                Some(t) => t.2 = r.seq + 1,
                None => timelines.push((r.timeline, r.seq, r.seq + 1)),
            }
        }
        if abi.log_stream != 0 {
            match timelines.iter_mut().find(|t| t.0 == abi.log_stream) {
                Some(t) => t.2 = abi.log_cursor,
                None => timelines.push((abi.log_stream, abi.log_cursor, abi.log_cursor)),
            }
        }
        LogPage { timelines, records }
    }

    /// Turn what the guest wrote to stdout and stderr since the last call
    /// into log records, a line each (a line over the quota is cut into
    /// several; bytes the stream no longer kept are counted in a record).
    fn collect_output(&mut self) {
        use crate::abi::{LogRecord, LogSource};
        let max = self.workload.instance().abi().quotas.max_log_line.max(1);
        for (i, source) in [LogSource::Stdout, LogSource::Stderr]
            .into_iter()
            .enumerate()
        {
            let buffer = match source {
                LogSource::Stderr => self.workload.instance().stderr().clone(),
                _ => self.workload.instance().stdout().clone(),
            };
            let (start, bytes) = buffer.read_from(self.output[i].0);
            let mut lines = Vec::new();
            if start > self.output[i].0 {
                lines.push(format!(
                    "[{} bytes of {} not kept]",
                    start - self.output[i].0,
                    source.as_str()
                ));
                self.output[i].1.clear();
            }
            self.output[i].0 = start + bytes.len() as u64;
            let partial = &mut self.output[i].1;
            partial.extend_from_slice(&bytes);
            while let Some(end) = partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = partial.drain(..=end).collect();
                let line = &line[..line.len() - 1];
                for chunk in line.chunks(max) {
                    lines.push(String::from_utf8_lossy(chunk).into_owned());
                }
            }
            while partial.len() >= max {
                let chunk: Vec<u8> = partial.drain(..max).collect();
                lines.push(String::from_utf8_lossy(&chunk).into_owned());
            }
            let level = if source == LogSource::Stderr { 3 } else { 2 };
            for message in lines {
                self.workload.instance_mut().abi_mut().push_log(LogRecord {
                    timeline: 0,
                    seq: 0,
                    time_ms: crate::abi::now_ms(),
                    level,
                    source,
                    message,
                });
            }
        }
    }

    /// After an event: messages the workload sent to itself go straight
    /// into its inbox (state, not output); the others wait in the outbox,
    /// marked as output to commit.
    fn sent(&mut self) {
        let name = self.config.name.clone();
        let abi = self.workload.instance_mut().abi_mut();
        let mut own = Vec::new();
        let mut others = false;
        abi.outbox.retain(|m| {
            if m.to == name {
                own.push(m.clone());
                false
            } else {
                others = true;
                true
            }
        });
        for m in own {
            if let Err(code) = self.workload.take(&name, m.id, m.body.clone()) {
                // Full: it waits in the outbox, sent through the router.
                tracing::debug!(workload = %name, code, "own inbox is full; the message waits");
                self.workload.instance_mut().abi_mut().outbox.push_back(m);
                others = true;
            }
        }
        if others {
            self.output(Output::Sent);
        }
    }

    /// Start one delivery attempt for every destination that has messages
    /// waiting and none out: its oldest message. While outputs wait for a
    /// commit, only messages of a state the standby acknowledged go (the
    /// others may not be on the standby).
    fn dispatch(&mut self) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        let held = !self.outputs.is_empty() || self.inflight.is_some();
        let from = self.config.name.clone();
        let mut first = std::collections::HashSet::new();
        let mut due = Vec::new();
        for m in &self.workload.instance().abi().outbox {
            if first.insert(m.to.as_str())
                && !self.sending.contains(&m.to)
                && (!held || self.committed.contains(&m.id))
            {
                due.push(m.clone());
            }
        }
        for message in due {
            self.sending.insert(message.to.clone());
            let pause = self
                .resend
                .get(&message.to)
                .map_or(RESEND_FIRST, |p| (*p * 2).min(RESEND_MAX));
            let (to, id) = (message.to.clone(), message.id);
            let outcomes = self.outcomes.clone();
            let attempt = match &self.options.router {
                Some(router) => router(&from, message),
                None => {
                    let why = format!("no workload named `{to}` here");
                    Box::pin(async move { Delivery::Unknown(why) })
                }
            };
            tokio::spawn(async move {
                let outcome = attempt.await;
                if let Delivery::Retry(_) = &outcome {
                    tokio::time::sleep(pause).await;
                }
                let _ = outcomes.send((to, id, outcome));
            });
        }
    }

    /// One delivery attempt's outcome: the message leaves the outbox once
    /// delivered; an unknown destination sends it back to the workload;
    /// otherwise it goes again after a pause. A frozen workload records
    /// nothing (its state is on its way to another host, which sends
    /// again what is still in it).
    async fn delivered(&mut self, (to, id, outcome): Outcome, frozen: bool) {
        self.sending.remove(&to);
        if frozen {
            return;
        }
        let name = self.config.name.clone();
        match outcome {
            Delivery::Retry(why) => {
                let pause = self
                    .resend
                    .get(&to)
                    .map_or(RESEND_FIRST, |p| (*p * 2).min(RESEND_MAX));
                tracing::debug!(workload = %name, %to, %why, ?pause, "message not delivered yet; sending it again");
                self.resend.insert(to, pause);
                self.dispatch();
            }
            Delivery::Delivered => {
                self.resend.remove(&to);
                let outbox = &mut self.workload.instance_mut().abi_mut().outbox;
                if let Some(at) = outbox.iter().position(|m| m.id == id && m.to == to) {
                    outbox.remove(at);
                    self.keep(false);
                }
                self.dispatch();
            }
            Delivery::Unknown(why) => {
                self.resend.remove(&to);
                tracing::warn!(workload = %name, %to, %why, "message sent to an unknown workload; it goes back to its sender");
                let outbox = &mut self.workload.instance_mut().abi_mut().outbox;
                let Some(at) = outbox.iter().position(|m| m.id == id && m.to == to) else {
                    self.dispatch();
                    return;
                };
                let Some(message) = outbox.remove(at) else {
                    return;
                };
                if !self
                    .workload
                    .instance()
                    .module()
                    .exports_function(crate::abi::EXPORT_MESSAGE)
                {
                    self.keep(false);
                    self.dispatch();
                    return;
                }
                // Cut to the inbox's quota: the code and the name matter most.
                let room = self
                    .workload
                    .instance()
                    .abi()
                    .quotas
                    .max_message
                    .saturating_sub(8 + to.len());
                let kept = &message.body[..message.body.len().min(room)];
                let body = crate::abi::undeliverable(crate::abi::codes::NOT_FOUND, &to, kept);
                if let Err(code) =
                    self.workload
                        .take(crate::abi::UNDELIVERABLE, MessageId::default(), body)
                {
                    // No room to say so now: it stays, and goes again later.
                    tracing::debug!(workload = %name, code, "inbox full; the bounce waits");
                    self.workload
                        .instance_mut()
                        .abi_mut()
                        .outbox
                        .insert(at, message);
                    self.resend.insert(to, RESEND_MAX);
                    self.dispatch();
                    return;
                }
                self.after_event(false).await;
            }
        }
    }

    async fn roundtrip(&mut self) -> Result<(), String> {
        self.memory_back().await;
        let snapshot = self
            .workload
            .instance_mut()
            .capture()
            .map_err(|e| e.to_string())?;
        let bytes = codec::encode(&snapshot);
        let decoded = codec::decode(
            &bytes,
            Some(&self.module.digest()),
            &DecodeLimits::default(),
        )
        .map_err(|e| e.to_string())?;
        let here = self.config.info.clone();
        self.workload = Workload::restore(
            &self.rt,
            &self.module,
            self.config.clone(),
            &decoded,
            Some((&here, crate::abi::codec::MoveKind::Restored)),
        )
        .await
        .map_err(|e| e.to_string())?;
        self.checkpoint = Some(decoded);
        Ok(())
    }

    /// Replace a failed instance: roll it back to the last good state
    /// without the event that failed, else restart it fresh.
    async fn recover(&mut self) {
        self.memory_back().await;
        let name = self.config.name.clone();
        let failed = self.workload.take_failed_event();
        let flat;
        let last_good = match (&self.local, &self.checkpoint) {
            (Local::Flat(c), _) => {
                flat = c.to_snapshot();
                Some(&flat)
            }
            (Local::Full(s, _), _) => Some(s),
            (Local::None, roundtrip) => roundtrip.as_ref(),
        };
        if let Some(snapshot) = last_good {
            match Workload::restore(&self.rt, &self.module, self.config.clone(), snapshot, None)
                .await
            {
                Ok(mut w) => {
                    if let Some(event) = &failed {
                        w.forget(event);
                    }
                    // Messages sent since that state got ids it still
                    // holds as unused: new messages take a new stream.
                    w.instance_mut().abi_mut().new_stream();
                    tracing::warn!(workload = %name, sequence = snapshot.sequence, left_out = ?failed, "instance failed; rolled back to its last good state");
                    self.failures.rolled_back.fetch_add(1, Ordering::Relaxed);
                    self.workload = w;
                    if matches!(self.local, Local::Flat(_)) || failed.is_some() {
                        self.rebase();
                    }
                    // The group's other events, rolled back with it.
                    self.unsettled = false;
                    let group = std::mem::take(&mut self.group);
                    if !group.is_empty() {
                        self.replay(group).await;
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(workload = %name, error = %e, "cannot restore the last good state")
                }
            }
        }
        match Workload::start(&self.rt, &self.module, self.config.clone()).await {
            Ok(w) => {
                tracing::warn!(workload = %name, "instance failed; restarted from its initial state");
                // Nothing of the group's state is left to run it again on.
                self.group.clear();
                self.unsettled = false;
                self.failures.restarted.fetch_add(1, Ordering::Relaxed);
                self.workload = w;
                self.local = Local::None;
                self.rebase();
            }
            Err(e) => tracing::error!(workload = %name, error = %e, "cannot restart the workload"),
        }
    }
}

/// Routes messages between the workloads driven on one host.
///
/// Delivery is asynchronous: the sender's call returns first, then the
/// message is queued in the receiver's inbox (which its snapshots carry).
#[derive(Clone, Default)]
pub struct LocalBus {
    handles: Arc<std::sync::RwLock<std::collections::HashMap<String, WorkloadHandle>>>,
}

impl LocalBus {
    /// An empty bus.
    pub fn new() -> LocalBus {
        LocalBus::default()
    }

    /// Make `handle` reachable by its name.
    pub fn register(&self, handle: WorkloadHandle) {
        self.handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(handle.name().to_string(), handle);
    }

    /// Whether a workload called `name` is on this bus.
    pub fn contains(&self, name: &str) -> bool {
        self.handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
    }

    /// The handle of the workload called `name`.
    pub fn get(&self, name: &str) -> Option<WorkloadHandle> {
        self.handles
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Forget the workload called `name`.
    pub fn unregister(&self, name: &str) {
        self.handles
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// A [`Router`] that delivers through this bus.
    pub fn router(&self) -> Router {
        let bus = self.clone();
        Arc::new(move |from: &str, message: OutboundMessage| {
            let handle = bus
                .handles
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&message.to)
                .cloned();
            let from = from.to_string();
            Box::pin(async move {
                let Some(handle) = handle else {
                    return Delivery::Unknown(format!(
                        "no workload named `{}` on this host",
                        message.to
                    ));
                };
                match handle.message(&from, message.id, message.body).await {
                    Ok(()) => Delivery::Delivered,
                    Err(e) => Delivery::Retry(e.to_string()),
                }
            })
        })
    }
}
