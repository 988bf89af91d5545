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
//!
//! It has the upgrade hooks (`Upgrade`), so a new version rolled out with
//! `roam deploy` takes the counts over: the state is one `COUNT PATH` line
//! per path after a `counter/1` header line.

use std::collections::BTreeMap;

use roam_sdk::{Moved, Request, Response, Upgrade, Workload};

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

/// The first line of the state the upgrade hooks hand over.
const STATE_HEADER: &str = "counter/1";

impl Upgrade for Counter {
    fn export_state(&mut self) -> Vec<u8> {
        let mut out = format!("{STATE_HEADER}\n");
        for (path, count) in &self.counts {
            out.push_str(&format!("{count} {path}\n"));
        }
        out.into_bytes()
    }

    fn import_state(&mut self, state: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(state).map_err(|e| e.to_string())?;
        let mut lines = text.lines();
        if lines.next() != Some(STATE_HEADER) {
            return Err(format!("not a `{STATE_HEADER}` state"));
        }
        for line in lines {
            let (count, path) = line
                .split_once(' ')
                .ok_or_else(|| format!("bad line `{line}`"))?;
            let count = count
                .parse()
                .map_err(|_| format!("bad count in `{line}`"))?;
            self.counts.insert(path.to_string(), count);
        }
        log::info!(
            "took over {} count(s) from the previous version",
            self.counts.len()
        );
        Ok(())
    }
}

roam_sdk::export!(Counter, upgrade);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counts_survive_an_upgrade() {
        let mut old = Counter::default();
        old.handle(Request::new("POST", "/a b"));
        old.handle(Request::new("POST", "/c"));
        let mut new = Counter::default();
        new.import_state(&old.export_state()).unwrap();
        assert_eq!(new.counts, old.counts);
        assert!(Counter::default().import_state(b"other").is_err());
    }

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
