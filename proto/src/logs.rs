//! Workload logs on the wire. Each replica writes its records in a log
//! timeline (a random id that moves with it) numbered from 0, so a reader
//! that passes back the [`Cursor`] it was given gets each record once —
//! never one twice, never one skipped unless its host no longer keeps it,
//! which the answer says ([`Missed`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The most timelines a cursor names (a workload's replicas and the
/// timelines their standbys' promotions started).
pub const MAX_CURSOR_ENTRIES: usize = 256;

/// The most a host's answer of records takes, encoded: past it the
/// newest records wait for the next call (the timelines' `next` says
/// where the answer stopped, so none is skipped).
pub const MAX_PAGE_RECORDS_BYTES: usize = 4 << 20;

/// The most of a host's logs answer read: the records and the states of
/// up to [`MAX_CURSOR_ENTRIES`] timelines.
pub const MAX_PAGE_BYTES: usize = MAX_PAGE_RECORDS_BYTES + (64 << 10);

/// One record as a host keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The replica timeline it was written in (hex).
    pub timeline: String,
    /// Its number in its timeline.
    pub seq: u64,
    /// When it was written, ms since the Unix epoch.
    pub time_ms: u64,
    /// `TRACE`, `DEBUG`, `INFO`, `WARN` or `ERROR`.
    pub level: String,
    /// `log` (`roam::log`), `stdout` or `stderr`.
    pub source: String,
    /// The text.
    pub message: String,
}

/// Where a timeline stands on a host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineState {
    /// The timeline (hex).
    pub timeline: String,
    /// The oldest record of it the host still keeps.
    pub first: u64,
    /// The number after its newest.
    pub next: u64,
}

/// `GET /v1/instances/{workload}/logs` on a host: the copy's records.
/// A copy keeps records of its own timeline, and of those before it (a
/// standby that took over keeps what its primary wrote).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceLogs {
    /// Each timeline it keeps records of.
    pub timelines: Vec<TimelineState>,
    /// Records asked for, oldest first.
    pub records: Vec<LogLine>,
}

/// A record of a workload as the scheduler gives it: with where it ran.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadLogLine {
    /// Host it was read from.
    pub host: String,
    /// The record.
    #[serde(flatten)]
    pub line: LogLine,
}

/// Records a reader will not get: its host no longer keeps them (they
/// were written faster than the reader read, past the host's 1,000).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missed {
    /// Host.
    pub host: String,
    /// Timeline (hex).
    pub timeline: String,
    /// How many.
    pub records: u64,
}

/// `GET /v1/workloads/{name}/logs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadLogs {
    /// The records, by time (then timeline and number).
    pub records: Vec<WorkloadLogLine>,
    /// What to pass back for the records after these.
    pub cursor: String,
    /// Records skipped since the cursor passed in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missed: Vec<Missed>,
}

/// The query of both logs routes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsQuery {
    /// From a previous answer: only records after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Without a cursor: at most this many of each replica's newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u32>,
}

/// Per timeline, the number of the next record a reader wants. Written
/// `TIMELINE:NEXT,…` with the timeline in hex.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(pub BTreeMap<u64, u64>);

/// A cursor that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("bad log cursor: {0}")]
pub struct BadCursor(String);

impl Cursor {
    /// Parse a cursor from a caller (untrusted: bounded, every part
    /// checked).
    pub fn parse(text: &str) -> Result<Cursor, BadCursor> {
        let mut out = BTreeMap::new();
        if text.is_empty() {
            return Ok(Cursor(out));
        }
        for part in text.split(',') {
            if out.len() >= MAX_CURSOR_ENTRIES {
                return Err(BadCursor(format!(
                    "more than {MAX_CURSOR_ENTRIES} timelines"
                )));
            }
            let (timeline, next) = part
                .split_once(':')
                .ok_or_else(|| BadCursor(format!("`{part}` is not TIMELINE:NEXT")))?;
            let timeline = u64::from_str_radix(timeline, 16)
                .map_err(|_| BadCursor(format!("timeline `{timeline}` is not hex")))?;
            let next = next
                .parse()
                .map_err(|_| BadCursor(format!("`{next}` is not a record number")))?;
            out.insert(timeline, next);
        }
        Ok(Cursor(out))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (timeline, next)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{timeline:016x}:{next}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_written_and_refuses_what_is_not_one() {
        let c = Cursor([(0xabc, 7), (u64::MAX, 0)].into_iter().collect());
        assert_eq!(Cursor::parse(&c.to_string()).unwrap(), c);
        assert_eq!(Cursor::parse("").unwrap(), Cursor::default());
        for bad in ["x", "zz:1", "1:-1", "1:", ":1", "1:2,"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_CURSOR_ENTRIES)
            .map(|i| format!("{i:x}:1"))
            .collect();
        assert!(Cursor::parse(&many.join(",")).is_err());
    }
}
