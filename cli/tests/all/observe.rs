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

/// The value of the sample `series` (name and labels, exactly as
/// exported) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// `GET /metrics` on `url` with `token` as the bearer: status and body.
fn scrape(url: &str, token: Option<&str>) -> (u16, String) {
    let agent = crate::cluster::unverified_agent(Some(Duration::from_secs(10)));
    let mut rb = agent.get(format!("{url}{}", roam_proto::paths::metrics().as_str()));
    if let Some(t) = token {
        rb = rb.header("authorization", format!("Bearer {t}"));
    }
    let mut r = rb.call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

#[test]
fn a_host_exports_each_workloads_requests_failures_and_memory_to_the_scrape_credential_only() {
    use crate::cluster::SCRAPE;
    let mut c = Cluster::start_with(&[]);
    // One workload gets series of its own; the next is summed as `_other`.
    let url = c.add_host_with(
        "eu-1",
        "eu-west-1",
        "EU",
        &["--metrics-workloads", "1"],
        &[],
    );
    c.wait_ready(1);
    crate::failover::deploy_faulty(&c, "first", "none");
    crate::failover::deploy_faulty(&c, "second", "none");

    // Nobody else scrapes the host: not an admin token, not nothing.
    assert_eq!(scrape(&url, None).0, 401);
    assert_eq!(scrape(&url, Some(&c.admin)).0, 401);
    assert_eq!(scrape(&url, Some("roam-not-the-scrape-credential")).0, 401);
    // The scheduler's takes the credential or a viewer token.
    assert_eq!(c.api("GET", "/metrics", None).0, 401);
    assert_eq!(c.api("GET", "/metrics", Some(SCRAPE)).0, 200);
    assert_eq!(c.api("GET", "/metrics", Some(&c.admin)).0, 200);

    let (status, before) = scrape(&url, Some(SCRAPE));
    assert_eq!(status, 200, "{before}");
    let first_ok = "roam_workload_requests_total{workload=\"first\",code=\"2xx\"}";
    let first_5xx = "roam_workload_requests_total{workload=\"first\",code=\"5xx\"}";
    let other_ok = "roam_workload_requests_total{workload=\"_other\",code=\"2xx\"}";
    let trap = "roam_workload_failures_total{workload=\"first\",kind=\"trap\"}";
    let cpu = "roam_workload_failures_total{workload=\"first\",kind=\"cpu_budget\"}";
    let count = "roam_workload_request_duration_seconds_count{workload=\"first\"}";
    let at = |text: &str, series: &str| {
        sample(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    for _ in 0..5 {
        assert_eq!(c.get("first", "/count/a").0, 200);
    }
    for _ in 0..3 {
        assert_eq!(c.get("second", "/count/a").0, 200);
    }
    assert!(c.invoke("first", "/trap/a").0 >= 500);
    assert!(c.invoke("first", "/spin/a").0 >= 500);
    let (_, after) = scrape(&url, Some(SCRAPE));
    assert_eq!(at(&after, first_ok) - at(&before, first_ok), 5.0, "{after}");
    assert_eq!(at(&after, first_5xx) - at(&before, first_5xx), 2.0);
    assert_eq!(at(&after, count) - at(&before, count), 7.0);
    assert_eq!(at(&after, other_ok) - at(&before, other_ok), 3.0);
    assert_eq!(at(&after, trap) - at(&before, trap), 1.0);
    assert_eq!(at(&after, cpu) - at(&before, cpu), 1.0);
    assert!(at(&after, "roam_workload_memory_bytes{workload=\"first\"}") > 0.0);
    assert!(at(&after, "roam_workload_memory_bytes{workload=\"_other\"}") > 0.0);
    // `second` has no series of its own, and the host says how many do.
    assert!(!after.contains("workload=\"second\""), "{after}");
    assert_eq!(at(&after, "roam_host_instances"), 2.0);
    assert_eq!(at(&after, "roam_host_labelled_workloads"), 1.0);
    assert!(at(&after, "roam_host_slots") >= 2.0);
    assert_eq!(at(&after, "roam_host_slots_used"), 2.0);

    // Once `first` leaves, its series go and its place is free.
    let (ok, _, err) = c.roam(&["delete", "first"]);
    assert!(ok, "{err}");
    poll(Duration::from_secs(30), "first's series to go", || {
        let (_, text) = scrape(&url, Some(SCRAPE));
        !text.contains("workload=\"first\"") && sample(&text, "roam_host_instances") == Some(1.0)
    });
}
