//! Events and logs for people and machines: `roam events [-f]` and
//! `--log-format json`, against real daemons.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use roam_tests::artifacts;

use crate::cluster::{Cluster, PATIENT, Proc, eu_cluster, poll};
use crate::migrate::{deploy, deploy_eu_counter, host_of, other_eu};

/// `roam ARGS` left running against `c`: the process, and its standard
/// output's lines as they come.
fn follow(c: &Cluster, args: &[&str]) -> (Proc, mpsc::Receiver<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_roam"));
    command
        .args(args)
        .env("XDG_CONFIG_HOME", c.dir.path().join("client-config"))
        .env_remove("ROAM_CONTEXT")
        .env("ROAM_ADDR", &c.url)
        .env("ROAM_TOKEN", &c.admin)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(ca) = &c.ca {
        command.env("ROAM_CA", ca);
    }
    let mut child = command.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (Proc::new(child), rx)
}

/// The next line from `rx` that `wanted` accepts (lines before it are
/// skipped).
fn next_line(rx: &mpsc::Receiver<String>, what: &str, wanted: impl Fn(&str) -> bool) -> String {
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no line with {what} in {seen:?}"));
        if wanted(&line) {
            return line;
        }
        seen.push(line);
    }
}

#[test]
fn watches_and_waits_show_what_changes_as_it_changes() {
    let c = eu_cluster();
    // `deploy --wait` returns once the replicas serve, saying how many.
    let (ok, out, err) = c.roam(&[
        "deploy",
        artifacts::COUNTER,
        "--name",
        "counter",
        "--selector",
        "jurisdiction=EU",
        "--wait",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("deployed"), "{out}");
    let at = host_of(&c, "counter");
    assert!(
        err.contains(&format!("counter: replicas ready 1/1 on {at}")),
        "{err}"
    );
    assert_eq!(c.get("counter", "/").0, 200);
    // A workload no host takes: --wait fails with the hosts' reasons.
    let (ok, _, err) = c.roam(&[
        "deploy",
        artifacts::COUNTER,
        "--name",
        "nowhere",
        "--selector",
        "jurisdiction=MARS",
        "--wait",
        "--timeout",
        "2s",
    ]);
    assert!(!ok);
    assert!(
        err.contains("`nowhere`: 0 of 1 replica(s) ready after 2s; rejected by ")
            && err.contains("eu-1: "),
        "{err}"
    );
    let (ok, _, err) = c.roam(&["delete", "nowhere"]);
    assert!(ok, "{err}");

    // `get -w`: the list, then each change.
    let (_watch, rx) = follow(&c, &["get", "workloads", "-w", "-o", "json"]);
    let first = next_line(&rx, "counter added", |l| l.contains("\"ADDED\""));
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["object"]["spec"]["name"], "counter", "{first}");
    deploy(&c, &[artifacts::COUNTER, "--name", "later"]);
    next_line(&rx, "later added", |l| {
        l.contains("\"ADDED\"") && l.contains("\"name\":\"later\"")
    });
    let (ok, _, err) = c.roam(&["delete", "later"]);
    assert!(ok, "{err}");
    next_line(&rx, "later deleted", |l| {
        l.contains("\"DELETED\"") && l.contains("\"name\":\"later\"")
    });
    // The table form: a header, then rows in its columns.
    let (_table, rows) = follow(&c, &["get", "nodes", "-w"]);
    let header = next_line(&rows, "the header", |l| l.starts_with("NAME"));
    assert!(
        header.contains("STATUS") && header.contains("URL"),
        "{header}"
    );
    let ready = roam_proto::NodeStatus::Ready.to_string();
    next_line(&rows, "eu-1's row", |l| {
        l.starts_with("eu-1 ") && l.contains(&ready)
    });

    // `drain` says how far it got while it works, then the outcome.
    let (ok, out, err) = c.roam(&["drain", &at]);
    assert!(ok, "{err}");
    assert!(out.contains("counter"), "{out}");
    assert!(
        err.contains(&format!("draining {at} 1/1 1 moved, 0 failed")),
        "{err}"
    );
    // The watch sees the host cordoned and emptied.
    next_line(&rows, "the drained host's row", |l| {
        l.starts_with(&format!("{at} ")) && l.contains("cordoned") && !l.contains("counter")
    });
}

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
    let (_follow, rx) = follow(&c, &["events", "-f", "-o", "json"]);
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
pub(crate) fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// `GET /metrics` on `url` with `token` as the bearer: status and body.
pub(crate) fn scrape(url: &str, token: Option<&str>) -> (u16, String) {
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

/// Where Debian's `prometheus` package (installed by `scripts/setup`) puts
/// its binaries.
const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
/// Prometheus' own query route (its HTTP API, not Roam's), in segments.
const PROMETHEUS_QUERY: [&str; 3] = ["api", "v1", "query"];

#[test]
fn prometheus_scrapes_the_schedulers_and_every_hosts_metrics_with_the_documented_config() {
    let c = eu_cluster();
    deploy_eu_counter(&c);
    for _ in 0..3 {
        assert_eq!(c.get("counter", "/").0, 200);
    }
    // A workload with a standby: its checkpoints are counted too.
    crate::failover::deploy_faulty(&c, "durable", "sync");
    for _ in 0..3 {
        assert_eq!(c.get("durable", "/count/a").0, 200);
    }
    // `docs/monitoring/prometheus.yml`, pointed at this cluster: its files,
    // its scheduler, and its host job repeated for each host, as
    // `docs/metrics.md` says to.
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/monitoring/prometheus.yml"),
    )
    .unwrap();
    let dir = c.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("metrics.token");
    std::fs::write(&token, crate::cluster::SCRAPE).unwrap();
    let ca = c.ca.as_ref().unwrap().to_str().unwrap();
    let doc = doc
        .replace("/etc/prometheus/roam/ca.crt", ca)
        .replace(
            "/etc/prometheus/roam/metrics.token",
            token.to_str().unwrap(),
        )
        .replace("scrape_interval: 15s", "scrape_interval: 1s");
    let (head, host_job) = doc.split_at(doc.find("  - job_name: roam-host-eu-1").unwrap());
    let scheduler = c.url.trim_start_matches("https://");
    let mut config = head.replace(
        r#"["10.0.0.10:7700", "10.0.0.11:7700", "10.0.0.12:7700"]"#,
        &format!(r#"["{scheduler}"]"#),
    );
    let nodes = c.nodes();
    let nodes = nodes.as_array().unwrap();
    for node in nodes {
        let name = node["name"].as_str().unwrap();
        let addr = node["url"].as_str().unwrap().trim_start_matches("https://");
        let labels = &node["labels"];
        config.push_str(
            &host_job
                .replace("eu-1", name)
                .replace("10.0.1.21:7800", addr)
                .replace("eu-west-1", labels["site"].as_str().unwrap())
                .replace(
                    "jurisdiction: EU",
                    &format!("jurisdiction: {}", labels["jurisdiction"].as_str().unwrap()),
                ),
        );
    }
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, &config).unwrap();
    let check = Command::new(PROMTOOL)
        .args(["check", "config"])
        .arg(&file)
        .output()
        .expect("promtool (Debian `prometheus`, scripts/setup)");
    assert!(
        check.status.success(),
        "{}{}\n{config}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let listen = crate::relay::free_port();
    let _prometheus = Proc::new(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its log, for a failure's reader.
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian `prometheus`, scripts/setup)"),
    );
    // Prometheus' answer to `route` (with `query`), or null.
    let api = |route: &[&str], query: Option<&str>| -> serde_json::Value {
        let http = crate::cluster::agent_trusting(None);
        let mut rb = http.get(format!("http://{listen}/{}", route.join("/")));
        if let Some(q) = query {
            rb = rb.query("query", q);
        }
        let Ok(mut r) = rb.call() else {
            return serde_json::Value::Null;
        };
        serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default()).unwrap_or_default()
    };
    let query = |q: &str| -> Vec<serde_json::Value> {
        api(&PROMETHEUS_QUERY, Some(q))["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let value = |s: &serde_json::Value| -> f64 { s["value"][1].as_str().unwrap().parse().unwrap() };
    // Every target up: the scheduler and each host, over TLS with the
    // credential, their certificates checked by name.
    poll(Duration::from_secs(60), "every target to be up", || {
        let up = query("up");
        up.len() == nodes.len() + 1 && up.iter().all(|s| value(s) == 1.0)
    });
    poll(Duration::from_secs(30), "the counter's requests", || {
        query(r#"roam_workload_requests_total{workload="counter",code="2xx"}"#)
            .iter()
            .any(|s| value(s) >= 3.0)
    });
    let ready = query(r#"roam_hosts{job="roam-scheduler",status="ready"}"#);
    assert_eq!(ready.len(), 1);
    assert_eq!(value(&ready[0]), 3.0);
    let slots = query(r#"roam_host_slots{host="eu-1",site="eu-west-1"}"#);
    assert_eq!(slots.len(), 1, "the host job's labels are on its series");
    poll(Duration::from_secs(30), "the standby's checkpoints", || {
        query("sum(roam_host_checkpoints_total)")
            .iter()
            .any(|s| value(s) > 0.0)
            && !query(r#"roam_workload_checkpoint_age_seconds{workload="durable"}"#).is_empty()
    });

    // Every query of the Grafana dashboard runs, and every metric it
    // names is one Prometheus has.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../docs/monitoring/grafana-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let names = api(
        &[
            PROMETHEUS_QUERY[0],
            PROMETHEUS_QUERY[1],
            "label",
            "__name__",
            "values",
        ],
        None,
    );
    let names: Vec<&str> = names["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let q = expr
                .replace("$workload", ".*")
                .replace("$__rate_interval", "1m");
            let answer = api(&PROMETHEUS_QUERY, Some(&q));
            assert_eq!(answer["status"], "success", "{expr}: {answer}");
            for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if name.starts_with("roam_") {
                    assert!(
                        names.contains(&name),
                        "the dashboard's {name} is not exported"
                    );
                }
            }
            exprs += 1;
        }
    }
    assert!(exprs > 20, "{exprs} queries");
}

/// The numbers of the `line K` records in `roam logs -o json` lines, and
/// the hosts they came from.
fn numbered(lines: &[String]) -> Vec<(u64, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let k = v["message"].as_str()?.strip_prefix("line ")?.parse().ok()?;
            Some((k, v["host"].as_str()?.to_string()))
        })
        .collect()
}

