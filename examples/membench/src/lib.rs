//! `membench`: a workload with a chosen amount of live memory that dirties
//! a chosen amount per request — what the migration benchmark moves.
//!
//! - `POST /fill?mib=N`: hold N MiB (every page non-zero); `&at=M` fills
//!   N MiB from MiB M on instead (keeping what is before it), and a fill at
//!   0 with `&of=T` makes room for T MiB: a buffer too large to fill within
//!   one call's CPU budget is filled over several. `&content=` picks what
//!   it holds: `pattern` (the default: a byte pattern that repeats every
//!   251 bytes), `random` (pseudo-random bytes: memory that does not
//!   compress) or `json` (lines of JSON-like records, as a cache of user
//!   sessions would hold: memory that compresses as such data does);
//! - `POST /dirty?kib=K`: write K KiB, one byte per 4 KiB page, moving on
//!   through the buffer;
//! - `GET /`: `{"len":..,"sum":..}`, a checksum of one byte a page of the
//!   buffer; `GET /?full=1` of every byte.

use roam_sdk::{Request, Response, Workload};

/// The largest buffer, in MiB.
const MAX_MIB: usize = 1024;

/// The state: a buffer and where the next write goes.
#[derive(Default)]
pub struct MemBench {
    buf: Vec<u8>,
    cursor: usize,
    writes: u64,
}

impl Workload for MemBench {
    fn handle(&mut self, req: Request) -> Response {
        let num = |name: &str| {
            req.query_param(name)
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0)
        };
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/fill") => {
                // `at` MiB on, `mib` MiB; a call at 0 starts a new buffer
                // with room for `of` MiB, so that one larger than a call's
                // CPU budget allows is filled over several calls.
                let at = num("at").min(MAX_MIB) << 20;
                let end = (at + (num("mib").min(MAX_MIB) << 20)).min(MAX_MIB << 20);
                if at == 0 {
                    let of = (num("of").min(MAX_MIB) << 20).max(end);
                    self.buf = Vec::with_capacity(of);
                }
                self.buf.truncate(at);
                let start = self.buf.len();
                match req.query_param("content").as_deref() {
                    Some("random") => fill_random(&mut self.buf, end),
                    Some("json") => fill_json(&mut self.buf, end),
                    _ => self.buf.extend((start..end).map(|i| (i % 251) as u8 | 1)),
                }
                self.cursor = 0;
                Response::json(200, format!("{{\"len\":{}}}", self.buf.len()))
            }
            ("POST", "/dirty") => {
                let pages = num("kib") / 4;
                if !self.buf.is_empty() {
                    for _ in 0..pages {
                        self.writes += 1;
                        self.buf[self.cursor] = (self.writes % 255) as u8 | 1;
                        self.cursor = (self.cursor + 4096) % self.buf.len();
                    }
                }
                Response::json(200, format!("{{\"writes\":{}}}", self.writes))
            }
            ("GET", "/") => {
                // One byte a page, or (`?full=1`) every byte.
                let step = if num("full") == 1 { 1 } else { 4096 };
                let sum = self
                    .buf
                    .iter()
                    .step_by(step)
                    .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(*b)));
                Response::json(
                    200,
                    format!(
                        "{{\"len\":{},\"sum\":{sum},\"writes\":{}}}",
                        self.buf.len(),
                        self.writes
                    ),
                )
            }
            _ => Response::text(404, "POST /fill?mib=N, POST /dirty?kib=K, GET /"),
        }
    }
}

/// A xorshift64 generator: the same bytes for the same position, whatever
/// the calls a buffer was filled over.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Extend `buf` to `end` bytes of pseudo-random bytes (a page of them is
/// never all zero in practice: 2^-32768).
fn fill_random(buf: &mut Vec<u8>, end: usize) {
    let mut x = 0x2545_F491_4F6C_DD1D ^ buf.len() as u64;
    while buf.len() < end {
        let word = next(&mut x);
        let n = (end - buf.len()).min(8);
        buf.extend_from_slice(&word.to_le_bytes()[..n]);
    }
}

const FIRST: [&str; 16] = [
    "alice", "bruno", "chen", "dana", "emil", "fatima", "goran", "hana", "ivan", "julia", "kofi",
    "lena", "marta", "nils", "olga", "pablo",
];
const LAST: [&str; 12] = [
    "moreno", "schmidt", "rossi", "kowalski", "novak", "silva", "jensen", "dubois", "nagy",
    "popescu", "berg", "costa",
];
const CITY: [&str; 12] = [
    "Lisbon",
    "Berlin",
    "Milan",
    "Warsaw",
    "Prague",
    "Porto",
    "Aarhus",
    "Lyon",
    "Budapest",
    "Bucharest",
    "Oslo",
    "Madrid",
];
const TAGS: [&str; 8] = [
    "edge", "eu", "beta", "mobile", "premium", "trial", "api", "web",
];

/// Extend `buf` to `end` bytes of JSON-like records, one a line: an id, a
/// user and email from name lists, a city, numbers, tags, a timestamp and a
/// random session token.
fn fill_json(buf: &mut Vec<u8>, end: usize) {
    use std::fmt::Write;
    let mut x = 0x9E37_79B9_7F4A_7C15 ^ buf.len() as u64;
    let mut id = buf.len() as u64 / 200;
    let mut line = String::with_capacity(512);
    while buf.len() < end {
        let r = next(&mut x);
        let (first, last) = (FIRST[(r % 16) as usize], LAST[((r >> 8) % 12) as usize]);
        line.clear();
        let _ = write!(
            line,
            "{{\"id\":{id},\"user\":\"{first}.{last}\",\"email\":\"{first}.{last}{}@example.org\",\"city\":\"{}\",\"score\":{}.{:02},\"visits\":{},\"active\":{},\"tags\":[",
            (r >> 12) % 100,
            CITY[((r >> 16) % 12) as usize],
            (r >> 24) % 100,
            (r >> 32) % 100,
            next(&mut x) % 5000,
            r & 1 == 1,
        );
        for k in 0..1 + (r >> 40) % 3 {
            if k > 0 {
                line.push(',');
            }
            let _ = write!(line, "\"{}\"", TAGS[((r >> (20 + 3 * k)) % 8) as usize]);
        }
        let _ = writeln!(
            line,
            "],\"updated\":\"2026-{:02}-{:02}T{:02}:{:02}:{:02}Z\",\"session\":\"{:016x}\"}}",
            1 + (r >> 44) % 12,
            1 + (r >> 48) % 28,
            (r >> 52) % 24,
            (r >> 56) % 60,
            (r >> 58) % 60,
            next(&mut x),
        );
        let n = (end - buf.len()).min(line.len());
        buf.extend_from_slice(&line.as_bytes()[..n]);
        id += 1;
    }
}

roam_sdk::export!(MemBench);
