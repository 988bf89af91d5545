//! The access matrix: every route of the scheduler × every kind of caller,
//! against `docs/security.md` and against running daemons over TLS.
//!
//! The routes come from the scheduler's own table, which its router is
//! built from (`roam_scheduler::server::access::table`): a route missing
//! from the doc, or a doc row for a route that does not exist, fails here.

use std::collections::BTreeMap;
use std::time::Duration;

use roam_host::access::HostAccess;
use roam_scheduler::server::access::{Access, RouteRule, table};
use roam_tls::Identity;
use roam_tls::ca::new_request;

use crate::cluster::{Cluster, eu_cluster, poll};
use crate::migrate::deploy_counter;

/// Every kind of caller, as the doc's columns name them.
const CALLERS: [&str; 10] = [
    "none",
    "revoked",
    "expired",
    "viewer",
    "operator",
    "admin",
    "join",
    "this host",
    "other host",
    "scrape",
];

/// What a caller of a route with `access` gets: `ok` (anything but 401 and
/// 403: the route ran), `401` or `403`.
fn expected(access: Access, caller: &str) -> &'static str {
    let token_rank = |c: &str| match c {
        "viewer" => Some(1),
        "operator" => Some(2),
        "admin" => Some(3),
        _ => None,
    };
    let needs = |rank: u8| match token_rank(caller) {
        Some(r) if r >= rank => "ok",
        Some(_) => "403",
        None => "401",
    };
    match access {
        Access::Public => "ok",
        Access::Viewer => needs(1),
        Access::Operator => needs(2),
        Access::Admin => needs(3),
        Access::Join => match caller {
            "join" | "this host" => "ok",
            "other host" => "403",
            _ => "401",
        },
        Access::ThisHost => match caller {
            "this host" => "ok",
            "other host" => "403",
            _ => "401",
        },
        Access::SendingHost => match caller {
            "this host" => "ok",
            "other host" => "403",
            _ => "401",
        },
        Access::HostOrOperator => match caller {
            "this host" | "other host" | "operator" | "admin" => "ok",
            _ => "401",
        },
        Access::Scrape if caller == "scrape" => "ok",
        Access::Scrape => needs(1),
    }
}

/// The rows of the scheduler's matrix in `docs/security.md`: (method,
/// route) → (rule, answer per caller).
fn doc_matrix() -> BTreeMap<(String, String), (String, Vec<String>)> {
    matrix_rows(CALLERS.len())
}

/// The rows of a matrix in `docs/security.md` with `callers` columns of
/// answers.
fn matrix_rows(callers: usize) -> BTreeMap<(String, String), (String, Vec<String>)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/security.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let mut rows = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<String> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().trim_matches('`').to_string())
            .collect();
        if cells.len() != 3 + callers
            || !["GET", "POST", "PUT", "DELETE", "*"].contains(&cells[0].as_str())
        {
            continue;
        }
        let key = (cells[0].clone(), cells[1].clone());
        assert!(
            rows.insert(key.clone(), (cells[2].clone(), cells[3..].to_vec()))
                .is_none(),
            "{key:?} twice in docs/security.md"
        );
    }
    rows
}

#[test]
fn the_documented_matrix_is_the_routers_table() {
    let doc = doc_matrix();
    let rules = table();
    for rule in &rules {
        let key = (rule.method.to_string(), rule.pattern.to_string());
        let Some((name, cells)) = doc.get(&key) else {
            panic!(
                "{} {} is not in docs/security.md's matrix",
                rule.method, rule.pattern
            );
        };
        assert_eq!(name, rule.access.name(), "{key:?}");
        let want: Vec<&str> = CALLERS.iter().map(|c| expected(rule.access, c)).collect();
        assert_eq!(cells, &want, "{key:?}: the doc's cells");
    }
    for key in doc.keys() {
        assert!(
            rules
                .iter()
                .any(|r| (r.method, r.pattern) == (key.0.as_str(), key.1.as_str())),
            "docs/security.md lists {key:?}, which the scheduler does not serve"
        );
    }
}

