//! `counter`: an HTTP counter with a count per path.
//!
//! Build and run:
//!
//! ```text
//! cargo build --release --target wasm32-wasip1 -p counter
//! roam run target/wasm32-wasip1/release/counter.wasm --listen 127.0.0.1:8080
//! curl -X POST localhost:8080/apples     # {"path":"/apples","count":1}
//! curl localhost:8080/                   # every count
//! ```
//!
//! The counts are plain fields of `Counter`; Roam moves them with the
//! workload. Try `--roundtrip-snapshots` to see them survive a capture and
//! restore between every two requests.

use std::collections::BTreeMap;

use roam_sdk::{Moved, Request, Response, Workload};

/// The workload's whole state.
#[derive(Default)]
pub struct Counter {
    counts: BTreeMap<String, u64>,
}

impl Workload for Counter {
    fn handle(&mut self, req: Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => {
                let body: Vec<String> = self
                    .counts
                    .iter()
                    .map(|(p, c)| format!("{{\"path\":\"{p}\",\"count\":{c}}}"))
                    .collect();
                Response::json(200, format!("[{}]", body.join(",")))
            }
            ("GET", path) => {
                let count = self.counts.get(path).copied().unwrap_or(0);
                Response::json(200, format!("{{\"path\":\"{path}\",\"count\":{count}}}"))
            }
            ("POST", path) => {
                let count = self.counts.entry(path.to_string()).or_default();
                *count += 1;
                Response::json(200, format!("{{\"path\":\"{path}\",\"count\":{count}}}"))
            }
            _ => Response::text(405, "use GET or POST"),
        }
    }

    fn on_restore(&mut self, moved: Moved) {
        log::info!(
            "{:?} from {}/{} to {}/{}",
            moved.how,
            moved.from_site,
            moved.from_host,
            moved.site,
            moved.host
        );
    }
}

roam_sdk::export!(Counter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_path() {
        let mut c = Counter::default();
        c.handle(Request::new("POST", "/a"));
        let r = c.handle(Request::new("POST", "/a"));
        assert_eq!(r.body_text(), r#"{"path":"/a","count":2}"#);
        assert_eq!(
            c.handle(Request::new("GET", "/b")).body_text(),
            r#"{"path":"/b","count":0}"#
        );
    }
}
