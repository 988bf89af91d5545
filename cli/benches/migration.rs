//! Live migration vs stop-and-copy, between two real `roam host` processes
//! on loopback, under request load.
//!
//! `cargo bench -p roam --bench migration` (set `ROAM_BENCH_QUICK=1` for
//! fewer runs; `ROAM_BENCH_MIB=64 ROAM_BENCH_RATES=10` for some rows only,
//! then the cross-site row only with `ROAM_BENCH_WAN=1`; `ROAM_BENCH_WAN=only` for
//! the cross-site rows alone). For every memory size and dirty rate it moves the `membench`
//! workload back and forth with pre-copy and then with stop-and-copy (the
//! baseline, same run), while a client dirties memory at the chosen rate,
//! and prints downtime p50/p99 and total time as a Markdown table, with the
//! loopback throughput measured in the same run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark reports failure by panicking"
)]

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

mod common;
use common::{Scheduler, percentile};

/// What the bench's hosts keep resident of each freed slot: more than the
/// largest workload, so a workload moving back lands in faulted-in memory.
const KEEP_RESIDENT: &str = "1152MiB";

struct Cluster {
    sched: Scheduler,
    _hosts: Vec<common::Proc>,
    /// A pause after each move (cross-site), so that what a move does to
    /// clients falls in its own window.
    settle: Duration,
}

impl Cluster {
    /// Hosts keep freed slots' memory faulted in (`--keep-resident`) when
    /// `keep_resident`. With `wan`, each host is reached through its own
    /// link emulator (one-way delay, bytes per second), so host-to-host
    /// streams cross a WAN-like link.
    fn start(keep_resident: bool, wan: Option<(Duration, f64)>) -> Cluster {
        Self::start_over(keep_resident, wan, false)
    }

    /// [`Cluster::start`], over TLS or (`plaintext`) with
    /// `--insecure-plaintext`.
    fn start_over(keep_resident: bool, wan: Option<(Duration, f64)>, plaintext: bool) -> Cluster {
        let sched = Scheduler::start(if plaintext {
            &["--insecure-plaintext"]
        } else {
            &[]
        });
        let mut hosts = Vec::new();
        for name in ["a", "b"] {
            let mut args = vec!["--capacity-memory".to_string(), "4GiB".into()];
            if keep_resident {
                args.extend(["--keep-resident".into(), KEEP_RESIDENT.into()]);
            }
            if let Some((delay, rate)) = wan {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap();
                let relay = link_emulator(port, delay, rate);
                args.extend([
                    "--listen".into(),
                    port.to_string(),
                    "--advertise".into(),
                    relay,
                ]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            hosts.push(sched.host(name, &args).0);
        }
        Cluster {
            sched,
            _hosts: hosts,
            settle: if wan.is_some() {
                Duration::from_millis(500)
            } else {
                Duration::ZERO
            },
        }
    }

    fn roam(&self, args: &[&str]) -> String {
        self.sched.roam(args)
    }

    fn post(&self, name: &str, path: &str) -> u16 {
        self.sched
            .http
            .post(format!("{}/w/{name}{path}", self.sched.url))
            .send("")
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    fn host(&self, name: &str) -> String {
        self.sched
            .get("/v1/instances")
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["workload"] == name)
            .and_then(|i| i["host"].as_str())
            .unwrap()
            .to_string()
    }
}

/// A TCP relay in front of `to` that delays every byte by `delay` each way
/// and paces each direction at `rate` bytes per second, shared by all the
/// connections through it (so several streams share one link): a WAN link
/// in user space (this kernel has no `netem`). Returns its URL.
fn link_emulator(to: std::net::SocketAddr, delay: Duration, rate: f64) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (up, down) = (Link::new(delay, rate), Link::new(delay, rate));
    std::thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let Ok(server) = std::net::TcpStream::connect(to) else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (up, down) = (up.clone(), down.clone());
            std::thread::spawn(move || pipe(client, server, &up));
            std::thread::spawn(move || pipe(s2, c2, &down));
        }
    });
    url
}

/// One direction of an emulated link: its delay, and when it is next free
/// at its rate.
#[derive(Clone)]
struct Link {
    delay: Duration,
    rate: f64,
    free_at: Arc<std::sync::Mutex<Instant>>,
}

