//! The wire encoding of values passed through guest memory.
//!
//! Little-endian, length-prefixed, easy to read and write from any language:
//! a *string* or *bytes* is `u32 len | len bytes`.
//!
//! - Request (host → `roam_http`): method, path, query (strings), `u32 n`,
//!   n × (name, value) headers, body (bytes).
//! - Response (returned by `roam_http`): `u32 status`, `u32 n`, n × (name,
//!   value) headers, body (bytes).
//! - Message (host → `roam_message`): from (string), body (bytes).
//! - Restore info (host → `roam_restored`): previous host, previous site,
//!   host, site, how it got here (strings; the last is `migration`,
//!   `failover` or `restore`, and may be missing: hosts before it called
//!   the hook only for moves).
//!
//! The host decodes responses as untrusted input: every length is bounded by
//! the bytes that remain and by the body quota.

/// An HTTP-shaped request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path, starting with `/`.
    pub path: String,
    /// Query string without `?` (may be empty).
    pub query: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// An HTTP-shaped response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// Status code (100..=999).
    pub status: u16,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// Append `u32 len | bytes`.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Append a string.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Encode a request for `roam_http`.
pub fn encode_request(r: &Request) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + r.body.len());
    put_str(&mut out, &r.method);
    put_str(&mut out, &r.path);
    put_str(&mut out, &r.query);
    out.extend_from_slice(&(r.headers.len() as u32).to_le_bytes());
    for (k, v) in &r.headers {
        put_str(&mut out, k);
        put_str(&mut out, v);
    }
    put_bytes(&mut out, &r.body);
    out
}

/// Encode a message for `roam_message`.
pub fn encode_message(from: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + from.len() + body.len());
    put_str(&mut out, from);
    put_bytes(&mut out, body);
    out
}

/// How a workload came to run where `roam_restored` is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveKind {
    /// A live or stop-and-copy migration moved it.
    Migrated,
    /// Its primary's host died and its standby took over, with the last
    /// state the standby acknowledged.
    FailedOver,
    /// It was captured and restored in place (`--roundtrip-snapshots`).
    Restored,
}

impl MoveKind {
    /// The word restore info carries.
    pub fn as_str(self) -> &'static str {
        match self {
            MoveKind::Migrated => "migration",
            MoveKind::FailedOver => "failover",
            MoveKind::Restored => "restore",
        }
    }
}

/// Encode restore info for `roam_restored`.
pub fn encode_restored(
    prev_host: &str,
    prev_site: &str,
    host: &str,
    site: &str,
    how: MoveKind,
) -> Vec<u8> {
    let mut out = Vec::new();
    for s in [prev_host, prev_site, host, site, how.as_str()] {
        put_str(&mut out, s);
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err(format!("ends early: needs {n} bytes, has {}", self.0.len()));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn bytes(&mut self, max: usize) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(format!("a field of {n} bytes is over the limit of {max}"));
        }
        self.take(n)
    }
    fn string(&mut self, max: usize) -> Result<String, String> {
        String::from_utf8(self.bytes(max)?.to_vec())
            .map_err(|_| "a string is not UTF-8".to_string())
    }
}

/// Largest header name or value accepted.
const MAX_HEADER: usize = 8 << 10;
/// Most headers accepted.
const MAX_HEADERS: usize = 100;

/// Decode a guest's response; `max_body` bounds the body.
pub fn decode_response(bytes: &[u8], max_body: usize) -> Result<Response, String> {
    let mut r = Reader(bytes);
    let status = r.u32()?;
    if !(100..=999).contains(&status) {
        return Err(format!("status {status} is not an HTTP status"));
    }
    let n = r.u32()? as usize;
    if n > MAX_HEADERS {
        return Err(format!("{n} headers is over the limit of {MAX_HEADERS}"));
    }
    let mut headers = Vec::with_capacity(n);
    for _ in 0..n {
        headers.push((r.string(MAX_HEADER)?, r.string(MAX_HEADER)?));
    }
    let body = r.bytes(max_body)?.to_vec();
    if !r.0.is_empty() {
        return Err(format!("{} trailing bytes", r.0.len()));
    }
    Ok(Response {
        status: status as u16,
        headers,
        body,
    })
}
