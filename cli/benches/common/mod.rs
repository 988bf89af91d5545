//! What the end-to-end benches share: real `roam` processes on loopback, and
//! the arithmetic of their reports.
#![allow(dead_code, reason = "each bench uses a different part")]

pub mod fleet;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `roam ARGS` and wait for the line that says where it listens.
pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roam"))
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // The process's log goes on to this stderr with ROAM_BENCH_VERBOSE.
    let verbose = std::env::var_os("ROAM_BENCH_VERBOSE").is_some();
    let tag = args.first().copied().unwrap_or("").to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if verbose {
                eprintln!("{tag}: {line}");
            }
            for scheme in ["http", "https"] {
                if let Some(rest) = line.split(&format!("on {scheme}://")).nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("");
                    let _ = tx.send(format!("{scheme}://{addr}"));
                }
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    (Proc(child), url)
}

/// An HTTP client that returns error statuses as responses, trusting the
/// CA in the PEM file `ca` alone (or the usual roots without one).
pub fn agent(ca: Option<&std::path::Path>) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder().http_status_as_error(false);
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

/// A `roam scheduler` process with its data directory and admin token.
pub struct Scheduler {
    pub dir: tempfile::TempDir,
    pub proc: Proc,
    pub url: String,
    pub admin: String,
    /// A client trusting the cluster's CA.
    pub http: ureq::Agent,
    /// The cluster's CA (`None` with `--insecure-plaintext`).
    pub ca: Option<std::path::PathBuf>,
}

impl Scheduler {
    /// Start a scheduler on `127.0.0.1:0` with `extra` arguments (with
    /// `--insecure-plaintext` among them, its hosts run so too).
    pub fn start(extra: &[&str]) -> Scheduler {
        let mut s = Scheduler::launch(extra);
        s.admin = std::fs::read_to_string(s.dir.path().join("scheduler/admin.token"))
            .unwrap()
            .trim()
            .to_string();
        s
    }

    /// Another replica on the same store as one started with `extra`
    /// (an etcd store): it follows, and has no admin token of its own.
    pub fn follower(extra: &[&str]) -> Scheduler {
        Scheduler::launch(extra)
    }

    fn launch(extra: &[&str]) -> Scheduler {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("scheduler");
        let mut args = vec![
            "scheduler",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (proc, url) = spawn(&args, &[]);
        let ca = url.starts_with("https://").then(|| data.join("ca.crt"));
        Scheduler {
            dir,
            proc,
            url,
            admin: String::new(),
            http: agent(ca.as_deref()),
            ca,
        }
    }

    /// A join token whose hosts carry `labels` (a JSON object).
    pub fn token(&self, labels: &str) -> String {
        let mut r = self
            .http
            .post(format!("{}/v1/tokens", self.url))
            .header("authorization", format!("Bearer {}", self.admin))
            .header("content-type", "application/json")
            .send(format!(r#"{{"labels":{labels}}}"#))
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    /// Start `roam host --name NAME` joined to this scheduler, with `extra`
    /// arguments; returns the process and the host's own URL.
    pub fn host(&self, name: &str, extra: &[&str]) -> (Proc, String) {
        let token = self.token("{}");
        let data = self.dir.path().join(name);
        let mut args = vec![
            "host",
            "--join",
            &self.url,
            "--name",
            name,
            "--data-dir",
            data.to_str().unwrap(),
        ];
        if !extra.contains(&"--listen") {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        if self.ca.is_none() {
            args.push("--insecure-plaintext");
        }
        args.extend_from_slice(extra);
        spawn(&args, &[("ROAM_JOIN_TOKEN", &token)])
    }

    /// Run `roam ARGS` against this scheduler; its standard output.
    pub fn roam(&self, args: &[&str]) -> String {
        let mut command = Command::new(env!("CARGO_BIN_EXE_roam"));
        command
            .args(args)
            .env("ROAM_ADDR", &self.url)
            .env("ROAM_TOKEN", &self.admin);
        if let Some(ca) = &self.ca {
            command.env("ROAM_CA", ca);
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "roam {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `GET PATH` with the admin token, as JSON.
    pub fn get(&self, path: &str) -> serde_json::Value {
        let mut r = self
            .http
            .get(format!("{}{path}", self.url))
            .header("authorization", format!("Bearer {}", self.admin))
            .call()
            .unwrap();
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }
}

/// CPU seconds process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// CPU time (user + system) in seconds of thread `tid` of this process.
pub fn thread_cpu_seconds(tid: i32) -> f64 {
    stat_cpu_seconds(&format!("/proc/self/task/{tid}/stat"))
}

fn stat_cpu_seconds(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields[11].parse().unwrap();
    let stime: f64 = fields[12].parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (utime + stime) / ticks
}

/// The `p` quantile (0..=1) of `values`, nearest rank.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[i.min(values.len() - 1)]
}

/// The machine's core count, for every report's header.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What one `wrk` run measured.
#[derive(Clone, Copy, Default)]
pub struct Run {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `1.23ms`, `456.00us`, `1.2s` → milliseconds.
#[allow(clippy::panic, reason = "a benchmark reports failure by panicking")]
pub fn millis(text: &str) -> f64 {
    let (num, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| text.split_at(i))
        .unwrap();
    let v: f64 = num.parse().unwrap();
    match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        other => panic!("unknown unit {other}"),
    }
}

/// The request-path benches' cluster: a scheduler started with
/// `scheduler_args`, one host `h` with `host_args`, and
/// `examples/hello-http` deployed on it as `hello`; the host's URL.
pub fn hello_cluster(scheduler_args: &[&str], host_args: &[&str]) -> (Scheduler, Proc, String) {
    let s = Scheduler::start(scheduler_args);
    let (host, url) = s.host("h", host_args);
    s.roam(&[
        "deploy",
        roam_tests::artifacts::HELLO_HTTP,
        "--name",
        "hello",
        "--memory",
        "16MiB",
    ]);
    (s, host, url)
}

/// Wait until `url` answers 200 (whoever's certificate it shows: `wrk`
/// does not check them either).
pub fn ready(url: &str) {
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .disable_verification(true)
                .build(),
        )
        .build()
        .into();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(url).call().map(|r| r.status().as_u16()).ok() != Some(200) {
        assert!(Instant::now() < deadline, "{url} never answered 200");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The median of `f` over `runs`.
pub fn median(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    percentile(&mut v, 0.5)
}

/// `wrk` against `url` (with a Lua `script`, e.g. one that sets the
/// method); panics on any non-2xx answer or socket error.
#[allow(clippy::panic, reason = "a benchmark reports failure by panicking")]
pub fn wrk(url: &str, script: Option<&std::path::Path>, connections: usize, seconds: u64) -> Run {
    let mut args = vec![
        format!("-t{}", connections.min(2)),
        format!("-c{connections}"),
        format!("-d{seconds}s"),
        "--latency".to_string(),
    ];
    if let Some(script) = script {
        args.extend(["-s".to_string(), script.to_str().unwrap().to_string()]);
    }
    args.push(url.to_string());
    let out = Command::new("wrk")
        .args(&args)
        .output()
        .expect("`wrk` must be installed (scripts/bench installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "{url}: {text}"
    );
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in wrk output: {text}"))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    Run {
        rps: field("Requests/sec:").parse().unwrap(),
        p50_ms: millis(&field("50%")),
        p99_ms: millis(&field("99%")),
    }
}
