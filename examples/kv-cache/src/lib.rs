//! `kv-cache`: an HTTP key-value cache with per-entry TTLs driven by timers.
//!
//! Build and run:
//!
//! ```text
//! cargo build --release --target wasm32-wasip1 -p kv-cache
//! roam run target/wasm32-wasip1/release/kv_cache.wasm --listen 127.0.0.1:8080
//! curl -X PUT 'localhost:8080/greeting?ttl=2000' -d hello   # expires in 2 s
//! curl localhost:8080/greeting                              # hello, then 404
//! ```
//!
//! Values live in the workload's private key-value store; expiry is a timer
//! per entry. Both move with the workload, so an entry set before a move
//! still expires on time after it.

use std::collections::BTreeMap;
use std::time::Duration;

use roam_sdk::timers::{self, TimerId};
use roam_sdk::{Request, Response, Workload, kv};

/// Per-key expiry bookkeeping; the values themselves are in `kv`.
#[derive(Default)]
pub struct Cache {
    /// key -> the timer that expires it.
    expiry: BTreeMap<String, TimerId>,
}

impl Cache {
    fn forget_timer(&mut self, key: &str) {
        if let Some(id) = self.expiry.remove(key) {
            timers::cancel(id);
        }
    }
}

impl Workload for Cache {
    fn handle(&mut self, req: Request) -> Response {
        let key = req.path.trim_start_matches('/').to_string();
        if key.is_empty() {
            return Response::text(400, "the key is the path: /KEY");
        }
        match req.method.as_str() {
            "GET" => match kv::get(&key) {
                Some(v) => Response::new(200).with_body(v),
                None => Response::text(404, "no such key"),
            },
            "PUT" => {
                if let Err(e) = kv::set(&key, &req.body) {
                    return Response::text(507, format!("cannot store: {e}"));
                }
                self.forget_timer(&key);
                if let Some(ttl) = req.query_param("ttl").and_then(|t| t.parse::<u64>().ok()) {
                    match timers::set(Duration::from_millis(ttl), key.as_bytes()) {
                        Ok(id) => {
                            self.expiry.insert(key, id);
                        }
                        Err(e) => return Response::text(507, format!("cannot set expiry: {e}")),
                    }
                }
                Response::text(201, "stored")
            }
            "DELETE" => {
                self.forget_timer(&key);
                if kv::delete(&key) {
                    Response::text(200, "deleted")
                } else {
                    Response::text(404, "no such key")
                }
            }
            _ => Response::text(405, "use GET, PUT or DELETE"),
        }
    }

    fn on_timer(&mut self, id: TimerId, payload: &[u8]) {
        let key = String::from_utf8_lossy(payload).into_owned();
        // Only the latest timer for a key expires it.
        if self.expiry.get(&key) == Some(&id) {
            self.expiry.remove(&key);
            kv::delete(&key);
            log::debug!("expired {key}");
        }
    }
}

roam_sdk::export!(Cache);
