//! Host-side state of one workload under the ABI, and its snapshot section.
//!
//! Everything here belongs to the workload and moves with it: key-value data,
//! pending timers (due times on the workload's own monotonic clock, which
//! continues across hosts), messages received but not yet handled, messages
//! sent but not yet routed. It is saved in the `roam.abi` host section of
//! every snapshot ([`AbiState::encode`]) and restored from it
//! ([`AbiState::decode_into`]), so a moved workload keeps its data, its timers
//! still fire, and no queued message is lost or delivered twice.

use std::collections::{BTreeMap, VecDeque};

/// Name of the snapshot host section.
pub const SECTION: &str = "roam.abi";
/// Version 2 added message ids and the record of messages received.
const SECTION_VERSION: u32 = 3;

/// Sender streams whose last message id a receiver remembers; the least
/// recently used is forgotten first (a resend on a forgotten stream would
/// be handled again).
pub const MAX_SENDER_STREAMS: usize = 1024;

pub use roam_proto::Grants;

/// Bounds on what a workload may hold in the host. Each protects the host's
/// memory from one guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Largest key.
    pub kv_max_key: usize,
    /// Largest value.
    pub kv_max_value: usize,
    /// Total bytes of keys and values.
    pub kv_max_bytes: usize,
    /// Number of keys.
    pub kv_max_keys: usize,
    /// Pending timers.
    pub max_timers: usize,
    /// Largest timer payload.
    pub max_timer_payload: usize,
    /// Largest message body.
    pub max_message: usize,
    /// Messages waiting to be routed (sent) or handled (received).
    pub max_queued_messages: usize,
    /// Longest log line; longer lines are cut.
    pub max_log_line: usize,
    /// Log records kept.
    pub max_log_records: usize,
    /// Largest request or response body passed through the ABI.
    pub max_body: usize,
    /// Most bytes one `random_fill` call returns.
    pub max_random: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            kv_max_key: 1024,
            kv_max_value: 1 << 20,
            kv_max_bytes: 16 << 20,
            kv_max_keys: 100_000,
            max_timers: 1024,
            max_timer_payload: 64 << 10,
            max_message: 1 << 20,
            max_queued_messages: 1024,
            max_log_line: 16 << 10,
            max_log_records: 1000,
            max_body: roam_proto::MAX_HTTP_BODY,
            max_random: 64 << 10,
        }
    }
}

/// Where the workload runs: host and site (its restore hook is told where
/// it came from).
pub use roam_proto::Place;

/// Names one sent message: the sender's stream and its place in it.
///
/// A stream is one timeline of a sender's state: it begins at the first
/// message sent after a start, a rollback or a failover, so a message id
/// is never reused for another message even when the state that assigned
/// it was lost. Within a stream, ids rise by one per message, and each
/// destination gets its messages in id order, one at a time, so a
/// receiver needs only the last id it took per stream to drop resends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    /// The sender's stream (random; 0: no id, never deduplicated).
    pub stream: u64,
    /// Its place in the stream, from 1.
    pub seq: u64,
}

/// A message sent by this workload, kept until the receiver's host
/// acknowledged it (or said the destination does not exist).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Destination workload.
    pub to: String,
    /// Body.
    pub body: Vec<u8>,
    /// Its id.
    pub id: MessageId,
}

/// A message received by this workload, waiting to be handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundMessage {
    /// Sender workload.
    pub from: String,
    /// Body.
    pub body: Vec<u8>,
}

/// A pending timer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer {
    /// Due time on the workload's monotonic clock (ns).
    pub due_ns: u64,
    /// Payload given back when it fires.
    pub payload: Vec<u8>,
}

/// One log record of the guest: a `roam::log` call, or a line it wrote to
/// stdout or stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// The log timeline it was written in ([`AbiState::log_stream`]).
    pub timeline: u64,
    /// Its place in that timeline: the log cursor when it was written,
    /// one more for each record.
    pub seq: u64,
    /// Wall-clock time it was written, ms since the Unix epoch.
    pub time_ms: u64,
    /// 0 trace, 1 debug, 2 info, 3 warn, 4 error.
    pub level: u8,
    /// Where it came from.
    pub source: LogSource,
    /// The message (UTF-8, lossy).
    pub message: String,
}

