//! Unplanned events keep a workload's state (issue 18): a guest that traps
//! or runs out of CPU in the middle of a stream of requests is rolled back
//! to its state before that request, on any host, durable or not, and the
//! operator sees it happen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use roam_tests::artifacts;

use crate::cluster::{Cluster, PATIENT, eu_cluster, poll, subscribe, unverified_agent, wait_event};
use crate::migrate::{deploy, host_of, migrate};
use crate::relay::{BLACKHOLE, PASS, Relay, free_port};

/// The next event of type `kind` about `workload`.
pub(crate) fn event_of(
    events: &std::sync::mpsc::Receiver<String>,
    kind: &str,
    workload: &str,
) -> String {
    loop {
        let event = wait_event(events, &format!("\"type\":\"{kind}\""));
        if event.contains(&format!("\"workload\":\"{workload}\"")) {
            return event;
        }
    }
}

/// Deploy the `faulty` test workload as `name` with `durability`; return
/// once it serves.
pub(crate) fn deploy_faulty(c: &Cluster, name: &str, durability: &str) {
    deploy(
        c,
        &[
            artifacts::FAULTY,
            "--name",
            name,
            "--grant",
            "kv,timers,send",
            "--selector",
            "jurisdiction=EU",
            "--durability",
            durability,
        ],
    );
    poll(Duration::from_secs(60), "faulty to serve", || {
        c.get(name, "/count/a").0 == 200
    });
}

#[test]
fn a_trap_and_a_cpu_budget_stop_in_a_stream_of_requests_keep_the_state_before_them() {
    let c = eu_cluster();
    let events = subscribe(&c);
    for (name, durability) in [("sync-app", "sync"), ("plain-app", "none")] {
        deploy_faulty(&c, name, durability);
        for n in 1..=20 {
            assert_eq!(c.invoke(name, "/count/a"), (200, format!("a={n}/{n}")));
        }
        // `none` keeps a last good state at most a second old, taken when
        // the workload is idle: give it that second.
        if durability == "none" {
            std::thread::sleep(Duration::from_millis(1100));
            assert_eq!(c.get(name, "/count/a"), (200, "a=20/20".into()));
        }
        let (status, body) = c.invoke(name, "/trap/a");
        assert!(status >= 500, "{status} {body}");
        assert_eq!(c.get(name, "/count/a"), (200, "a=20/20".into()), "{name}");
        let (status, body) = c.invoke(name, "/spin/a");
        assert!(
            status >= 500 && body.contains("CPU budget"),
            "{status} {body}"
        );
        assert_eq!(
            c.invoke(name, "/count/a"),
            (200, "a=21/21".into()),
            "{name}"
        );
        let event = event_of(&events, "workload_failed", name);
        assert!(
            event.contains("rolled back to its last good state"),
            "{event}"
        );
    }
    // Both failures reach the scheduler with the next heartbeat.
    poll(Duration::from_secs(10), "both failures reported", || {
        let (ok, out, _) = c.roam(&["get", "instances", "-o", "json"]);
        assert!(ok);
        let all: serde_json::Value = serde_json::from_str(&out).unwrap();
        all.as_array().unwrap().iter().any(|i| {
            i["workload"] == "sync-app"
                && i["rolled_back"] == 2
                && i["last_failure"]
                    .as_str()
                    .unwrap_or("")
                    .contains("CPU budget")
        })
    });
    let (ok, out, _) = c.roam(&["describe", "workload", "sync-app"]);
    assert!(ok && out.contains("Durability: sync"), "{out}");
}

#[test]
fn a_durable_workload_moves_live_and_rolls_back_on_its_new_host() {
    let c = eu_cluster();
    deploy_faulty(&c, "moving", "sync");
    for n in 1..=10 {
        assert_eq!(c.invoke("moving", "/count/m"), (200, format!("m={n}/{n}")));
    }
    let from = host_of(&c, "moving");
    let to = if from == "eu-1" { "eu-2" } else { "eu-1" };
    migrate(&c, "moving", to);
    assert_eq!(host_of(&c, "moving"), to);
    assert_eq!(c.get("moving", "/count/m"), (200, "m=10/10".into()));
    assert!(c.invoke("moving", "/trap/m").0 >= 500);
    assert_eq!(c.invoke("moving", "/count/m"), (200, "m=11/11".into()));
    // And back, after the rollback restarted its write tracking.
    migrate(&c, "moving", &from);
    assert_eq!(c.get("moving", "/count/m"), (200, "m=11/11".into()));
}

