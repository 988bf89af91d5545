//! Request path: an HTTP hello handler through `roam host`'s ingress and
//! through the scheduler's ingress, beside `wasmtime serve` running the
//! equivalent `wasi:http` component, all driven by `wrk` on this machine.
//!
//! `scripts/bench` runs it with what it needs; by hand:
//! `ROAM_BENCH_WASMTIME=path/to/wasmtime ROAM_BENCH_WASI_HELLO=path/to/wasi_hello.wasm
//! cargo bench -p roam --bench requests` (`ROAM_BENCH_QUICK=1`: 3 s runs).
//! The three servers are measured in turn, three rounds, and each figure is
//! the median of its rounds.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark reports failure by panicking"
)]

use std::process::{Command, Stdio};

mod common;
use common::{Proc, hello_cluster, median, ready, wrk};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var("ROAM_BENCH_QUICK").is_ok();
    let seconds = if quick { 3 } else { 10 };
    let wasmtime = std::env::var("ROAM_BENCH_WASMTIME")
        .expect("set ROAM_BENCH_WASMTIME to wasmtime-cli 48 (scripts/bench installs it)");
    let component = std::env::var("ROAM_BENCH_WASI_HELLO").expect(
        "set ROAM_BENCH_WASI_HELLO to the bench/wasi-hello component (scripts/bench builds it)",
    );

    // The same cluster twice: over TLS, and with --insecure-plaintext.
    let (s, _host, host_url) = hello_cluster(&[], &[]);
    let (plain, _plain_host, plain_host_url) = hello_cluster(&["--insecure-plaintext"], &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _serve = Proc(
        Command::new(&wasmtime)
            .args(["serve", "-S", "cli", "--addr"])
            .arg(format!("127.0.0.1:{port}"))
            .arg(&component)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let version = Command::new(&wasmtime).arg("--version").output().unwrap();
    let targets = [
        (
            "`wasmtime serve` (baseline)",
            format!("http://127.0.0.1:{port}/"),
        ),
        ("`roam host` ingress, TLS", format!("{host_url}/w/hello")),
        (
            "`roam host` ingress, plaintext",
            format!("{plain_host_url}/w/hello"),
        ),
        ("scheduler ingress, TLS", format!("{}/w/hello", s.url)),
        (
            "scheduler ingress, plaintext",
            format!("{}/w/hello", plain.url),
        ),
    ];
    for (_, url) in &targets {
        ready(url);
    }

    println!(
        "Request path: hello handler, `wrk -d{seconds}s` (2 threads, 1 with 1 connection), median of 3 rounds; {}; {} cores shared by server and load generator.\n",
        String::from_utf8_lossy(&version.stdout).trim(),
        common::cores()
    );
    println!(
        "| server | connections | requests/s | × wasmtime serve | TLS ÷ plaintext | p50 ms | p99 ms |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for connections in [1, 32] {
        let mut runs = vec![Vec::new(); targets.len()];
        for _ in 0..3 {
            for (i, (_, url)) in targets.iter().enumerate() {
                runs[i].push(wrk(url, None, connections, seconds));
            }
        }
        let base = median(&runs[0], |r| r.rps);
        for (i, (name, _)) in targets.iter().enumerate() {
            let rps = median(&runs[i], |r| r.rps);
            // TLS rows (1, 3) against the plaintext row after each.
            let vs_plain = match i {
                1 | 3 => format!("{:.2}×", rps / median(&runs[i + 1], |r| r.rps)),
                _ => String::new(),
            };
            println!(
                "| {name} | {connections} | {rps:.0} | {:.2}× | {vs_plain} | {:.3} | {:.3} |",
                rps / base,
                median(&runs[i], |r| r.p50_ms),
                median(&runs[i], |r| r.p99_ms),
            );
        }
    }
}
