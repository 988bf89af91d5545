//! A real cluster on loopback: a scheduler and hosts as separate processes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use roam_tests::artifacts;

pub(crate) const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);
/// The scrape credential every test scheduler is given
/// (`--metrics-token-file`).
pub(crate) const SCRAPE: &str = "roam-test-scrape-credential";

/// A child process whose stderr is echoed into the test output; killed on drop.
pub(crate) struct Proc {
    pub(crate) child: Child,
    /// Its stderr's lines so far (when [`spawn_with`] started it).
    pub(crate) log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub(crate) fn new(child: Child) -> Proc {
        Proc {
            child,
            log: Arc::default(),
        }
    }

    /// The lines it logged so far that contain `needle`.
    pub(crate) fn logged(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `roam ARGS`; returns it and the first `http://` or `https://`
/// address it prints.
pub(crate) fn spawn(args: &[&str], envs: &[(&str, &str)]) -> (Proc, String) {
    spawn_with(&[env!("CARGO_BIN_EXE_roam")], args, envs)
}

/// [`spawn`] with another program: `program[0]` run with the rest of
/// `program` before `args` (for example `qemu-aarch64 -L SYSROOT roam`).
pub(crate) fn spawn_with(program: &[&str], args: &[&str], envs: &[(&str, &str)]) -> (Proc, String) {
    let mut child = Command::new(program[0])
        .args(&program[1..])
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let tag = args.first().copied().unwrap_or("").to_string();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let kept = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{tag}> {line}");
            kept.lock().unwrap().push(line.clone());
            for scheme in ["http", "https"] {
                if let Some(rest) = line.split(&format!("on {scheme}://")).nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("");
                    let _ = tx.send(format!("{scheme}://{addr}"));
                }
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("process did not report its address");
    (Proc { child, log }, url)
}

pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) scheduler: Option<Proc>,
    pub(crate) url: String,
    pub(crate) admin: String,
    pub(crate) hosts: Vec<(String, Proc)>,
    /// A client trusting the cluster's CA.
    pub(crate) agent: ureq::Agent,
    pub(crate) scheduler_env: Vec<(String, String)>,
    /// The cluster CA (`None` in a plaintext cluster).
    pub(crate) ca: Option<PathBuf>,
    /// Run with `--insecure-plaintext`.
    pub(crate) plaintext: bool,
    /// How hosts are started: the `roam` under test unless a test says.
    pub(crate) program: Vec<String>,
    /// Every scheduler replica's URL, comma-separated, as hosts and the
    /// CLI are given them (`None`: `url` alone).
    pub(crate) replicas: Option<String>,
}

/// A host silent this long counts as down in a migration test: long enough
/// that a loaded CI machine does not lose hosts that are alive.
pub(crate) const PATIENT: &str = "5s";

/// A client that trusts `ca` (PEM file) alone, or the usual roots.
pub(crate) fn agent_trusting(ca: Option<&Path>) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_age(roam_tls::CLIENT_POOL_IDLE);
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).unwrap();
        let cert = ureq::tls::Certificate::from_pem(&pem).unwrap();
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]))
                .build(),
        );
    }
    config.build().into()
}

impl Cluster {
    /// A cluster (over TLS) whose scheduler runs with extra environment
    /// variables (two are flags: `HEARTBEAT_TIMEOUT` sets
    /// `--heartbeat-timeout`, `STORE` sets `--store`).
    pub(crate) fn start_with(envs: &[(&str, &str)]) -> Cluster {
        Self::start(envs, false)
    }

    /// A cluster run with `--insecure-plaintext`: for tests of what the
    /// protocol itself checks, with a relay that reads and breaks it.
    pub(crate) fn start_plain(envs: &[(&str, &str)]) -> Cluster {
        Self::start(envs, true)
    }