#[test]
fn a_checkpoint_interval_is_checked_when_deployed() {
    let c = eu_cluster();
    for (args, says) in [
        (
            vec!["--durability", "sync", "--checkpoint-interval", "50ms"],
            "is for `async` durability",
        ),
        (
            vec!["--durability", "async", "--checkpoint-interval", "1ms"],
            "it must be 5 ms to 60000 ms",
        ),
    ] {
        let mut all = vec!["deploy", artifacts::FAULTY, "--name", "bad"];
        all.extend(args);
        let (ok, _, err) = c.roam(&all);
        assert!(!ok && err.contains(says), "{err}");
    }
    let (ok, _, err) = c.roam(&[
        "deploy",
        artifacts::FAULTY,
        "--name",
        "x",
        "--durability",
        "maybe",
    ]);
    assert!(!ok && err.contains("use none, async or sync"), "{err}");
    let (ok, _, err) = c.roam(&["describe", "workload", "bad"]);
    assert!(
        !ok && err.contains("no workload `bad`"),
        "nothing was deployed: {err}"
    );
}

#[test]
fn a_drain_whose_live_migration_fails_moves_the_workload_by_stop_and_copy() {
    let mut c = Cluster::start_with(&[("HEARTBEAT_TIMEOUT", PATIENT)]);
    let fail = [("ROAM_FAULT_FAIL_PRECOPY", "1")];
    c.add_host_with("eu-1", "eu-west-1", "EU", &[], &fail);
    c.add_host_with("eu-2", "eu-central-1", "EU", &[], &fail);
    c.wait_ready(2);
    deploy_faulty(&c, "copied", "none");
    for n in 1..=5 {
        assert_eq!(c.invoke("copied", "/count/c"), (200, format!("c={n}/{n}")));
    }
    let from = host_of(&c, "copied");
    let (ok, out, err) = c.roam(&["drain", &from, "-o", "json"]);
    assert!(ok, "{out}{err}");
    let outcomes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcomes[0]["outcome"], "copied", "{out}");
    assert!(
        outcomes[0]["detail"]
            .as_str()
            .unwrap()
            .contains("ROAM_FAULT_FAIL_PRECOPY"),
        "the live failure is named: {out}"
    );
    assert_ne!(host_of(&c, "copied"), from);
    assert_eq!(c.get("copied", "/count/c"), (200, "c=5/5".into()));
}

/// What the client saw: each acknowledged count, and when.
struct Acked {
    at: Instant,
    count: u64,
}

/// The ingress path of `workload`'s `rest`.
pub(crate) fn ingress(workload: &str, rest: &str) -> roam_proto::paths::ApiPath {
    roam_proto::paths::ingress(workload, rest).unwrap()
}

/// Parse `a=N/N` (memory count / kv count), which must agree.
fn count(body: &str) -> u64 {
    let (_, counts) = body.split_once('=').unwrap();
    let (memory, kv) = counts.split_once('/').unwrap();
    assert_eq!(memory, kv, "memory and kv agree: {body}");
    memory.parse().unwrap()
}

#[test]
fn an_async_workload_fails_over_to_its_standby_with_its_state_when_its_host_is_killed() {
    let (lost, in_window) =
        kill_the_primary_under_load(&["async", "--checkpoint-interval", "20ms"]);
    assert!(
        lost <= in_window,
        "lost {lost}, more than the {in_window} of the last interval"
    );
}

#[test]
fn a_sync_workload_loses_no_acknowledged_request_when_its_host_is_killed() {
    let (lost, _) = kill_the_primary_under_load(&["sync"]);
    assert_eq!(lost, 0, "every answer waited for the standby");
}

