//! Events and logs for people and machines: `roam events [-f]` and
//! `--log-format json`, against real daemons.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use roam_tests::artifacts;

use crate::cluster::{Cluster, PATIENT, Proc, eu_cluster, poll};
use crate::migrate::{deploy, deploy_eu_counter, host_of, other_eu};

#[test]
fn events_are_kept_printed_and_followed() {
    let c = eu_cluster();
    deploy_eu_counter(&c);
    // What the scheduler kept, as lines for people and as JSON.
    let (ok, out, err) = c.roam(&["events"]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains(" workload_deployed ") && l.contains("workload=counter")),
        "{out}"
    );
    assert!(out.lines().any(|l| l.contains(" host_joined ")), "{out}");
    let (ok, json, err) = c.roam(&["events", "-o", "json"]);
    assert!(ok, "{err}");
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["type"].is_string() && v["time_ms"].is_u64(), "{line}");
    }

    // Following: what is kept, then what happens.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_roam"));
    follow
        .args(["events", "-f", "-o", "json"])
        .env("ROAM_ADDR", &c.url)
        .env("ROAM_TOKEN", &c.admin)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(ca) = &c.ca {
        follow.env("ROAM_CA", ca);
    }
    let mut child = follow.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let _follow = Proc::new(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let kept = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(kept.contains("\"type\""), "{kept}");
    deploy(&c, &[artifacts::COUNTER, "--name", "later"]);
    let mut seen = Vec::new();
    let deployed = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no event for `later` in {seen:?}"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["type"] == "workload_deployed" && v["workload"] == "later" {
            break v;
        }
        seen.push(line);
    };
    assert!(deployed["digest"].as_str().unwrap().starts_with("sha256:"));
}

#[test]
fn a_migration_id_runs_through_the_json_logs_of_the_scheduler_and_both_hosts() {
    let json = [("ROAM_LOG_FORMAT", "json"), ("ROAM_LOG", "info")];
    let mut c = Cluster::start_with(&[("HEARTBEAT_TIMEOUT", PATIENT), json[0], json[1]]);
    c.add_host_with("eu-1", "eu-west-1", "EU", &[], &json);
    c.add_host_with("eu-2", "eu-central-1", "EU", &[], &json);
    c.wait_ready(2);
    deploy_eu_counter(&c);
    let source = host_of(&c, "counter");
    let target = other_eu(&source);
    let (ok, out, err) = c.roam(&["migrate", "counter", "--to", target, "-o", "json"]);
    assert!(ok, "{err}");
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = m["id"].as_str().unwrap().to_string();
    // Every line each daemon logged is one JSON object; the migration's
    // id is a field of lines in all three.
    let mentions = |p: &Proc| -> usize {
        let lines = p.logged("");
        let json: Vec<serde_json::Value> = lines
            .iter()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert!(!json.is_empty(), "no JSON log line");
        for v in &json {
            assert!(v["timestamp"].is_string() && v["level"].is_string(), "{v}");
        }
        json.iter()
            .filter(|v| {
                v["fields"]["migration"] == id.as_str()
                    || v["fields"]["event"]
                        .as_str()
                        .is_some_and(|e| e.contains(&id))
            })
            .count()
    };
    let host = |name: &str| &c.hosts.iter().find(|(n, _)| n == name).unwrap().1;
    poll(Duration::from_secs(30), "the id in all three logs", || {
        mentions(c.scheduler.as_ref().unwrap()) > 0
            && mentions(host(&source)) > 0
            && mentions(host(target)) > 0
    });
}
