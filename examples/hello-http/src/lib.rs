//! `hello-http`: answers every request with `hello\n` — the smallest HTTP
//! workload, what the request-path benchmark runs beside `wasmtime serve`
//! with the equivalent `wasi:http` component (`bench/wasi-hello`).

use roam_sdk::{Request, Response, Workload};

/// No state.
#[derive(Default)]
pub struct Hello;

impl Workload for Hello {
    fn handle(&mut self, _req: Request) -> Response {
        Response::text(200, "hello\n")
    }
}

roam_sdk::export!(Hello);
