//! `roam run --listen`: every example gives the same responses with and
//! without a snapshot round trip after every event.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use roam_tests::artifacts;

/// A `roam run --listen` process; killed on drop. Its stderr is echoed into
/// the test's output, so a failing test shows the workload's logs.
pub struct Server {
    child: Child,
    pub base: String,
    agent: ureq::Agent,
}

impl Server {
    /// `roam run FILE --listen … --grant-all EXTRA…`.
    pub fn start(file: &str, extra: &[&str]) -> Server {
        let mut args = vec![file, "--grant-all"];
        args.extend_from_slice(extra);
        Server::start_with(&args)
    }

    /// `roam run --listen 127.0.0.1:0 ARGS…`.
    pub fn start_with(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_roam"))
            .args(["run", "--listen", "127.0.0.1:0"])
            .args(args)
            .env(
                "XDG_CACHE_HOME",
                std::env::temp_dir().join("roam-test-cache"),
            )
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("roam> {line}");
                if let Some(rest) = line.split("on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("roam run --listen did not report its address");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_age(roam_tls::CLIENT_POOL_IDLE)
            .build()
            .into();
        Server {
            child,
            base: format!("http://{addr}"),
            agent,
        }
    }

    /// Send a request; returns (status, body).
    pub fn req(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let result = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            "POST" => self.agent.post(&url).send(body),
            "PUT" => self.agent.put(&url).send(body),
            other => panic!("unsupported method {other}"),
        };
        let mut response = result.unwrap();
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_string().unwrap())
    }

    /// Poll `path` until `done` holds for the response, with a deadline.
    pub fn poll(
        &self,
        path: &str,
        deadline: Duration,
        done: impl Fn(u16, &str) -> bool,
    ) -> (u16, String) {
        let start = Instant::now();
        loop {
            let (status, body) = self.req("GET", path, "");
            if done(status, &body) {
                return (status, body);
            }
            assert!(
                start.elapsed() < deadline,
                "`{path}` never satisfied the condition; last: {status} {body}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Step<'a> = (&'a str, &'a str, &'a str);

/// Run `script` against `file` served plainly and with round trips; the
/// responses must be identical (and are returned).
fn same_with_and_without_roundtrips(file: &str, script: &[Step<'_>]) -> Vec<(u16, String)> {
    let run = |extra: &[&str]| {
        let server = Server::start(file, extra);
        script
            .iter()
            .map(|(m, p, b)| server.req(m, p, b))
            .collect::<Vec<_>>()
    };
    let plain = run(&[]);
    let moved = run(&["--roundtrip-snapshots"]);
    assert_eq!(plain, moved);
    plain
}

#[test]
fn counter_responses_survive_roundtrips() {
    let out = same_with_and_without_roundtrips(
        artifacts::COUNTER,
        &[
            ("POST", "/apples", ""),
            ("POST", "/apples", ""),
            ("POST", "/pears", ""),
            ("GET", "/apples", ""),
            ("GET", "/", ""),
            ("PUT", "/x", ""),
        ],
    );
    assert_eq!(out[1], (200, r#"{"path":"/apples","count":2}"#.to_string()));
    assert_eq!(
        out[4].1,
        r#"[{"path":"/apples","count":2},{"path":"/pears","count":1}]"#
    );
    assert_eq!(out[5].0, 405);
}

#[test]
fn c_counter_speaks_the_same_abi() {
    let file = artifacts::require(artifacts::C_COUNTER, "C counter");
    let out = same_with_and_without_roundtrips(
        file,
        &[
            ("POST", "/apples", ""),
            ("POST", "/apples", ""),
            ("GET", "/apples", ""),
            ("GET", "/none", ""),
        ],
    );
    assert_eq!(out[2], (200, r#"{"path":"/apples","count":2}"#.to_string()));
    assert_eq!(out[3], (200, r#"{"path":"/none","count":0}"#.to_string()));
}

#[test]
fn kv_cache_responses_and_expiry_survive_roundtrips() {
    let script: &[Step<'_>] = &[
        ("PUT", "/a", "alpha"),
        ("PUT", "/b?ttl=600000", "beta"),
        ("GET", "/a", ""),
        ("GET", "/b", ""),
        ("DELETE", "/a", ""),
        ("GET", "/a", ""),
        ("GET", "/missing", ""),
    ];
    let out = same_with_and_without_roundtrips(artifacts::KV_CACHE, script);
    assert_eq!(out[2], (200, "alpha".to_string()));
    assert_eq!(out[5].0, 404);
    // A short TTL expires on time in both modes.
    for extra in [&[][..], &["--roundtrip-snapshots"][..]] {
        let server = Server::start(artifacts::KV_CACHE, extra);
        let set_at = Instant::now();
        assert_eq!(server.req("PUT", "/soon?ttl=300", "x").0, 201);
        assert_eq!(server.req("PUT", "/later", "y").0, 201);
        server.poll("/soon", Duration::from_secs(10), |s, _| s == 404);
        assert!(
            set_at.elapsed() >= Duration::from_millis(300),
            "expired early"
        );
        assert_eq!(server.req("GET", "/later", ""), (200, "y".to_string()));
    }
}

#[test]
fn sensor_aggregator_responses_survive_roundtrips() {
    let run = |extra: &[&str]| {
        let server = Server::start(artifacts::SENSOR_AGGREGATOR, extra);
        for i in 0..30 {
            let body = format!("t1 {}\nt2 {}", i, 100 - i);
            assert_eq!(
                server.req("POST", "/_roam/messages?from=probe", &body).0,
                202
            );
        }
        server.req("POST", "/_roam/messages?from=probe", "bogus line");
        // Messages are handled in order after they are queued.
        server.poll("/sensors/t1", Duration::from_secs(10), |s, b| {
            s == 200 && b.contains("\"n\":30")
        });
        (
            server.req("GET", "/sensors", ""),
            server.req("GET", "/sensors/t2", ""),
        )
    };
    let plain = run(&[]);
    let moved = run(&["--roundtrip-snapshots"]);
    assert_eq!(plain, moved);
    assert_eq!(
        plain.1.1,
        r#"{"sensor":"t2","n":30,"min":71,"max":100,"mean":85.500,"p95":99}"#
    );
    assert!(plain.0.1.contains("\"rejected\":1"), "{}", plain.0.1);
}

#[test]
fn mandelbrot_finishes_with_the_same_result_when_moved_every_step() {
    let run = |extra: &[&str]| {
        let server = Server::start(artifacts::MANDELBROT, extra);
        assert_eq!(
            server
                .req("POST", "/start?width=160&height=120&iterations=300", "")
                .0,
            202
        );
        server.poll("/progress", Duration::from_secs(60), |_, b| {
            b.contains("\"done\":true")
        });
        server.req("GET", "/result", "")
    };
    let plain = run(&[]);
    let moved = run(&["--roundtrip-snapshots"]);
    assert_eq!(plain.0, 200);
    assert_eq!(plain, moved);
}

#[test]
fn a_command_module_is_refused_as_a_workload_with_the_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_roam"))
        .args(["run", artifacts::WASI_DEMO, "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exports no `roam_abi_version` function"),
        "{err}"
    );
}

#[test]
fn a_manifest_runs_locally_as_a_host_runs_it_and_a_missing_grant_fails_as_there() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("workload.toml");
    let module = format!(
        "name = \"cache\"\nmodule = {:?}\nmemory = \"32MiB\"\n",
        artifacts::KV_CACHE
    );
    // No grants: refused at start, with the runtime's message, as a host
    // refuses it.
    std::fs::write(&manifest, &module).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_roam"))
        .args(["run", "--listen", "127.0.0.1:0", "-f"])
        .arg(&manifest)
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("roam-test-cache"),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("workload `cache` imports `roam::kv_")
            && err.contains("but is not granted `kv`"),
        "{err}"
    );
    // `--grant` on top of the manifest, or its own [grants]: it serves,
    // under the manifest's name.
    let s = Server::start_with(&["-f", manifest.to_str().unwrap(), "--grant", "kv,timers"]);
    assert_eq!(s.req("PUT", "/greeting", "hello").0 / 100, 2);
    assert_eq!(s.req("GET", "/greeting", ""), (200, "hello".to_string()));
    drop(s);
    std::fs::write(
        &manifest,
        format!("{module}[grants]\nkv = true\ntimers = true\n"),
    )
    .unwrap();
    let s = Server::start_with(&["-f", manifest.to_str().unwrap()]);
    assert_eq!(s.req("PUT", "/greeting", "again").0 / 100, 2);
    // A module without its manifest gets nothing unless --grant-all.
    let out = Command::new(env!("CARGO_BIN_EXE_roam"))
        .args(["run", artifacts::KV_CACHE, "--listen", "127.0.0.1:0"])
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("roam-test-cache"),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not granted"));
}

/// `roam ARGS` in `dir`, as [`run_in`].
fn roam_in(dir: &std::path::Path, args: &[&str]) -> String {
    run_in(dir, env!("CARGO_BIN_EXE_roam"), args)
}

/// `program ARGS` in `dir`, without this build's cargo target directory
/// (a project of its own builds into its own `target/`); panics with the
/// output unless it succeeds.
fn run_in(dir: &std::path::Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?}: {text}");
    text
}

#[test]
fn a_new_project_tests_builds_and_runs_from_any_directory() {
    // Outside the repository: the project gets its SDK from `roam` itself.
    let home = tempfile::tempdir().unwrap();
    roam_in(home.path(), &["new", "visits"]);
    let project = home.path().join("visits");
    assert!(project.join("vendor/roam-sdk/src/lib.rs").exists());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tested = run_in(&project, &cargo, &["test"]);
    assert!(
        tested.contains("the_next_version_takes_the_visits_over ... ok"),
        "{tested}"
    );
    let built = roam_in(&project, &["build"]);
    assert!(built.contains("visits.wasm"), "{built}");
    let manifest = project.join("workload.toml");
    let server = Server::start_with(&["-f", manifest.to_str().unwrap()]);
    assert_eq!(server.req("POST", "/hi", ""), (200, "/hi 1\n".into()));
    assert_eq!(server.req("GET", "/hi", ""), (200, "/hi 1\n".into()));
    drop(server);
    // A name that is not a workload's, or a directory in use: refused,
    // nothing written.
    let out = Command::new(env!("CARGO_BIN_EXE_roam"))
        .args(["new", "Visits"])
        .current_dir(home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!home.path().join("Visits").exists());
    let out = Command::new(env!("CARGO_BIN_EXE_roam"))
        .args(["new", "visits"])
        .current_dir(home.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"));

    // C, with clang and wasi-libc (scripts/setup installs them).
    if artifacts::C_COUNTER.is_none() {
        panic!("clang for wasm32-wasi is not installed; run scripts/setup");
    }
    roam_in(home.path(), &["new", "tally", "--lang", "c"]);
    let project = home.path().join("tally");
    let tested = run_in(&project, "make", &["test"]);
    assert!(tested.contains("ok: 3 checks"), "{tested}");
    roam_in(&project, &["build"]);
    let manifest = project.join("workload.toml");
    let server = Server::start_with(&["-f", manifest.to_str().unwrap()]);
    assert_eq!(server.req("POST", "/x", ""), (200, "/x 1\n".into()));
}
