//! `mandelbrot`: a long computation done in timer-driven `step`s, movable mid-job.
//!
//! Build and run:
//!
//! ```text
//! cargo build --release --target wasm32-wasip1 -p mandelbrot
//! roam run target/wasm32-wasip1/release/mandelbrot.wasm --listen 127.0.0.1:8080
//! curl -X POST 'localhost:8080/start?width=400&height=300&iterations=500'
//! curl localhost:8080/progress     # {"rows_done":120,"rows":300,"done":false}
//! curl localhost:8080/result       # {"checksum":...} once done
//! ```
//!
//! Each timer tick renders a few rows and sets the next tick, so the
//! workload returns to the host (a safe point) every few milliseconds and
//! can be captured and moved mid-job. It finishes with the same checksum
//! wherever it ran.

use std::time::Duration;

use roam_sdk::timers::{self, TimerId};
use roam_sdk::{Request, Response, Workload};

/// Rows rendered per step.
const ROWS_PER_STEP: u32 = 8;

/// The job and its partial result.
#[derive(Default)]
pub struct Mandelbrot {
    width: u32,
    height: u32,
    iterations: u32,
    rows_done: u32,
    steps: u64,
    /// FNV-1a over every pixel's escape count, row by row.
    checksum: u64,
    running: bool,
}

impl Mandelbrot {
    fn step(&mut self) {
        let end = (self.rows_done + ROWS_PER_STEP).min(self.height);
        for y in self.rows_done..end {
            for x in 0..self.width {
                let cr = -2.0 + 3.0 * f64::from(x) / f64::from(self.width);
                let ci = -1.2 + 2.4 * f64::from(y) / f64::from(self.height);
                let (mut zr, mut zi, mut n) = (0.0f64, 0.0f64, 0);
                while n < self.iterations && zr * zr + zi * zi <= 4.0 {
                    let t = zr * zr - zi * zi + cr;
                    zi = 2.0 * zr * zi + ci;
                    zr = t;
                    n += 1;
                }
                self.checksum = (self.checksum ^ u64::from(n)).wrapping_mul(0x100000001b3);
            }
        }
        self.rows_done = end;
        self.steps += 1;
        self.running = self.rows_done < self.height;
        if self.running {
            timers::set(Duration::ZERO, b"step").ok();
        }
    }
}

impl Workload for Mandelbrot {
    fn handle(&mut self, req: Request) -> Response {
        let param = |name: &str, default: u32| {
            req.query_param(name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
                .clamp(1, 4000)
        };
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/start") => {
                if self.running {
                    return Response::text(409, "a job is running");
                }
                *self = Mandelbrot {
                    width: param("width", 320),
                    height: param("height", 240),
                    iterations: param("iterations", 256),
                    checksum: 0xcbf29ce484222325,
                    running: true,
                    ..Mandelbrot::default()
                };
                if timers::set(Duration::ZERO, b"step").is_err() {
                    self.running = false;
                    return Response::text(500, "cannot set a timer (is `timers` granted?)");
                }
                Response::text(202, "started")
            }
            ("GET", "/progress") => Response::json(
                200,
                format!(
                    "{{\"rows_done\":{},\"rows\":{},\"steps\":{},\"done\":{}}}",
                    self.rows_done,
                    self.height,
                    self.steps,
                    !self.running && self.height > 0
                ),
            ),
            ("GET", "/result") if !self.running && self.height > 0 => Response::json(
                200,
                format!(
                    "{{\"width\":{},\"height\":{},\"iterations\":{},\"checksum\":{}}}",
                    self.width, self.height, self.iterations, self.checksum
                ),
            ),
            ("GET", "/result") => Response::text(409, "no finished job"),
            _ => Response::text(404, "try POST /start, GET /progress, GET /result"),
        }
    }

    fn on_timer(&mut self, _id: TimerId, _payload: &[u8]) {
        if self.running {
            self.step();
        }
    }
}

roam_sdk::export!(Mandelbrot);
