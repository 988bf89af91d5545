//! Density: how many idle `counter` instances one `roam host` holds, and
//! what each costs the host beyond its own guest pages.
//!
//! `cargo bench -p roam --bench density` (`ROAM_BENCH_QUICK=1`: 1,000
//! instances instead of 10,000). Starts a real scheduler and one real host
//! with room for N instances of 2 MiB (capacity N × 2 MiB, N slots, 64 MiB
//! largest instance), deploys N `counter` workloads through the scheduler's
//! API, then 10 more that cannot fit, and reports:
//! - how many run, and the reason the scheduler gives for the rest;
//! - the host's resident memory (`/proc/PID/smaps_rollup`) per instance,
//!   from the difference between 100 and N instances;
//! - the guest pages an idle counter has resident (measured in this process
//!   with `mincore` on its linear memory), and so the host's own cost;
//! - that every instance still answers (a sample of 200 requests).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark reports failure by panicking"
)]

use std::time::{Duration, Instant};

mod common;
use common::Scheduler;

/// Each instance's memory cap.
const INSTANCE_MEMORY: u64 = 2 << 20;

/// `(Rss, Anonymous)` of process `pid` in bytes.
fn resident(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| {
                v.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
                    * 1024
            })
            .unwrap()
    };
    (field("Rss:"), field("Anonymous:"))
}

/// Memory mappings of process `pid` (the kernel allows `vm.max_map_count`).
fn mappings(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .count()
}

/// Resident bytes of an idle counter's linear memory, measured in this
/// process: instantiate it as a host does, then ask the kernel which pages
/// of its memory are resident.
fn guest_resident() -> u64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let runtime = roam_runtime::Runtime::new(roam_runtime::RuntimeConfig {
            slots: 4,
            max_instance_memory: 64 << 20,
            ..Default::default()
        })
        .unwrap();
        let bytes = std::fs::read(roam_tests::artifacts::COUNTER).unwrap();
        let module = runtime.load(bytes).await.unwrap();
        let mut config = roam_runtime::InstanceConfig::new("counter");
        config.memory_limit = INSTANCE_MEMORY;
        let mut w = roam_runtime::Workload::start(&runtime, &module, config)
            .await
            .unwrap();
        let (base, size) = w.instance_mut().memory_range().unwrap();
        let pages = size.div_ceil(4096);
        let mut vec = vec![0u8; pages];
        // SAFETY: [base, base + size) is the instance's mapped linear memory
        // (page-aligned base), alive while `w` is; `vec` has one byte per page.
        let rc = unsafe { libc::mincore(base as *mut libc::c_void, size, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore failed");
        vec.iter().filter(|b| **b & 1 == 1).count() as u64 * 4096
    })
}

/// Deploy `counter` as `names` through the API, 8 at a time.
fn deploy(s: &Scheduler, digest: &str, names: std::ops::Range<usize>) {
    let names: Vec<usize> = names.collect();
    std::thread::scope(|scope| {
        for chunk in names.chunks(names.len().div_ceil(8).max(1)) {
            scope.spawn(move || {
                for i in chunk {
                    let spec = serde_json::json!({
                        "name": format!("c{i}"),
                        "digest": digest,
                        "memory": INSTANCE_MEMORY,
                    });
                    let r = s
                        .http
                        .post(format!("{}/v1/workloads", s.url))
                        .header("authorization", format!("Bearer {}", s.admin))
                        .header("content-type", "application/json")
                        .send(spec.to_string())
                        .unwrap();
                    assert!(r.status().is_success(), "deploy c{i}: {}", r.status());
                }
            });
        }
    });
}

/// Wait until the scheduler sees `n` instances running; how long it took.
fn wait_running(s: &Scheduler, n: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let running = s.get("/v1/instances").as_array().unwrap().len();
        if running >= n || Instant::now() > deadline {
            return running;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var("ROAM_BENCH_QUICK").is_ok();
    let n: usize = if quick { 1_000 } else { 10_000 };
    let guest = guest_resident();

    let s = Scheduler::start(&[]);
    let capacity = format!("{}", n as u64 * INSTANCE_MEMORY);
    let slots = n.to_string();
    let (host, _) = s.host(
        "dense",
        &[
            "--capacity-memory",
            &capacity,
            "--slots",
            &slots,
            "--max-instance-memory",
            "64MiB",
        ],
    );
    let bytes = std::fs::read(roam_tests::artifacts::COUNTER).unwrap();
    let mut r = s
        .http
        .put(format!("{}/v1/modules", s.url))
        .header("authorization", format!("Bearer {}", s.admin))
        .send(&bytes[..])
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let digest = v["digest"].as_str().unwrap().to_string();

    let warm = 100;
    deploy(&s, &digest, 0..warm);
    assert_eq!(wait_running(&s, warm, Duration::from_secs(60)), warm);
    let (rss0, anon0) = resident(host.pid());
    let maps0 = mappings(host.pid());

    let started = Instant::now();
    deploy(&s, &digest, warm..n);
    let running = wait_running(&s, n, Duration::from_secs(600));
    let fill = started.elapsed();
    let (rss1, anon1) = resident(host.pid());
    let maps1 = mappings(host.pid());

    // Ten more than fit: the scheduler must refuse them with a reason.
    deploy(&s, &digest, n..n + 10);
    let deadline = Instant::now() + Duration::from_secs(20);
    let reason = loop {
        let refused = s.get(&format!("/v1/workloads/c{n}"));
        if let Some(r) = refused["rejected"]["dense"].as_str() {
            break r.to_string();
        }
        if Instant::now() > deadline {
            break format!("(no reason given: {refused})");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let after = wait_running(&s, n + 10, Duration::from_secs(3));

    // Every instance still answers: a sample through the scheduler ingress.
    let mut answered = 0;
    for i in (0..n).step_by((n / 200).max(1)) {
        let r = s
            .http
            .post(format!("{}/w/c{i}/hits", s.url))
            .send("")
            .unwrap();
        if r.status().is_success() {
            answered += 1;
        }
    }
    let sampled = (0..n).step_by((n / 200).max(1)).count();
    let alive = host_alive(&host);

    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / (running - warm) as f64 / 1024.0;
    println!(
        "Density: one `roam host`, idle `counter` instances ({} cores).\n",
        common::cores()
    );
    println!("| figure | value |");
    println!("| --- | --- |");
    println!(
        "| instances running | {running} of {n} deployed (filled in {:.1} s) |",
        fill.as_secs_f64()
    );
    println!(
        "| {} more deployed | {} running; the scheduler says: {reason} |",
        10,
        after.saturating_sub(running)
    );
    println!("| host alive, sample answered | {alive}, {answered}/{sampled} |");
    println!(
        "| host RSS per instance | {:.1} KiB (anonymous {:.1} KiB) |",
        per(rss0, rss1),
        per(anon0, anon1)
    );
    println!(
        "| guest pages resident per idle counter | {:.1} KiB |",
        guest as f64 / 1024.0
    );
    println!(
        "| host cost per instance beyond guest pages | {:.1} KiB (target ≤ 64 KiB) |",
        per(rss0, rss1) - guest as f64 / 1024.0
    );
    println!(
        "| memory mappings | {maps0} at {warm}, {maps1} at {running} (vm.max_map_count {}) |",
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "| host RSS total | {:.0} MiB at {warm}, {:.0} MiB at {running} |",
        rss0 as f64 / (1 << 20) as f64,
        rss1 as f64 / (1 << 20) as f64
    );
}

fn host_alive(host: &common::Proc) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", host.pid())).is_ok_and(|s| !s.contains(") Z "))
}