    fn start(envs: &[(&str, &str)], plaintext: bool) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let scheduler_env: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (p, url) = Self::scheduler_proc(dir.path(), "127.0.0.1:0", &scheduler_env, plaintext);
        let admin = std::fs::read_to_string(dir.path().join("scheduler/admin.token"))
            .unwrap()
            .trim()
            .to_string();
        let ca = (!plaintext).then(|| dir.path().join("scheduler/ca.crt"));
        assert_eq!(url.starts_with("https://"), !plaintext, "{url}");
        Cluster {
            dir,
            scheduler: Some(p),
            url,
            admin,
            hosts: Vec::new(),
            agent: agent_trusting(ca.as_deref()),
            scheduler_env,
            ca,
            plaintext,
            program: vec![env!("CARGO_BIN_EXE_roam").to_string()],
            replicas: None,
        }
    }

    pub(crate) fn scheduler_proc(
        dir: &Path,
        listen: &str,
        envs: &[(String, String)],
        plaintext: bool,
    ) -> (Proc, String) {
        let timeout = envs
            .iter()
            .find(|(k, _)| k == "HEARTBEAT_TIMEOUT")
            .map_or("1s".to_string(), |(_, v)| v.clone());
        let store = envs
            .iter()
            .find(|(k, _)| k == "STORE")
            .map(|(_, v)| v.clone());
        // More flags, space-separated.
        let extra: Vec<String> = envs
            .iter()
            .find(|(k, _)| k == "SCHEDULER_ARGS")
            .map(|(_, v)| v.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let envs: Vec<(&str, &str)> = envs
            .iter()
            .filter(|(k, _)| k != "HEARTBEAT_TIMEOUT" && k != "STORE" && k != "SCHEDULER_ARGS")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let data = dir.join("scheduler");
        let scrape = dir.join("scrape-token");
        std::fs::write(&scrape, SCRAPE).unwrap();
        let mut args = vec![
            "scheduler",
            "--listen",
            listen,
            "--data-dir",
            data.to_str().unwrap(),
            "--heartbeat-timeout",
            &timeout,
            "--heartbeat",
            "200ms",
            "--metrics-token-file",
            scrape.to_str().unwrap(),
        ];
        if plaintext {
            args.push("--insecure-plaintext");
        }
        if let Some(store) = &store {
            args.extend(["--store", store]);
        }
        args.extend(extra.iter().map(String::as_str));
        spawn(&args, &envs)
    }

    pub(crate) fn restart_scheduler(&mut self) {
        self.stop_scheduler();
        self.start_scheduler();
    }

    /// Kill the scheduler (SIGKILL).
    pub(crate) fn stop_scheduler(&mut self) {
        drop(self.scheduler.take());
    }

    /// Start the scheduler again, on its address and data directory.
    pub(crate) fn start_scheduler(&mut self) {
        let listen = self.url.split("://").nth(1).unwrap().to_string();
        let (p, url) = Self::scheduler_proc(
            self.dir.path(),
            &listen,
            &self.scheduler_env,
            self.plaintext,
        );
        assert_eq!(url, self.url);
        self.scheduler = Some(p);
        // With a shared store, the restarted scheduler leads once the lease
        // of its previous run has run out.
        poll(Duration::from_secs(30), "the scheduler to lead", || {
            self.api(
                "GET",
                roam_proto::paths::nodes().as_str(),
                Some(&self.admin),
            )
            .0 != 421
        });
    }

    pub(crate) fn join_token(&self, labels: &[(&str, &str)]) -> String {
        let labels: std::collections::BTreeMap<_, _> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.create_token(serde_json::json!({ "labels": labels })).0
    }

    /// `POST /v1/tokens` with `body`, as the admin: the token and its id.
    pub(crate) fn create_token(&self, body: serde_json::Value) -> (String, String) {
        let mut r = self
            .agent
            .post(format!("{}/v1/tokens", self.url))
            .header("authorization", format!("Bearer {}", self.admin))
            .header("content-type", "application/json")
            .send(body.to_string())
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let v: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        (
            v["token"].as_str().unwrap().to_string(),
            v["id"].as_str().unwrap().to_string(),
        )
    }

    /// A client trusting the cluster's CA and presenting a host's
    /// certificate chain and key (PEM); with `verify` off it talks to a
    /// server whatever name its certificate carries.
    pub(crate) fn agent_as(&self, chain: &str, key: &str, verify: bool) -> ureq::Agent {
        let ca = std::fs::read(self.ca.as_ref().unwrap()).unwrap();
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(chain.as_bytes())
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let key = ureq::tls::PrivateKey::from_pem(key.as_bytes()).unwrap();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&[
                ureq::tls::Certificate::from_pem(&ca).unwrap(),
            ]))
            .client_cert(Some(ureq::tls::ClientCert::new_with_certs(&certs, key)))
            .disable_verification(!verify)
            .build();
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_age(roam_tls::CLIENT_POOL_IDLE)
            .timeout_global(Some(Duration::from_secs(20)))
            .tls_config(tls)
            .build()
            .into()
    }

    pub(crate) fn add_host(&mut self, name: &str, site: &str, jurisdiction: &str) {
        self.add_host_with(name, site, jurisdiction, &[], &[]);
    }

    /// Start a host with another `roam` binary, run through `program`
    /// (for example `["qemu-riscv64", "-L", SYSROOT, PATH]`).
    pub(crate) fn add_host_on(&mut self, program: &[&str], name: &str, site: &str) -> String {
        let saved = std::mem::replace(
            &mut self.program,
            program.iter().map(|s| s.to_string()).collect(),
        );
        let url = self.add_host_with(name, site, "EU", &[], &[]);
        self.program = saved;
        url
    }

    /// Start a host with extra arguments and environment; returns its URL.
    pub(crate) fn add_host_with(
        &mut self,
        name: &str,
        site: &str,
        jurisdiction: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> String {
        let token = self.join_token(&[("site", site), ("jurisdiction", jurisdiction)]);
        let data: PathBuf = self.dir.path().join(name);
        // `--join` in `args` sends the host to the scheduler another way
        // (a relay).
        let join = if args.contains(&"--join") {
            vec![]
        } else {
            vec!["--join", self.replicas.as_deref().unwrap_or(&self.url)]
        };
        let mut all = vec!["host"];
        all.extend(join);
        if !args.contains(&"--listen") {
            all.extend(["--listen", "127.0.0.1:0"]);
        }
        all.extend(["--name", name, "--data-dir", data.to_str().unwrap()]);
        if self.plaintext {
            all.push("--insecure-plaintext");
        }
        all.extend_from_slice(args);
        let mut env = vec![("ROAM_JOIN_TOKEN", token.as_str())];
        env.extend_from_slice(envs);
        let program: Vec<&str> = self.program.iter().map(String::as_str).collect();
        let (p, url) = spawn_with(&program, &all, &env);
        self.hosts.push((name.to_string(), p));
        url
    }

    /// Send host `name` SIGTERM (as `systemctl stop` does) and wait for it
    /// to exit, at most `deadline`.
    pub(crate) fn terminate_host(
        &mut self,
        name: &str,
        deadline: Duration,
    ) -> std::process::ExitStatus {
        let at = self.hosts.iter().position(|(n, _)| n == name).unwrap();
        let (_, mut p) = self.hosts.remove(at);
        let pid = i32::try_from(p.child.id()).unwrap();
        // SAFETY: a plain kill(2) of our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let end = std::time::Instant::now() + deadline;
        loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < end,
                "host `{name}` did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn kill_host(&mut self, name: &str) {
        self.hosts.retain(|(n, _)| n != name);
    }

    /// A call to the scheduler API; a follower's `421` is followed to the
    /// leader it names (waited for while none leads).
    pub(crate) fn api(&self, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut base = self.url.clone();
        loop {
            let answer = self.api_at(&base, method, path, token);
            let leader = match answer {
                Ok((status, body, leader)) => {
                    if status != 421 || Instant::now() > deadline {
                        return (status, body);
                    }
                    leader
                }
                // The leader a follower named just died.
                Err(e) if base != self.url && Instant::now() < deadline => {
                    eprintln!("{base}: {e}");
                    None
                }
                Err(e) => panic!("{base}: {e}"),
            };
            match leader {
                Some(l) => base = l,
                None => {
                    base = self.url.clone();
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// One call to the API at `base`: status, body and the leader a
    /// follower names.
    pub(crate) fn api_at(
        &self,
        base: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> Result<(u16, String, Option<String>), ureq::Error> {
        let url = format!("{base}{path}");
        let mut rb = match method {
            "GET" => self.agent.get(&url).force_send_body(),
            "POST" => self.agent.post(&url),
            "DELETE" => self.agent.delete(&url).force_send_body(),
            other => panic!("{other}"),
        };
        if let Some(t) = token {
            rb = rb.header("authorization", format!("Bearer {t}"));
        }
        let mut r = rb.send("")?;
        let leader = r
            .headers()
            .get(roam_proto::headers::LEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok((
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap(),
            leader,
        ))
    }

    pub(crate) fn nodes(&self) -> serde_json::Value {
        let (status, body) = self.api("GET", "/v1/nodes", Some(&self.admin));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The URL host `name` registered.
    pub(crate) fn url_of(&self, name: &str) -> String {
        self.nodes()
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap()["url"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub(crate) fn wait_ready(&self, n: usize) {
        poll(Duration::from_secs(60), "hosts ready", || {
            self.nodes()
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["status"] == "ready")
                .count()
                == n
        });
    }

    /// Run the CLI against this cluster.
    pub(crate) fn roam(&self, args: &[&str]) -> (bool, String, String) {
        self.roam_at(self.replicas.as_deref().unwrap_or(&self.url), args)
    }

    /// Run the CLI against this cluster's scheduler as reached at `addr`
    /// (through a relay).
    pub(crate) fn roam_at(&self, addr: &str, args: &[&str]) -> (bool, String, String) {
        let examples = Path::new(artifacts::COUNTER).parent().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_roam"));
        command
            .args(args)
            .env("ROAM_EXAMPLES_DIR", examples)
            // Never the user's own client config and contexts.
            .env("XDG_CONFIG_HOME", self.dir.path().join("client-config"))
            .env_remove("ROAM_CONTEXT")
            .env("ROAM_ADDR", addr)
            .env("ROAM_TOKEN", &self.admin);
        if let Some(ca) = &self.ca {
            command.env("ROAM_CA", ca);
        }
        let out = command.output().unwrap();
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        eprintln!("roam {args:?} -> {:?}\n{o}{e}", out.status);
        (out.status.success(), o, e)
    }

    /// `roam deploy MODULE --name NAME --wait`: deployed and every replica
    /// ready, or the test fails with the CLI's error.
    pub(crate) fn deploy_ready(&self, module: &str, name: &str) {
        let (ok, _, err) = self.roam(&[
            "deploy",
            module,
            "--name",
            name,
            "--wait",
            "--timeout",
            "60s",
        ]);
        assert!(ok, "{err}");
    }

    pub(crate) fn invoke(&self, workload: &str, path: &str) -> (u16, String) {
        let mut r = self
            .agent
            .post(format!("{}/w/{workload}{path}", self.url))
            .send("")
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    pub(crate) fn get(&self, workload: &str, path: &str) -> (u16, String) {
        let mut r = self
            .agent
            .get(format!("{}/w/{workload}{path}", self.url))
            .call()
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }
}

/// A client of a host's own address, as any client reaches it: no client
/// certificate, and no check of the host's (it names `NAME.host.roam`,
/// not the address dialled; `wire.rs` tests the name check). Error
/// statuses are answers, not errors; `timeout` bounds each call.
pub(crate) fn unverified_agent(timeout: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(timeout)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .disable_verification(true)
                .build(),
        )
        .build()
        .into()
}

pub(crate) fn poll(deadline: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Three hosts (two EU sites, one US). Hosts count as down only after
/// [`PATIENT`] of silence, so a loaded machine does not lose live ones; the
/// test of a dying host uses [`eu_cluster_with`] and a short timeout.
pub(crate) fn eu_cluster() -> Cluster {
    eu_cluster_with(&[("HEARTBEAT_TIMEOUT", PATIENT)])
}

/// [`eu_cluster`] with a scheduler environment (`HEARTBEAT_TIMEOUT` sets
/// `--heartbeat-timeout`).
pub(crate) fn eu_cluster_with(envs: &[(&str, &str)]) -> Cluster {
    let mut c = Cluster::start_with(envs);
    c.add_host("eu-1", "eu-west-1", "EU");
    c.add_host("eu-2", "eu-central-1", "EU");
    c.add_host("us-1", "us-east-1", "US");
    c.wait_ready(3);
    c
}

#[test]
fn deploy_invoke_through_ingress_and_eu_rules_hold() {
    let c = eu_cluster();
    let (ok, _, err) = c.roam(&[
        "deploy",
        artifacts::COUNTER,
        "--name",
        "counter",
        "--selector",
        "jurisdiction=EU",
        "--replicas",
        "2",
    ]);
    assert!(ok, "{err}");
    poll(Duration::from_secs(30), "counter to serve", || {
        c.invoke("counter", "/apples").0 == 200
    });
    let (status, body) = c.invoke("counter", "/apples");
    assert_eq!(status, 200);
    assert!(body.contains("\"path\":\"/apples\""), "{body}");
    // Two replicas, both in the EU, never on us-1.
    poll(Duration::from_secs(30), "2 replicas", || {
        let (_, out, _) = c.roam(&["get", "workloads", "-o", "json"]);
        out.contains("\"eu-1\"") && out.contains("\"eu-2\"")
    });
    let (_, out, _) = c.roam(&["get", "instances", "-o", "json"]);
    assert!(!out.contains("us-1"), "{out}");
    let (ok, out, _) = c.roam(&["describe", "workload", "counter"]);
    assert!(ok);
    assert!(
        out.contains("us-1: label `jurisdiction` is `US`, the selector needs `jurisdiction=EU`"),
        "{out}"
    );
    let (ok, out, _) = c.roam(&["get", "nodes"]);
    assert!(ok && out.contains("us-east-1"), "{out}");
    // Heartbeats carry the architecture and the engine key.
    let nodes = c.nodes();
    for n in nodes.as_array().unwrap() {
        assert_eq!(n["arch"], std::env::consts::ARCH);
        assert_eq!(n["engine"].as_str().unwrap().len(), 24, "{n}");
    }
}

/// Read server-sent events from the scheduler in the background.
pub(crate) fn subscribe(c: &Cluster) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let url = format!("{}/v1/events", c.url);
    let admin = c.admin.clone();
    let agent = c.agent.clone();
    std::thread::spawn(move || {
        let Ok(r) = agent
            .get(&url)
            .header("authorization", format!("Bearer {admin}"))
            .call()
        else {
            return;
        };
        let reader = BufReader::new(r.into_body().into_reader());
        for line in reader.lines().map_while(Result::ok) {
            if let Some(data) = line.strip_prefix("data:")
                && tx.send(data.trim().to_string()).is_err()
            {
                return;
            }
        }
    });
    rx
}

pub(crate) fn wait_event(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) if e.contains(needle) => return e,
            Ok(_) => {}
            Err(_) => panic!("no event containing {needle}"),
        }
    }
}

#[test]
fn workloads_serve_again_elsewhere_when_their_host_dies() {
    let mut c = eu_cluster_with(&[("HEARTBEAT_TIMEOUT", "1s")]);
    let events = subscribe(&c);
    let (ok, _, err) = c.roam(&[
        "deploy",
        artifacts::COUNTER,
        "--name",
        "counter",
        "--selector",
        "jurisdiction=EU",
    ]);
    assert!(ok, "{err}");
    poll(Duration::from_secs(30), "counter to serve", || {
        c.invoke("counter", "/a").0 == 200
    });
    let (_, out, _) = c.roam(&["get", "instances", "-o", "json"]);
    let victim = if out.contains("\"eu-1\"") {
        "eu-1"
    } else {
        "eu-2"
    };
    let survivor = if victim == "eu-1" { "eu-2" } else { "eu-1" };
    c.kill_host(victim);
    let killed = Instant::now();
    poll(
        HEARTBEAT_TIMEOUT + Duration::from_secs(2),
        "counter to serve again",
        || {
            c.invoke("counter", "/a").0 == 200 && {
                let (_, out, _) = c.roam(&["get", "instances", "-o", "json"]);
                out.contains(survivor)
            }
        },
    );
    eprintln!("served again {:?} after the host died", killed.elapsed());
    wait_event(&events, "\"workload_deployed\"");
    loop {
        let e: serde_json::Value =
            serde_json::from_str(&wait_event(&events, "\"type\":\"host_down\"")).unwrap();
        if e["host"] == victim {
            break;
        }
    }
    // Never on the non-EU host.
    let (_, out, _) = c.roam(&["get", "instances", "-o", "json"]);
    assert!(!out.contains("us-1"), "{out}");
}

#[test]
fn desired_state_survives_a_scheduler_restart() {
    let mut c = eu_cluster();
    assert!(
        c.roam(&["deploy", artifacts::COUNTER, "--name", "counter"])
            .0
    );
    assert!(
        c.roam(&[
            "deploy",
            artifacts::KV_CACHE,
            "--name",
            "cache",
            "--grant",
            "kv,timers"
        ])
        .0
    );
    assert!(c.roam(&["cordon", "us-1"]).0);
    poll(Duration::from_secs(30), "both to serve", || {
        c.invoke("counter", "/x").0 == 200 && c.get("cache", "/k").0 == 404
    });
    c.restart_scheduler();
    let (ok, out, _) = c.roam(&["get", "workloads", "-o", "json"]);
    assert!(
        ok && out.contains("\"counter\"") && out.contains("\"cache\""),
        "{out}"
    );
    c.wait_ready(2); // us-1 is cordoned, the others ready
    // Hosts rejoin one by one; the cordon outlived the restart.
    poll(Duration::from_secs(30), "us-1 back, still cordoned", || {
        c.nodes()
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "us-1" && n["status"] == "cordoned")
    });
    poll(Duration::from_secs(30), "serving after restart", || {
        c.invoke("counter", "/x").0 == 200
    });
}

#[test]
fn unauthenticated_calls_and_label_claims_are_refused() {
    let c = eu_cluster();
    for (method, path) in [
        ("GET", "/v1/nodes"),
        ("GET", "/v1/workloads"),
        ("POST", "/v1/tokens"),
        ("POST", "/v1/nodes/eu-1/cordon"),
    ] {
        assert_eq!(c.api(method, path, None).0, 401, "{method} {path}");
        assert_eq!(
            c.api(method, path, Some("roam_wrong")).0,
            401,
            "{method} {path}"
        );
    }
    // Nothing changed: eu-1 is not cordoned.
    assert!(
        c.nodes()
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "eu-1" && n["status"] == "ready")
    );
    // A join token cannot do admin work.
    let join = c.join_token(&[("site", "eu-west-1"), ("jurisdiction", "EU")]);
    assert_eq!(c.api("GET", "/v1/nodes", Some(&join)).0, 401);
    // A host with an EU token cannot claim to be in the US site.
    let out = Command::new(env!("CARGO_BIN_EXE_roam"))
        .args([
            "host",
            "--join",
            &c.url,
            "--name",
            "liar",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            c.dir.path().join("liar").to_str().unwrap(),
            "--label",
            "site=us-east-1",
        ])
        .env("ROAM_JOIN_TOKEN", &join)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("host claims `site=us-east-1` but its join token binds `site=eu-west-1`"),
        "{err}"
    );
    assert!(!c.nodes().to_string().contains("liar"));
    // The CLI says what to do without a token.
    let out = Command::new(env!("CARGO_BIN_EXE_roam"))
        .args(["get", "nodes"])
        .env("ROAM_ADDR", &c.url)
        .env("ROAM_CA", c.ca.as_ref().unwrap())
        .env("ROAM_TOKEN", "roam_wrong")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is ROAM_TOKEN right?"));
}

#[test]
fn a_manifest_deploys_with_its_rules() {
    let c = eu_cluster();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("workload.toml");
    std::fs::write(
        &manifest,
        format!(
            "name = \"agg\"\nmodule = {:?}\nreplicas = 2\nselector = \"jurisdiction=EU\"\nmemory = \"32MiB\"\nspread_by = \"site\"\n",
            artifacts::SENSOR_AGGREGATOR
        ),
    )
    .unwrap();
    let (ok, _, err) = c.roam(&["deploy", "-f", manifest.to_str().unwrap()]);
    assert!(ok, "{err}");
    poll(
        Duration::from_secs(30),
        "2 replicas across both EU sites",
        || {
            let (_, out, _) = c.roam(&["get", "workloads", "-o", "json"]);
            out.contains("\"eu-1\"") && out.contains("\"eu-2\"")
        },
    );
    assert_eq!(c.get("agg", "/sensors").0, 200);
    // Flags given with the manifest win over its values: another name, one
    // replica, on one site, with an extra variable and grant.
    let (ok, _, err) = c.roam(&[
        "deploy",
        "-f",
        manifest.to_str().unwrap(),
        "--name",
        "agg-west",
        "--replicas",
        "1",
        "--selector",
        "site=eu-west-1",
        "--env",
        "MODE=flag",
        "--grant",
        "kv",
    ]);
    assert!(ok, "{err}");
    let (_, out, _) = c.roam(&["describe", "workload", "agg-west", "-o", "json"]);
    let w: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(w["spec"]["replicas"], 1, "{out}");
    assert_eq!(w["spec"]["selector"], "site=eu-west-1", "{out}");
    assert_eq!(
        w["spec"]["memory"],
        32 << 20,
        "the manifest's, no flag given"
    );
    assert_eq!(w["spec"]["spread_by"], "site", "{out}");
    assert_eq!(w["spec"]["env"]["MODE"], "flag", "{out}");
    assert_eq!(w["spec"]["grants"]["kv"], true, "{out}");
    // A manifest with an unknown field is refused before anything is deployed.
    std::fs::write(
        &manifest,
        "name = \"x\"\nmodule = \"m.wasm\"\nreplicaz = 3\n",
    )
    .unwrap();
    let (ok, _, err) = c.roam(&["deploy", "-f", manifest.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("unknown field `replicaz`"), "{err}");
}

#[test]
fn messages_are_routed_between_workloads_on_different_hosts() {
    let c = eu_cluster();
    let (ok, _, err) = c.roam(&[
        "deploy",
        artifacts::SENSOR_AGGREGATOR,
        "--name",
        "sensor-aggregator",
        "--selector",
        "site=eu-west-1",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = c.roam(&[
        "deploy",
        artifacts::SENSOR_PROBE,
        "--name",
        "sensor-probe",
        "--selector",
        "site=eu-central-1",
        "--grant",
        "send",
    ]);
    assert!(ok, "{err}");
    poll(Duration::from_secs(30), "both to serve", || {
        c.get("sensor-aggregator", "/sensors").0 == 200
            && c.get("sensor-probe", "/").1.contains("try POST /read")
    });
    for v in [10, 20, 30] {
        let (status, body) = c.invoke("sensor-probe", &format!("/read?sensor=t7&value={v}"));
        assert_eq!(status, 202, "{body}");
    }
    poll(
        Duration::from_secs(10),
        "readings to arrive on the other host",
        || {
            let (status, body) = c.get("sensor-aggregator", "/sensors/t7");
            status == 200 && body.contains("\"n\":3") && body.contains("\"mean\":20.000")
        },
    );
}

#[test]
fn examples_deploy_by_name_with_the_grants_they_need() {
    let c = eu_cluster();
    let (ok, _, err) = c.roam(&[
        "deploy",
        "--example",
        "kv-cache",
        "--selector",
        "jurisdiction=EU",
    ]);
    assert!(ok, "{err}");
    poll(Duration::from_secs(30), "kv-cache to serve", || {
        c.get("kv-cache", "/k").1 == "no such key"
    });
    let mut r = c
        .agent
        .put(format!("{}/w/kv-cache/k?ttl=60000", c.url))
        .send("v")
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        201,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    assert_eq!(c.get("kv-cache", "/k"), (200, "v".to_string()));
    // Guest logs reach `roam logs`, tagged with the host, with their level.
    let r = c
        .agent
        .put(format!("{}/w/kv-cache/soon?ttl=50", c.url))
        .send("x")
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    poll(Duration::from_secs(10), "the expiry to be logged", || {
        let (ok, out, _) = c.roam(&["logs", "kv-cache"]);
        ok && out.contains(" DEBUG expired soon")
    });
    let (ok, _, err) = c.roam(&["deploy", "--example", "nope"]);
    assert!(
        !ok && err.contains("no example `nope`; examples are counter, kv-cache"),
        "{err}"
    );
}

#[test]
fn a_workload_snapshot_restores_on_another_host_with_its_state() {
    let c = eu_cluster();
    let (ok, _, err) = c.roam(&[
        "deploy",
        artifacts::COUNTER,
        "--name",
        "counter",
        "--selector",
        "site=eu-west-1",
    ]);
    assert!(ok, "{err}");
    poll(Duration::from_secs(30), "counter to serve", || {
        c.invoke("counter", "/apples").0 == 200
    });
    c.invoke("counter", "/apples");
    assert_eq!(
        c.invoke("counter", "/apples").1,
        r#"{"path":"/apples","count":3}"#
    );
    let admin = format!("Bearer {}", c.admin);
    let mut r = c
        .agent
        .post(format!("{}/v1/workloads/counter/snapshot?host=eu-1", c.url))
        .header("authorization", &admin)
        .send("")
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let snapshot = r.body_mut().read_to_vec().unwrap();
    assert!(snapshot.starts_with(b"ROAMSNAP"));
    // A host that breaks the rules is refused before anything moves.
    let r = c
        .agent
        .post(format!("{}/v1/workloads/counter/restore?host=us-1", c.url))
        .header("authorization", &admin)
        .send(&snapshot[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    // Loosen the rules to both EU sites, then move it to eu-2.
    let (ok, _, err) = c.roam(&[
        "deploy",
        artifacts::COUNTER,
        "--name",
        "counter",
        "--selector",
        "jurisdiction=EU",
    ]);
    assert!(ok, "{err}");
    let r = c
        .agent
        .post(format!("{}/v1/workloads/counter/restore?host=eu-2", c.url))
        .header("authorization", &admin)
        .send(&snapshot[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        c.invoke("counter", "/apples").1,
        r#"{"path":"/apples","count":4}"#
    );
    let (_, out, _) = c.roam(&["get", "instances", "-o", "json"]);
    assert!(out.contains("eu-2") && !out.contains("eu-1"), "{out}");
    // Corrupted snapshot bytes restore nothing.
    let mut bad = snapshot.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    let mut r = c
        .agent
        .post(format!("{}/v1/workloads/counter/restore?host=eu-1", c.url))
        .header("authorization", &admin)
        .send(&bad[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 502);
    assert!(
        r.body_mut()
            .read_to_string()
            .unwrap()
            .contains("checksum mismatch")
    );
}

/// Providers upgrade hosts on their own schedule: a host that speaks
/// another protocol version is refused at join, with both versions named,
/// and nothing of it is registered.
#[test]
fn a_host_speaking_another_protocol_version_is_refused_naming_both() {
    let c = Cluster::start_with(&[]);
    let token = c.join_token(&[("site", "eu-west-1"), ("jurisdiction", "EU")]);
    let join = roam_proto::JoinRequest {
        protocol: roam_proto::PROTOCOL_VERSION + 1,
        name: "from-the-future".into(),
        url: "http://127.0.0.1:9".into(),
        capacity: roam_proto::Capacity {
            memory: 1 << 30,
            slots: 4,
        },
        arch: std::env::consts::ARCH.into(),
        ..roam_proto::JoinRequest::default()
    };
    let mut r = c
        .agent
        .post(format!("{}/v1/hosts/join", c.url))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .send(serde_json::to_string(&join).unwrap())
        .unwrap();
    let body = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 400, "{body}");
    let theirs = format!("protocol {}", roam_proto::PROTOCOL_VERSION + 1);
    let ours = format!("speaks {}", roam_proto::PROTOCOL_VERSION);
    assert!(body.contains(&theirs) && body.contains(&ours), "{body}");
    assert_eq!(c.nodes(), serde_json::json!([]), "nothing was registered");
}

#[test]
fn a_workload_gets_its_callers_authorization_and_decoded_query_through_both_ingresses() {
    let mut c = Cluster::start_with(&[]);
    let host = c.add_host_with("eu-1", "eu-west-1", "EU", &[], &[]);
    c.wait_ready(1);
    crate::failover::deploy_faulty(&c, "app", "none");
    let expected = "authorization=Bearer app-token\nq=café & more";
    let query = "/echo?q=caf%C3%A9+%26+more";
    // Through the scheduler's ingress, and straight to the host's.
    for (agent, base) in [
        (c.agent.clone(), c.url.clone()),
        (unverified_agent(None), host),
    ] {
        let mut r = agent
            .get(format!("{base}/w/app{query}"))
            .header("authorization", "Bearer app-token")
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        // Headers that repeat arrive each time, through the proxy too.
        let cookies: Vec<&str> = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["a=1", "b=2"], "{base}");
        assert_eq!(r.body_mut().read_to_string().unwrap(), expected, "{base}");
    }
    // `roam invoke` sends the operator's token nowhere near the workload.
    let (ok, out, err) = c.roam(&["invoke", "app", "/echo", "--method", "GET"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("authorization=\n"), "{out}");
    assert!(!out.contains(&c.admin), "{out}");
}

#[test]
fn a_host_listening_on_every_interface_advertises_the_address_it_is_reached_at() {
    let mut c = Cluster::start_with(&[("HEARTBEAT_TIMEOUT", PATIENT)]);
    c.add_host_with("edge-1", "eu-west-1", "EU", &["--listen", "0.0.0.0:0"], &[]);
    c.wait_ready(1);
    let url = c.url_of("edge-1");
    assert!(!url.contains("0.0.0.0"), "{url}");
    c.deploy_ready(artifacts::COUNTER, "counter");
    // The scheduler's ingress reaches the workload at that address.
    assert_eq!(c.invoke("counter", "/a").0, 200);
}
