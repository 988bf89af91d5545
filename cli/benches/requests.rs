//! Request path: an HTTP hello handler through `roam host`'s ingress and
//! through the scheduler's ingress, beside `wasmtime serve` running the
//! equivalent `wasi:http` component (its instance reused across requests,
//! the baseline, and an instance per request), all driven by `wrk` on this
//! machine.
//!
//! `scripts/bench` runs it with what it needs; by hand:
//! `ROAM_BENCH_WASMTIME=path/to/wasmtime ROAM_BENCH_WASI_HELLO=path/to/wasi_hello.wasm
//! cargo bench -p roam --bench requests` (`ROAM_BENCH_QUICK=1`: 3 s runs).
//! The servers are measured in turn, three rounds, and each figure is the
//! median of its rounds; without `ROAM_BENCH_WASMTIME` the Roam rows alone.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark reports failure by panicking"
)]

use std::process::{Command, Stdio};

mod common;
use common::{Proc, cpu_seconds, hello_cluster, ready, wrk};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var("ROAM_BENCH_QUICK").is_ok();
    let seconds = if quick { 3 } else { 10 };
    // Without wasmtime (a by-hand run) the Roam rows are measured alone.
    let wasmtime = std::env::var("ROAM_BENCH_WASMTIME").ok();
    let component = std::env::var("ROAM_BENCH_WASI_HELLO").ok();

    // The same cluster twice: over TLS, and with --insecure-plaintext.
    let (s, host, host_url) = hello_cluster(&[], &[]);
    let (plain, plain_host, plain_host_url) = hello_cluster(&["--insecure-plaintext"], &[]);
    let mut targets: Vec<Target> = Vec::new();
    let mut version = String::from("no `wasmtime serve` baseline (ROAM_BENCH_WASMTIME unset)");
    let mut serves = Vec::new();
    if let (Some(wasmtime), Some(component)) = (&wasmtime, &component) {
        // The main baseline keeps its instance across requests, as a Roam
        // workload does (`--max-instance-reuse-count`; a WASIp2 component
        // takes one request at a time); the other instantiates per request
        // (wasmtime's default for WASIp2).
        for (name, reuse) in [
            ("`wasmtime serve`, instance reused (baseline)", true),
            ("`wasmtime serve`, an instance per request", false),
        ] {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut command = Command::new(wasmtime);
            command
                .args(["serve", "-S", "cli", "--addr"])
                .arg(format!("127.0.0.1:{port}"));
            if reuse {
                command.args(["--max-instance-reuse-count", "1000000000"]);
            }
            let serve = Proc(
                command
                    .arg(component)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
            targets.push(Target {
                name,
                url: format!("http://127.0.0.1:{port}/"),
                scheduler: None,
                host: serve.pid(),
            });
            serves.push(serve);
        }
        let out = Command::new(wasmtime).arg("--version").output().unwrap();
        version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    targets.extend([
        Target {
            name: "`roam host` ingress, TLS",
            url: format!("{host_url}/w/hello"),
            scheduler: None,
            host: host.pid(),
        },
        Target {
            name: "`roam host` ingress, plaintext",
            url: format!("{plain_host_url}/w/hello"),
            scheduler: None,
            host: plain_host.pid(),
        },
        Target {
            name: "scheduler ingress, TLS",
            url: format!("{}/w/hello", s.url),
            scheduler: Some(s.proc.pid()),
            host: host.pid(),
        },
        Target {
            name: "scheduler ingress, plaintext",
            url: format!("{}/w/hello", plain.url),
            scheduler: Some(plain.proc.pid()),
            host: plain_host.pid(),
        },
    ]);
    for t in &targets {
        ready(&t.url);
    }
    let baseline = wasmtime.is_some() && component.is_some();

    println!(
        "Request path: hello handler, `wrk -d{seconds}s` (2 threads, 1 with 1 connection), median of 3 rounds; {version}; {} cores shared by server and load generator. CPU columns: CPU time of the serving processes per request (the host's, and the scheduler's when it proxies).\n",
        common::cores()
    );
    println!(
        "| server | connections | requests/s | × wasmtime serve (reused) | TLS ÷ plaintext | ÷ host ingress | p50 ms | p99 ms | host CPU µs/req | scheduler CPU µs/req |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for connections in [1, 32] {
        let mut runs = vec![Vec::new(); targets.len()];
        for _ in 0..3 {
            for (i, t) in targets.iter().enumerate() {
                let (host_cpu, scheduler_cpu) = (cpu_seconds(t.host), t.scheduler.map(cpu_seconds));
                let run = wrk(&t.url, None, connections, seconds);
                let requests = run.rps * seconds as f64;
                let per = |before: f64, pid: u32| (cpu_seconds(pid) - before) / requests * 1e6;
                let host_us = per(host_cpu, t.host);
                let scheduler_us = t.scheduler.zip(scheduler_cpu).map(|(pid, b)| per(b, pid));
                runs[i].push((run, host_us, scheduler_us.unwrap_or(0.0)));
            }
        }
        let rps = |i: usize| median_of(&runs[i], |r| r.0.rps);
        for (i, t) in targets.iter().enumerate() {
            let relative = |j: usize| format!("{:.2}×", rps(i) / rps(j));
            let tls = t.name.ends_with("TLS");
            let vs_plain = if tls { relative(i + 1) } else { String::new() };
            // The scheduler rows against the host row of the same transport.
            let vs_host = match t.scheduler {
                Some(_) => relative(i - 2),
                None => String::new(),
            };
            let vs_baseline = if baseline { relative(0) } else { String::new() };
            println!(
                "| {} | {connections} | {:.0} | {vs_baseline} | {vs_plain} | {vs_host} | {:.3} | {:.3} | {:.1} | {} |",
                t.name,
                rps(i),
                median_of(&runs[i], |r| r.0.p50_ms),
                median_of(&runs[i], |r| r.0.p99_ms),
                median_of(&runs[i], |r| r.1),
                if t.scheduler.is_some() {
                    format!("{:.1}", median_of(&runs[i], |r| r.2))
                } else {
                    String::new()
                },
            );
        }
    }
}

/// A server measured: its URL, and the processes whose CPU it costs.
struct Target {
    name: &'static str,
    url: String,
    scheduler: Option<u32>,
    host: u32,
}

/// The median of `f` over `runs`.
fn median_of<T>(runs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    common::percentile(&mut v, 0.5)
}
