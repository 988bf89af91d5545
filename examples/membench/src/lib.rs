//! `membench`: a workload with a chosen amount of live memory that dirties
//! a chosen amount per request — what the migration benchmark moves.
//!
//! - `POST /fill?mib=N`: hold N MiB (every page non-zero); `&at=M` fills
//!   N MiB from MiB M on instead (keeping what is before it), and a fill at
//!   0 with `&of=T` makes room for T MiB: a buffer too large to fill within
//!   one call's CPU budget is filled over several;
//! - `POST /dirty?kib=K`: write K KiB, one byte per 4 KiB page, moving on
//!   through the buffer;
//! - `GET /`: `{"len":..,"sum":..}`, a checksum of the buffer.

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
                self.buf.extend((start..end).map(|i| (i % 251) as u8 | 1));
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
                let sum = self
                    .buf
                    .iter()
                    .step_by(4096)
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

roam_sdk::export!(MemBench);