/// A host's certificate chain and key, as a client presents them.
struct Cert {
    chain: String,
    key: String,
}

/// The credentials of every caller kind.
struct Callers {
    tokens: BTreeMap<&'static str, String>,
    this_host: Cert,
    other_host: Cert,
    /// The identity `this host` has for the join route (a host of the
    /// test's own, so its rejoin disturbs no running host).
    joiner: Cert,
}

fn host_cert(c: &Cluster, name: &str) -> Cert {
    let dir = c.dir.path().join(name).join("tls");
    Cert {
        chain: std::fs::read_to_string(dir.join("host.crt")).unwrap(),
        key: std::fs::read_to_string(dir.join("host.key")).unwrap(),
    }
}

/// Join host `name` by hand with `token`; its certificate.
fn join_by_hand(c: &Cluster, name: &str, token: &str) -> Cert {
    let (key, csr) = new_request(&Identity::host(name).unwrap()).unwrap();
    let mut r = c
        .agent
        .post(format!("{}/v1/hosts/join", c.url))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .send(join_body(name, &csr).to_string())
        .unwrap();
    let body = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    Cert {
        chain: v["certificate"].as_str().unwrap().to_string(),
        key,
    }
}

fn join_body(name: &str, csr: &str) -> serde_json::Value {
    serde_json::json!({
        "protocol": roam_proto::PROTOCOL_VERSION,
        "name": name,
        "url": "https://127.0.0.1:9",
        "labels": {},
        "capacity": { "memory": 1u64 << 30, "slots": 8 },
        "arch": std::env::consts::ARCH,
        "engine": "x",
        "csr": csr,
    })
}

/// Whether `this host` calls `rule` as the hand-joined host: to rejoin,
/// and to ask to be drained (which would move the test's workload).
fn by_joiner(rule: &RouteRule) -> bool {
    rule.access == Access::Join || rule.pattern == roam_proto::paths::scheduler::HOST_DRAIN
}

/// A request to `rule` that would succeed for an allowed caller, or fail
/// harmlessly (404, 400): names that exist where reading, and that do not
/// where the route would change something.
fn request(
    rule: &RouteRule,
    c: &Cluster,
    digest: &str,
    this_host: &str,
    caller: &str,
) -> (String, String, String) {
    let method = match rule.method {
        "*" => "GET",
        m => m,
    }
    .to_string();
    let host = if by_joiner(rule) { "joiner" } else { this_host };
    let destructive = matches!(method.as_str(), "DELETE" | "POST" | "PUT");
    let workload = if destructive { "ghost" } else { "counter" };
    let path = rule
        .pattern
        .replace(
            "{name}",
            if rule.pattern.starts_with("/v1/hosts") {
                host
            } else {
                workload
            },
        )
        .replace("{action}", "uncordon")
        .replace("{digest}", digest)
        .replace("{id}", "0000000000000000")
        .replace("{workload}", "counter")
        .replace("{*path}", "x");
    let path = match rule.pattern {
        p if p == roam_proto::paths::scheduler::MESSAGE => format!("{path}?from=counter"),
        // Revoking a host that exists would end the test's callers.
        p if p == roam_proto::paths::scheduler::NODE_REVOKE => path,
        p if p.starts_with("/v1/nodes/") => path.replace("ghost", this_host),
        _ => path,
    };
    let body = match rule.pattern {
        p if p == roam_proto::paths::scheduler::JOIN => {
            let who = if caller == "this host" || caller == "other host" {
                "joiner"
            } else {
                "joiner-by-token"
            };
            let (_, csr) = new_request(&Identity::host(who).unwrap()).unwrap();
            join_body(who, &csr).to_string()
        }
        p if p == roam_proto::paths::scheduler::HEARTBEAT => {
            r#"{"capacity":{"memory":1073741824,"slots":8},"memory_used":0,"instances":[]}"#.into()
        }
        p if p == roam_proto::paths::scheduler::TOKENS => {
            r#"{"role":"viewer","ttl_secs":60}"#.into()
        }
        _ => "{}".into(),
    };
    (method, format!("{}{path}", c.url), body)
}