/// Kill -9 the host of a durable workload while a client sends it unique
/// requests through the ingress (never resending one that was
/// acknowledged); check the standby took over with the state, and return
/// how many acknowledged requests were lost, and how many were
/// acknowledged in the last checkpoint interval (20 ms) and the time to
/// send it (250 ms) before the kill.
fn kill_the_primary_under_load(durability: &[&str]) -> (u64, u64) {
    let mut c = Cluster::start_with(&[("HEARTBEAT_TIMEOUT", "2s")]);
    c.add_host("eu-1", "eu-west-1", "EU");
    c.add_host("eu-2", "eu-central-1", "EU");
    c.add_host("us-1", "us-east-1", "US");
    c.wait_ready(3);
    let events = subscribe(&c);
    let mut args = vec![
        artifacts::FAULTY,
        "--name",
        "durable",
        "--grant",
        "kv,timers,send",
        "--selector",
        "jurisdiction=EU",
        "--durability",
    ];
    args.extend(durability);
    deploy(&c, &args);
    poll(Duration::from_secs(60), "durable to serve", || {
        c.get("durable", "/count/a").0 == 200
    });
    let primary = host_of(&c, "durable");
    let standby = if primary == "eu-1" { "eu-2" } else { "eu-1" };
    // The standby goes to the only other host its rules allow, never to
    // the primary's nor to us-1, and the replica shows as protected.
    poll(
        Duration::from_secs(30),
        "the replica to be protected",
        || {
            let (ok, out, _) = c.roam(&["describe", "workload", "durable"]);
            ok && out.contains(&format!("{primary}: standby on {standby}"))
                && out.contains("(protected)")
        },
    );
    let (ok, out, _) = c.roam(&["get", "workloads"]);
    assert!(ok && out.contains("1/1"), "protected 1/1: {out}");

    // A client sends requests one after another, through the ingress, and
    // never resends one that was acknowledged.
    let url = ingress("durable", "/count/a").on(&c.url);
    let agent = c.agent.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut acked: Vec<Acked> = Vec::new();
            let mut failed = 0u32;
            while !stop.load(Ordering::Relaxed) {
                match agent.post(&url).send("") {
                    Ok(mut r) if r.status() == 200 => {
                        let body = r.body_mut().read_to_string().unwrap();
                        acked.push(Acked {
                            at: Instant::now(),
                            count: count(&body),
                        });
                    }
                    _ => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (acked, failed)
        })
    };
    poll(Duration::from_secs(60), "300 requests answered", || {
        count(&c.get("durable", "/count/a").1) >= 300
    });
    c.kill_host(&primary);
    let killed = Instant::now();
    let event = event_of(&events, "failover", "durable");
    assert!(event.contains("\"outcome\":\"promoted\""), "{event}");
    let promoted_in = event
        .split("\"took_ms\":")
        .nth(1)
        .and_then(|t| t.split([',', '}']).next())
        .unwrap_or("?")
        .to_string();
    assert!(event.contains(&format!("\"to\":\"{standby}\"")), "{event}");
    // Promoted at a higher generation: the dead host's copy is fenced off.
    assert!(event.contains("\"generation\":1"), "{event}");
    // Serving again from the standby, then the client stops.
    poll(
        Duration::from_secs(30),
        "answers after the failover",
        || c.get("durable", "/count/a").0 == 200,
    );
    let served_again = killed.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = client.join().unwrap();
    let before: Vec<&Acked> = acked.iter().filter(|a| a.at < killed).collect();
    let after: Vec<&Acked> = acked.iter().filter(|a| a.at >= killed).collect();
    let last = before.last().expect("requests before the kill").count;
    let first_after = after
        .first()
        .map_or_else(|| count(&c.get("durable", "/count/a").1) + 1, |a| a.count);
    // The promoted copy went on from the standby's last checkpoint: what it
    // lost are the requests acknowledged after that checkpoint, at most an
    // interval's worth (and the time to send it), never everything.
    let lost = last.saturating_sub(first_after - 1);
    let window = Duration::from_millis(20 + 250);
    let in_window = before
        .iter()
        .filter(|a| killed.duration_since(a.at) <= window)
        .count() as u64;
    eprintln!(
        "{durability:?} failover: {last} acknowledged before the kill, {lost} lost (at most {in_window} acknowledged in the last {window:?}), {failed} requests failed meanwhile, serving again {served_again:?} after the kill (the promotion itself {promoted_in} ms)"
    );
    assert!(first_after > 1, "the state survived: {first_after}");
    assert_eq!(host_of(&c, "durable"), standby);
    // The workload's restore hook was told it failed over, and from where.
    let handled = c.get("durable", "/handled").1;
    assert!(
        handled.contains(&format!("moved:FailedOver:{primary}:{standby}")),
        "{handled}"
    );
    // No other EU host is left to keep a standby: the replica serves on,
    // shown as unprotected.
    poll(Duration::from_secs(10), "shown unprotected", || {
        let (ok, out, _) = c.roam(&["describe", "workload", "durable"]);
        ok && out.contains(&format!("{standby}: no standby (unprotected)"))
    });
    (lost, in_window)
}

