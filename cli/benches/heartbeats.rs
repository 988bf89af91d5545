//! Heartbeat ingest at fleet scale: `cargo bench -p roam --bench heartbeats`.
//!
//! Starts a real `roam scheduler` process, joins N simulated hosts (300
//! sites, one join token per site) over loopback, lets each heartbeat once a
//! second with the real protocol, and reads the scheduler's CPU time from
//! `/proc/PID/stat` over a 10 s window: the share of one core that N hosts'
//! heartbeats cost. The simulated hosts run in this process.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark reports failure by panicking"
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use roam_proto::{Capacity, Heartbeat, JoinRequest, TokenRequest, TokenResponse};

/// CPU seconds the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields[11].parse().unwrap();
    let stime: f64 = fields[12].parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (utime + stime) / ticks
}

async fn measure(n: usize) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("scheduler");
    let mut child = Command::new(env!("CARGO_BIN_EXE_roam"))
        .args([
            "scheduler",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--heartbeat",
            "1s",
            "--heartbeat-timeout",
            "10s",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let url = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split("on http://")
                .nth(1)
                .map(|a| format!("http://{}", a.trim()))
        })
        .unwrap();
    let admin = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let mut tokens = Vec::new();
    for site in 0..300 {
        let labels = [
            ("site".to_string(), format!("site-{site:03}")),
            ("provider".to_string(), format!("p{}", site % 20)),
            (
                "jurisdiction".to_string(),
                ["EU", "US", "APAC"][site % 3].to_string(),
            ),
        ]
        .into();
        let t: TokenResponse = http
            .post(format!("{url}/v1/tokens"))
            .bearer_auth(&admin)
            .json(&TokenRequest { labels })
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(t.token);
    }
    let tokens = Arc::new(tokens);
    // Join everyone, 64 at a time.
    let joined = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (http, url, tokens, sem) = (http.clone(), url.clone(), tokens.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let r = http
                .post(format!("{url}/v1/hosts/join"))
                .bearer_auth(&tokens[i % 300])
                .json(&JoinRequest {
                    name: format!("host-{i:05}"),
                    url: format!("http://127.0.0.1:9/h/{i}"),
                    capacity: Capacity {
                        memory: 64 << 30,
                        slots: 1000,
                    },
                    arch: "x86_64".into(),
                    engine: "bench".into(),
                    ..JoinRequest::default()
                })
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "join: {}", r.status());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let join_rate = n as f64 / joined.elapsed().as_secs_f64();
    // Heartbeats: every host once a second, spread over the second.
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut beats = Vec::new();
    for i in 0..n {
        let (http, url, tokens, sent, stop) = (
            http.clone(),
            url.clone(),
            tokens.clone(),
            sent.clone(),
            stop.clone(),
        );
        beats.push(tokio::spawn(async move {
            let offset = Duration::from_micros((i as u64 * 1_000_000) / n as u64);
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + offset,
                Duration::from_secs(1),
            );
            let beat = Heartbeat {
                capacity: Capacity {
                    memory: 64 << 30,
                    slots: 1000,
                },
                arch: "x86_64".into(),
                engine: "bench".into(),
                memory_used: 0,
                instances: Vec::new(),
            };
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Ok(r) = http
                    .post(format!("{url}/v1/hosts/host-{i:05}/heartbeat"))
                    .bearer_auth(&tokens[i % 300])
                    .json(&beat)
                    .send()
                    .await
                    && r.status().is_success()
                {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Let the rate settle, then measure over 10 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu0, beats0, t0) = (
        cpu_seconds(child.id()),
        sent.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(child.id()) - cpu0) / elapsed;
    let rate = (sent.load(Ordering::Relaxed) - beats0) as f64 / elapsed;
    stop.store(true, Ordering::Relaxed);
    for b in beats {
        b.abort();
    }
    let _ = child.kill();
    let _ = child.wait();
    (join_rate, rate, cpu)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| simulated hosts | joins/s | heartbeats/s received | scheduler CPU (share of one core) |"
    );
    println!("|---|---|---|---|");
    for n in [1_000usize, 10_000] {
        let (joins, rate, cpu) = rt.block_on(measure(n));
        println!("| {n} | {joins:.0} | {rate:.0} | {:.1}% |", cpu * 100.0);
    }
}
