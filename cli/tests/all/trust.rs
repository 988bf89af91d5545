//! A rogue host, tried as an attacker would: with a real join token and a
//! real certificate of its own, against real daemons over TLS.

use std::time::Duration;

use roam_tls::Identity;
use roam_tls::ca::new_request;

use crate::cluster::{Cluster, eu_cluster, poll, subscribe, wait_event};
use crate::migrate::deploy_counter;

/// What a host gets from a join of its own making: the host secret and its
/// certificate chain and key (PEM).
struct Joined {
    status: u16,
    body: String,
    chain: String,
    key: String,
}

/// Join as `name` with `token`, reporting `instances`, as a hand-written
/// host would (a real signing request for a key made here).
fn join(c: &Cluster, name: &str, token: &str, instances: serde_json::Value) -> Joined {
    let (key, csr) = new_request(&Identity::host(name).unwrap()).unwrap();
    let body = serde_json::json!({
        "protocol": roam_proto::PROTOCOL_VERSION,
        "name": name,
        "url": "https://127.0.0.1:9",
        "labels": {},
        "capacity": { "memory": 1u64 << 40, "slots": 1000 },
        "arch": std::env::consts::ARCH,
        "engine": "x",
        "instances": instances,
        "csr": csr,
    });
    let mut r = c
        .agent
        .post(format!("{}/v1/hosts/join", c.url))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap();
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_string().unwrap();
    let chain = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["certificate"].as_str().map(String::from))
        .unwrap_or_default();
    Joined {
        status,
        body,
        chain,
        key,
    }
}

/// The issue's attack: a host holding a valid US join token joins claiming
/// the EU workload `counter` at a high generation. It gets a certificate
/// (it is a US host), but not the workload: the scheduler places only what
/// its records say, stops the claimed copy with the reason as an event, and
/// the EU replica keeps serving with its state.
#[test]
fn a_host_with_a_us_token_cannot_claim_an_eu_workload() {
    let c = eu_cluster();
    deploy_counter(&c, "jurisdiction=EU");
    assert_eq!(
        c.invoke("counter", "/apples").1,
        r#"{"path":"/apples","count":1}"#
    );
    let events = subscribe(&c);
    let us = c.join_token(&[("site", "us-east-1"), ("jurisdiction", "US")]);
    let digest = c.roam(&["get", "workloads", "-o", "json"]).1;
    let digest: serde_json::Value = serde_json::from_str(&digest).unwrap();
    let digest = digest[0]["spec"]["digest"].as_str().unwrap().to_string();
    let claim = serde_json::json!([{
        "workload": "counter", "digest": digest, "memory": 1 << 20, "generation": 1000
    }]);
    let evil = join(&c, "evil-host", &us, claim);
    assert_eq!(evil.status, 200, "{}", evil.body);
    let refused = wait_event(&events, "instance_refused");
    assert!(
        refused.contains("evil-host") && refused.contains("counter"),
        "{refused}"
    );
    let (_, instances) = c.api("GET", "/v1/instances", Some(&c.admin));
    assert!(!instances.contains("evil-host"), "{instances}");
    // The EU replica serves on, with its state.
    assert_eq!(
        c.invoke("counter", "/apples").1,
        r#"{"path":"/apples","count":2}"#
    );
    let (_, instances) = c.api("GET", "/v1/instances", Some(&c.admin));
    assert!(instances.contains("eu-"), "{instances}");
}

