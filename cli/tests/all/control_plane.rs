//! The control plane's state in etcd (issue 19): a scheduler started with
//! `--store etcd=URL` keeps workloads, placements and tokens there, and a
//! scheduler restarted on the same etcd carries on with them.

use std::time::Duration;

use roam_proto::MigrationPhase as Phase;
use roam_proto::paths;
use roam_scheduler::store::testing::{Etcd, EtcdCluster};
use roam_tests::artifacts;

use crate::cluster::{Cluster, poll};
use crate::migrate::deploy;

#[test]
fn a_scheduler_on_etcd_keeps_its_state_there_across_a_restart() {
    let etcd = Etcd::start();
    let store = format!("etcd={}", etcd.url());
    let mut c = Cluster::start_with(&[("STORE", &store)]);
    c.add_host("eu-1", "eu-west-1", "EU");
    c.wait_ready(1);
    deploy(&c, &[artifacts::COUNTER, "--name", "counter"]);
    poll(Duration::from_secs(30), "counter to serve", || {
        c.invoke("counter", "/apples").0 == 200
    });
    assert!(
        !c.dir.path().join("scheduler/state.redb").exists(),
        "no embedded store beside etcd"
    );
    // What etcd itself holds, as its own client lists it.
    let out = etcdctl(&etcd.url(), &["get", "--prefix", "--keys-only", "/roam/"]);
    let keys = String::from_utf8_lossy(&out.stdout);
    for key in ["/roam/workloads/counter", "/roam/assignments/counter"] {
        assert!(keys.lines().any(|k| k == key), "{key} not in etcd: {keys}");
    }

    c.restart_scheduler();
    c.wait_ready(1);
    let (ok, out, err) = c.roam(&["get", "workloads"]);
    assert!(ok && out.contains("counter"), "{out}{err}");
    poll(Duration::from_secs(30), "counter to serve again", || {
        c.invoke("counter", "/apples").0 == 200
    });
}