/// `workload` as `roam get workloads -o json` shows it, if it exists.
fn workload_json(c: &Cluster, workload: &str) -> Option<serde_json::Value> {
    let (ok, out, _) = c.roam(&["get", "workloads", "-o", "json"]);
    assert!(ok, "{out}");
    let all: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    all.into_iter().find(|w| w["spec"]["name"] == workload)
}

/// Every replica, as `GET /v1/instances` shows it.
fn instances(c: &Cluster) -> Vec<serde_json::Value> {
    let (status, body) = c.api(
        "GET",
        roam_proto::paths::instances().as_str(),
        Some(&c.admin),
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Wait until the standby of `workload` on `primary` acknowledged a
/// checkpoint taken after now: the age the primary's host shows on its
/// `/metrics` (live, unlike the scheduler's copy, which is as of the
/// host's last full report) must be under the time since now.
fn checkpointed_since_now(c: &Cluster, workload: &str, primary: &str) {
    let since = Instant::now();
    let series = format!("roam_workload_checkpoint_age_seconds{{workload=\"{workload}\"}}");
    let url = c.url_of(primary);
    poll(
        Duration::from_secs(10),
        "a checkpoint after the last request",
        || {
            // Taken before the host measures the age: an age under it is
            // a checkpoint after `since`.
            let elapsed = since.elapsed().as_secs_f64();
            let (status, body) = crate::observe::scrape(&url, Some(crate::cluster::SCRAPE));
            assert_eq!(status, 200, "{body}");
            crate::observe::sample(&body, &series).is_some_and(|age| age < elapsed)
        },
    );
}

/// The replica of `workload` on `primary`: its standby once it is
/// protected.
pub(crate) fn protected_standby(c: &Cluster, workload: &str, primary: &str) -> String {
    let mut standby = String::new();
    poll(
        Duration::from_secs(30),
        "the replica to be protected",
        || {
            let Some(w) = workload_json(c, workload) else {
                return false;
            };
            let p = &w["protection"][primary];
            if p["protected"] == true {
                standby = p["standby"].as_str().unwrap().to_string();
                true
            } else {
                false
            }
        },
    );
    standby
}

/// A `sync` workload whose rules leave no other host for a standby holds
/// its answers until the scheduler grants it to serve unprotected, then
/// serves on, shown as unprotected, with the reason in the events.
#[test]
fn a_sync_workload_with_no_host_for_its_standby_serves_once_granted_unprotected() {
    let c = eu_cluster();
    let events = subscribe(&c);
    deploy(
        &c,
        &[
            artifacts::FAULTY,
            "--name",
            "lone",
            "--grant",
            "kv,timers,send",
            "--selector",
            "jurisdiction=US",
            "--durability",
            "sync",
        ],
    );
    let event = event_of(&events, "unprotected", "lone");
    assert!(event.contains("\"primary\":\"us-1\""), "{event}");
    assert!(event.contains("no host meets"), "{event}");
    poll(Duration::from_secs(30), "lone to serve", || {
        c.get("lone", "/count/a").0 == 200
    });
    for n in 1..=3 {
        assert_eq!(c.invoke("lone", "/count/a"), (200, format!("a={n}/{n}")));
    }
    let (ok, out, err) = c.roam(&["describe", "workload", "lone"]);
    assert!(ok, "{err}");
    assert!(out.contains("us-1: no standby (unprotected)"), "{out}");
}

/// With `async`, and with `sync` too: its answers wait while the
/// standby's host is silent, until the scheduler declares it dead and
/// grants "unprotected"; none fails.
#[test]
fn losing_the_standby_never_stops_the_primary_and_a_new_standby_takes_over_protection() {
    lose_the_standby(&["--durability", "async", "--checkpoint-interval", "20ms"]);
    lose_the_standby(&["--durability", "sync"]);
}

fn lose_the_standby(durability: &[&str]) {
    let mut c = Cluster::start_with(&[("HEARTBEAT_TIMEOUT", "2s")]);
    c.add_host("eu-1", "eu-west-1", "EU");
    c.add_host("eu-2", "eu-central-1", "EU");
    c.add_host("eu-3", "eu-north-1", "EU");
    c.wait_ready(3);
    let mut args = vec![
        artifacts::FAULTY,
        "--name",
        "kept",
        "--grant",
        "kv,timers,send",
    ];
    args.extend(durability);
    deploy(&c, &args);
    poll(Duration::from_secs(60), "kept to serve", || {
        c.get("kept", "/count/k").0 == 200
    });
    let primary = host_of(&c, "kept");
    let first = protected_standby(&c, "kept", &primary);
    assert_ne!(first, primary);
    // Requests all along; none may fail while the standby's host dies.
    let mut n = 0;
    let mut step = |c: &Cluster| {
        n += 1;
        assert_eq!(c.invoke("kept", "/count/k"), (200, format!("k={n}/{n}")));
    };
    for _ in 0..20 {
        step(&c);
    }
    c.kill_host(&first);
    let second = {
        let mut second = String::new();
        poll(Duration::from_secs(30), "a new standby", || {
            step(&c);
            let (ok, out, _) = c.roam(&["describe", "workload", "kept"]);
            if !ok {
                return false;
            }
            let last = ["eu-1", "eu-2", "eu-3"]
                .into_iter()
                .find(|h| *h != primary && *h != first)
                .unwrap();
            if out.contains(&format!("{primary}: standby on {last}")) && out.contains("(protected)")
            {
                second = last.to_string();
                true
            } else {
                false
            }
        });
        second
    };
    for _ in 0..10 {
        step(&c);
    }
    assert_eq!(host_of(&c, "kept"), primary, "the primary never moved");
    // The new standby was seeded with the whole state: a failover to it
    // now keeps every request (the client waits for a checkpoint after
    // its last one).
    let acked = c.get("kept", "/count/k").1;
    checkpointed_since_now(&c, "kept", &primary);
    c.kill_host(&primary);
    poll(
        Duration::from_secs(30),
        "served by the promoted standby",
        || c.get("kept", "/count/k").0 == 200 && host_of(&c, "kept") == second,
    );
    let now = c.get("kept", "/count/k").1;
    assert_eq!(now, acked, "nothing acknowledged was lost");
}

/// One answer a client got straight from a host.
struct Seen {
    at: Instant,
    host: &'static str,
    status: u16,
}

#[test]
fn a_primary_cut_off_from_the_scheduler_stops_answering_before_its_standby_takes_over() {
    let mut c = Cluster::start_with(&[("HEARTBEAT_TIMEOUT", "2s")]);
    // eu-1 is reached through `inbound` and reaches the scheduler through
    // `outbound`; clients also reach it straight at its own port.
    let port = free_port();
    let inbound = Relay::start(port, "https");
    let scheduler: SocketAddr = c.url.trim_start_matches("https://").parse().unwrap();
    let outbound = Relay::start(scheduler, "https");
    c.add_host_with(
        "eu-1",
        "eu-west-1",
        "EU",
        &[
            "--listen",
            &port.to_string(),
            "--advertise",
            &inbound.addr,
            "--join",
            &outbound.addr,
        ],
        &[],
    );
    c.wait_ready(1);
    deploy(
        &c,
        &[
            artifacts::FAULTY,
            "--name",
            "solo",
            "--grant",
            "kv,timers,send",
            "--selector",
            "jurisdiction=EU",
            "--durability",
            "async",
            "--checkpoint-interval",
            "20ms",
        ],
    );
    poll(Duration::from_secs(60), "solo to serve", || {
        c.get("solo", "/count/a").0 == 200
    });
    c.add_host("eu-2", "eu-central-1", "EU");
    c.wait_ready(2);
    assert_eq!(protected_standby(&c, "solo", "eu-1"), "eu-2");
    let eu2 = c.url_of("eu-2");

    // A client asks both hosts straight, one after the other, all along.
    let direct = unverified_agent(Some(Duration::from_secs(10)));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        let targets = [("eu-1", format!("https://{port}")), ("eu-2", eu2)];
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for (host, base) in &targets {
                    let status = direct
                        .post(ingress("solo", "/count/a").on(base))
                        .send("")
                        .map_or(0, |r| r.status().as_u16());
                    seen.push(Seen {
                        at: Instant::now(),
                        host,
                        status,
                    });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        })
    };
    poll(Duration::from_secs(10), "requests to eu-1", || {
        c.get("solo", "/count/a").1.starts_with("a=2")
    });
    inbound.mode.store(BLACKHOLE, Ordering::Relaxed);
    outbound.mode.store(BLACKHOLE, Ordering::Relaxed);
    let cut = Instant::now();
    poll(Duration::from_secs(30), "eu-2 to take over", || {
        host_of(&c, "solo") == "eu-2" && c.get("solo", "/count/a").0 == 200
    });
    let took_over = cut.elapsed();
    inbound.mode.store(PASS, Ordering::Relaxed);
    outbound.mode.store(PASS, Ordering::Relaxed);
    // Back on the network, eu-1 is told its copy is stale and drops it.
    let url = ingress("solo", "/count/a").on(&format!("https://{port}"));
    let probe = unverified_agent(None);
    poll(Duration::from_secs(30), "the stale copy dropped", || {
        probe.get(&url).call().is_ok_and(|r| r.status() == 404)
    });
    stop.store(true, Ordering::Relaxed);
    let seen = client.join().unwrap();
    let ok = |host: &str| -> Vec<Instant> {
        seen.iter()
            .filter(|s| s.host == host && s.status == 200)
            .map(|s| s.at)
            .collect()
    };
    let (old, new) = (ok("eu-1"), ok("eu-2"));
    let last_old = *old.last().expect("eu-1 answered before the cut");
    let first_new = *new.first().expect("eu-2 answered after the take-over");
    eprintln!(
        "partition: eu-1 answered {} times (the last {:?} after the cut), eu-2 {} times (the first {:?} after the cut); take-over seen after {took_over:?}",
        old.len(),
        last_old.saturating_duration_since(cut),
        new.len(),
        first_new.saturating_duration_since(cut),
    );
    assert!(
        last_old < first_new,
        "both copies answered: eu-1 last at {:?}, eu-2 first at {:?} after the cut",
        last_old.saturating_duration_since(cut),
        first_new.saturating_duration_since(cut)
    );
    assert!(
        seen.iter()
            .filter(|s| s.host == "eu-1" && s.at > first_new)
            .all(|s| s.status != 200),
        "the old copy never answered again"
    );
}

