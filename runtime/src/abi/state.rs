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
const SECTION_VERSION: u32 = 1;

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
            max_body: 8 << 20,
            max_random: 64 << 10,
        }
    }
}

/// Where the workload runs: host and site (its restore hook is told where
/// it came from).
pub use roam_proto::Place;

/// A message sent by this workload, waiting to be routed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Destination workload.
    pub to: String,
    /// Body.
    pub body: Vec<u8>,
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

/// One structured log record from the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// 0 trace, 1 debug, 2 info, 3 warn, 4 error.
    pub level: u8,
    /// The message (UTF-8, lossy).
    pub message: String,
}

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
    /// Sent, not yet routed.
    pub outbox: VecDeque<OutboundMessage>,
    /// Received, not yet handled.
    pub inbox: VecDeque<InboundMessage>,
    /// Recent log records (not part of snapshots: logs leave the host as they are written).
    pub logs: VecDeque<LogRecord>,
    /// Log records ever written (the log cursor; moves with the workload).
    pub log_cursor: u64,
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
        out
    }

    /// Replace the moving parts of this state with those in `data`, checking
    /// every item against this workload's quotas. On error nothing changes.
    pub fn decode_into(&mut self, data: &[u8]) -> Result<(), String> {
        let q = &self.quotas;
        let mut r = Reader(data);
        let version = r.u32()?;
        if version != SECTION_VERSION {
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
        let outbox = read_messages(&mut r)?
            .into_iter()
            .map(|(to, body)| OutboundMessage { to, body })
            .collect();
        let log_cursor = r.u64()?;
        if !r.0.is_empty() {
            return Err("trailing bytes".into());
        }
        self.kv = kv;
        self.kv_bytes = kv_bytes;
        self.next_timer = next_timer;
        self.timers = timers;
        self.inbox = inbox;
        self.outbox = outbox;
        self.log_cursor = log_cursor;
        Ok(())
    }

    /// The earliest pending timer: (id, due ns).
    pub fn next_timer_due(&self) -> Option<(u64, u64)> {
        self.timers
            .iter()
            .map(|(id, t)| (*id, t.due_ns))
            .min_by_key(|&(id, due)| (due, id))
    }

    /// Record a log line, keeping at most the quota of recent records.
    pub fn push_log(&mut self, record: LogRecord) {
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
        s.outbox.push_back(OutboundMessage {
            to: "b".into(),
            body: b"yo".to_vec(),
        });
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
}
