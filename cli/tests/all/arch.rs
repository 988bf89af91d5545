//! A mixed-architecture cluster: an x86_64 host (this machine) and aarch64
//! and riscv64 hosts (`roam` cross-built by roam-tests' build script, run
//! under qemu-user). Workloads move live around the ring
//! x86_64 → aarch64 → riscv64 → x86_64 with their state.

use std::time::Duration;

use roam_tests::artifacts;

use crate::cluster::{Cluster, poll};
use crate::migrate::{
    Load, deploy, deploy_counter, deploy_mandelbrot, host_of, mandelbrot_result, migrate,
};

/// The ring, as (host, architecture it reports).
const RING: [(&str, &str); 4] = [
    ("x86", "x86_64"),
    ("arm", "aarch64"),
    ("rv", "riscv64"),
    ("x86", "x86_64"),
];

/// A cluster of three EU hosts of three architectures.
fn mixed_cluster() -> Cluster {
    let arm = artifacts::require(artifacts::ROAM_AARCH64, "aarch64 `roam` (cross toolchain)");
    let rv = artifacts::require(artifacts::ROAM_RISCV64, "riscv64 `roam` (cross toolchain)");
    // Emulated hosts are slow: a generous heartbeat timeout.
    let mut c = Cluster::start_with(&[("HEARTBEAT_TIMEOUT", "20s")]);
    c.add_host("x86", "site-x86", "EU");
    c.add_host_on(
        &["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", arm],
        "arm",
        "site-arm",
    );
    c.add_host_on(
        &["qemu-riscv64", "-L", "/usr/riscv64-linux-gnu", rv],
        "rv",
        "site-rv",
    );
    c.wait_ready(3);
    c
}

/// Move `workload` around the ring (it starts on x86), calling `check`
/// after every hop with the hop's number; prints each hop's timings.
fn around_the_ring(c: &Cluster, workload: &str, mut check: impl FnMut(u32)) {
    if host_of(c, workload) != "x86" {
        migrate(c, workload, "x86");
    }
    for (hop, pair) in RING.windows(2).enumerate() {
        let ((from, from_arch), (to, to_arch)) = (pair[0], pair[1]);
        assert_eq!(host_of(c, workload), from);
        let summary = migrate(c, workload, to);
        eprintln!(
            "hop {workload} {from_arch} -> {to_arch}: total {} ms, downtime {:.2} ms, {} bytes, {} rounds",
            summary["total_ms"],
            summary["downtime_us"].as_f64().unwrap_or(f64::NAN) / 1000.0,
            summary["bytes_sent"],
            summary["rounds"],
        );
        assert_eq!(host_of(c, workload), to);
        check(hop as u32 + 1);
    }
}

#[test]
fn workloads_move_live_around_an_x86_64_aarch64_riscv64_ring() {
    let c = mixed_cluster();
    // Hosts report their architecture (and engine); placement selects on it.
    let nodes = c.nodes();
    for (host, arch) in &RING[..3] {
        let node = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == *host)
            .unwrap();
        assert_eq!(node["arch"], *arch, "{node}");
        assert_eq!(node["labels"]["engine"], "cranelift", "{node}");
    }
    let (ok, table, err) = c.roam(&["get", "nodes"]);
    assert!(
        ok && table.contains("riscv64") && table.contains("aarch64"),
        "{table}{err}"
    );

    // counter, under load from clients with unique request ids that keep
    // going while the other workloads move too.
    deploy_counter(&c, "arch=x86_64");
    // The selector holds: an aarch64 host is refused with the reason.
    let (ok, _, err) = c.roam(&["migrate", "counter", "--to", "arm"]);
    assert!(!ok && err.contains("arch"), "{err}");
    let (ok, _, err) = c.roam(&["delete", "counter"]);
    assert!(ok, "{err}");
    poll(Duration::from_secs(30), "counter to go", || {
        c.get("counter", "/").0 != 200
    });
    deploy_counter(&c, "jurisdiction=EU");
    let load = Load::start(&c, "counter", 2);
    around_the_ring(&c, "counter", |hop| {
        assert_eq!(
            c.invoke("counter", "/hops").1,
            format!(r#"{{"path":"/hops","count":{hop}}}"#),
            "after hop {hop}"
        );
    });

    // kv-cache: data and a TTL that has not expired yet.
    deploy(
        &c,
        &["--example", "kv-cache", "--selector", "jurisdiction=EU"],
    );
    poll(Duration::from_secs(60), "kv-cache to serve", || {
        c.get("kv-cache", "/k").1 == "no such key"
    });
    let r = c
        .agent
        .put(format!("{}/w/kv-cache/moved?ttl=600000", c.url))
        .send("across architectures")
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    around_the_ring(&c, "kv-cache", |hop| {
        assert_eq!(
            c.get("kv-cache", "/moved").1,
            "across architectures",
            "after hop {hop}"
        );
    });
    // The other way round: with the forward ring, every architecture has
    // restored a snapshot captured on each other one.
    for (to, _) in RING.iter().rev().skip(1) {
        migrate(&c, "kv-cache", to);
        assert_eq!(c.get("kv-cache", "/moved").1, "across architectures");
    }

    // mandelbrot moved mid-job gives the result of a run that never moved.
    for name in ["mandelbrot", "mandelbrot-ref"] {
        let selector = if name == "mandelbrot" {
            "jurisdiction=EU"
        } else {
            "arch=x86_64"
        };
        deploy_mandelbrot(&c, name, selector);
        poll(Duration::from_secs(60), "mandelbrot to serve", || {
            c.get(name, "/progress").0 == 200
        });
    }
    if host_of(&c, "mandelbrot") != "x86" {
        migrate(&c, "mandelbrot", "x86");
    }
    let job = "/start?width=600&height=600&iterations=1500";
    for name in ["mandelbrot", "mandelbrot-ref"] {
        assert_eq!(c.invoke(name, job).0, 202);
    }
    poll(Duration::from_secs(60), "the job to be under way", || {
        let p = c.get("mandelbrot", "/progress").1;
        !p.contains("\"rows_done\":0,") && p.contains("\"done\":false")
    });
    around_the_ring(&c, "mandelbrot", |hop| {
        let (status, progress) = c.get("mandelbrot", "/progress");
        assert_eq!(status, 200, "after hop {hop}: {progress}");
        assert!(
            !progress.contains("\"rows_done\":0,"),
            "after hop {hop}: {progress}"
        );
    });
    assert_eq!(
        mandelbrot_result(&c, "mandelbrot"),
        mandelbrot_result(&c, "mandelbrot-ref")
    );
    // The counter's clients ran through every move of every workload.
    load.check(&c, "counter");
}