#[test]
fn workloads_serve_on_while_the_scheduler_is_down_for_longer_than_a_lease() {
    let mut c = Cluster::start_with(&[("HEARTBEAT_TIMEOUT", "2s")]);
    c.add_host("eu-1", "eu-west-1", "EU");
    c.add_host("eu-2", "eu-central-1", "EU");
    c.wait_ready(2);
    for (name, durability) in [("guarded", "async"), ("loose", "none")] {
        deploy(
            &c,
            &[
                artifacts::FAULTY,
                "--name",
                name,
                "--grant",
                "kv,timers,send",
                "--durability",
                durability,
            ],
        );
        poll(Duration::from_secs(60), "the workload to serve", || {
            c.get(name, "/count/a").0 == 200
        });
    }
    let primary = host_of(&c, "guarded");
    protected_standby(&c, "guarded", &primary);
    let urls = [
        ("guarded", c.url_of(&primary)),
        ("loose", c.url_of(&host_of(&c, "loose"))),
    ];
    let direct = unverified_agent(None);
    c.stop_scheduler();
    // Twice the lease (a second) and more than the time after which the
    // scheduler would call a host dead: every request is answered.
    let down = Instant::now();
    let mut answered = [0u64; 2];
    while down.elapsed() < Duration::from_secs(3) {
        for (k, (name, base)) in urls.iter().enumerate() {
            let r = direct.post(ingress(name, "/count/a").on(base)).send("");
            let status = r.map_or(0, |r| r.status().as_u16());
            assert_eq!(status, 200, "{name} with the scheduler down");
            answered[k] += 1;
        }
    }
    c.start_scheduler();
    eprintln!("scheduler down 3 s: {answered:?} requests answered straight by the hosts");
    // The scheduler comes back to the same placement: no failover.
    c.wait_ready(2);
    assert!(!protected_standby(&c, "guarded", &primary).is_empty());
    assert_eq!(host_of(&c, "guarded"), primary);
    let n = answered[0];
    assert_eq!(
        c.get("guarded", "/count/a").1,
        format!("a={}/{}", n, n),
        "every request counted once"
    );
}