/// Host A, with its own valid certificate, cannot speak for host B: not
/// heartbeat as B, not take B's name while B is alive, not renew B's
/// certificate, not relay messages for workloads placed elsewhere, and not
/// call a host's control API (that is the scheduler's). Without a
/// certificate, nothing meant for hosts is let in.
#[test]
fn a_host_cannot_speak_for_another_or_act_as_the_scheduler() {
    let c = eu_cluster();
    deploy_counter(&c, "jurisdiction=EU");
    let eu = c.join_token(&[("site", "eu-west-1"), ("jurisdiction", "EU")]);
    let mallory = join(&c, "mallory", &eu, serde_json::json!([]));
    assert_eq!(mallory.status, 200, "{}", mallory.body);
    let as_mallory = c.agent_as(&mallory.chain, &mallory.key, true);
    let post = |agent: &ureq::Agent, path: &str, body: &str| {
        let mut r = agent
            .post(format!("{}{path}", c.url))
            .header("content-type", "application/json")
            .send(body.to_string())
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let beat = r#"{"capacity":{"memory":1,"slots":1},"memory_used":0,"instances":[]}"#;
    let (status, body) = post(&as_mallory, "/v1/hosts/eu-1/heartbeat", beat);
    assert_eq!(status, 403, "{body}");
    // Its own heartbeat is fine.
    assert_eq!(
        post(&as_mallory, "/v1/hosts/mallory/heartbeat", beat).0,
        204
    );
    // Without a certificate, not even that.
    assert_eq!(post(&c.agent, "/v1/hosts/mallory/heartbeat", beat).0, 401);
    let (status, body) = post(&as_mallory, "/v1/hosts/eu-1/certificate", r#"{"csr":""}"#);
    assert_eq!(status, 403, "{body}");
    // A token join under a live host's name is refused.
    let again = join(&c, "eu-1", &eu, serde_json::json!([]));
    assert_eq!(again.status, 409, "{}", again.body);
    // Messages only from workloads placed on mallory.
    let (status, body) = post(&as_mallory, "/v1/messages/counter?from=counter", "hi");
    assert_eq!(status, 403, "{body}");
    assert_eq!(post(&c.agent, "/v1/messages/counter?from=x", "hi").0, 401);
    // A host's control API is the scheduler's: mallory's certificate (or
    // none) is refused before the host secret is even looked at.
    let nodes = c.nodes();
    let eu1 = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "eu-1")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let direct = c.agent_as(&mallory.chain, &mallory.key, false);
    let mut r = direct
        .delete(format!("{eu1}/v1/instances/counter"))
        .call()
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    assert_eq!(c.get("counter", "/").0, 200, "counter still serves");
}

/// A host checks the scheduler's CA against the hash its token carries
/// before it sends the token anywhere: a wrong hash, or none, and it does
/// not join.
#[test]
fn a_host_joins_only_the_scheduler_its_token_pins() {
    let c = Cluster::start_with(&[]);
    let token = c.join_token(&[("site", "eu-west-1"), ("jurisdiction", "EU")]);
    let (secret, _) = token.split_once('.').unwrap();
    for (bad, says) in [
        (
            format!("{secret}.{}", "ab".repeat(32)),
            "holding the CA the join token pins",
        ),
        (secret.to_string(), "carries no CA hash"),
    ] {
        let dir = c.dir.path().join(format!("h-{}", bad.len()));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_roam"))
            .args(["host", "--join", &c.url, "--name", "pinned"])
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .env("ROAM_JOIN_TOKEN", &bad)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
    poll(Duration::from_secs(1), "nothing joined", || {
        c.nodes() == serde_json::json!([])
    });
}

/// Join tokens run out and can be revoked; a viewer reads without seeing
/// environment values and cannot change anything; `roam token list` never
/// shows a token.
#[test]
fn tokens_run_out_are_revoked_and_viewers_see_no_secrets() {
    let c = Cluster::start_with(&[]);
    let create = |body| c.create_token(body);
    let (once, once_id) = create(serde_json::json!({
        "labels": { "site": "eu-west-1", "jurisdiction": "EU" }, "uses": 1
    }));
    assert_eq!(join(&c, "first", &once, serde_json::json!([])).status, 200);
    let second = join(&c, "second", &once, serde_json::json!([]));
    assert_eq!(second.status, 401, "{}", second.body);
    assert!(second.body.contains("used up"), "{}", second.body);
    let (ok, listed, _) = c.roam(&["token", "list", "-o", "json"]);
    assert!(ok);
    assert!(!listed.contains(&once), "the list never shows a token");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == once_id.as_str())
        .unwrap();
    assert_eq!(entry["uses_left"], 0, "{entry}");
    assert_eq!(entry["role"], "join");

    // Revoked: refused from then on.
    let (fresh, fresh_id) = create(serde_json::json!({
        "labels": { "site": "eu-west-1", "jurisdiction": "EU" }
    }));
    let (ok, _, err) = c.roam(&["token", "revoke", &fresh_id]);
    assert!(ok, "{err}");
    assert_eq!(join(&c, "third", &fresh, serde_json::json!([])).status, 401);

    // A viewer.
    let (viewer, _) = create(serde_json::json!({ "role": "viewer" }));
    let (status, _) = c.api("GET", "/v1/nodes", Some(&viewer));
    assert_eq!(status, 200);
    let (status, body) = c.api("POST", "/v1/nodes/first/cordon", Some(&viewer));
    assert_eq!(status, 403, "{body}");
    let (ok, _, err) = c.roam(&[
        "deploy",
        roam_tests::artifacts::COUNTER,
        "--name",
        "counter",
        "--env",
        "API_KEY=hunter2",
    ]);
    assert!(ok, "{err}");
    let (status, body) = c.api("GET", "/v1/workloads/counter", Some(&viewer));
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("hunter2") && body.contains("API_KEY"),
        "{body}"
    );
    let (_, body) = c.api("GET", "/v1/workloads/counter", Some(&c.admin));
    assert!(body.contains("hunter2"), "an operator sees it: {body}");
    // The last admin token stays.
    let (_, listed, _) = c.roam(&["token", "list", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let admin_id = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "admin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, _, err) = c.roam(&["token", "revoke", &admin_id]);
    assert!(!ok && err.contains("last admin token"), "{err}");
}

/// The issue's first attack: a guest granted only `send` picks its message's
/// destination, and tries to steer its host's relay at the scheduler's
/// control API. Every destination becomes one encoded path segment on the
/// message route (or is refused before anything is sent), so nothing but a
/// refused or undelivered message comes of it: no host joins, nothing is
/// placed anywhere new, and a real message still arrives.
#[test]
fn a_guest_cannot_steer_its_hosts_relay_at_the_scheduler() {
    let c = eu_cluster();
    let events = subscribe(&c);
    for (name, module, site, grant) in [
        (
            "sensor-aggregator",
            roam_tests::artifacts::SENSOR_AGGREGATOR,
            "eu-west-1",
            None,
        ),
        (
            "sensor-probe",
            roam_tests::artifacts::SENSOR_PROBE,
            "eu-central-1",
            Some("send"),
        ),
    ] {
        let selector = format!("site={site}");
        let mut args = vec!["deploy", module, "--name", name, "--selector", &selector];
        if let Some(g) = grant {
            args.extend(["--grant", g]);
        }
        let (ok, _, err) = c.roam(&args);
        assert!(ok, "{err}");
    }
    poll(Duration::from_secs(30), "both to serve", || {
        c.get("sensor-aggregator", "/sensors").0 == 200
            && c.get("sensor-probe", "/").1.contains("try POST /read")
    });
    let before = c.nodes();
    for to in [
        "../hosts/join",
        "../../v1/hosts/join",
        "x/../../hosts/join",
        "..",
        ".",
        "",
        "victim?from=sensor-aggregator",
        "%2e%2e/hosts/join",
        "/v1/tokens",
    ] {
        let (status, body) = c.invoke("sensor-probe", &format!("/read?sensor=t1&value=1&to={to}"));
        // The send is taken (and later not delivered) or refused at once.
        assert!(status == 202 || status == 503, "to `{to}`: {status} {body}");
    }
    // A real message after them still arrives.
    let (status, body) = c.invoke("sensor-probe", "/read?sensor=t9&value=5");
    assert_eq!(status, 202, "{body}");
    poll(Duration::from_secs(10), "the real message", || {
        c.get("sensor-aggregator", "/sensors/t9")
            .1
            .contains("\"n\":1")
    });
    let after = c.nodes();
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&before), names(&after), "no host joined");
    let (_, tokens) = c.api("GET", "/v1/tokens", Some(&c.admin));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&tokens)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        4,
        "only the admin token and the three hosts' join tokens: {tokens}"
    );
    while let Ok(event) = events.try_recv() {
        assert!(
            !event.contains("host_joined")
                || ["eu-1", "eu-2", "us-1"].iter().any(|h| event.contains(h)),
            "{event}"
        );
    }
}

