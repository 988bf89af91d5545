//! Rollouts (issue 21): a deploy that changes what replicas run replaces
//! them one at a time, in place, each with its state — through the
//! upgrade hooks across modules, exactly within one module — and `roam
//! rollout undo` hands it back; a version that cannot take the state is
//! refused with the reason, and the old one serves on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use roam_tests::artifacts;

use crate::cluster::{Cluster, eu_cluster, poll, subscribe, unverified_agent};
use crate::failover::{event_of, ingress};

/// `module` as a new version: the same code with a custom section that
/// names `version` (another digest, as any rebuild gives).
pub(crate) fn version_of(module: &str, version: &str, dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(module).unwrap();
    let name = b"roam-test-version";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(version.as_bytes());
    assert!(section.len() < 128);
    bytes.push(0);
    bytes.push(section.len() as u8);
    bytes.extend_from_slice(&section);
    let stem = Path::new(module).file_stem().unwrap().to_string_lossy();
    let path = dir.join(format!("{stem}-{version}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// `POST` (count) or `GET` `path` of `workload` at host `host`'s own
/// ingress: the replica there, and no other.
fn at(c: &Cluster, host: &str, method: &str, workload: &str, path: &str) -> (u16, String) {
    let agent = unverified_agent(Some(Duration::from_secs(10)));
    let url = ingress(workload, path).on(&c.url_of(host));
    let r = match method {
        "POST" => agent.post(url).send(""),
        _ => agent.get(url).call(),
    };
    let mut r = r.unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// The next `replica_upgraded` event of `counter` to `revision` (earlier
/// revisions' skipped).
fn upgraded_to(events: &std::sync::mpsc::Receiver<String>, revision: u64) -> String {
    loop {
        let e = event_of(events, "replica_upgraded", "counter");
        if e.contains(&format!("\"revision\":{revision},")) {
            return e;
        }
    }
}

fn rollout(c: &Cluster, name: &str) -> serde_json::Value {
    let (_, out, _) = c.roam(&["rollout", "status", name, "--no-wait", "-o", "json"]);
    serde_json::from_str(&out).unwrap()
}

fn deploy(c: &Cluster, module: &Path, extra: &[&str]) -> (bool, String, String) {
    let module = module.to_str().unwrap();
    let mut args = vec![
        "deploy",
        module,
        "--name",
        "counter",
        "--replicas",
        "2",
        "--selector",
        "jurisdiction=EU",
        "--wait",
        "--timeout",
        "60s",
    ];
    args.extend_from_slice(extra);
    c.roam(&args)
}

#[test]
fn a_new_version_rolls_out_replica_by_replica_with_each_replicas_state_and_undo_hands_it_back() {
    let c = eu_cluster();
    let dir = tempfile::tempdir().unwrap();
    let events = subscribe(&c);
    let v1 = PathBuf::from(artifacts::COUNTER);
    let (ok, out, err) = deploy(&c, &v1, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("revision 1"), "{out}");
    // Each replica counts on its own: 3 on eu-1, 5 on eu-2.
    for (host, n) in [("eu-1", 3), ("eu-2", 5)] {
        for _ in 0..n {
            let (code, body) = at(&c, host, "POST", "counter", "/a");
            assert_eq!(code, 200, "{host}: {body}");
        }
    }

    // A new module: both replicas replaced, one at a time, each keeping
    // its own count through the hooks; a client of eu-1 all along sees
    // every request answered, counted once, in order.
    let v2 = version_of(artifacts::COUNTER, "2", dir.path());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (stop, url) = (stop.clone(), ingress("counter", "/b").on(&c.url_of("eu-1")));
        std::thread::spawn(move || {
            let agent = unverified_agent(Some(Duration::from_secs(10)));
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut r = agent.post(&url).send("").unwrap();
                seen.push((r.status().as_u16(), r.body_mut().read_to_string().unwrap()));
            }
            seen
        })
    };
    let (ok, out, err) = deploy(&c, &v2, &[]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = client.join().unwrap();
    assert!(ok, "{err}");
    eprintln!("{} requests to eu-1 during the rollout", seen.len());
    for (i, (code, body)) in seen.iter().enumerate() {
        assert_eq!(*code, 200, "request {i}: {body}");
        assert!(
            body.contains(&format!("\"count\":{}}}", i + 1)),
            "request {i}: {body}"
        );
    }
    assert!(out.contains("revision 2"), "{out}");
    assert!(err.contains("replicas at revision 2"), "{err}");
    for _ in 0..2 {
        let e = upgraded_to(&events, 2);
        assert!(e.contains("\"state\":\"hooks\""), "{e}");
    }
    event_of(&events, "rollout_complete", "counter");
    let status = rollout(&c, "counter");
    assert_eq!(
        status["state"],
        roam_proto::rollout_state::COMPLETE,
        "{status}"
    );
    assert_eq!(status["updated"], 2, "{status}");
    assert_eq!(status["previous"], 1, "{status}");
    assert!(status["digest"].as_str().unwrap().len() > 10);
    for (host, n) in [("eu-1", 4), ("eu-2", 6)] {
        let (code, body) = at(&c, host, "POST", "counter", "/a");
        assert_eq!(code, 200);
        assert!(body.contains(&format!("\"count\":{n}")), "{host}: {body}");
    }
    let (_, logs, _) = c.roam(&["logs", "counter"]);
    assert!(logs.contains("took over 1 count(s)"), "{logs}");

    // Undo: back to the first module, the state handed back the same way.
    let (ok, out, err) = c.roam(&["rollout", "undo", "counter", "--wait", "--timeout", "60s"]);
    assert!(ok, "{err}");
    assert!(out.contains("revision 3"), "{out}");
    for (host, n) in [("eu-1", 5), ("eu-2", 7)] {
        let (_, body) = at(&c, host, "POST", "counter", "/a");
        assert!(body.contains(&format!("\"count\":{n}")), "{host}: {body}");
    }
    let status = rollout(&c, "counter");
    assert_eq!(status["revision"], 3, "{status}");
    let (_, listed, _) = c.roam(&["get", "workloads", "-o", "json"]);
    let digest_v1 = roam_proto::Digest::of(&std::fs::read(&v1).unwrap()).to_string();
    assert!(listed.contains(&digest_v1), "{listed}");

    // The same module with new settings: the whole state, exactly, both
    // replicas at once.
    let (ok, _, err) = deploy(&c, &v1, &["--memory", "96MiB", "--max-unavailable", "2"]);
    assert!(ok, "{err}");
    for _ in 0..2 {
        let e = upgraded_to(&events, 4);
        assert!(e.contains("\"state\":\"snapshot\""), "{e}");
    }
    let (_, body) = at(&c, "eu-1", "GET", "counter", "/a");
    assert!(body.contains("\"count\":5"), "{body}");

    // A deploy that changes only the replica count is not a new revision.
    let (ok, out, err) = c.roam(&[
        "deploy",
        v1.to_str().unwrap(),
        "--name",
        "counter",
        "--replicas",
        "1",
        "--selector",
        "jurisdiction=EU",
        "--memory",
        "96MiB",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("revision 4"), "{out}");
}

#[test]
fn a_version_that_cannot_take_the_state_is_refused_with_the_reason_unless_it_may_start_anew() {
    let c = eu_cluster();
    let dir = tempfile::tempdir().unwrap();
    let cache = |extra: &[&str], module: &Path| {
        let module = module.to_str().unwrap().to_string();
        let mut args = vec![
            "deploy",
            module.as_str(),
            "--name",
            "cache",
            "--grant",
            "kv",
            "--grant",
            "timers",
            "--selector",
            "site=eu-west-1",
            "--wait",
            "--timeout",
            "60s",
        ];
        args.extend_from_slice(extra);
        c.roam(&args)
    };
    let (ok, _, err) = cache(&[], Path::new(artifacts::KV_CACHE));
    assert!(ok, "{err}");
    let agent = unverified_agent(Some(Duration::from_secs(10)));
    let put = agent
        .put(ingress("cache", "/greeting").on(&c.url_of("eu-1")))
        .send("hello")
        .unwrap();
    assert_eq!(put.status().as_u16(), 201);

    // kv-cache has no upgrade hooks: the rollout stops with the reason,
    // and the old version serves on with its data.
    let v2 = version_of(artifacts::KV_CACHE, "2", dir.path());
    let (ok, _, err) = cache(&[], &v2);
    assert!(!ok, "a rollout that would lose the state went through");
    assert!(
        err.contains("roam_upgrade_export") && err.contains("--discard-state"),
        "{err}"
    );
    let status = {
        let (ok, out, _) = c.roam(&["rollout", "status", "cache", "--no-wait", "-o", "json"]);
        assert!(!ok, "a stopped rollout exits non-zero");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    assert_eq!(
        status["state"],
        roam_proto::rollout_state::FAILED,
        "{status}"
    );
    assert_eq!(status["updated"], 0, "{status}");
    assert_eq!(status["hosts"]["eu-1"], 1, "{status}");
    assert_eq!(
        at(&c, "eu-1", "GET", "cache", "/greeting"),
        (200, "hello".into())
    );

    // With --discard-state the new version starts anew in memory, and
    // the key-value data (host-side state) is still there.
    let (ok, _, err) = cache(&["--discard-state"], &v2);
    assert!(ok, "{err}");
    poll(Duration::from_secs(30), "the rollout to complete", || {
        let (_, out, _) = c.roam(&["rollout", "status", "cache", "--no-wait", "-o", "json"]);
        out.contains(roam_proto::rollout_state::COMPLETE)
    });
    assert_eq!(
        at(&c, "eu-1", "GET", "cache", "/greeting"),
        (200, "hello".into())
    );
}

/// After an in-place upgrade the old standby holds the old revision's
/// state: a new one is seeded from the new revision, and a `sync` replica
/// holds its answers until it has that state, so a failover right after
/// loses no acknowledged request.
#[test]
fn a_durable_replica_upgraded_in_place_gets_a_standby_of_its_new_revision_and_fails_over_with_it() {
    let mut c = crate::cluster::Cluster::start_with(&[("HEARTBEAT_TIMEOUT", "2s")]);
    c.add_host("eu-1", "eu-west-1", "EU");
    c.add_host("eu-2", "eu-central-1", "EU");
    c.wait_ready(2);
    crate::failover::deploy_faulty(&c, "durable", "sync");
    let primary = crate::migrate::host_of(&c, "durable");
    let first = crate::failover::protected_standby(&c, "durable", &primary);
    for n in 1..=3 {
        assert_eq!(c.invoke("durable", "/count/a"), (200, format!("a={n}/{n}")));
    }
    // New settings, same module: the replica is upgraded in place with
    // its whole state, and its standby is seeded again from it.
    let events = subscribe(&c);
    let (ok, _, err) = c.roam(&[
        "deploy",
        artifacts::FAULTY,
        "--name",
        "durable",
        "--grant",
        "kv,timers,send",
        "--selector",
        "jurisdiction=EU",
        "--durability",
        "sync",
        "--memory",
        "80MiB",
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert!(ok, "{err}");
    event_of(&events, "replica_upgraded", "durable");
    // Answered only once the new standby has the new revision's state:
    // the primary's host dies right after, and nothing answered is lost.
    assert_eq!(c.invoke("durable", "/count/a"), (200, "a=4/4".into()));
    c.kill_host(&primary);
    poll(Duration::from_secs(60), "the standby to take over", || {
        crate::migrate::host_of(&c, "durable") == first && c.get("durable", "/count/a").0 == 200
    });
    let (_, body) = c.get("durable", "/count/a");
    assert_eq!(body, "a=4/4", "the state of every acknowledged request");
    // The copy that took over runs the new revision.
    poll(Duration::from_secs(30), "the new copy to report", || {
        rollout(&c, "durable")["hosts"][first.as_str()] == 2
    });
    assert_eq!(c.invoke("durable", "/count/a"), (200, "a=5/5".into()));
}

/// Upgraded in place, a `sync` replica waits again for protection before
/// it answers: with no host for a standby, the scheduler has to grant it
/// "unprotected" anew (a second grant, after the upgrade), and it serves
/// on with its state.
#[test]
fn an_upgraded_sync_replica_answers_only_once_protected_again_or_granted_unprotected() {
    let c = eu_cluster();
    let events = subscribe(&c);
    let lone = |extra: &[&str]| {
        let mut args = vec![
            "deploy",
            artifacts::FAULTY,
            "--name",
            "lone",
            "--grant",
            "kv,timers,send",
            "--selector",
            "jurisdiction=US",
            "--durability",
            "sync",
            "--wait",
            "--timeout",
            "60s",
        ];
        args.extend(extra);
        let (ok, _, err) = c.roam(&args);
        assert!(ok, "{err}");
    };
    lone(&[]);
    event_of(&events, "unprotected", "lone");
    assert_eq!(c.invoke("lone", "/count/a"), (200, "a=1/1".into()));
    lone(&["--memory", "80MiB"]);
    let upgraded = event_of(&events, "replica_upgraded", "lone");
    assert!(upgraded.contains("\"revision\":2,"), "{upgraded}");
    let granted = event_of(&events, "unprotected", "lone");
    assert!(granted.contains("\"primary\":\"us-1\""), "{granted}");
    assert_eq!(c.invoke("lone", "/count/a"), (200, "a=2/2".into()));
}