#[test]
fn messages_acknowledged_to_the_sender_are_handled_once_when_the_receivers_host_dies() {
    let mut c = Cluster::start_with(&[("HEARTBEAT_TIMEOUT", "2s")]);
    c.add_host("eu-1", "eu-west-1", "EU");
    c.add_host("eu-2", "eu-central-1", "EU");
    c.add_host("us-1", "us-east-1", "US");
    c.wait_ready(3);
    let events = subscribe(&c);
    // The receiver: sync, on an EU host with its standby on the other one.
    deploy_faulty(&c, "inbox", "sync");
    let primary = host_of(&c, "inbox");
    let standby = protected_standby(&c, "inbox", &primary);
    // The sender, on the third host (not durable: its host stays up).
    deploy(
        &c,
        &[
            artifacts::FAULTY,
            "--name",
            "outbox",
            "--grant",
            "kv,timers,send",
            "--selector",
            "jurisdiction=US",
        ],
    );
    poll(Duration::from_secs(60), "the sender to serve", || {
        c.get("outbox", "/count/a").0 == 200
    });
    // A message to a workload that does not exist comes back to its sender.
    assert_eq!(c.invoke("outbox", "/send/nobody/lost").0, 202);
    poll(Duration::from_secs(10), "the message to come back", || {
        c.get("outbox", "/handled")
            .1
            .contains("undeliverable:nobody:lost:not found")
    });

    // A client asks the sender to send message after message, each with
    // its own body, through the ingress; an acknowledged one is in the
    // sender's outbox, and never asked again.
    let base = c.url.clone();
    let agent = c.agent.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("m{n}");
                let url = ingress("outbox", &format!("/send/inbox/{key}")).on(&base);
                if let Ok(r) = agent.post(&url).send("")
                    && r.status() == 202
                {
                    acked.push(key);
                }
                std::thread::sleep(Duration::from_millis(3));
            }
            acked
        })
    };
    let handled = |c: &Cluster| -> Vec<String> {
        let (status, body) = c.get("inbox", "/handled");
        if status != 200 {
            return Vec::new();
        }
        body.lines()
            .filter_map(|l| l.strip_prefix("outbox:").map(str::to_string))
            .collect()
    };
    poll(Duration::from_secs(60), "100 messages handled", || {
        handled(&c).len() >= 100
    });
    c.kill_host(&primary);
    let killed = Instant::now();
    let event = event_of(&events, "failover", "inbox");
    assert!(event.contains("\"outcome\":\"promoted\""), "{event}");
    assert_eq!(host_of(&c, "inbox"), standby);
    // Messages keep coming for a while after the promotion.
    poll(
        Duration::from_secs(30),
        "messages after the failover",
        || handled(&c).len() >= 100 && killed.elapsed() > Duration::from_secs(4),
    );
    stop.store(true, Ordering::Relaxed);
    let acked = client.join().unwrap();
    // Every acknowledged message arrives (those waiting in the sender's
    // outbox are sent again), each handled exactly once.
    let mut got = Vec::new();
    poll(
        Duration::from_secs(60),
        "every acknowledged message handled",
        || {
            got = handled(&c);
            let set: std::collections::HashSet<&String> = got.iter().collect();
            acked.iter().all(|k| set.contains(k))
        },
    );
    let mut seen = std::collections::HashMap::<&str, u32>::new();
    for k in &got {
        *seen.entry(k.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "handled twice: {twice:?}");
    // And nothing that was not acknowledged to the client... may still
    // have been sent (the client's request failed after the send), but
    // nothing was made up.
    assert!(got.len() >= acked.len());
    assert!(
        got.iter().all(|k| k.starts_with('m')),
        "unexpected messages: {got:?}"
    );
    eprintln!(
        "messages: {} acknowledged to the client, {} handled, none twice; the receiver's host was killed after the 100th",
        acked.len(),
        got.len()
    );
}