impl Link {
    fn new(delay: Duration, rate: f64) -> Link {
        Link {
            delay,
            rate,
            free_at: Arc::new(std::sync::Mutex::new(Instant::now())),
        }
    }

    /// When `len` bytes that entered the link now come out of it: they are
    /// sent once the link is free (it is then busy for their
    /// transmission) and arrive the delay after. Called as the bytes are
    /// read, so the link serves its connections in the order their bytes
    /// came; reserving it when they go out instead let a connection's
    /// bytes that waited behind its own earlier ones queue behind other
    /// connections' later ones, up to a whole delay more.
    fn slot(&self, len: usize) -> Instant {
        let mut free_at = self.free_at.lock().unwrap();
        let start = Instant::now().max(*free_at);
        *free_at = start + Duration::from_secs_f64(len as f64 / self.rate);
        start + self.delay
    }
}

/// Bytes one direction of a connection may have in the link at once: what
/// a TCP sender may have unacknowledged (Linux's default largest send
/// buffer). A sender with this much in flight waits, as it would on a
/// real link, so it sees the link's rate and not loopback's.
const IN_FLIGHT: usize = 4 << 20;

/// Copy `from` → `to` over `link`, at most [`IN_FLIGHT`] bytes in it.
fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream, link: &Link) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let queued = Arc::new((std::sync::Mutex::new(0usize), std::sync::Condvar::new()));
    let reader_queued = queued.clone();
    let reader_link = link.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let (bytes, drained) = &*reader_queued;
        loop {
            {
                let mut q = bytes.lock().unwrap();
                while *q >= IN_FLIGHT {
                    q = drained.wait(q).unwrap();
                }
            }
            let n = match from.read(&mut buf) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            *bytes.lock().unwrap() += n;
            if tx.send((reader_link.slot(n), buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    let (bytes, drained) = &*queued;
    for (out_at, chunk) in rx {
        if let Some(wait) = out_at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if to.write_all(&chunk).is_err() {
            break;
        }
        *bytes.lock().unwrap() -= chunk.len();
        drained.notify_one();
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Bytes per second over one TCP connection on loopback, moving `mib` MiB;
/// with `link`, through a link emulator (one-way delay, bytes per second).
fn stream_throughput(link: Option<(Duration, f64)>, mib: usize) -> f64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let to = match link {
        Some((delay, rate)) => link_emulator(addr, delay, rate)
            .trim_start_matches("http://")
            .to_string(),
        None => addr.to_string(),
    };
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0usize;
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    });
    let mut s = std::net::TcpStream::connect(to).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let start = Instant::now();
    for _ in 0..mib {
        s.write_all(&chunk).unwrap();
    }
    drop(s);
    let n = reader.join().unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

/// The baseline the migrations' bulk is measured against: `mib` MiB of
/// memory (touched, so not zero pages) over one loopback TCP connection
/// into a buffer faulted in beforehand. Measured once before every
/// migration, so it sees the same machine as they do (these VMs are shared
/// and their speed drifts by a third within a minute).
struct MemoryStream {
    source: Vec<u8>,
    into: Vec<u8>,
}

impl MemoryStream {
    fn new(mib: usize) -> MemoryStream {
        let len = mib << 20;
        MemoryStream {
            source: (0..len).map(|i| (i % 251) as u8 + 1).collect(),
            into: vec![1u8; len],
        }
    }

    /// Seconds one transfer took, over `streams` connections at once (each
    /// an equal share of the memory).
    fn once(&mut self, streams: usize) -> f64 {
        let share = self.source.len().div_ceil(streams);
        let start = Instant::now();
        std::thread::scope(|scope| {
            for (from, into) in self.source.chunks(share).zip(self.into.chunks_mut(share)) {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                scope.spawn(move || {
                    let (mut s, _) = listener.accept().unwrap();
                    s.read_exact(into).unwrap();
                });
                scope.spawn(move || {
                    let mut s = std::net::TcpStream::connect(addr).unwrap();
                    s.write_all(from).unwrap();
                });
            }
        });
        start.elapsed().as_secs_f64()
    }

    fn len(&self) -> f64 {
        self.source.len() as f64
    }
}

#[derive(Default)]
struct Runs {
    downtime_ms: Vec<f64>,
    total_ms: Vec<f64>,
    bytes: Vec<f64>,
    /// Bytes on the wire (fewer than `bytes` where pages were compressed).
    wire: Vec<f64>,
    /// Pre-copy rounds after the full copy, and each move's phases (phase,
    /// milliseconds from the start).
    rounds: Vec<f64>,
    history: Vec<String>,
    /// Seconds of the memory-to-memory baseline over one stream and over
    /// two, one of each before each move.
    baseline_s: Vec<f64>,
    baseline2_s: Vec<f64>,
    /// When each move began and ended (`roam migrate` called, returned).
    windows: Vec<(Instant, Instant)>,
}

fn run(
    c: &Cluster,
    (name, extra): (&str, &[&str]),
    n: usize,
    stop_and_copy: bool,
    mut baseline: Option<(&mut MemoryStream, &std::sync::atomic::AtomicU8)>,
) -> Runs {
    let mut runs = Runs::default();
    for _ in 0..n {
        if let Some((b, phase)) = baseline.as_mut() {
            // The baseline takes both cores: the client's requests meanwhile
            // are no migration's.
            let measuring = phase.swap(0, Ordering::Relaxed);
            runs.baseline_s.push(b.once(1));
            runs.baseline2_s.push(b.once(2));
            phase.store(measuring, Ordering::Relaxed);
        }
        let to = if c.host(name) == "a" { "b" } else { "a" };
        let mut args = vec!["migrate", name, "--to", to, "-o", "json"];
        args.extend_from_slice(extra);
        if stop_and_copy {
            args.push("--stop-and-copy");
        }
        let began = Instant::now();
        if std::env::var_os("ROAM_BENCH_VERBOSE").is_some() {
            // To read beside the hosts' logs (`ROAM_LOG`), which are in UTC.
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() % 86_400_000);
            eprintln!(
                "move of {name} began at {:02}:{:02}:{:02}.{:03} UTC",
                ms / 3_600_000,
                ms / 60_000 % 60,
                ms / 1000 % 60,
                ms % 1000
            );
        }
        let m: serde_json::Value = serde_json::from_str(&c.roam(&args)).unwrap();
        std::thread::sleep(c.settle);
        runs.windows.push((began, Instant::now()));
        runs.downtime_ms
            .push(m["downtime_us"].as_f64().unwrap_or(f64::NAN) / 1000.0);
        runs.total_ms.push(m["total_ms"].as_f64().unwrap());
        runs.bytes.push(m["bytes_sent"].as_f64().unwrap());
        runs.wire.push(m["wire_bytes"].as_f64().unwrap());
        runs.rounds.push(m["rounds"].as_f64().unwrap_or(f64::NAN));
        runs.history.push(m["history"].to_string());
    }
    runs
}

/// Client latencies (ms) of the load, tagged by what was running.
#[derive(Default)]
struct Latencies {
    precopy: Vec<f64>,
    stop_and_copy: Vec<f64>,
}

#[derive(Default)]
struct Row {
    pre: Runs,
    snc: Runs,
    client: Latencies,
    /// When the probes' answers arrived, in order (empty without probes).
    answers: Vec<Instant>,
    /// Times with no move (with probes): the longest gap in them is the
    /// probes' own resolution.
    quiet: Vec<(Instant, Instant)>,
}

impl Runs {
    fn extend(&mut self, other: Runs) {
        self.downtime_ms.extend(other.downtime_ms);
        self.total_ms.extend(other.total_ms);
        self.bytes.extend(other.bytes);
        self.wire.extend(other.wire);
        self.rounds.extend(other.rounds);
        self.history.extend(other.history);
        self.baseline_s.extend(other.baseline_s);
        self.baseline2_s.extend(other.baseline2_s);
        self.windows.extend(other.windows);
    }
}

impl Row {
    fn extend(&mut self, other: Row) {
        self.pre.extend(other.pre);
        self.snc.extend(other.snc);
        self.client.precopy.extend(other.client.precopy);
        self.client.stop_and_copy.extend(other.client.stop_and_copy);
        self.answers.extend(other.answers);
        self.answers.sort();
        self.quiet.extend(other.quiet);
    }
}

/// Clients of the workload through the scheduler's ingress: `n` of them,
/// each sending one request every [`PROBE_EVERY`] on a fixed schedule (the
/// next at its next slot once the last is answered), their slots spread
/// evenly, so that between them a request leaves every `PROBE_EVERY / n`.
/// The longest gap between answers during a move is the downtime clients
/// see, whatever the hosts' clocks say. The schedule is the clock's, not
/// the answers': clients sending back to back would fall into step after
/// the first move (a freeze releases their held requests together), and
/// the gaps would then measure their bursts.
fn probes(
    c: &Cluster,
    name: &str,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<Instant>>> {
    let start = Instant::now();
    (0..n)
        .map(|i| {
            let stop = stop.clone();
            // Writes nothing: its answer only shows the workload served.
            let url = format!("{}/w/{name}/dirty?kib=0", c.sched.url);
            let http = c.sched.http.clone();
            let offset = PROBE_EVERY * i as u32 / n.max(1) as u32;
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                let mut slot = start + offset;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(wait) = slot.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    if http.post(&url).send("").is_ok_and(|r| r.status() == 200) {
                        answers.push(Instant::now());
                    }
                    // The next slot not yet begun (missed ones are skipped).
                    let now = Instant::now();
                    while slot <= now {
                        slot += PROBE_EVERY;
                    }
                }
                answers
            })
        })
        .collect()
}