#[test]
fn logs_follow_each_record_once_past_the_ring_and_across_a_migration() {
    let c = eu_cluster();
    crate::failover::deploy_faulty(&c, "chatty", "none");
    let first = host_of(&c, "chatty");
    let (_follower, rx) = follow(&c, &["logs", "chatty", "-f", "-o", "json"]);
    let mut lines = Vec::new();
    // Until the follower has every line up to `k` (each read once).
    let read_up_to = |lines: &mut Vec<String>, k: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while numbered(lines).len() < k as usize {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => panic!("the follower stopped at {} of {k}", numbered(lines).len()),
            }
        }
    };
    // 2,500 lines, past the host's 1,000, half through `roam::log`, half
    // on stdout, a hundred per request, read as they come.
    for round in 1..=25u64 {
        assert_eq!(c.invoke("chatty", "/log?n=100").0, 200);
        read_up_to(&mut lines, round * 100);
    }
    // The workload moves; its records and their numbering go with it.
    let second = other_eu(&first);
    crate::migrate::migrate(&c, "chatty", second);
    for round in 26..=30u64 {
        assert_eq!(c.invoke("chatty", "/log?n=100").0, 200);
        read_up_to(&mut lines, round * 100);
    }
    let seen = numbered(&lines);
    let mut numbers: Vec<u64> = seen.iter().map(|(k, _)| *k).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=3000).collect::<Vec<_>>(), "each line once");
    assert!(seen.iter().any(|(k, h)| *k <= 2500 && *h == first));
    assert!(
        seen.iter().all(|(k, h)| *k <= 2500 || *h == second),
        "{seen:?}"
    );
    // Nothing more came (no record repeated after the move).
    std::thread::sleep(Duration::from_millis(1200));
    while let Ok(line) = rx.try_recv() {
        lines.push(line);
    }
    assert_eq!(numbered(&lines).len(), 3000);

    // Without -f, the newest records, each labelled, with a timestamp.
    let (ok, out, _) = c.roam(&["logs", "chatty", "--tail", "3"]);
    assert!(ok);
    let shown: Vec<&str> = out.lines().collect();
    assert_eq!(shown.len(), 3, "{out}");
    for line in shown {
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert!(
            parts[0].starts_with("20") && parts[0].ends_with('Z'),
            "{line}"
        );
        assert_eq!(parts[1], second, "{line}");
        assert_eq!(parts[2].len(), 6, "{line}");
    }
    // The history from before the move is on the new host.
    let (_, all, _) = c.roam(&["logs", "chatty", "-o", "json"]);
    let history = numbered(&all.lines().map(str::to_string).collect::<Vec<_>>());
    assert_eq!(history.len(), 1000, "the host keeps its 1,000 newest");
    assert!(history.iter().all(|(_, h)| h == second));
    assert!(
        history.iter().any(|(k, _)| *k <= 2500),
        "records from before the move moved"
    );
}