/// `roam node revoke`: the host's certificate is refused by the scheduler
/// (on a connection it already had open too) and by the other hosts, its
/// name cannot join again, its workload starts on another host, and the
/// revoked host, told so, stops its copy.
#[test]
fn a_revoked_host_is_refused_everywhere_and_its_workload_moves() {
    let c = eu_cluster();
    deploy_counter(&c, "jurisdiction=EU");
    let victim = crate::migrate::host_of(&c, "counter");
    let survivor = if victim == "eu-1" { "eu-2" } else { "eu-1" };
    let tls = c.dir.path().join(&victim).join("tls");
    let chain = std::fs::read_to_string(tls.join("host.crt")).unwrap();
    let key = std::fs::read_to_string(tls.join("host.key")).unwrap();
    let victim_url = c.url_of(&victim);
    let survivor_url = c.url_of(survivor);
    // The victim's certificate, before: the scheduler takes its heartbeat,
    // the survivor answers its migration stream call (with a refusal of
    // the migration, not of the certificate).
    let to_scheduler = c.agent_as(&chain, &key, true);
    let to_host = c.agent_as(&chain, &key, false);
    let heartbeat = format!("{}/v1/hosts/{victim}/heartbeat", c.url);
    let beat = r#"{"capacity":{"memory":1073741824,"slots":8},"memory_used":0,"instances":[]}"#;
    let status = |r: Result<ureq::http::Response<ureq::Body>, ureq::Error>| {
        r.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
    };
    let stream = format!("{survivor_url}/v1/migrations/m1/activate");
    assert_eq!(status(to_scheduler.post(&heartbeat).send(beat)), Ok(204));
    let before = status(to_host.post(&stream).send(""));
    assert!(before.is_ok(), "{before:?}");

    let events = subscribe(&c);
    let (ok, out, err) = c.roam(&["node", "revoke", &victim]);
    assert!(ok, "{err}");
    assert!(out.contains("revoked") && out.contains("counter"), "{out}");
    wait_event(&events, "host_revoked");

    // Refused by the scheduler, on the connection it already had open
    // and on a new one.
    assert_eq!(status(to_scheduler.post(&heartbeat).send(beat)), Ok(401));
    let fresh = c.agent_as(&chain, &key, true);
    assert!(status(fresh.post(&heartbeat).send(beat)).is_err());
    // Refused by the survivor, which was pushed the list.
    poll(Duration::from_secs(20), "the survivor to refuse", || {
        status(c.agent_as(&chain, &key, false).post(&stream).send("")).is_err()
    });
    // The name cannot join again, even with a fresh token of its labels.
    let eu = c.join_token(&[("site", "eu-west-1"), ("jurisdiction", "EU")]);
    let again = join(&c, &victim, &eu, serde_json::json!([]));
    assert_eq!(again.status, 403, "{}", again.body);
    assert!(again.body.contains("revoked"), "{}", again.body);
    // The workload starts on the other EU host, and the revoked host,
    // told of its revocation, stopped its copy.
    poll(Duration::from_secs(30), "counter to run elsewhere", || {
        c.invoke("counter", "/apples").0 == 200
    });
    assert_eq!(crate::migrate::host_of(&c, "counter"), survivor);
    assert!(!c.nodes().to_string().contains(&format!("\"{victim}\"")));
    // (Its ingress as any client sees it: no certificate, and the
    // address dialled is not a name its certificate carries.)
    let ingress = crate::cluster::unverified_agent(None);
    poll(Duration::from_secs(20), "the revoked host to stop", || {
        ingress
            .get(format!("{victim_url}/w/counter/apples"))
            .call()
            .is_ok_and(|r| r.status() == 404)
    });
}