/// For each window, the longest time (ms) without an answer: between the
/// last answer before a moment in the window and the first after it.
fn gaps(answers: &[Instant], windows: &[(Instant, Instant)]) -> Vec<f64> {
    gaps_at(answers, windows)
        .into_iter()
        .map(|(gap, _)| gap)
        .collect()
}

/// For each move, the longest gap that began between its freeze and its
/// end (the scheduler's `stopping` and `done`, ±30 ms for the clocks
/// and the link): what the commit itself costs clients, apart from what
/// follows the move (the new copy's first checkpoint, a copy of its
/// memory).
fn commit_gaps(answers: &[Instant], runs: &Runs) -> Vec<f64> {
    let at = |history: &serde_json::Value, phase: &str| {
        history
            .as_array()?
            .iter()
            .find(|p| p[0] == phase)?
            .get(1)?
            .as_f64()
    };
    runs.windows
        .iter()
        .zip(&runs.history)
        .filter_map(|(&(from, _), history)| {
            let history: serde_json::Value = serde_json::from_str(history).ok()?;
            let ms = |v: f64| Duration::from_secs_f64(v.max(0.0) / 1e3);
            let begin = from + ms(at(&history, "stopping")? - 30.0);
            let end = from + ms(at(&history, "done")? + 30.0);
            let first = answers.partition_point(|&t| t < begin).saturating_sub(1);
            let last = answers.partition_point(|&t| t <= end);
            Some(
                answers
                    .get(first..=last.min(answers.len().saturating_sub(1)))?
                    .windows(2)
                    .filter(|w| w[0] >= begin && w[0] <= end)
                    .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
                    .fold(0.0, f64::max),
            )
        })
        .collect()
}