#[test]
fn every_route_answers_every_caller_as_the_matrix_says() {
    let c = eu_cluster();
    deploy_counter(&c, "jurisdiction=EU");
    let eu = c.join_token(&[("site", "eu-west-1"), ("jurisdiction", "EU")]);
    // `this host` runs counter; `other host` is the other EU host.
    let (_, instances) = c.api("GET", "/v1/instances", Some(&c.admin));
    let instances: serde_json::Value = serde_json::from_str(&instances).unwrap();
    let this_host = instances[0]["host"].as_str().unwrap().to_string();
    let other_host = if this_host == "eu-1" { "eu-2" } else { "eu-1" };
    let mut callers = Callers {
        tokens: BTreeMap::new(),
        this_host: host_cert(&c, &this_host),
        other_host: host_cert(&c, other_host),
        joiner: join_by_hand(&c, "joiner", &eu),
    };
    for role in ["viewer", "operator"] {
        let (token, _) = c.create_token(serde_json::json!({ "role": role }));
        callers.tokens.insert(role, token);
    }
    callers.tokens.insert("admin", c.admin.clone());
    callers.tokens.insert("join", eu.clone());
    callers
        .tokens
        .insert("scrape", crate::cluster::SCRAPE.to_string());
    let (revoked, id) = c.create_token(serde_json::json!({ "role": "admin" }));
    let (status, body) = c.api("DELETE", &format!("/v1/tokens/{id}"), Some(&c.admin));
    assert_eq!(status, 204, "{body}");
    callers.tokens.insert("revoked", revoked);
    let (expired, _) = c.create_token(serde_json::json!({ "role": "admin", "ttl_secs": 1 }));
    poll(Duration::from_secs(10), "the token to expire", || {
        c.api("GET", "/v1/nodes", Some(&expired)).0 == 401
    });
    callers.tokens.insert("expired", expired);
    let (_, workloads) = c.api("GET", "/v1/workloads", Some(&c.admin));
    let workloads: serde_json::Value = serde_json::from_str(&workloads).unwrap();
    let digest = workloads[0]["spec"]["digest"].as_str().unwrap().to_string();

    let plain = c.agent.clone();
    let as_cert = |cert: &Cert| c.agent_as(&cert.chain, &cert.key, true);
    let as_this = as_cert(&callers.this_host);
    let as_other = as_cert(&callers.other_host);
    let as_joiner = as_cert(&callers.joiner);
    let mut wrong = Vec::new();
    for rule in table() {
        for caller in CALLERS {
            let (method, url, body) = request(&rule, &c, &digest, &this_host, caller);
            let client = match caller {
                "this host" if by_joiner(&rule) => &as_joiner,
                "this host" => &as_this,
                "other host" => &as_other,
                _ => &plain,
            };
            let mut rb = match method.as_str() {
                "GET" => client.get(&url).force_send_body(),
                "POST" => client.post(&url),
                "PUT" => client.put(&url),
                "DELETE" => client.delete(&url).force_send_body(),
                other => panic!("{other}"),
            };
            if let Some(token) = callers.tokens.get(caller) {
                rb = rb.header("authorization", format!("Bearer {token}"));
            }
            // A fresh connection each time: a server may close a kept-alive
            // one whose body a refused route never read, and a client that
            // reuses it then gets no answer at all.
            let status = rb
                .header("connection", "close")
                .header("content-type", "application/json")
                .send(body.as_str())
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            let got = match status {
                401 => "401",
                403 => "403",
                0 => "no answer",
                _ => "ok",
            };
            let want = expected(rule.access, caller);
            if got != want {
                wrong.push(format!(
                    "{} {} as {caller}: {status}, the matrix says {want}",
                    rule.method, rule.pattern
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(c.get("counter", "/").0, 200, "counter still serves");
}

/// Every kind of caller of a host's routes, as the doc's columns name them.
const HOST_CALLERS: [&str; 5] = [
    "none",
    "admin",
    "other host",
    "scheduler without secret",
    "scrape",
];

/// What a caller of a host's route with `access` gets.
fn host_expected(access: HostAccess, caller: &str) -> &'static str {
    match (access, caller) {
        (HostAccess::Public, _) => "ok",
        (HostAccess::Scrape, "scrape") => "ok",
        (HostAccess::Scrape, _) => "401",
        (HostAccess::Scheduler, "scheduler without secret") => "401",
        (HostAccess::Scheduler, _) => "403",
        // No migration with that id: nobody is its source, and nobody has
        // its key.
        (HostAccess::Source, _) => "401",
        // No standby of that workload: nobody is its primary.
        (HostAccess::Primary, _) => "401",
    }
}

#[test]
fn the_documented_host_matrix_is_the_hosts_table() {
    let doc = matrix_rows(HOST_CALLERS.len());
    let rules = roam_host::access::table();
    for rule in &rules {
        let key = (rule.method.to_string(), rule.pattern.to_string());
        let Some((name, cells)) = doc.get(&key) else {
            panic!(
                "host route {} {} is not in docs/security.md",
                rule.method, rule.pattern
            );
        };
        assert_eq!(name, rule.access.name(), "{key:?}");
        let want: Vec<&str> = HOST_CALLERS
            .iter()
            .map(|c| host_expected(rule.access, c))
            .collect();
        assert_eq!(cells, &want, "{key:?}: the doc's cells");
    }
    for key in doc.keys() {
        assert!(
            rules
                .iter()
                .any(|r| (r.method, r.pattern) == (key.0.as_str(), key.1.as_str())),
            "docs/security.md lists host route {key:?}, which a host does not serve"
        );
    }
}

#[test]
fn every_host_route_answers_every_caller_as_the_matrix_says() {
    let c = eu_cluster();
    let nodes = c.nodes();
    let url_of = |name: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap()["url"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let host = url_of("eu-1");
    let other = host_cert(&c, "eu-2");
    // A certificate naming the scheduler, from the cluster CA (its key is
    // in the scheduler's data directory): the real one is never on disk.
    let ca = roam_tls::ca::Ca::load_or_create(&c.dir.path().join("scheduler")).unwrap();
    let scheduler = ca
        .issue(&Identity::Scheduler, &[], Duration::from_secs(600))
        .unwrap();
    // The host's certificate names `eu-1.host.roam`, not the address
    // dialled: these clients skip the name check (the routes are what is
    // tested here; the name check is `wire.rs`'s).
    let anonymous = crate::cluster::unverified_agent(None);
    let as_other = c.agent_as(&other.chain, &other.key, false);
    let as_scheduler = c.agent_as(&scheduler.chain_pem, &scheduler.key_pem, false);
    let mut wrong = Vec::new();
    for rule in roam_host::access::table() {
        let path = rule
            .pattern
            .replace("{workload}", "ghost")
            .replace("{id}", "m-none")
            .replace("{round}", "0")
            .replace("{*path}", "x");
        let url = format!("{host}{path}");
        let method = if rule.method == "*" {
            "GET"
        } else {
            rule.method
        };
        for caller in HOST_CALLERS {
            let client = match caller {
                "other host" => &as_other,
                "scheduler without secret" => &as_scheduler,
                _ => &anonymous,
            };
            let mut rb = match method {
                "GET" => client.get(&url).force_send_body(),
                "POST" => client.post(&url),
                "PUT" => client.put(&url),
                "DELETE" => client.delete(&url).force_send_body(),
                other => panic!("{other}"),
            };
            if caller == "admin" {
                rb = rb.header("authorization", format!("Bearer {}", c.admin));
            }
            if caller == "scrape" {
                rb = rb.header(
                    "authorization",
                    format!("Bearer {}", crate::cluster::SCRAPE),
                );
            }
            let status = rb
                .header("content-type", "application/json")
                .send("{}")
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            let got = match status {
                401 => "401",
                403 => "403",
                0 => "no answer",
                _ => "ok",
            };
            let want = host_expected(rule.access, caller);
            if got != want {
                wrong.push(format!(
                    "{method} {} as {caller}: {status}, the matrix says {want}",
                    rule.pattern
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
