//! Typed errors of live migration on a host, one enum per side. Decisions
//! are taken on the variant, never on a message's text; the text is what an
//! operator reads (`roam get migrations`, the logs).

use axum::http::StatusCode;
use roam_proto::pages::FrameError;
use roam_runtime::{InstantiateError, RestoreError, SnapshotError};

/// A page stream's transport failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    /// An I/O error.
    #[error("the page stream broke while {what}: {error}")]
    Io {
        /// What the stream was doing.
        what: &'static str,
        /// The error.
        error: std::io::Error,
    },
    /// No byte moved for too long.
    #[error("the page stream stalled for {secs} s while {what}")]
    Stalled {
        /// What the stream was doing.
        what: &'static str,
        /// How long it waited.
        secs: u64,
    },
    /// The peer closed it while pages were written.
    #[error("the page stream closed while writing pages")]
    Closed,
}

/// Why a migration's key was not accepted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    /// No such migration is received here.
    #[error("no migration `{0}` here")]
    Unknown(String),
    /// The key presented is not the migration's.
    #[error("wrong migration key")]
    Wrong,
}

impl KeyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            KeyError::Unknown(_) => StatusCode::NOT_FOUND,
            KeyError::Wrong => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Why the target refused what the source sent. Any of these drops what
/// was received: the instance never runs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReceiveError {
    #[error("the final round was already applied")]
    AfterFinal,
    #[error(
        "round {round}'s part asks to serve (`{h}`) but does not end the final round",
        h = roam_proto::headers::ACTIVATE
    )]
    Commit { round: u32 },
    #[error("round {arrived} arrived, round {expected} expected")]
    WrongRound { arrived: u32, expected: u32 },
    #[error("header `{0}` missing or malformed")]
    Header(&'static str),
    #[error("part {part}/{parts} arrived, part {expected} expected")]
    WrongPart {
        part: u32,
        parts: u32,
        expected: u32,
    },
    #[error("round {round} part {part}: {reason}")]
    Body {
        round: u32,
        part: u32,
        reason: String,
    },
    #[error("round {round} part {part}: checksum mismatch")]
    Checksum { round: u32, part: u32 },
    #[error("round {round} has a second snapshot")]
    SecondSnapshot { round: u32 },
    #[error("round of {total} bytes is over the {limit} bytes this workload can hold")]
    TooLarge { total: u64, limit: u64 },
    #[error("round {round} is longer than its announced {total} bytes")]
    Longer { round: u32, total: u64 },
    #[error("round {round}: {source}")]
    Decode { round: u32, source: SnapshotError },
    #[error("round {round} must be a {}", if *round == 0 { "full snapshot" } else { "delta" })]
    Kind { round: u32 },
    #[error("round {round}: {source}")]
    Apply { round: u32, source: RestoreError },
    #[error("round {round} ended without a complete snapshot")]
    Incomplete { round: u32 },
    #[error("pages may only end round 0, after its snapshot")]
    PagesNotLast,
    #[error("the module has no memory")]
    NoMemory,
    #[error("{total} bytes of pages do not fit a memory of {memory} bytes")]
    PagesDontFit { total: u64, memory: u64 },
    #[error(
        "page stream {index}/{streams}: at most {} streams, numbered from 0",
        roam_proto::MAX_PAGE_STREAMS
    )]
    StreamIndex { index: u32, streams: u32 },
    #[error(
        "page stream {index}/{streams} of {total} bytes; {before_streams}/{before_total} bytes announced before"
    )]
    StreamMismatch {
        index: u32,
        streams: u32,
        total: u64,
        before_streams: u32,
        before_total: u64,
    },
    #[error("page stream {0} was opened before")]
    Reopened(u32),
    #[error("the migration's page streams ended")]
    StreamsEnded,
    #[error("more than the announced {0} bytes of pages")]
    OverTotal(u64),
    #[error("a frame lies outside the memory")]
    FrameOutside,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the migration ended while its pages were sent")]
    Ended,
}

/// Why the source gave up before the commit point (it serves on).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    #[error("the scheduler aborted the migration")]
    Aborted,
    #[error("the scheduler went away before the migration was prepared")]
    SchedulerGone,
    /// The driver could not capture or freeze the workload.
    #[error("{0}")]
    Workload(String),
    #[error("round {round}: target unreachable: {error}")]
    Unreachable { round: u32, error: String },
    #[error("round {round}: target answered {status}: {body}")]
    Refused {
        round: u32,
        status: StatusCode,
        body: String,
    },
    #[error("round 0: target refused the pages: {0}")]
    PagesRefused(String),
    #[error("round 0: no page stream: {0}")]
    NoUpgrade(String),
    #[error("round 0: {0}")]
    PageStream(#[from] StreamError),
    #[error("round 0: the target gave no verdict")]
    NoVerdict,
    #[error("round 0: a page stream failed: {0}")]
    Task(String),
    #[error("the capture holds fewer bytes than pages")]
    ShortCapture,
    #[error("too many pages for one stream")]
    TooManyPages,
}

/// Why a received workload could not be activated.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActivateError {
    #[error("migration `{0}` has not received its final state")]
    NotReady(String),
    #[error("no migration `{0}` here")]
    Unknown(String),
    #[error("cannot resume the received workload: {0}")]
    Resume(InstantiateError),
}

impl ActivateError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ActivateError::NotReady(_) => StatusCode::CONFLICT,
            ActivateError::Unknown(_) => StatusCode::NOT_FOUND,
            ActivateError::Resume(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}
