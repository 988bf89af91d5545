//! `faulty`: a counter that fails on request, for the tests of what a
//! failed event leaves behind (nothing: the workload rolls back to the state
//! before it).
//!
//! - `POST /count/KEY`: count KEY in memory and in the key-value store;
//!   answers `KEY=MEMORY/KV`.
//! - `GET /count/KEY`: the same, without counting.
//! - `POST /trap/KEY`: count KEY, then trap (a Rust panic).
//! - `POST /spin/KEY`: count KEY, then loop until the CPU budget stops it.
//! - `POST /timer/KEY?ms=N`: a timer that counts KEY after N ms;
//!   `POST /timer-trap/KEY?ms=N`: one that counts KEY, then traps.
//! - `POST /send/TO/KEY`: send a message to workload TO asking it to count
//!   KEY; a message `trap:KEY` counts KEY, then traps.
//! - `GET /handled`: every message handled, as `FROM:BODY` lines, every
//!   message of ours that came back, as `undeliverable:TO:BODY:WHY`, and
//!   every move, as `moved:HOW:FROM_HOST:HOST`.
//! - `GET /echo?q=TEXT`: what reached it, as `authorization=HEADER` and
//!   `q=TEXT` (decoded) lines.
//! - `POST /log?n=N`: write N numbered lines (`line K`, K counting on
//!   across calls), odd ones with `roam::log`, even ones on stdout.

#![allow(
    clippy::panic,
    reason = "panicking in the middle of a handler is what this workload is for"
)]

use std::collections::BTreeMap;
use std::time::Duration;

use roam_sdk::timers::{self, TimerId};
use roam_sdk::{Request, Response, Workload, kv, messages};

/// Counts in memory; the same counts are in the key-value store.
#[derive(Default)]
pub struct Faulty {
    counts: BTreeMap<String, u64>,
    handled: Vec<String>,
    lines: u64,
}

impl Faulty {
    fn count(&mut self, key: &str) -> String {
        let memory = self.counts.entry(key.to_string()).or_default();
        *memory += 1;
        let memory = *memory;
        let kv_count = kv_count(key) + 1;
        if let Err(e) = kv::set(key, kv_count.to_string()) {
            return format!("{key}: cannot store: {e}");
        }
        format!("{key}={memory}/{kv_count}")
    }

    fn show(&self, key: &str) -> String {
        let memory = self.counts.get(key).copied().unwrap_or(0);
        format!("{key}={memory}/{}", kv_count(key))
    }
}

fn kv_count(key: &str) -> u64 {
    kv::get(key)
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn spin() -> ! {
    let mut x: u64 = 1;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

impl Workload for Faulty {
    fn handle(&mut self, req: Request) -> Response {
        let path = req.path.trim_start_matches('/');
        let (verb, rest) = path.split_once('/').unwrap_or((path, ""));
        let ms = req
            .query_param("ms")
            .and_then(|m| m.parse::<u64>().ok())
            .unwrap_or(0);
        match (req.method.as_str(), verb) {
            ("GET", "count") => Response::text(200, self.show(rest)),
            ("POST", "count") => Response::text(200, self.count(rest)),
            ("POST", "trap") => {
                self.count(rest);
                panic!("asked to trap after counting {rest}");
            }
            ("POST", "spin") => {
                self.count(rest);
                spin();
            }
            ("POST", "timer") | ("POST", "timer-trap") => {
                let payload = format!("{verb}:{rest}");
                match timers::set(Duration::from_millis(ms), payload) {
                    Ok(_) => Response::text(202, "set"),
                    Err(e) => Response::text(500, format!("cannot set a timer: {e}")),
                }
            }
            ("POST", "send") => {
                let (to, body) = rest.split_once('/').unwrap_or((rest, ""));
                match messages::send(to, body) {
                    Ok(()) => Response::text(202, "sent"),
                    Err(e) => Response::text(500, format!("cannot send: {e}")),
                }
            }
            ("GET", "handled") => Response::text(200, self.handled.join("\n")),
            ("POST", "log") => {
                let n = req
                    .query_param("n")
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(1)
                    .min(100_000);
                for _ in 0..n {
                    self.lines += 1;
                    if self.lines % 2 == 1 {
                        roam_sdk::logging::write(
                            roam_sdk::logging::Level::Info,
                            &format!("line {}", self.lines),
                        );
                    } else {
                        println!("line {}", self.lines);
                    }
                }
                Response::text(200, format!("logged up to {}", self.lines))
            }
            // What reached it: the `Authorization` header and the decoded
            // `q` query parameter; answered with two cookies (a header
            // that repeats).
            ("GET", "echo") => Response::text(
                200,
                format!(
                    "authorization={}\nq={}",
                    req.header("authorization").unwrap_or(""),
                    req.query_param("q").unwrap_or_default()
                ),
            )
            .header("set-cookie", "a=1")
            .header("set-cookie", "b=2"),
            _ => Response::text(404, "see the crate's documentation"),
        }
    }

    fn on_timer(&mut self, _id: TimerId, payload: &[u8]) {
        let payload = String::from_utf8_lossy(payload).to_string();
        match payload.split_once(':') {
            Some(("timer", key)) => {
                self.count(key);
            }
            Some(("timer-trap", key)) => {
                self.count(key);
                panic!("timer asked to trap after counting {key}");
            }
            _ => {}
        }
    }

    fn on_restore(&mut self, moved: roam_sdk::Moved) {
        self.handled.push(format!(
            "moved:{:?}:{}:{}",
            moved.how, moved.from_host, moved.host
        ));
    }

    fn on_undeliverable(&mut self, message: messages::Undeliverable) {
        self.handled.push(format!(
            "undeliverable:{}:{}:{}",
            message.to,
            String::from_utf8_lossy(&message.body),
            message.error
        ));
    }

    fn on_message(&mut self, from: &str, body: &[u8]) {
        let body = String::from_utf8_lossy(body).to_string();
        self.handled.push(format!("{from}:{body}"));
        match body.split_once(':') {
            Some(("trap", key)) => {
                self.count(key);
                panic!("message asked to trap after counting {key}");
            }
            _ => {
                self.count(&body);
            }
        }
    }
}

roam_sdk::export!(Faulty);
