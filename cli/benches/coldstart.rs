//! Cold start: time from `roam deploy` to the first response of a new
//! workload, beside `wasmtime run` of the same module in the same run.
//!
//! `scripts/bench` runs it; by hand:
//! `ROAM_BENCH_WASMTIME=path/to/wasmtime cargo bench -p roam --bench coldstart`.
//! Each round takes a fresh copy of `hello-http` (a custom section makes its
//! digest new, so no host has compiled it) and measures, each from the
//! start of `roam deploy` to the first 200 through the scheduler's ingress:
//! - **not compiled**: the host fetches and compiles the module;
//! - **compiled on disk**: the same module under another name after the
//!   first was deleted (the host loads its compiled-code cache);
//! - **in use on the host**: a third name while the second runs (one
//!   compiled copy is shared).
//!
//! The baseline is `wasmtime run` of the same file, invoking one export
//! (the Roam ABI imports trap if called; none is): with its cache off
//! (compile every time) and on (second run).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark reports failure by panicking"
)]

use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::Scheduler;

/// `bytes` with a custom section named `roam-bench` holding `tag`: the
/// same code under a new digest.
fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"roam-bench";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// Milliseconds from `roam deploy FILE --name NAME` to the first 200.
fn deploy_to_first_response(s: &Scheduler, file: &str, name: &str) -> f64 {
    let started = Instant::now();
    s.roam(&["deploy", file, "--name", name, "--memory", "16MiB"]);
    let url = format!("{}/w/{name}", s.url);
    let deadline = started + Duration::from_secs(60);
    loop {
        if s.http.get(&url).call().map(|r| r.status().as_u16()).ok() == Some(200) {
            return started.elapsed().as_secs_f64() * 1000.0;
        }
        assert!(Instant::now() < deadline, "{name} never answered");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Wait until no host reports `name`.
fn gone(s: &Scheduler, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while s
        .get("/v1/instances")
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["workload"] == name)
    {
        assert!(Instant::now() < deadline, "{name} still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Milliseconds of one `wasmtime run` of `file`.
fn wasmtime_run(wasmtime: &str, file: &str, cache: bool, cache_config: &str) -> f64 {
    let started = Instant::now();
    let out = Command::new(wasmtime)
        .args(["run", "-C"])
        .arg(if cache { "cache=y" } else { "cache=n" })
        .args(["-C", &format!("cache-config={cache_config}")])
        .args([
            "-W",
            "unknown-imports-trap=y",
            "--invoke",
            "roam_abi_version",
            file,
        ])
        .output()
        .unwrap();
    let took = started.elapsed().as_secs_f64() * 1000.0;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var("ROAM_BENCH_QUICK").is_ok();
    let rounds = if quick { 3 } else { 7 };
    let wasmtime = std::env::var("ROAM_BENCH_WASMTIME")
        .expect("set ROAM_BENCH_WASMTIME to wasmtime-cli 48 (scripts/bench installs it)");
    let s = Scheduler::start(&[]);
    let (_host, _) = s.host("h", &[]);
    let bytes = std::fs::read(roam_tests::artifacts::HELLO_HTTP).unwrap();
    // wasmtime's cache in this run's own directory.
    let cache_dir = s.dir.path().join("wasmtime-cache");
    let cache_config = s.dir.path().join("wasmtime-cache.toml");
    std::fs::write(
        &cache_config,
        format!("[cache]\ndirectory = {:?}\n", cache_dir.to_str().unwrap()),
    )
    .unwrap();
    let cache_config = cache_config.to_str().unwrap();

    let (mut cold, mut disk, mut shared) = (Vec::new(), Vec::new(), Vec::new());
    let (mut wt_cold, mut wt_cached) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let file = s.dir.path().join(format!("hello-{round}.wasm"));
        std::fs::write(&file, variant(&bytes, &format!("round {round}"))).unwrap();
        let file = file.to_str().unwrap();

        cold.push(deploy_to_first_response(&s, file, &format!("cold-{round}")));
        s.roam(&["delete", &format!("cold-{round}")]);
        gone(&s, &format!("cold-{round}"));
        disk.push(deploy_to_first_response(&s, file, &format!("disk-{round}")));
        shared.push(deploy_to_first_response(
            &s,
            file,
            &format!("shared-{round}"),
        ));
        s.roam(&["delete", &format!("disk-{round}")]);
        s.roam(&["delete", &format!("shared-{round}")]);

        wt_cold.push(wasmtime_run(&wasmtime, file, false, cache_config));
        wasmtime_run(&wasmtime, file, true, cache_config);
        wt_cached.push(wasmtime_run(&wasmtime, file, true, cache_config));
    }
    let med = |v: &mut Vec<f64>| common::percentile(v, 0.5);
    let (wt_cold, wt_cached) = (med(&mut wt_cold), med(&mut wt_cached));
    println!(
        "Cold start of `hello-http` ({} KiB), median of {rounds} rounds, {} cores; Roam times include the `roam deploy` process (upload, API call) and placement.\n",
        bytes.len() / 1024,
        common::cores()
    );
    println!("| path | ms | baseline | ms | ratio |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| Roam, not compiled on the host | {:.1} | `wasmtime run`, cache off | {wt_cold:.1} | {:.2}× |",
        med(&mut cold),
        med(&mut cold) / wt_cold
    );
    println!(
        "| Roam, compiled on disk | {:.1} | `wasmtime run`, cached | {wt_cached:.1} | {:.2}× |",
        med(&mut disk),
        med(&mut disk) / wt_cached
    );
    println!(
        "| Roam, module in use on the host | {:.1} | `wasmtime run`, cached | {wt_cached:.1} | {:.2}× |",
        med(&mut shared),
        med(&mut shared) / wt_cached
    );
}