/// Where a [`LogRecord`] came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogSource {
    /// `roam::log`.
    #[default]
    Log,
    /// A line on WASI stdout.
    Stdout,
    /// A line on WASI stderr.
    Stderr,
}

impl LogSource {
    /// The name shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            LogSource::Log => "log",
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
        }
    }

    fn code(self) -> u8 {
        match self {
            LogSource::Log => 0,
            LogSource::Stdout => 1,
            LogSource::Stderr => 2,
        }
    }

    fn from_code(code: u8) -> Option<LogSource> {
        match code {
            0 => Some(LogSource::Log),
            1 => Some(LogSource::Stdout),
            2 => Some(LogSource::Stderr),
            _ => None,
        }
    }
}

/// Name of the host section that carries a workload's recent log records
/// when it moves (a migration, an upgrade); never in checkpoints.
pub const LOGS_SECTION: &str = "roam.logs";

/// At most this many bytes of log messages travel with a move.
pub const MAX_LOGS_CARRIED: usize = 1 << 20;

/// The ABI state of one workload.
#[derive(Clone, Debug, Default)]
pub struct AbiState {
    /// What it may use.
    pub grants: Grants,
    /// Its bounds.
    pub quotas: Quotas,
    /// Where it runs now.
    pub info: Place,
    /// Key-value data.
    pub kv: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Bytes of keys and values.
    pub kv_bytes: usize,
    /// Pending timers by id.
    pub timers: BTreeMap<u64, Timer>,
    /// Next timer id.
    pub next_timer: u64,
    /// Sent, not yet acknowledged by the receiver's host.
    pub outbox: VecDeque<OutboundMessage>,
    /// The stream new messages get (0: a new one at the next send).
    pub stream: u64,
    /// The last id given in `stream`.
    pub last_seq: u64,
    /// Received, not yet handled.
    pub inbox: VecDeque<InboundMessage>,
    /// The last message id taken per sender stream, `(from, stream)` →
    /// `(seq, used)`, `used` from `received_clock` (the least recently
    /// used is forgotten beyond [`MAX_SENDER_STREAMS`]).
    pub received: BTreeMap<(String, u64), (u64, u64)>,
    /// Ticks once per message taken.
    pub received_clock: u64,
    /// Recent log records, at most the quota: not in checkpoints; a move
    /// carries them in the [`LOGS_SECTION`].
    pub logs: VecDeque<LogRecord>,
    /// Log records ever written in this timeline (the log cursor; moves
    /// with the workload, and never goes back on one host).
    pub log_cursor: u64,
    /// The workload replica's log timeline: records are named by
    /// `(log_stream, seq)`. A standby's promotion starts a new one (its
    /// state may be older than records its primary wrote); 0 means a new
    /// one is drawn at the next record.
    pub log_stream: u64,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err(format!("needs {n} bytes, has {}", self.0.len()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    /// A count whose items take at least `min_item` bytes each.
    fn count(&mut self, min_item: usize) -> Result<usize, String> {
        let n = self.u64()?;
        if n > (self.0.len() / min_item.max(1)) as u64 {
            return Err(format!("count {n} does not fit in the section"));
        }
        Ok(n as usize)
    }
    fn bytes(&mut self, max: usize) -> Result<Vec<u8>, String> {
        let n = self.u64()?;
        if n > max as u64 {
            return Err(format!("item of {n} bytes is over its limit of {max}"));
        }
        Ok(self.take(n as usize)?.to_vec())
    }
    fn string(&mut self, max: usize) -> Result<String, String> {
        String::from_utf8(self.bytes(max)?).map_err(|_| "name is not UTF-8".to_string())
    }
}

const MAX_NAME: usize = 256;

/// A random stream id. Without randomness, a clock-derived one still
/// differs from the previous timeline's in practice.
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        b = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1))
        .to_le_bytes();
    }
    u64::from_le_bytes(b)
}