/// A replica whose host no longer meets its workload's rules (here the
/// workload's selector changed) is moved live to a host that does: the
/// reconciler does it, and the workload keeps its state.
#[test]
fn a_replica_that_breaks_its_rules_moves_live_with_its_state() {
    let c = eu_cluster();
    crate::migrate::deploy(
        &c,
        &[
            roam_tests::artifacts::COUNTER,
            "--name",
            "counter",
            "--selector",
            "site=eu-west-1",
        ],
    );
    poll(Duration::from_secs(30), "counter to serve", || {
        c.invoke("counter", "/a").0 == 200
    });
    assert_eq!(c.invoke("counter", "/a").1, r#"{"path":"/a","count":2}"#);
    let events = subscribe(&c);
    crate::migrate::deploy(
        &c,
        &[
            roam_tests::artifacts::COUNTER,
            "--name",
            "counter",
            "--selector",
            "site=eu-central-1",
        ],
    );
    let moved = wait_event(&events, "replica_moved");
    assert!(
        moved.contains("migrated") && moved.contains("eu-1"),
        "{moved}"
    );
    assert_eq!(crate::migrate::host_of(&c, "counter"), "eu-2");
    assert_eq!(c.invoke("counter", "/a").1, r#"{"path":"/a","count":3}"#);
}

/// Heartbeats with nothing new go as liveness datagrams, and a datagram
/// speaks for the one host whose key signed it, once: real hosts stay
/// ready on datagrams alone (full reports are rare), while a rogue host's
/// replayed or re-signed datagrams are refused, its own keep only itself
/// alive, and once it is counted down a datagram does not bring it back —
/// it is asked for its full report instead.
#[test]
fn a_liveness_datagram_speaks_for_its_own_host_once_and_only_under_its_key() {
    use roam_proto::liveness::{Datagram, KEY_LEN, Kind, key_from_hex};

    let c = eu_cluster();
    let metrics = || {
        let (status, body) = c.api("GET", "/metrics", Some(crate::cluster::SCRAPE));
        assert_eq!(status, 200, "{body}");
        body
    };
    let count = |series: &str| crate::observe::sample(&metrics(), series).unwrap_or(0.0);
    let datagrams = r#"roam_heartbeats_total{via="datagram"}"#;
    let reports = r#"roam_heartbeats_total{via="report"}"#;
    let refused = "roam_liveness_datagrams_refused_total";
    // Three real hosts beating every 200 ms with nothing to report: well
    // over a heartbeat timeout (1 s) of datagrams, the hosts ready, and
    // fewer full reports than datagrams over the same span.
    let (d0, r0) = (count(datagrams), count(reports));
    poll(Duration::from_secs(30), "60 datagrams", || {
        count(datagrams) >= d0 + 60.0
    });
    let (d1, r1) = (count(datagrams), count(reports));
    assert!(
        r1 - r0 < (d1 - d0) / 2.0,
        "reports {r0}→{r1}, datagrams {d0}→{d1}"
    );
    for n in c.nodes().as_array().unwrap() {
        assert_eq!(n["status"], "ready", "{n}");
    }

    // Mallory joins with a real token and gets its own id and key.
    let eu = c.join_token(&[("site", "eu-west-1"), ("jurisdiction", "EU")]);
    let mallory = join(&c, "mallory", &eu, serde_json::json!([]));
    assert_eq!(mallory.status, 200, "{}", mallory.body);
    let grant: roam_proto::JoinResponse = serde_json::from_str(&mallory.body).unwrap();
    let grant = grant.liveness.expect("a liveness grant in the join answer");
    let key = key_from_hex(&grant.key).unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let api: std::net::SocketAddr = c.url.trim_start_matches("https://").parse().unwrap();
    socket.connect(api).unwrap();
    let beat = |counter: u64, key: &[u8; KEY_LEN]| {
        Datagram {
            kind: Kind::Beat,
            id: grant.id,
            counter,
        }
        .seal(key)
    };
    let answer = |counter: u64| {
        let mut buf = [0u8; 128];
        loop {
            let n = socket.recv(&mut buf).expect("an answer to the beat");
            let a = Datagram::open(&buf[..n], &key).expect("an answer under mallory's key");
            if a.counter == counter {
                return a.kind;
            }
        }
    };
    socket.send(&beat(1, &key)).unwrap();
    assert_eq!(answer(1), Kind::Ack);
    // The same datagram again (a replay), and a newer one signed with
    // another key: both refused, neither answered.
    let before = count(refused);
    socket.send(&beat(1, &key)).unwrap();
    socket.send(&beat(2, &[0x55; KEY_LEN])).unwrap();
    poll(Duration::from_secs(10), "two datagrams refused", || {
        count(refused) >= before + 2.0
    });
    // Mallory on datagrams alone (no full report since its join) stays
    // ready past the heartbeat timeout (`PATIENT`, 5 s), each datagram
    // refreshing when it was last seen.
    let node = |name: &str| {
        c.nodes()
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap()
            .clone()
    };
    let status = |name: &str| node(name)["status"].as_str().unwrap().to_string();
    let mut counter = 2;
    let beating = std::time::Instant::now();
    while beating.elapsed() < Duration::from_secs(7) {
        counter += 1;
        socket.send(&beat(counter, &key)).unwrap();
        assert_eq!(answer(counter), Kind::Ack);
        let m = node("mallory");
        assert_eq!(m["status"], "ready", "{m}");
        assert!(m["last_seen_ms"].as_u64().unwrap() < 1000, "{m}");
    }
    // Silent, it goes down on time (the 5 s timeout, not before); a
    // datagram then does not bring it back: it is asked for its full
    // report.
    let silent = std::time::Instant::now();
    poll(Duration::from_secs(15), "mallory down", || {
        status("mallory") == "down"
    });
    assert!(
        silent.elapsed() > Duration::from_secs(4) && silent.elapsed() < Duration::from_secs(7),
        "{:?}",
        silent.elapsed()
    );
    counter += 1;
    socket.send(&beat(counter, &key)).unwrap();
    assert_eq!(answer(counter), Kind::AckReport);
    assert_eq!(status("mallory"), "down");
    // The real hosts were never down meanwhile.
    for name in ["eu-1", "eu-2", "us-1"] {
        assert_eq!(status(name), "ready", "{name}");
    }
}