/// [`gaps`], each with when it began (ms from its window's start).
fn gaps_at(answers: &[Instant], windows: &[(Instant, Instant)]) -> Vec<(f64, f64)> {
    windows
        .iter()
        .map(|&(from, to)| {
            let first = answers.partition_point(|&t| t < from).saturating_sub(1);
            let last = answers
                .partition_point(|&t| t <= to)
                .min(answers.len().saturating_sub(1));
            answers[first..=last.max(first)]
                .windows(2)
                .map(|w| {
                    let began = w[0].saturating_duration_since(from).as_secs_f64() * 1e3;
                    ((w[1] - w[0]).as_secs_f64() * 1e3, began)
                })
                .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a })
        })
        .collect()
}

/// Deploy `membench` with `mib` MiB of `content` (`random`: does not
/// compress; `json`: JSON-like records), dirty it at `rate` MB/s under
/// load, and move it `n` times each way with pre-copy (each after one
/// transfer of the `baseline`), then stop-and-copy; `extra` goes to every
/// `roam migrate`.
fn measure(
    c: &Cluster,
    (module, extra): (&str, &[&str]),
    (mib, content): (u64, &str),
    rate: u64,
    n: usize,
    baseline: Option<&mut MemoryStream>,
    probing: usize,
) -> Row {
    let name = format!(
        "mb-{mib}-{rate}-{content}{}",
        if extra.is_empty() { "" } else { "-x" }
    );
    let name = name.as_str();
    c.roam(&[
        "deploy",
        module,
        "--name",
        name,
        "--memory",
        &format!("{}MiB", mib + 64),
    ]);
    // In steps of 64 MiB: filling takes CPU time, and a call has a budget.
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.post(
        name,
        &format!("/fill?mib={}&of={mib}&content={content}", mib.min(64)),
    ) != 200
    {
        assert!(Instant::now() < deadline, "membench did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    for at in (64..mib).step_by(64) {
        assert_eq!(
            c.post(name, &format!("/fill?mib=64&at={at}&content={content}")),
            200,
            "membench did not fill {at} MiB on"
        );
    }
    // The load: 100 requests a second, each dirtying rate/100.
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let load = {
        let (stop, phase) = (stop.clone(), phase.clone());
        let url = format!("{}/w/{name}", c.sched.url);
        let kib = rate * 1024 / 100;
        let http = c.sched.http.clone();
        std::thread::spawn(move || {
            let mut lat = Latencies::default();
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let during = phase.load(Ordering::Relaxed);
                let _ = http.post(format!("{url}/dirty?kib={kib}")).send("");
                let ms = sent.elapsed().as_secs_f64() * 1e3;
                // A request counts for a phase only if it began and ended
                // in it (not during a baseline transfer between moves).
                let whole = phase.load(Ordering::Relaxed) == during;
                match during {
                    1 if whole => lat.precopy.push(ms),
                    2 if whole => lat.stop_and_copy.push(ms),
                    _ => {}
                }
                next += Duration::from_millis(10);
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
            lat
        })
    };
    let probing = probes(c, name, probing, &stop);
    // One unmeasured move there and back: the hosts' first migration pays
    // one-time costs (the target compiles or loads the module; on these VMs
    // the first touch of huge pages is slow).
    run(c, (name, extra), 2, false, None);
    // A second with no move: the probes' resolution.
    let quiet = if !probing.is_empty() {
        let from = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        vec![(from, Instant::now())]
    } else {
        Vec::new()
    };
    phase.store(1, Ordering::Relaxed);
    let pre = run(c, (name, extra), n, false, baseline.map(|b| (b, &*phase)));
    phase.store(2, Ordering::Relaxed);
    let snc = run(c, (name, extra), n, true, None);
    stop.store(true, Ordering::Relaxed);
    let client = load.join().unwrap();
    let mut answers: Vec<Instant> = probing
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    answers.sort();
    c.roam(&["delete", name]);
    Row {
        pre,
        snc,
        client,
        answers,
        quiet,
    }
}

/// One table row. `throughput` and `memory` are the cache-hot and the
/// memory-to-memory streams' bytes per second.
fn print_row(label: &str, mut row: Row, throughput: f64, memory: f64, memory2: f64) {
    let pre99 = percentile(&mut row.pre.downtime_ms, 0.99);
    let snc99 = percentile(&mut row.snc.downtime_ms, 0.99);
    let total50 = percentile(&mut row.pre.total_ms, 0.5);
    if std::env::var_os("ROAM_BENCH_VERBOSE").is_some() {
        eprintln!(
            "{label}: downtime ms {:?}, bytes {:?}, on the wire {:?}",
            row.pre.downtime_ms, row.pre.bytes, row.pre.wire
        );
    }
    let bytes50 = percentile(&mut row.pre.bytes, 0.5);
    let wire50 = percentile(&mut row.pre.wire, 0.5);
    println!(
        "| {label} | {:.2} / {:.2} ms | {:.0} ms | {:.1} / {:.1} MiB | {:.0} / {:.0} MB/s | {:.2}× / {:.2}× / {:.2}× | {:.2} / {:.2} ms | {:.0}× | {:.1} / {:.1} ms |",
        percentile(&mut row.pre.downtime_ms, 0.5),
        pre99,
        total50,
        bytes50 / (1 << 20) as f64,
        wire50 / (1 << 20) as f64,
        memory / 1e6,
        memory2 / 1e6,
        (total50 / 1000.0) / (bytes50 / throughput),
        (total50 / 1000.0) / (bytes50 / memory),
        (total50 / 1000.0) / (bytes50 / memory2),
        percentile(&mut row.snc.downtime_ms, 0.5),
        snc99,
        snc99 / pre99,
        max(&row.client.precopy),
        max(&row.client.stop_and_copy),
    );
}

/// `ROAM_BENCH_TLS=1`: the 64 MiB / 10 MB/s row over TLS and with
/// `--insecure-plaintext`, two clusters side by side, their runs
/// interleaved (rounds of 5 moves each way, alternating).
fn tls_against_plaintext(module: &str, throughput: f64, quick: bool) {
    let clusters = [
        ("TLS", Cluster::start_over(true, None, false)),
        (
            "--insecure-plaintext",
            Cluster::start_over(true, None, true),
        ),
    ];
    let rounds = if quick { 2 } else { 6 };
    println!(
        "TLS beside `--insecure-plaintext`: 64 MiB, 10 MB/s, {rounds} rounds of 5 moves each way per cluster, alternating.\n"
    );
    println!("{HEADER}");
    let mut rows = [Row::default(), Row::default()];
    let mut baseline = MemoryStream::new(64);
    for _ in 0..rounds {
        for (i, (_, c)) in clusters.iter().enumerate() {
            rows[i].extend(measure(
                c,
                (module, &[]),
                (64, "random"),
                10,
                5,
                Some(&mut baseline),
                0,
            ));
        }
    }
    let mut figures = Vec::new();
    for ((label, _), mut row) in clusters.iter().zip(rows) {
        figures.push((
            percentile(&mut row.pre.downtime_ms, 0.99),
            percentile(&mut row.pre.total_ms, 0.5),
        ));
        let memory = baseline.len() / percentile(&mut row.pre.baseline_s, 0.5);
        let memory2 = baseline.len() / percentile(&mut row.pre.baseline2_s, 0.5);
        print_row(
            &format!("64 MiB, 10 MB/s, {label}"),
            row,
            throughput,
            memory,
            memory2,
        );
    }
    let ((tls99, tls_total), (plain99, plain_total)) = (figures[0], figures[1]);
    println!(
        "\nTLS − plaintext, pre-copy downtime p99: {:+.2} ms (target ≤ +0.3 ms); TLS ÷ plaintext, total p50: {:.2}× (target ≤ 1.5×).",
        tls99 - plain99,
        tls_total / plain_total
    );
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

const HEADER: &str = "| memory, dirty rate | pre-copy downtime p50 / p99 | pre-copy total p50 | bytes sent / on the wire | memory to memory: one stream / two (median, interleaved) | total ÷ (bytes ÷ throughput): cache-hot stream / memory to memory, one stream / two | stop-and-copy downtime p50 / p99 | stop-and-copy p99 ÷ pre-copy p99 | slowest client request, pre-copy / stop-and-copy |\n|---|---|---|---|---|---|---|---|---|";

/// A comma-separated list of numbers from `var`, or `default`.
fn list(var: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(var).map_or_else(
        |_| default.to_vec(),
        |v| {
            v.split(',')
                .map(|n| n.trim().parse().expect("a comma-separated list of numbers"))
                .collect()
        },
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = std::env::var("ROAM_BENCH_QUICK").is_ok();
    let module = roam_tests::artifacts::MEMBENCH;
    let throughput = stream_throughput(None, 512);
    println!(
        "Loopback: one TCP stream moves {:.0} MB/s from and into a cache-hot 1 MiB buffer (same run); {} cores.\n",
        throughput / 1e6,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    if std::env::var_os("ROAM_BENCH_TLS").is_some() {
        tls_against_plaintext(module, throughput, quick);
        return;
    }
    // `ROAM_BENCH_WAN=only`: the cross-site rows alone.
    let wan_only = std::env::var("ROAM_BENCH_WAN").is_ok_and(|v| v == "only");
    let mibs = if wan_only {
        Vec::new()
    } else {
        list("ROAM_BENCH_MIB", &[1, 64, 256, 1024])
    };
    let rates = list("ROAM_BENCH_RATES", &[0, 1, 10, 50]);
    println!(
        "Memory to memory: the workload's size in MiB over one loopback TCP stream, and over two at once (a half each; migrations use two page streams by default), into a buffer faulted in beforehand, one of each before every pre-copy move (median per row). Hosts run with `--keep-resident {KEEP_RESIDENT}` except where the row says otherwise.\n"
    );
    println!("{HEADER}");
    // What the loopback rows' memory holds (`ROAM_BENCH_CONTENT=json`: on
    // loopback, whether `auto` compresses shows in the bytes on the wire).
    let content = std::env::var("ROAM_BENCH_CONTENT").unwrap_or_else(|_| "random".into());
    let row = |c: &Cluster, mib: u64, rate: u64, label: &str, extra: &[&str]| {
        let n = match (quick, mib) {
            (true, _) => 3,
            (false, 1024) => 3,
            (false, 256) => 5,
            _ => 10,
        };
        let mut baseline = MemoryStream::new(mib as usize);
        let mut row = measure(
            c,
            (module, extra),
            (mib, content.as_str()),
            rate,
            n,
            Some(&mut baseline),
            0,
        );
        let memory = baseline.len() / percentile(&mut row.pre.baseline_s, 0.5);
        let memory2 = baseline.len() / percentile(&mut row.pre.baseline2_s, 0.5);
        print_row(label, row, throughput, memory, memory2);
    };
    for &mib in &mibs {
        let c = Cluster::start(true, None);
        for &rate in &rates {
            row(&c, mib, rate, &format!("{mib} MiB, {rate} MB/s"), &[]);
            // Compression is the sender's choice: on loopback `auto` must
            // cost no more than sending every page as it is.
            if mib == 64 && rate == 10 {
                row(
                    &c,
                    mib,
                    rate,
                    "64 MiB, 10 MB/s, `--compression never`",
                    &["--compression", "never"],
                );
            }
        }
    }
    // Hosts on their defaults: a freed slot's memory goes back to the
    // kernel, so an incoming migration faults all of its memory in.
    if mibs.contains(&64) && rates.contains(&10) {
        let c = Cluster::start(false, None);
        row(
            &c,
            64,
            10,
            "64 MiB, 10 MB/s, hosts without `--keep-resident`",
            &[],
        );
    }
    if std::env::var_os("ROAM_BENCH_MIB").is_some() && std::env::var_os("ROAM_BENCH_WAN").is_none()
    {
        return;
    }
    // Cross-site: every host behind a 25 ms (each way) 1 Gbit/s link.
    let (delay, rate) = (Duration::from_millis(25), 125e6);
    let wan = stream_throughput(Some((delay, rate)), 64);
    println!(
        "\nCross-site: hosts behind a link emulator with 50 ms RTT and 1 Gbit/s; one TCP stream through it moves {:.0} MB/s (same run).\n",
        wan / 1e6
    );
    println!("{WAN_HEADER}");
    let c = Cluster::start(true, Some((delay, rate)));
    for (content, label, extra) in [
        ("json", "64 MiB of JSON-like records, 10 MB/s", &[][..]),
        (
            "json",
            "64 MiB of JSON-like records, 10 MB/s, `--compression never`",
            &["--compression", "never"][..],
        ),
        ("random", "64 MiB pseudo-random, 10 MB/s", &[][..]),
    ] {
        let n = if quick { 3 } else { 5 };
        let row = measure(&c, (module, extra), (64, content), 10, n, None, PROBES);
        print_wan_row(label, row, 64, wan, delay * 2);
    }
}

/// Clients of the workload through the ingress in the cross-site rows
/// ([`probes`]): one request every 4 ms between them.
const PROBES: usize = 32;

/// How often each probe sends: longer than a request takes while a move
/// holds it (one round trip more than usual), so a pre-copy move does not
/// make a probe miss its slot.
const PROBE_EVERY: Duration = Duration::from_millis(128);

const WAN_HEADER: &str = "| memory, dirty rate | longest gap clients saw (32 clients, a request every 4 ms between them), pre-copy p50 / p99 (target ≤ 1 RTT + 5 ms): in the whole move and the 0.5 s after; from the freeze to the end; in a second with no move | the same, stop-and-copy p50 / p99 | pre-copy downtime p50 / p99 (hosts' clocks) | pre-copy total p50 | bytes of memory and state / on the wire (÷ the workload's MiB) | total ÷ (wire ÷ link) | target: 1.3 × (wire ÷ link) + 4 RTT | stop-and-copy downtime p50 / p99 | slowest client request, pre-copy / stop-and-copy |\n|---|---|---|---|---|---|---|---|---|---|";

/// One cross-site row of a workload holding `mib` MiB: against the link's
/// throughput `link` (bytes per second) and its round trip `rtt`.
fn print_wan_row(label: &str, mut row: Row, mib: u64, link: f64, rtt: Duration) {
    let total50 = percentile(&mut row.pre.total_ms, 0.5);
    let bytes50 = percentile(&mut row.pre.bytes, 0.5);
    let wire50 = percentile(&mut row.pre.wire, 0.5);
    let on_link_ms = wire50 / link * 1e3;
    if std::env::var_os("ROAM_BENCH_VERBOSE").is_some() {
        eprintln!(
            "{label}: rounds {:?}, phases of the last move {}",
            row.pre.rounds,
            row.pre.history.last().map_or("", String::as_str)
        );
    }
    let bound_ms = 1.3 * on_link_ms + 4.0 * rtt.as_secs_f64() * 1e3;
    let mut gap = gaps(&row.answers, &row.pre.windows);
    let mut snc_gap = gaps(&row.answers, &row.snc.windows);
    if std::env::var_os("ROAM_BENCH_VERBOSE").is_some() {
        eprintln!(
            "{label}: longest gaps clients saw (ms, and when from the move's start), pre-copy {:.1?}, stop-and-copy {:.1?}; phases {}",
            gaps_at(&row.answers, &row.pre.windows),
            gaps_at(&row.answers, &row.snc.windows),
            row.pre.history.join(" ")
        );
    }
    let gap_target = rtt.as_secs_f64() * 1e3 + 5.0;
    let gap99 = percentile(&mut gap, 0.99);
    let mut commit = commit_gaps(&row.answers, &row.pre);
    if std::env::var_os("ROAM_BENCH_VERBOSE").is_some() {
        eprintln!("{label}: longest gaps from the freeze to the end (ms) {commit:.1?}");
    }
    let commit99 = percentile(&mut commit, 0.99);
    let met = |v: f64| if v <= gap_target { "met" } else { "not met" };
    let quiet = gaps(&row.answers, &row.quiet)
        .into_iter()
        .fold(0.0, f64::max);
    println!(
        "| {label} | {:.1} / {gap99:.1} ms ({}); from the freeze to the end {:.1} / {commit99:.1} ms ({}); with no move {quiet:.1} ms | {:.1} / {:.1} ms | {:.2} / {:.2} ms | {total50:.0} ms | {:.1} / {:.1} MiB ({:.2}×) | {:.2}× | {bound_ms:.0} ms ({}) | {:.2} / {:.2} ms | {:.1} / {:.1} ms |",
        percentile(&mut gap, 0.5),
        met(gap99),
        percentile(&mut commit, 0.5),
        met(commit99),
        percentile(&mut snc_gap, 0.5),
        percentile(&mut snc_gap, 0.99),
        percentile(&mut row.pre.downtime_ms, 0.5),
        percentile(&mut row.pre.downtime_ms, 0.99),
        bytes50 / (1 << 20) as f64,
        wire50 / (1 << 20) as f64,
        wire50 / (mib << 20) as f64,
        total50 / on_link_ms,
        if total50 <= bound_ms {
            "met"
        } else {
            "not met"
        },
        percentile(&mut row.snc.downtime_ms, 0.5),
        percentile(&mut row.snc.downtime_ms, 0.99),
        max(&row.client.precopy),
        max(&row.client.stop_and_copy),
    );
}