/// Two replicas of a `sync` workload, each with its own standby: when one
/// replica's host is killed, its standby is promoted at a higher
/// generation with its state, and the other replica answers every request
/// throughout (straight at its host) and is raised to that generation, not
/// stopped as a stale copy.
#[test]
fn the_other_replica_serves_on_when_one_replica_fails_over() {
    let mut c = Cluster::start_with(&[("HEARTBEAT_TIMEOUT", "2s")]);
    for (host, site) in [
        ("eu-1", "eu-west-1"),
        ("eu-2", "eu-central-1"),
        ("eu-3", "eu-north-1"),
        ("eu-4", "eu-south-1"),
    ] {
        c.add_host(host, site, "EU");
    }
    c.wait_ready(4);
    let events = subscribe(&c);
    deploy(
        &c,
        &[
            artifacts::FAULTY,
            "--name",
            "pair",
            "--grant",
            "kv,timers,send",
            "--replicas",
            "2",
            "--durability",
            "sync",
        ],
    );
    // Both replicas run, each protected by a standby of its own.
    let mut pairs: Vec<(String, String)> = Vec::new();
    poll(Duration::from_secs(60), "two protected replicas", || {
        let Some(w) = workload_json(&c, "pair") else {
            return false;
        };
        let Some(protection) = w["protection"].as_object() else {
            return false;
        };
        pairs = protection
            .iter()
            .filter(|(_, p)| p["protected"] == true)
            .map(|(primary, p)| (primary.clone(), p["standby"].as_str().unwrap().to_string()))
            .collect();
        pairs.len() == 2
    });
    let (victim, standby) = pairs[0].clone();
    let survivor = pairs[1].0.clone();
    let direct = unverified_agent(None);
    let urls: std::collections::HashMap<String, String> = [&victim, &standby, &survivor]
        .into_iter()
        .map(|h| (h.clone(), c.url_of(h)))
        .collect();
    let post = |host: &str| {
        direct
            .post(ingress("pair", "/count/a").on(&urls[host]))
            .send("")
            .map(|mut r| (r.status().as_u16(), r.body_mut().read_to_string().unwrap()))
    };
    for _ in 0..20 {
        assert_eq!(post(&victim).unwrap().0, 200);
    }
    let mut survivor_count = 0;
    for _ in 0..20 {
        let (status, body) = post(&survivor).unwrap();
        assert_eq!(status, 200, "{body}");
        survivor_count = count(&body);
    }
    c.kill_host(&victim);
    // The survivor answers every request while its sibling fails over, and
    // keeps its own count.
    let mut promoted = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !promoted {
        assert!(Instant::now() < deadline, "no failover");
        let (status, body) = post(&survivor).expect("the survivor answers");
        assert_eq!(status, 200, "the survivor during the failover: {body}");
        assert_eq!(count(&body), survivor_count + 1);
        survivor_count += 1;
        promoted = matches!(post(&standby), Ok((200, _)));
    }
    let event = event_of(&events, "failover", "pair");
    assert!(event.contains("\"outcome\":\"promoted\""), "{event}");
    assert!(event.contains("\"generation\":1"), "{event}");
    // The promoted replica went on from its state; the survivor runs at
    // the new generation and still serves through the scheduler too.
    let (status, body) = post(&standby).unwrap();
    assert_eq!(status, 200);
    assert!(
        count(&body) > 20,
        "the failed-over replica kept its state: {body}"
    );
    poll(
        Duration::from_secs(10),
        "both replicas at generation 1",
        || {
            let at: Vec<(String, u64)> = instances(&c)
                .iter()
                .filter(|i| i["workload"] == "pair")
                .map(|i| {
                    (
                        i["host"].as_str().unwrap().to_string(),
                        i["generation"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            at.len() == 2
                && at.iter().all(|(_, g)| *g == 1)
                && at.iter().any(|(h, _)| *h == survivor)
                && at.iter().any(|(h, _)| *h == standby)
        },
    );
    for _ in 0..10 {
        assert_eq!(c.get("pair", "/count/a").0, 200);
    }
    let (status, body) = post(&survivor).unwrap();
    assert_eq!((status, count(&body)), (200, survivor_count + 1), "{body}");
}
