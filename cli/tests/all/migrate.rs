//! Live migration between real host processes on loopback.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roam_tests::artifacts;

use crate::cluster::{Cluster, agent, eu_cluster, poll};

/// The host a workload runs on now, per the scheduler.
fn host_of(c: &Cluster, workload: &str) -> String {
    let (status, body) = c.api("GET", "/v1/instances", Some(&c.admin));
    assert_eq!(status, 200, "{body}");
    let all: serde_json::Value = serde_json::from_str(&body).unwrap();
    let hosts: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["workload"] == workload)
        .map(|i| i["host"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(hosts.len(), 1, "{workload} runs on {hosts:?}");
    hosts[0].clone()
}

/// `roam migrate` to `to`; the JSON summary.
fn migrate(c: &Cluster, workload: &str, to: &str) -> serde_json::Value {
    let (ok, out, err) = c.roam(&["migrate", workload, "--to", to, "-o", "json"]);
    assert!(ok, "migration of {workload} to {to} failed: {out}{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["phase"], "done", "{summary}");
    summary
}

fn deploy(c: &Cluster, args: &[&str]) {
    let mut all = vec!["deploy"];
    all.extend_from_slice(args);
    let (ok, _, err) = c.roam(&all);
    assert!(ok, "{err}");
}

/// Which copies of `workload` the hosts themselves report running.
fn copies(c: &Cluster, workload: &str) -> Vec<String> {
    c.nodes()
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"] != "down")
        .filter(|n| {
            n["instances"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i == workload)
        })
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}

fn other_eu(host: &str) -> &'static str {
    if host == "eu-1" { "eu-2" } else { "eu-1" }
}

#[test]
fn a_counter_moves_live_with_its_state_and_rule_breaking_targets_are_refused() {
    let c = eu_cluster();
    deploy(
        &c,
        &[
            artifacts::COUNTER,
            "--name",
            "counter",
            "--selector",
            "jurisdiction=EU",
        ],
    );
    poll(Duration::from_secs(30), "counter to serve", || {
        c.invoke("counter", "/apples").0 == 200
    });
    c.invoke("counter", "/apples");
    let source = host_of(&c, "counter");

    // A target that breaks the rules is refused with the reason, and the
    // source is untouched.
    let (ok, out, err) = c.roam(&["migrate", "counter", "--to", "us-1"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("cannot take `counter`") && err.contains("jurisdiction"),
        "{err}"
    );
    assert_eq!(host_of(&c, "counter"), source);
    assert_eq!(
        c.invoke("counter", "/apples").1,
        r#"{"path":"/apples","count":3}"#
    );

    let target = other_eu(&source);
    let summary = migrate(&c, "counter", target);
    assert_eq!(summary["source"], source.as_str());
    assert_eq!(summary["target"], target);
    assert!(summary["bytes_sent"].as_u64().unwrap() > 0, "{summary}");
    assert!(summary["downtime_us"].as_u64().is_some(), "{summary}");
    assert_eq!(host_of(&c, "counter"), target);
    assert_eq!(
        c.invoke("counter", "/apples").1,
        r#"{"path":"/apples","count":4}"#
    );
    poll(Duration::from_secs(10), "one copy, on the target", || {
        copies(&c, "counter") == vec![target.to_string()]
    });
    // The restore hook was told where it moved.
    let (_, logs, _) = c.roam(&["logs", "counter"]);
    assert!(
        logs.contains(&format!(
            "to eu-{}",
            if target == "eu-1" {
                "west-1"
            } else {
                "central-1"
            }
        )),
        "{logs}"
    );

    // The operator can find it afterwards, and /metrics counts it.
    let id = summary["id"].as_str().unwrap();
    let (ok, out, _) = c.roam(&["get", "migrations"]);
    assert!(ok && out.contains(id), "{out}");
    let (ok, out, _) = c.roam(&["describe", "migration", id]);
    assert!(
        ok && out.contains("Downtime:") && out.contains("done"),
        "{out}"
    );
    let (_, metrics) = c.api("GET", "/metrics", None);
    assert!(
        metrics.contains("roam_migration_downtime_seconds_count 1")
            && metrics.contains("roam_migrations_total{outcome=\"done\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_workload_moved_back_and_forth_fifty_times_keeps_its_state() {
    let c = eu_cluster();
    deploy(
        &c,
        &[
            artifacts::COUNTER,
            "--name",
            "counter",
            "--selector",
            "jurisdiction=EU",
        ],
    );
    poll(Duration::from_secs(30), "counter to serve", || {
        c.get("counter", "/hops").0 == 200
    });
    let mut at = host_of(&c, "counter");
    for hop in 1..=50u32 {
        let to = other_eu(&at);
        migrate(&c, "counter", to);
        at = to.to_string();
        assert_eq!(
            c.invoke("counter", "/hops").1,
            format!(r#"{{"path":"/hops","count":{hop}}}"#),
            "after hop {hop}"
        );
    }
    assert_eq!(host_of(&c, "counter"), at);
}

/// Clients sending requests with unique ids through the ingress while the
/// workload moves: every acknowledged request is applied exactly once.
#[test]
fn requests_under_load_are_neither_lost_nor_duplicated() {
    let c = eu_cluster();
    deploy(
        &c,
        &[
            artifacts::COUNTER,
            "--name",
            "counter",
            "--selector",
            "jurisdiction=EU",
        ],
    );
    poll(Duration::from_secs(30), "counter to serve", || {
        c.get("counter", "/").0 == 200
    });
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (stop, acked, failed, url) =
            (stop.clone(), acked.clone(), failed.clone(), c.url.clone());
        clients.push(std::thread::spawn(move || {
            let http = agent();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("/r-{client}-{n}");
                match http.post(format!("{url}/w/counter{id}")).send("") {
                    Ok(mut r) if r.status() == 200 => {
                        let body = r.body_mut().read_to_string().unwrap();
                        assert_eq!(body, format!(r#"{{"path":"{id}","count":1}}"#));
                        acked.lock().unwrap().push(id);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let started = std::time::Instant::now();
    let mut at = host_of(&c, "counter");
    for _ in 0..6 {
        let to = other_eu(&at);
        migrate(&c, "counter", to);
        at = to.to_string();
    }
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} acknowledged requests in {elapsed:.1} s ({:.0}/s), {} failed, across 6 migrations",
        acked.len(),
        acked.len() as f64 / elapsed,
        failed.load(Ordering::Relaxed)
    );
    assert!(acked.len() > 100, "too few requests to tell anything");
    let (status, body) = c.get("counter", "/");
    assert_eq!(status, 200);
    let counts: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let counts: BTreeMap<String, u64> = counts
        .iter()
        .map(|v| {
            (
                v["path"].as_str().unwrap().to_string(),
                v["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    let twice: Vec<(&String, &u64)> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
}