impl AbiState {
    /// Encode the state that moves with the workload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&SECTION_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            put_bytes(&mut out, k);
            put_bytes(&mut out, v);
        }
        out.extend_from_slice(&self.next_timer.to_le_bytes());
        out.extend_from_slice(&(self.timers.len() as u64).to_le_bytes());
        for (id, t) in &self.timers {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&t.due_ns.to_le_bytes());
            put_bytes(&mut out, &t.payload);
        }
        out.extend_from_slice(&(self.inbox.len() as u64).to_le_bytes());
        for m in &self.inbox {
            put_bytes(&mut out, m.from.as_bytes());
            put_bytes(&mut out, &m.body);
        }
        out.extend_from_slice(&(self.outbox.len() as u64).to_le_bytes());
        for m in &self.outbox {
            put_bytes(&mut out, m.to.as_bytes());
            put_bytes(&mut out, &m.body);
        }
        out.extend_from_slice(&self.log_cursor.to_le_bytes());
        // Version 2.
        for m in &self.outbox {
            out.extend_from_slice(&m.id.stream.to_le_bytes());
            out.extend_from_slice(&m.id.seq.to_le_bytes());
        }
        out.extend_from_slice(&self.stream.to_le_bytes());
        out.extend_from_slice(&self.last_seq.to_le_bytes());
        out.extend_from_slice(&self.received_clock.to_le_bytes());
        out.extend_from_slice(&(self.received.len() as u64).to_le_bytes());
        for ((from, stream), (seq, used)) in &self.received {
            put_bytes(&mut out, from.as_bytes());
            out.extend_from_slice(&stream.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&used.to_le_bytes());
        }
        // Version 3.
        out.extend_from_slice(&self.log_stream.to_le_bytes());
        out
    }

    /// The [`LOGS_SECTION`]: every retained record (`None`), or those of
    /// the current timeline numbered `since` and after; the newest kept
    /// when over [`MAX_LOGS_CARRIED`].
    pub fn encode_logs(&self, since: Option<u64>) -> Vec<u8> {
        let mut picked = Vec::new();
        let mut bytes = 0;
        for r in self.logs.iter().rev() {
            if since.is_some_and(|s| r.timeline != self.log_stream || r.seq < s) {
                break;
            }
            bytes += r.message.len();
            if bytes > MAX_LOGS_CARRIED {
                break;
            }
            picked.push(r);
        }
        let mut out = Vec::with_capacity(bytes + picked.len() * 40 + 8);
        out.extend_from_slice(&(picked.len() as u64).to_le_bytes());
        for r in picked.into_iter().rev() {
            out.extend_from_slice(&r.timeline.to_le_bytes());
            out.extend_from_slice(&r.seq.to_le_bytes());
            out.extend_from_slice(&r.time_ms.to_le_bytes());
            out.push(r.level);
            out.push(r.source.code());
            put_bytes(&mut out, r.message.as_bytes());
        }
        out
    }

    /// Take in a [`LOGS_SECTION`]: its records join the retained ones
    /// (one already here is not added twice), at most the quota kept, the
    /// oldest going first. Checked as untrusted input; on error nothing
    /// changes.
    pub fn decode_logs(&mut self, data: &[u8]) -> Result<(), String> {
        let mut r = Reader(data);
        let n = r.count(34)?;
        let mut records = Vec::with_capacity(n.min(self.quotas.max_log_records));
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for _ in 0..n {
            let timeline = r.u64()?;
            let seq = r.u64()?;
            let time_ms = r.u64()?;
            let level = r.take(1)?[0].min(4);
            let source = LogSource::from_code(r.take(1)?[0])
                .ok_or_else(|| "unknown log record source".to_string())?;
            let message = String::from_utf8_lossy(&r.bytes(self.quotas.max_log_line)?).into_owned();
            if last.insert(timeline, seq).is_some_and(|l| seq <= l) {
                return Err("log records out of order".into());
            }
            records.push(LogRecord {
                timeline,
                seq,
                time_ms,
                level,
                source,
                message,
            });
        }
        if !r.0.is_empty() {
            return Err("trailing bytes".into());
        }
        let kept: std::collections::HashSet<(u64, u64)> =
            self.logs.iter().map(|l| (l.timeline, l.seq)).collect();
        for record in records {
            if kept.contains(&(record.timeline, record.seq)) {
                continue;
            }
            if self.logs.len() >= self.quotas.max_log_records {
                self.logs.pop_front();
            }
            self.logs.push_back(record);
        }
        Ok(())
    }

    /// Start a new log timeline (a standby's promotion: its state may be
    /// older than records its primary wrote, so its numbers could repeat
    /// theirs). The records kept stay, in their own timeline.
    pub fn new_log_timeline(&mut self) {
        self.log_stream = 0;
    }

    /// Replace the moving parts of this state with those in `data`, checking
    /// every item against this workload's quotas. On error nothing changes.
    pub fn decode_into(&mut self, data: &[u8]) -> Result<(), String> {
        let q = &self.quotas;
        let mut r = Reader(data);
        let version = r.u32()?;
        if !(1..=SECTION_VERSION).contains(&version) {
            return Err(format!("unsupported version {version}"));
        }
        let mut kv = BTreeMap::new();
        let mut kv_bytes = 0;
        for _ in 0..r.count(16)? {
            let k = r.bytes(q.kv_max_key)?;
            let v = r.bytes(q.kv_max_value)?;
            kv_bytes += k.len() + v.len();
            kv.insert(k, v);
        }
        if kv.len() > q.kv_max_keys || kv_bytes > q.kv_max_bytes {
            return Err("key-value data is over this workload's quota".into());
        }
        let next_timer = r.u64()?;
        let mut timers = BTreeMap::new();
        let n = r.count(24)?;
        if n > q.max_timers {
            return Err(format!("{n} timers is over the limit of {}", q.max_timers));
        }
        for _ in 0..n {
            let id = r.u64()?;
            let due_ns = r.u64()?;
            let payload = r.bytes(q.max_timer_payload)?;
            timers.insert(id, Timer { due_ns, payload });
        }
        let read_messages = |r: &mut Reader<'_>| -> Result<Vec<(String, Vec<u8>)>, String> {
            let n = r.count(16)?;
            if n > q.max_queued_messages {
                return Err(format!(
                    "{n} queued messages is over the limit of {}",
                    q.max_queued_messages
                ));
            }
            (0..n)
                .map(|_| Ok((r.string(MAX_NAME)?, r.bytes(q.max_message)?)))
                .collect()
        };
        let inbox = read_messages(&mut r)?
            .into_iter()
            .map(|(from, body)| InboundMessage { from, body })
            .collect();
        let mut outbox: VecDeque<OutboundMessage> = read_messages(&mut r)?
            .into_iter()
            .map(|(to, body)| OutboundMessage {
                to,
                body,
                id: MessageId::default(),
            })
            .collect();
        let log_cursor = r.u64()?;
        let mut log_stream = 0;
        let (mut stream, mut last_seq, mut received_clock) = (0, 0, 0);
        let mut received = BTreeMap::new();
        if version >= 2 {
            for m in &mut outbox {
                m.id = MessageId {
                    stream: r.u64()?,
                    seq: r.u64()?,
                };
            }
            stream = r.u64()?;
            last_seq = r.u64()?;
            received_clock = r.u64()?;
            let n = r.count(32)?;
            if n > MAX_SENDER_STREAMS {
                return Err(format!(
                    "{n} sender streams is over the limit of {MAX_SENDER_STREAMS}"
                ));
            }
            for _ in 0..n {
                let from = r.string(MAX_NAME)?;
                let key = (from, r.u64()?);
                received.insert(key, (r.u64()?, r.u64()?));
            }
        }
        if version >= 3 {
            log_stream = r.u64()?;
        }
        if !r.0.is_empty() {
            return Err("trailing bytes".into());
        }
        self.kv = kv;
        self.kv_bytes = kv_bytes;
        self.next_timer = next_timer;
        self.timers = timers;
        self.inbox = inbox;
        self.outbox = outbox;
        // A rollback on this host (the same timeline, or a state from
        // before its first record) keeps the cursor where it is and the
        // records kept (they are out already); a move takes the workload's.
        if self.log_stream != 0 && (log_stream == self.log_stream || log_stream == 0) {
            self.log_cursor = self.log_cursor.max(log_cursor);
        } else {
            self.log_cursor = log_cursor;
            self.logs.clear();
            self.log_stream = log_stream;
        }
        self.stream = stream;
        self.last_seq = last_seq;
        self.received = received;
        self.received_clock = received_clock;
        Ok(())
    }

    /// The id of a message sent now: the next in this timeline's stream.
    pub fn next_message_id(&mut self) -> MessageId {
        while self.stream == 0 {
            self.stream = random_u64();
            self.last_seq = 0;
        }
        self.last_seq += 1;
        MessageId {
            stream: self.stream,
            seq: self.last_seq,
        }
    }

    /// Begin a new timeline: this state may be older than messages already
    /// sent from it (a rollback, a standby's promotion), so its next
    /// messages get a new stream, never ids another message had.
    pub fn new_stream(&mut self) {
        self.stream = 0;
    }

    /// Record that message `id` from `from` is taken (in the inbox, in the
    /// same state as this record). `false`: taken before — a resend, to be
    /// acknowledged and dropped. Messages without an id (stream 0) are
    /// always taken.
    pub fn take_message(&mut self, from: &str, id: MessageId) -> bool {
        if id.stream == 0 {
            return true;
        }
        let key = (from.to_string(), id.stream);
        if let Some((last, _)) = self.received.get(&key)
            && id.seq <= *last
        {
            return false;
        }
        if !self.received.contains_key(&key) && self.received.len() >= MAX_SENDER_STREAMS {
            let oldest = self
                .received
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.received.remove(&oldest);
            }
        }
        self.received_clock += 1;
        self.received.insert(key, (id.seq, self.received_clock));
        true
    }

    /// The earliest pending timer: (id, due ns).
    pub fn next_timer_due(&self) -> Option<(u64, u64)> {
        self.timers
            .iter()
            .map(|(id, t)| (*id, t.due_ns))
            .min_by_key(|&(id, due)| (due, id))
    }

    /// Record a log line, keeping at most the quota of recent records; it
    /// gets the next sequence number of the timeline.
    pub fn push_log(&mut self, mut record: LogRecord) {
        while self.log_stream == 0 {
            self.log_stream = random_u64();
        }
        record.timeline = self.log_stream;
        record.seq = self.log_cursor;
        self.log_cursor += 1;
        if self.logs.len() >= self.quotas.max_log_records {
            self.logs.pop_front();
        }
        self.logs.push_back(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_bad_bytes_change_nothing() {
        let mut s = AbiState::default();
        s.kv.insert(b"k".to_vec(), b"v".to_vec());
        s.kv_bytes = 2;
        s.timers.insert(
            3,
            Timer {
                due_ns: 99,
                payload: b"p".to_vec(),
            },
        );
        s.next_timer = 4;
        s.inbox.push_back(InboundMessage {
            from: "a".into(),
            body: b"hi".to_vec(),
        });
        let id = s.next_message_id();
        s.outbox.push_back(OutboundMessage {
            to: "b".into(),
            body: b"yo".to_vec(),
            id,
        });
        assert!(s.take_message("a", MessageId { stream: 9, seq: 3 }));
        s.log_cursor = 7;
        let bytes = s.encode();
        let mut t = AbiState::default();
        t.decode_into(&bytes).unwrap();
        assert_eq!(t.encode(), bytes);
        for len in 0..bytes.len() {
            let mut u = AbiState::default();
            assert!(u.decode_into(&bytes[..len]).is_err());
            assert!(u.kv.is_empty());
        }
    }

    #[test]
    fn a_resend_is_dropped_and_the_record_stays_bounded() {
        let mut s = AbiState::default();
        let a = |seq| MessageId { stream: 7, seq };
        assert!(s.take_message("a", a(1)));
        assert!(s.take_message("a", a(2)));
        assert!(!s.take_message("a", a(2)));
        assert!(!s.take_message("a", a(1)));
        // Another sender, or another stream of the same one, is its own.
        assert!(s.take_message("b", a(1)));
        assert!(s.take_message("a", MessageId { stream: 8, seq: 1 }));
        // Without an id, never deduplicated.
        assert!(s.take_message("a", MessageId::default()));
        assert!(s.take_message("a", MessageId::default()));
        for i in 0..(MAX_SENDER_STREAMS as u64 + 10) {
            s.take_message(
                "c",
                MessageId {
                    stream: 100 + i,
                    seq: 1,
                },
            );
        }
        assert_eq!(s.received.len(), MAX_SENDER_STREAMS);
        // A new stream after a rollback never reuses an id.
        let first = s.next_message_id();
        s.new_stream();
        let second = s.next_message_id();
        assert_ne!(first.stream, second.stream);
        assert_eq!(second.seq, 1);
    }

    fn record(message: &str) -> LogRecord {
        LogRecord {
            timeline: 0,
            seq: 0,
            time_ms: 1,
            level: 2,
            source: LogSource::Stdout,
            message: message.into(),
        }
    }

    #[test]
    fn log_records_move_in_their_timeline_and_a_rollback_never_renumbers_them() {
        let mut s = AbiState::default();
        s.quotas.max_log_records = 3;
        for i in 0..5 {
            s.push_log(record(&format!("r{i}")));
        }
        assert_ne!(s.log_stream, 0);
        let seqs: Vec<u64> = s.logs.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [2, 3, 4], "the newest kept, numbered on");
        // A move: the state, then every record kept.
        let (state, logs) = (s.encode(), s.encode_logs(None));
        let mut t = AbiState::default();
        t.quotas.max_log_records = 3;
        t.decode_into(&state).unwrap();
        t.decode_logs(&logs).unwrap();
        assert_eq!(t.logs, s.logs);
        assert_eq!((t.log_stream, t.log_cursor), (s.log_stream, 5));
        // A later delta carries only the new ones; a repeat is not added twice.
        let since = s.log_cursor;
        s.push_log(record("r5"));
        t.decode_logs(&s.encode_logs(Some(since))).unwrap();
        t.decode_logs(&s.encode_logs(Some(since))).unwrap();
        assert_eq!(t.logs, s.logs);
        // A rollback to an older state on the same host keeps the cursor.
        let older = {
            let mut o = s.clone();
            o.log_cursor = 2;
            o.encode()
        };
        s.decode_into(&older).unwrap();
        assert_eq!(s.log_cursor, 6);
        // …and so does one to a state from before the first record.
        let before_any = AbiState::default().encode();
        let stream = s.log_stream;
        s.decode_into(&before_any).unwrap();
        assert_eq!((s.log_stream, s.log_cursor, s.logs.len()), (stream, 6, 3));
        // A promotion starts a new timeline; the records kept stay, each
        // in its own.
        let before = s.log_stream;
        s.new_log_timeline();
        s.push_log(record("r6"));
        assert_ne!(s.log_stream, before);
        let timelines: Vec<u64> = s.logs.iter().map(|r| r.timeline).collect();
        assert_eq!(timelines, [before, before, s.log_stream]);
        // A move carries both timelines.
        let mut m = AbiState::default();
        m.quotas.max_log_records = 3;
        m.decode_into(&s.encode()).unwrap();
        m.decode_logs(&s.encode_logs(None)).unwrap();
        assert_eq!(m.logs, s.logs);
        // Truncated or disordered bytes are refused, and change nothing.
        let logs = s.encode_logs(None);
        for len in 0..logs.len() {
            let mut u = t.clone();
            assert!(u.decode_logs(&logs[..len]).is_err());
            assert_eq!(u.logs, t.logs);
        }
        let mut disordered = t.clone();
        let twice = {
            let mut one = AbiState::default();
            one.push_log(record("x"));
            one.push_log(record("y"));
            let mut bytes = one.encode_logs(None);
            // The second record's seq, made the first's.
            let second = 8 + 34 + 1;
            let first_seq = bytes[16..24].to_vec();
            bytes[second + 8..second + 16].copy_from_slice(&first_seq);
            bytes
        };
        assert!(disordered.decode_logs(&twice).is_err());
        assert_eq!(disordered.logs, t.logs);
    }
}