#[test]
fn logs_keep_their_history_and_each_record_once_when_a_standby_takes_over() {
    let mut c = Cluster::start_with(&[("HEARTBEAT_TIMEOUT", "2s")]);
    c.add_host("eu-1", "eu-west-1", "EU");
    c.add_host("eu-2", "eu-central-1", "EU");
    c.wait_ready(2);
    // `sync`: an answer leaves only once the standby has the state, and
    // the log records, that produced it.
    crate::failover::deploy_faulty(&c, "chatty", "sync");
    let primary = host_of(&c, "chatty");
    let standby = other_eu(&primary);
    poll(Duration::from_secs(30), "the standby", || {
        let (ok, out, _) = c.roam(&["describe", "workload", "chatty"]);
        ok && out.contains(&format!("{primary}: standby on {standby}"))
    });
    let (_follower, rx) = follow(&c, &["logs", "chatty", "-f", "-o", "json"]);
    let mut lines: Vec<String> = Vec::new();
    let read_up_to = |lines: &mut Vec<String>, k: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while numbered(lines).len() < k {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => panic!("the follower stopped at {} of {k}", numbered(lines).len()),
            }
        }
    };
    for round in 1..=3 {
        assert_eq!(c.invoke("chatty", "/log?n=100").0, 200);
        read_up_to(&mut lines, round * 100);
    }
    // Its host dies; the standby takes over with every acknowledged line.
    c.kill_host(&primary);
    poll(Duration::from_secs(60), "the standby to take over", || {
        host_of(&c, "chatty") == standby && c.invoke("chatty", "/log?n=0").0 == 200
    });
    for round in 4..=5 {
        assert_eq!(c.invoke("chatty", "/log?n=100").0, 200);
        read_up_to(&mut lines, round * 100);
    }
    std::thread::sleep(Duration::from_millis(1200));
    while let Ok(line) = rx.try_recv() {
        lines.push(line);
    }
    let seen = numbered(&lines);
    let mut numbers: Vec<u64> = seen.iter().map(|(k, _)| *k).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=500).collect::<Vec<_>>(), "each line once");
    assert!(
        seen.iter().all(|(k, h)| *k <= 300 || *h == standby),
        "{seen:?}"
    );
    // The new primary keeps what the old one wrote.
    let (_, all, _) = c.roam(&["logs", "chatty", "-o", "json"]);
    let history = numbered(&all.lines().map(str::to_string).collect::<Vec<_>>());
    let mut kept: Vec<u64> = history.iter().map(|(k, _)| *k).collect();
    kept.sort_unstable();
    assert_eq!(
        kept,
        (1..=500).collect::<Vec<_>>(),
        "the history survived the failover"
    );
}
