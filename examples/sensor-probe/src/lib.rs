//! `sensor-probe`: forwards readings to `sensor-aggregator` as messages.
//!
//! Build (run it beside `sensor-aggregator` on one host, for example in a
//! `roam up` cluster):
//!
//! ```text
//! cargo build --release --target wasm32-wasip1 -p sensor-probe
//! curl -X POST 'HOST/w/sensor-probe/read?sensor=t1&value=21.5'
//! ```
//!
//! Each `POST /read` sends `SENSOR VALUE` to the workload named by `?to=`
//! (default `sensor-aggregator`). Delivery is at least once: the message
//! waits in the receiver's inbox, which moves with it.

use roam_sdk::{Request, Response, Workload, messages};

/// Counts what it forwarded.
#[derive(Default)]
pub struct Probe {
    sent: u64,
}

impl Workload for Probe {
    fn handle(&mut self, req: Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/read") => {
                let (Some(sensor), Some(value)) =
                    (req.query_param("sensor"), req.query_param("value"))
                else {
                    return Response::text(400, "need ?sensor=ID&value=NUMBER");
                };
                let to = req.query_param("to");
                let to = to.as_deref().unwrap_or("sensor-aggregator");
                match messages::send(to, format!("{sensor} {value}")) {
                    Ok(()) => {
                        self.sent += 1;
                        Response::text(202, format!("sent {}", self.sent))
                    }
                    Err(e) => Response::text(503, format!("cannot send: {e}")),
                }
            }
            _ => Response::text(404, "try POST /read?sensor=ID&value=NUMBER"),
        }
    }
}

roam_sdk::export!(Probe);