/// Schedulers sharing one etcd, their hosts and a client that lists them
/// all.
struct Replicas {
    /// Each replica's URL and process (`None` once killed).
    schedulers: Vec<(String, Option<crate::cluster::Proc>)>,
    c: Cluster,
    etcd: EtcdCluster,
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Replicas {
    /// `n` schedulers on one etcd (lease TTL 2 s), the first started first
    /// (it creates the CA and the admin token).
    fn start(n: usize) -> Replicas {
        Replicas::start_on(n, EtcdCluster::start(1))
    }

    /// [`Replicas::start`] on the etcd cluster `etcd`.
    fn start_on(n: usize, etcd: EtcdCluster) -> Replicas {
        Replicas::start_with(n, etcd, &[])
    }

    /// [`Replicas::start_on`], the first replica with environment `first`.
    fn start_with(n: usize, etcd: EtcdCluster, first: &[(&str, &str)]) -> Replicas {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("etcd={}", etcd.urls());
        let mut schedulers = Vec::new();
        for i in 0..n {
            let listen = format!("127.0.0.1:{}", free_port());
            let data = dir.path().join(format!("scheduler-{i}"));
            let (p, url) = crate::cluster::spawn(
                &[
                    "scheduler",
                    "--listen",
                    &listen,
                    "--data-dir",
                    data.to_str().unwrap(),
                    "--heartbeat-timeout",
                    "3s",
                    "--heartbeat",
                    "200ms",
                    "--store",
                    &store,
                    "--leader-ttl",
                    "2s",
                ],
                if i == 0 { first } else { &[] },
            );
            schedulers.push((url, Some(p)));
        }
        let first = dir.path().join("scheduler-0");
        let admin = std::fs::read_to_string(first.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        let ca = first.join("ca.crt");
        let all: Vec<&str> = schedulers.iter().map(|(u, _)| u.as_str()).collect();
        let c = Cluster {
            agent: crate::cluster::agent_trusting(Some(&ca)),
            url: schedulers[0].0.clone(),
            replicas: Some(all.join(",")),
            dir,
            scheduler: None,
            admin,
            hosts: Vec::new(),
            scheduler_env: Vec::new(),
            ca: Some(ca),
            plaintext: false,
            program: vec![env!("CARGO_BIN_EXE_roam").to_string()],
        };
        let mut r = Replicas {
            schedulers,
            c,
            etcd,
        };
        r.point_at_leader();
        r
    }

    /// `GET /v1/schedulers` from replica `i`.
    fn view(&self, i: usize) -> Option<serde_json::Value> {
        let mut r = self
            .c
            .agent
            .get(paths::schedulers().on(&self.schedulers[i].0))
            .header("authorization", format!("Bearer {}", self.c.admin))
            // A paused replica accepts connections and answers nothing.
            .config()
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .call()
            .ok()?;
        if r.status() != 200 {
            return None;
        }
        serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()
    }

    /// The leader's URL as a live replica sees it, once one leads.
    fn leader(&self) -> Option<String> {
        (0..self.schedulers.len())
            .filter(|i| self.schedulers[*i].1.is_some())
            .find_map(|i| {
                let v = self.view(i)?;
                v["replicas"]
                    .as_array()?
                    .iter()
                    .find(|r| r["leader"] == true)
                    .and_then(|r| r["url"].as_str().map(str::to_string))
            })
    }

    /// Wait for a leader and send the test's own API calls to it.
    fn point_at_leader(&mut self) {
        let mut leader = None;
        poll(Duration::from_secs(30), "a scheduler to lead", || {
            leader = self.leader();
            leader.is_some()
        });
        self.c.url = leader.unwrap();
    }

    /// A replica that does not lead (as the test last saw).
    fn follower(&self) -> String {
        self.schedulers
            .iter()
            .map(|(u, _)| u.clone())
            .find(|u| *u != self.c.url)
            .unwrap()
    }

    /// SIGSTOP the leader the test points at, wait for another to lead,
    /// and point at that one; the paused one's pid (for SIGCONT).
    fn pause_leader(&mut self) -> i32 {
        let old = self.c.url.clone();
        let i = self.index_of(&old);
        let pid = self.schedulers[i].1.as_ref().unwrap().child.id() as i32;
        // SAFETY: a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        poll(
            Duration::from_secs(30),
            "the other scheduler to lead",
            || self.leader().is_some_and(|l| l != old),
        );
        self.point_at_leader();
        pid
    }

    fn index_of(&self, url: &str) -> usize {
        self.schedulers.iter().position(|(u, _)| u == url).unwrap()
    }
}

#[test]
fn three_schedulers_one_leads_and_another_takes_over_when_it_is_killed() {
    let mut r = Replicas::start(3);
    // One leader, two followers, all listed, the store healthy.
    let view = r.view(0).unwrap();
    let replicas = view["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{view}");
    assert_eq!(
        replicas.iter().filter(|x| x["leader"] == true).count(),
        1,
        "{view}"
    );
    assert_eq!(view["store_healthy"], true, "{view}");
    let (ok, out, err) = r.c.roam(&["get", "schedulers"]);
    assert!(
        ok && out.contains("leader") && out.contains("follower"),
        "{out}{err}"
    );

    // A follower forwards operator calls to the leader: a write (a viewer
    // token made through it), a read of what only the leader knows (the
    // hosts), answered as the leader answers.
    let follower = r.follower();
    let mut made =
        r.c.agent
            .post(paths::tokens().on(&follower))
            .header("authorization", format!("Bearer {}", r.c.admin))
            .header("content-type", "application/json")
            .send(r#"{"role":"viewer"}"#)
            .unwrap();
    assert_eq!(made.status(), 201);
    let made: serde_json::Value =
        serde_json::from_str(&made.body_mut().read_to_string().unwrap()).unwrap();
    let viewer = made["token"].as_str().unwrap().to_string();
    let nodes = |base: &str| {
        r.c.api_at(base, "GET", paths::nodes().as_str(), Some(&viewer))
    };
    let (status, via_follower, _) = nodes(&follower).unwrap();
    assert_eq!(status, 200, "{via_follower}");
    assert_eq!(via_follower, nodes(&r.c.url).unwrap().1);
    // The follower's copy of the tokens (an etcd watch) knows the new one:
    // it answers `GET /v1/schedulers` itself (never forwarded).
    poll(
        Duration::from_secs(10),
        "the follower to know the new token",
        || {
            r.c.api_at(
                &follower,
                "GET",
                paths::schedulers().as_str(),
                Some(&viewer),
            )
            .is_ok_and(|(status, _, _)| status == 200)
        },
    );
    // Hosts are sent to the leader: they present their own certificates,
    // which no proxy could.
    let heartbeat = paths::heartbeat("eu-1").unwrap();
    let (status, body, leader) =
        r.c.api_at(&follower, "POST", heartbeat.as_str(), None)
            .unwrap();
    assert_eq!(status, 421, "{body}");
    assert_eq!(leader.as_deref(), Some(r.c.url.as_str()));

    r.c.add_host("eu-1", "eu-west-1", "EU");
    r.c.add_host("eu-2", "eu-west-2", "EU");
    r.c.wait_ready(2);
    deploy(&r.c, &[artifacts::COUNTER, "--name", "counter"]);
    poll(Duration::from_secs(30), "counter to serve", || {
        r.c.invoke("counter", "/apples").0 == 200
    });
    let hosts_before = r.c.roam(&["get", "instances"]).1;

    // A client of the ingress through a follower, one request after
    // another, all through the leader's loss.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (agent, stop) = (r.c.agent.clone(), stop.clone());
        let url = paths::ingress("counter", "apples").unwrap().on(&follower);
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = agent.post(&url).send("").map(|mut a| {
                    (
                        a.status().as_u16(),
                        a.body_mut().read_to_string().unwrap_or_default(),
                    )
                });
                answers.push(answer.unwrap_or_else(|e| (0, e.to_string())));
            }
            answers
        })
    };
    // Kill the leader (SIGKILL: no resignation; its lease runs out).
    let old = r.c.url.clone();
    let i = r.index_of(&old);
    drop(r.schedulers[i].1.take());
    poll(Duration::from_secs(30), "another scheduler to lead", || {
        r.leader().is_some_and(|l| l != old)
    });
    r.point_at_leader();
    assert_ne!(r.c.url, old);
    r.c.wait_ready(2);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = client.join().unwrap();
    let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        answers.len()
    );
    // Each answered once, in order: none lost, none applied twice.
    let counts: Vec<u64> = answers
        .iter()
        .map(|(_, b)| {
            serde_json::from_str::<serde_json::Value>(b).unwrap()["count"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(counts.windows(2).all(|w| w[1] == w[0] + 1), "{counts:?}");
    eprintln!(
        "{} ingress requests through a follower while the leader was replaced",
        answers.len()
    );
    let (_, before) = r.c.invoke("counter", "/apples");
    // The hosts find the new leader, and nothing moved: the counter kept
    // its count on the host it ran on (no failover after the election).
    r.c.wait_ready(2);
    let (status, after) = r.c.invoke("counter", "/apples");
    assert_eq!(status, 200, "{after}");
    let n = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["count"].as_u64();
    assert_eq!(
        n(&after),
        n(&before).map(|b| b + 1),
        "before {before}, after {after}"
    );
    assert_eq!(r.c.roam(&["get", "instances"]).1, hosts_before);

    // The CLI, given every replica (the dead one first), reaches the
    // leader; a deploy through it is placed and served.
    deploy(&r.c, &[artifacts::COUNTER, "--name", "second"]);
    poll(
        Duration::from_secs(30),
        "the second workload to serve",
        || r.c.invoke("second", "/apples").0 == 200,
    );
}

#[test]
fn a_leader_paused_past_its_lease_is_deposed_and_follows_when_it_resumes() {
    let mut r = Replicas::start(2);
    r.c.add_host("eu-1", "eu-west-1", "EU");
    r.c.wait_ready(1);
    let old = r.c.url.clone();
    let i = r.index_of(&old);
    let pid = r.pause_leader();
    r.c.wait_ready(1);
    deploy(&r.c, &[artifacts::COUNTER, "--name", "counter"]);
    poll(Duration::from_secs(30), "counter to serve", || {
        r.c.invoke("counter", "/apples").0 == 200
    });
    // etcd's revision before the old leader resumes: its history from
    // there on is what the old leader could have written.
    let etcd = r.etcd.urls();
    let status = etcdctl(&etcd, &["get", "/roam/leader", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let resumed_at = status["header"]["revision"].as_i64().unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    // Resumed, it sees its lease gone and follows: it says the other
    // leads, sends hosts there, and forwards operator calls there (the
    // workload deployed while it was paused is listed).
    poll(Duration::from_secs(30), "the old leader to follow", || {
        r.view(i).is_some_and(|v| {
            v["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["leader"] == true && x["url"] == r.c.url.as_str())
        }) && r
            .c
            .api_at(&old, "POST", paths::join().as_str(), None)
            .is_ok_and(|(status, _, leader)| {
                status == 421 && leader.as_deref() == Some(r.c.url.as_str())
            })
            && r.c
                .api_at(&old, "GET", paths::workloads().as_str(), Some(&r.c.admin))
                .is_ok_and(|(status, body, _)| status == 200 && body.contains("counter"))
    });
    poll(Duration::from_secs(30), "counter to serve", || {
        r.c.invoke("counter", "/apples").0 == 200
    });
    // None of its writes landed: since it resumed, etcd's history holds
    // nothing but replicas' membership records (on their leases, no
    // leader's write). Every event from that revision on, read with a
    // watch (which `etcdctl` ends after a while).
    let from = format!("--rev={}", resumed_at + 1);
    let history = etcdctl(&etcd, &["watch", "--prefix", "/roam/", &from]);
    let history = String::from_utf8_lossy(&history.stdout);
    let lines: Vec<&str> = history.lines().collect();
    let written: Vec<&str> = lines
        .windows(2)
        .filter(|w| w[0] == "PUT" || w[0] == "DELETE")
        .map(|w| w[1])
        .filter(|key| !key.starts_with("/roam/schedulers/"))
        .collect();
    assert!(
        written.is_empty(),
        "written after the old leader resumed: {written:?}\n{history}"
    );
}

/// The console on a follower: its page, a sign-in there, and with the
/// session cookie alone the fleet and the event stream, both the leader's,
/// passed on by the follower; a change needs the session's CSRF token.
#[test]
fn a_follower_serves_the_console_and_passes_its_calls_and_events_on() {
    use std::io::BufRead;
    let mut r = Replicas::start(2);
    r.c.add_host("eu-1", "eu-west-1", "EU");
    r.c.wait_ready(1);
    let follower = r.follower();
    let page =
        r.c.agent
            .get(format!("{follower}{}", paths::scheduler::UI))
            .call()
            .unwrap();
    assert_eq!(page.status(), 200);
    let mut signed =
        r.c.agent
            .post(format!("{follower}{}", paths::scheduler::UI_SESSION))
            .header("authorization", format!("Bearer {}", r.c.admin))
            .send_empty()
            .unwrap();
    assert_eq!(signed.status(), 200);
    let set = signed.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Secure"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let session: serde_json::Value =
        serde_json::from_str(&signed.body_mut().read_to_string().unwrap()).unwrap();
    let csrf = session["csrf"].as_str().unwrap().to_string();
    for base in [&follower, &r.c.url] {
        let mut nodes =
            r.c.agent
                .get(paths::nodes().on(base))
                .header("cookie", &cookie)
                .call()
                .unwrap();
        assert_eq!(nodes.status(), 200, "{base}");
        assert!(nodes.body_mut().read_to_string().unwrap().contains("eu-1"));
    }
    // The leader's event stream, through the follower, with the cookie.
    let events =
        r.c.agent
            .get(paths::events().on(&follower))
            .header("cookie", &cookie)
            .config()
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .call()
            .unwrap();
    assert_eq!(events.status(), 200);
    // A change through the follower: refused without the CSRF token,
    // done with it; the stream shows it.
    let cordon = paths::node_action("eu-1", paths::NodeAction::Cordon)
        .unwrap()
        .on(&follower);
    let without =
        r.c.agent
            .post(&cordon)
            .header("cookie", &cookie)
            .send_empty()
            .unwrap();
    assert_eq!(without.status(), 403);
    let with =
        r.c.agent
            .post(&cordon)
            .header("cookie", &cookie)
            .header(roam_proto::headers::CSRF, &csrf)
            .send_empty()
            .unwrap();
    assert!(with.status().is_success(), "{}", with.status());
    crate::migrate::deploy(&r.c, &[artifacts::COUNTER, "--name", "seen"]);
    let mut lines = std::io::BufReader::new(events.into_body().into_reader()).lines();
    let deployed = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("data:") && l.contains("workload_deployed"));
    assert!(deployed.is_some_and(|l| l.contains("seen")));
}

/// A call the leader had decided on just before it was paused reaches a
/// host after another leader took over: the host refuses it (and logs
/// it), and nothing the call asked for happens. The host rejoined the new
/// leader, so the old leader's host secret is refused first; its older
/// term would be next (`host/src/access.rs`).
#[test]
fn a_call_a_deposed_leader_sends_when_it_resumes_is_refused_by_the_host() {
    // The first replica (it leads) waits 3 s between reading its term and
    // each call to a host: a window to pause it in.
    let mut r = Replicas::start_with(
        2,
        EtcdCluster::start(1),
        &[("ROAM_FAULT_HOST_CALL_DELAY_MS", "3000")],
    );
    let old = r.c.url.clone();
    assert_eq!(r.index_of(&old), 0, "the first replica started leads");
    r.c.add_host("eu-1", "eu-west-1", "EU");
    r.c.add_host("eu-2", "eu-central-1", "EU");
    r.c.wait_ready(2);
    crate::migrate::deploy_eu_counter(&r.c);
    assert_eq!(r.c.invoke("counter", "/apples").0, 200);
    let source = crate::migrate::host_of(&r.c, "counter");
    let target = crate::migrate::other_eu(&source);
    let id = crate::migrate::start_migration(&r.c, "counter", target);
    // The target is prepared; the call that starts the transfer on the
    // source has its term and waits: pause the leader there.
    crate::migrate::wait_phase(&r.c, &id, &[Phase::Precopy.as_str()]);
    let pid = r.pause_leader();
    // The new leader finds the migration in flight and ends it, calling
    // both hosts in its own term.
    let m = crate::migrate::wait_phase(
        &r.c,
        &id,
        &[Phase::Done, Phase::Failed, Phase::Aborted].map(Phase::as_str),
    );
    assert_ne!(m["phase"], Phase::Done.as_str(), "{m}");
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    // Resumed, the old leader sends the call it had started: the source
    // refuses it.
    let refusal = "refused a control call from a deposed scheduler leader";
    let source_log = |needle: &str| {
        let (_, p) = r.c.hosts.iter().find(|(n, _)| *n == source).unwrap();
        p.logged(needle)
    };
    poll(
        Duration::from_secs(30),
        "the source to refuse the old leader's call",
        || !source_log(refusal).is_empty(),
    );
    let refused = source_log(refusal);
    let send = paths::migration_step(&id, paths::MigrationStep::Send).unwrap();
    assert!(
        refused.len() == 1 && refused[0].contains(send.as_str()),
        "{refused:?}"
    );
    // Nothing moved: one copy, still on the source, serving.
    poll(Duration::from_secs(30), "one copy", || {
        crate::migrate::copies(&r.c, "counter").len() == 1
    });
    assert_eq!(crate::migrate::host_of(&r.c, "counter"), source);
    assert_eq!(r.c.invoke("counter", "/apples").0, 200);
}

#[test]
fn killing_the_leader_mid_transfer_under_load_aborts_the_migration_cleanly() {
    let m = kill_the_leader_mid_migration(&[], Phase::Precopy);
    assert_eq!(m["phase"], Phase::Aborted.as_str(), "{m}");
}

#[test]
fn killing_the_leader_after_the_source_froze_completes_the_migration() {
    let m =
        kill_the_leader_mid_migration(&[("ROAM_FAULT_COMMIT_DELAY_MS", "1500")], Phase::Prepared);
    assert_eq!(m["phase"], Phase::Done.as_str(), "{m}");
}

/// A counter migrating between two slowed-down hosts (more host hooks in
/// `host_env`) under load through a follower; the leader killed once the
/// migration reached `phase`. Checks that it ended, with nothing
/// acknowledged lost or doubled and one copy where it says; returns it.
fn kill_the_leader_mid_migration(host_env: &[(&str, &str)], phase: Phase) -> serde_json::Value {
    let mut r = Replicas::start(3);
    let mut slow = vec![("ROAM_FAULT_ROUND_DELAY_MS", "400")];
    slow.extend_from_slice(host_env);
    r.c.add_host_with("eu-1", "eu-west-1", "EU", &[], &slow);
    r.c.add_host_with("eu-2", "eu-central-1", "EU", &[], &slow);
    r.c.wait_ready(2);
    crate::migrate::deploy_eu_counter(&r.c);
    let leader = r.c.url.clone();
    // The test's load and its own calls go through a follower.
    r.c.url = r.follower();
    let source = crate::migrate::host_of(&r.c, "counter");
    let target = crate::migrate::other_eu(&source);
    let load = crate::migrate::Load::start(&r.c, "counter", 2);
    let id = crate::migrate::start_migration(&r.c, "counter", target);
    crate::migrate::wait_phase(&r.c, &id, &[phase.as_str()]);
    let i = r.index_of(&leader);
    drop(r.schedulers[i].1.take());
    // The new leader asks the hosts where the migration got to and ends it
    // one way or the other.
    let m = crate::migrate::wait_phase(
        &r.c,
        &id,
        &[Phase::Done, Phase::Failed, Phase::Aborted].map(Phase::as_str),
    );
    eprintln!("the migration ended {}: {m}", m["phase"]);
    load.check(&r.c, "counter");
    poll(Duration::from_secs(30), "one copy", || {
        crate::migrate::copies(&r.c, "counter").len() == 1
    });
    let expected = if m["phase"] == Phase::Done.as_str() {
        target.to_string()
    } else {
        source
    };
    assert_eq!(crate::migrate::host_of(&r.c, "counter"), expected);
    m
}

#[test]
fn every_deploy_acknowledged_while_the_leader_is_killed_exists() {
    let mut r = Replicas::start(2);
    r.c.add_host("eu-1", "eu-west-1", "EU");
    r.c.wait_ready(1);
    let leader = r.c.url.clone();
    let replicas = r.c.replicas.clone().unwrap();
    let (admin, ca) = (r.c.admin.clone(), r.c.ca.clone().unwrap());
    let examples = std::path::Path::new(artifacts::COUNTER)
        .parent()
        .unwrap()
        .to_path_buf();
    // Deploys one after another from the CLI (given both replicas); the
    // leader is killed in the middle of them.
    let burst = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for n in 0..30 {
            let name = format!("w{n}");
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_roam"))
                .args(["deploy", artifacts::COUNTER, "--name", &name])
                .env("ROAM_EXAMPLES_DIR", &examples)
                .env("ROAM_ADDR", &replicas)
                .env("ROAM_TOKEN", &admin)
                .env("ROAM_CA", &ca)
                .output()
                .unwrap();
            if out.status.success() {
                acked.push(name);
            } else {
                eprintln!("deploy {name}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        acked
    });
    poll(Duration::from_secs(60), "a few deploys", || {
        let (status, body) =
            r.c.api("GET", paths::workloads().as_str(), Some(&r.c.admin));
        status == 200 && body.matches("\"name\"").count() >= 5
    });
    let i = r.index_of(&leader);
    drop(r.schedulers[i].1.take());
    let acked = burst.join().unwrap();
    r.point_at_leader();
    let (status, body) =
        r.c.api("GET", paths::workloads().as_str(), Some(&r.c.admin));
    assert_eq!(status, 200, "{body}");
    let all: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["spec"]["name"].as_str().unwrap())
        .collect();
    for name in &acked {
        assert_eq!(
            names.iter().filter(|n| *n == name).count(),
            1,
            "acknowledged deploy {name} is not there once: {names:?}"
        );
    }
    // The CLI waits out the election (a follower's 421 names no leader
    // until the dead one's lease ends): every deploy went through, but for
    // the one the leader may have been handling when it died (its client
    // cannot know whether it was applied, and says it failed).
    assert!(acked.len() >= 29, "{acked:?}");
}

#[test]
fn losing_one_etcd_member_of_three_changes_nothing_and_losing_etcd_keeps_workloads_served() {
    let mut r = Replicas::start_on(2, EtcdCluster::start(3));
    r.c.add_host("eu-1", "eu-west-1", "EU");
    r.c.wait_ready(1);
    deploy(&r.c, &[artifacts::COUNTER, "--name", "counter"]);
    let follower = r.follower();
    let through_to = |base: &str, workload: &str| {
        r.c.agent
            .post(paths::ingress(workload, "a").unwrap().on(base))
            .send("")
            .map(|a| a.status().as_u16())
            .unwrap_or(0)
    };
    let through = |base: &str| through_to(base, "counter");
    poll(Duration::from_secs(30), "counter to serve", || {
        through(&follower) == 200
    });
    let leader = r.c.url.clone();

    // One member of three gone: the same leader, writes go through, the
    // store still healthy.
    r.etcd.members[0].as_mut().unwrap().kill();
    deploy(&r.c, &[artifacts::COUNTER, "--name", "second"]);
    // Through the follower's ingress: its copy of the store has `second`.
    poll(Duration::from_secs(30), "second to serve", || {
        through_to(&follower, "second") == 200 && r.c.invoke("second", "/a").0 == 200
    });
    poll(Duration::from_secs(10), "the same leader", || {
        r.leader().as_deref() == Some(leader.as_str())
    });

    // Quorum lost: nobody can lead. The API refuses writes and says why,
    // every replica still answers reads of the stored state from its copy
    // (and says so), the hosts serve on, and every replica's ingress keeps
    // routing from the last state it read.
    r.etcd.members[1].as_mut().unwrap().kill();
    let cordon = paths::node_action("eu-1", paths::NodeAction::Cordon).unwrap();
    let mut answer = (0, String::new());
    poll(Duration::from_secs(30), "the leader to step down", || {
        let a =
            r.c.api_at(&leader, "POST", cordon.as_str(), Some(&r.c.admin))
                .unwrap();
        answer = (a.0, a.1);
        answer.0 == 421
    });
    assert!(
        answer.1.contains("no scheduler replica leads"),
        "{}",
        answer.1
    );
    for base in [&leader, &follower] {
        let mut a =
            r.c.agent
                .get(paths::workloads().on(base))
                .header("authorization", format!("Bearer {}", r.c.admin))
                .call()
                .unwrap();
        assert_eq!(a.status(), 200);
        assert!(a.headers().contains_key(roam_proto::headers::FROM_CACHE));
        let body = a.body_mut().read_to_string().unwrap();
        assert!(
            body.contains("counter") && body.contains("second"),
            "{base}: {body}"
        );
    }
    for _ in 0..20 {
        assert_eq!(through(&follower), 200);
        assert_eq!(through(&leader), 200);
    }
}

#[test]
fn a_leader_whose_key_is_deleted_steps_down_and_a_new_term_begins() {
    let r = Replicas::start(2);
    let term = |r: &Replicas| {
        (0..2).find_map(|i| {
            let v = r.view(i)?;
            v["replicas"]
                .as_array()?
                .iter()
                .find_map(|x| x["term"].as_u64())
        })
    };
    let first = term(&r).unwrap();
    let etcd = r.etcd.urls();
    let out = etcdctl(&etcd, &["del", "/roam/leader"]);
    assert!(out.status.success(), "{out:?}");
    // Whoever leads next does so in a newer term, and writes go through.
    poll(Duration::from_secs(30), "a newer term", || {
        term(&r).is_some_and(|t| t > first)
    });
    // Until the deposed replica's next leadership round (a sixth of the
    // TTL) it may still take a call: its write is refused by etcd, never
    // applied. Then writes go to the new leader.
    let mut last = String::new();
    poll(Duration::from_secs(10), "a write to go through", || {
        let (ok, _, err) = r.c.roam(&["token", "create", "--role", "viewer"]);
        if !ok {
            assert!(err.contains("has ended"), "{err}");
            last = err;
        }
        ok
    });
    eprintln!("refused meanwhile: {last}");
}

#[test]
fn a_drain_the_leader_dies_in_goes_on_under_the_next_leader() {
    let mut r = Replicas::start(2);
    let slow = [("ROAM_FAULT_ROUND_DELAY_MS", "300")];
    r.c.add_host_with("eu-1", "eu-west-1", "EU", &[], &slow);
    r.c.wait_ready(1);
    let names = ["a", "b", "c"];
    for name in names {
        deploy(
            &r.c,
            &[
                artifacts::COUNTER,
                "--name",
                name,
                "--selector",
                "jurisdiction=EU",
            ],
        );
    }
    poll(Duration::from_secs(60), "the counters to serve", || {
        names.iter().all(|n| r.c.get(n, "/").0 == 200)
    });
    for name in names {
        assert_eq!(r.c.invoke(name, "/x").1, r#"{"path":"/x","count":1}"#);
    }
    r.c.add_host_with("eu-2", "eu-central-1", "EU", &[], &slow);
    r.c.wait_ready(2);
    let leader = r.c.url.clone();
    let i = r.index_of(&leader);
    let (c, schedulers) = (&r.c, &mut r.schedulers);
    let (ok, out, err) = std::thread::scope(|scope| {
        // `roam drain` from the CLI, given both replicas; the leader is
        // killed once it has moved one workload.
        let drain = scope.spawn(|| c.roam(&["drain", "eu-1", "-o", "json"]));
        poll(Duration::from_secs(60), "a first move", || {
            let done = format!("\"{}\"", Phase::Done.as_str());
            c.api_at(&leader, "GET", paths::migrations().as_str(), Some(&c.admin))
                .is_ok_and(|(status, body, _)| status == 200 && body.contains(&done))
        });
        drop(schedulers[i].1.take());
        drain.join().unwrap()
    });
    // The CLI's request died with the leader; asked again, the new leader
    // answers with the drain it went on with.
    assert!(ok, "{out}{err}");
    r.point_at_leader();
    poll(Duration::from_secs(60), "eu-1 to be empty", || {
        names
            .iter()
            .all(|n| crate::migrate::copies(&r.c, n) == ["eu-2"])
    });
    // Live moves: every counter kept its count.
    for name in names {
        assert_eq!(r.c.invoke(name, "/x").1, r#"{"path":"/x","count":2}"#);
    }
    let nodes = r.c.nodes();
    let eu1 = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "eu-1")
        .unwrap();
    assert_eq!(eu1["status"], "cordoned", "{eu1}");
}

/// `etcdctl` (Debian `etcd-client`) against `endpoints`, run to its end;
/// under `timeout 3`, which ends a `watch` once it has printed the
/// history asked for.
fn etcdctl(endpoints: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("timeout")
        .args(["3", "etcdctl", "--endpoints", endpoints])
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .expect("etcdctl (Debian `etcd-client`)")
}
