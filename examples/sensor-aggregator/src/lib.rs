//! `sensor-aggregator`: per-sensor sliding-window statistics from messages.
//!
//! Build and run:
//!
//! ```text
//! cargo build --release --target wasm32-wasip1 -p sensor-aggregator
//! roam run target/wasm32-wasip1/release/sensor_aggregator.wasm --listen 127.0.0.1:8080
//! curl -X POST 'localhost:8080/_roam/messages?from=probe-1' -d 't1 21.5'
//! curl localhost:8080/sensors/t1   # {"sensor":"t1","n":1,"min":21.5,...}
//! ```
//!
//! Readings arrive as messages `SENSOR VALUE` from other workloads (or, in
//! local development, from the `/_roam/messages` endpoint of `roam run`). The
//! last 100 readings of each sensor are kept; min, max, mean and p95 are
//! computed over that window.

use std::collections::{BTreeMap, VecDeque};

use roam_sdk::{Request, Response, Workload};

/// Readings kept per sensor.
pub const WINDOW: usize = 100;

/// The workload's state: a window of readings per sensor.
#[derive(Default)]
pub struct Aggregator {
    windows: BTreeMap<String, VecDeque<f64>>,
    rejected: u64,
}

impl Aggregator {
    fn record(&mut self, sensor: &str, value: f64) {
        let w = self.windows.entry(sensor.to_string()).or_default();
        if w.len() == WINDOW {
            w.pop_front();
        }
        w.push_back(value);
    }

    fn stats(&self, sensor: &str) -> Option<String> {
        let w = self.windows.get(sensor)?;
        let mut sorted: Vec<f64> = w.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let mean = sorted.iter().sum::<f64>() / n as f64;
        // Nearest-rank p95.
        let rank = ((0.95 * n as f64).ceil() as usize).clamp(1, n);
        Some(format!(
            "{{\"sensor\":\"{sensor}\",\"n\":{n},\"min\":{},\"max\":{},\"mean\":{:.3},\"p95\":{}}}",
            sorted[0],
            sorted[n - 1],
            mean,
            sorted[rank - 1]
        ))
    }
}

impl Workload for Aggregator {
    fn handle(&mut self, req: Request) -> Response {
        match req.path.strip_prefix("/sensors") {
            Some("") | Some("/") => {
                let all: Vec<String> = self.windows.keys().filter_map(|s| self.stats(s)).collect();
                Response::json(
                    200,
                    format!(
                        "{{\"sensors\":[{}],\"rejected\":{}}}",
                        all.join(","),
                        self.rejected
                    ),
                )
            }
            Some(rest) => match self.stats(rest.trim_start_matches('/')) {
                Some(s) => Response::json(200, s),
                None => Response::text(404, "no readings for that sensor"),
            },
            None => Response::text(404, "try /sensors or /sensors/ID"),
        }
    }

    fn on_message(&mut self, _from: &str, body: &[u8]) {
        let text = String::from_utf8_lossy(body);
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            match (
                parts.next(),
                parts.next().and_then(|v| v.parse::<f64>().ok()),
            ) {
                (Some(sensor), Some(value)) if value.is_finite() => self.record(sensor, value),
                _ => self.rejected += 1,
            }
        }
    }
}

roam_sdk::export!(Aggregator);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_statistics() {
        let mut a = Aggregator::default();
        for v in 1..=200 {
            a.on_message("p", format!("t {v}").as_bytes());
        }
        // The window holds 101..=200.
        assert_eq!(
            a.stats("t").unwrap(),
            r#"{"sensor":"t","n":100,"min":101,"max":200,"mean":150.500,"p95":195}"#
        );
        a.on_message("p", b"garbage");
        assert_eq!(a.rejected, 1);
    }
}
