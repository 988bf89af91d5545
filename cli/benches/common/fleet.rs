//! A simulated fleet against a real `roam scheduler`: N hosts in this
//! process join over loopback (300 sites, one join token per site) and
//! heartbeat once a second with the real protocol; the scheduler's CPU is
//! read from `/proc/PID/stat`. With workloads, it deploys them on 200 of
//! the hosts, stops the heartbeats of 100 of those at once and times the
//! restarts of what they held. Used by the `heartbeats` and
//! `control_plane` benches.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use roam_proto::liveness::{Datagram, FULL_REPORT_EVERY, KEY_LEN, Kind};
use roam_proto::{Capacity, Heartbeat, JoinRequest, JoinResponse, TokenRequest, TokenResponse};

use super::{Scheduler, cpu_seconds};

/// Start and stop calls the scheduler made on the simulated hosts:
/// (host index, workload, when).
type Calls = Arc<std::sync::Mutex<Vec<(usize, String, Instant)>>>;

/// One HTTP server for every simulated host: `/h/{host}/v1/instances/{w}`.
async fn fake_hosts() -> (String, Calls) {
    use axum::extract::{Path, State};
    let calls: Calls = Arc::default();
    let app = axum::Router::new()
        .route(
            "/h/{host}/v1/instances/{workload}",
            axum::routing::put(
                |State(calls): State<Calls>, Path((host, workload)): Path<(usize, String)>| async move {
                    calls.lock().unwrap().push((host, workload, Instant::now()));
                    axum::http::StatusCode::CREATED
                },
            )
            .delete(|| async { axum::http::StatusCode::OK }),
        )
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

/// Pool label of simulated host `i`: the first 200 hosts take the
/// re-placement scenario's workloads.
fn pool(i: usize) -> &'static str {
    match i {
        0..100 => "p0",
        100..200 => "p1",
        _ => "none",
    }
}

pub struct Figures {
    pub joins: f64,
    pub beats: f64,
    /// The scheduler's (the leader's) share of one core.
    pub cpu: f64,
    /// The followers' shares of one core, with several replicas.
    pub follower_cpu: Vec<f64>,
    /// Workloads placed per second, from the first deploy to the last
    /// start call.
    pub placements: Option<f64>,
    /// (workloads lost with 100 hosts, seconds from the first restart to the
    /// last, seconds from the scheduler's first `host_down` event to the
    /// last restart).
    pub replaced: Option<(usize, f64, f64)>,
    /// Seconds from stopping the 100 hosts' heartbeats to the scheduler's
    /// first `host_down` event (the heartbeat timeout, 10 s, plus up to a
    /// period: their last beats came up to 1 s before).
    pub detection: Option<f64>,
}

/// How the simulated hosts talk to the scheduler.
#[derive(Clone, Copy, Debug)]
pub struct Fleet {
    /// Over TLS: each host joins with a signing request and presents the
    /// certificate it got (else `--insecure-plaintext` and join tokens).
    pub tls: bool,
    /// Heartbeats with nothing new go as liveness datagrams, as `roam
    /// host` sends them (else every heartbeat is a full report over HTTP,
    /// as hosts did before them).
    pub datagrams: bool,
}

/// A simulated host: how it calls the scheduler and its liveness key.
pub struct SimHost {
    pub name: String,
    pub token: String,
    pub http: reqwest::Client,
    pub liveness: Option<(u64, [u8; KEY_LEN])>,
}

/// [`measure_with`] in plaintext, every heartbeat a full report over HTTP.
pub async fn measure(n: usize, workloads: usize, extra: &[&str], followers: usize) -> Figures {
    measure_with(
        n,
        workloads,
        extra,
        followers,
        Fleet {
            tls: false,
            datagrams: false,
        },
    )
    .await
}

/// Measure `n` hosts (and `workloads` deployed and re-placed) against a
/// scheduler started with `extra` arguments; with `followers`, that many
/// more replicas on the same (etcd) store, started after it (so it leads).
pub async fn measure_with(
    n: usize,
    workloads: usize,
    extra: &[&str],
    followers: usize,
    fleet: Fleet,
) -> Figures {
    let (hosts_url, calls) = fake_hosts().await;
    // The simulated hosts all connect from 127.0.0.1, where real hosts
    // each have their own address: the per-address connection limit goes
    // up to what ten thousand hosts hold.
    let mut args = vec![
        "--heartbeat",
        "1s",
        "--heartbeat-timeout",
        "10s",
        "--max-connections-per-address",
        "16384",
    ];
    if !fleet.tls {
        args.push("--insecure-plaintext");
    }
    args.extend_from_slice(extra);
    let scheduler = Scheduler::start(&args);
    let followers: Vec<Scheduler> = (0..followers).map(|_| Scheduler::follower(&args)).collect();
    let (url, admin, pid) = (
        scheduler.url.clone(),
        scheduler.admin.clone(),
        scheduler.proc.pid(),
    );
    let trust = scheduler
        .ca
        .as_ref()
        .map(|ca| roam_tls::Trust::from_pem(&std::fs::read_to_string(ca).unwrap()).unwrap());
    // The operator's client, and a host's before it has a certificate.
    let http = client(trust.as_ref(), None, 512);
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
            .json(&TokenRequest {
                labels,
                ..TokenRequest::default()
            })
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
        let (http, url, tokens, sem, hosts_url, trust) = (
            http.clone(),
            url.clone(),
            tokens.clone(),
            sem.clone(),
            hosts_url.clone(),
            trust.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let name = format!("host-{i:05}");
            let request = trust.as_ref().map(|_| {
                roam_tls::ca::new_request(&roam_tls::Identity::host(&name).unwrap()).unwrap()
            });
            let r = http
                .post(format!("{url}/v1/hosts/join"))
                .bearer_auth(&tokens[i % 300])
                .json(&JoinRequest {
                    engine_kind: String::new(),
                    csr: request
                        .as_ref()
                        .map(|(_, csr)| csr.clone())
                        .unwrap_or_default(),
                    name: name.clone(),
                    url: format!("{hosts_url}/h/{i}"),
                    labels: [("pool".to_string(), pool(i).to_string())].into(),
                    capacity: Capacity {
                        memory: 64 << 30,
                        slots: 1000,
                    },
                    arch: "x86_64".into(),
                    engine: "bench".into(),
                    protocol: roam_proto::PROTOCOL_VERSION,
                    ..JoinRequest::default()
                })
                .send()
                .await
                .unwrap();
            let status = r.status();
            assert!(status.is_success(), "join: {status}");
            let joined: JoinResponse = r.json().await.unwrap();
            // Each host its own client, presenting its own certificate.
            let http = match (&trust, &request) {
                (Some(trust), Some((key, _))) => {
                    client(Some(trust), Some((&joined.certificate, key)), 1)
                }
                _ => http,
            };
            SimHost {
                name,
                token: tokens[i % 300].clone(),
                http,
                liveness: joined
                    .liveness
                    .map(|g| (g.id, roam_proto::liveness::key_from_hex(&g.key).unwrap())),
            }
        }));
    }
    let mut hosts = Vec::new();
    for t in tasks {
        hosts.push(t.await.unwrap());
    }
    let join_rate = n as f64 / joined.elapsed().as_secs_f64();
    let (beats, stop) = spawn_beats_as(hosts, &url, fleet.datagrams).await;
    eprintln!("heartbeats: measuring {n} hosts for 10 s (scheduler pid {pid})");
    let follower_pids: Vec<u32> = followers.iter().map(|f| f.proc.pid()).collect();
    let before: Vec<f64> = follower_pids.iter().map(|p| cpu_seconds(*p)).collect();
    let measured = Instant::now();
    let (cpu, rate) = window(&beats, || cpu_seconds(pid)).await;
    let follower_cpu = follower_pids
        .iter()
        .zip(before)
        .map(|(p, b)| (cpu_seconds(*p) - b) / measured.elapsed().as_secs_f64())
        .collect();
    let mut placements = None;
    let beats = beats.tasks;
    let mut replaced = None;
    let mut detection = None;
    if workloads > 0 {
        // Deploy workloads that may run on the 200 pool hosts, wait until all
        // run, stop the heartbeats of the 100 `p0` hosts at once, and time the
        // restarts of everything they held.
        let module = std::fs::read(roam_tests::artifacts::COUNTER).unwrap();
        let m: roam_proto::ModuleRef = http
            .put(format!("{url}/v1/modules"))
            .bearer_auth(&admin)
            .body(module)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sem = Arc::new(tokio::sync::Semaphore::new(32));
        let deploying = Instant::now();
        let mut deploys = Vec::new();
        for w in 0..workloads {
            let (http, url, admin, digest, sem) = (
                http.clone(),
                url.clone(),
                admin.clone(),
                m.digest.clone(),
                sem.clone(),
            );
            deploys.push(tokio::spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let spec = roam_proto::WorkloadSpec {
                    name: format!("w-{w:05}"),
                    digest,
                    replicas: 1,
                    selector: "pool in (p0,p1)".into(),
                    memory: 1 << 20,
                    ..roam_proto::WorkloadSpec::default()
                };
                let r = http
                    .post(format!("{url}/v1/workloads"))
                    .bearer_auth(&admin)
                    .json(&spec)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "deploy: {}", r.status());
            }));
        }
        for d in deploys {
            d.await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        while calls.lock().unwrap().len() < workloads {
            assert!(Instant::now() < deadline, "workloads were not all placed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let last = calls.lock().unwrap().iter().map(|(_, _, t)| *t).max();
        placements = last.map(|l| workloads as f64 / l.duration_since(deploying).as_secs_f64());
        let lost: std::collections::BTreeSet<String> = calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(h, _, _)| *h < 100)
            .map(|(_, w, _)| w.clone())
            .collect();
        // The scheduler's own detection: the first `host_down` it
        // announces on its event stream.
        let detected_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
        let mut events = http
            .get(roam_proto::paths::events().on(&url))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert!(events.status().is_success(), "events: {}", events.status());
        let watcher = {
            let detected_at = detected_at.clone();
            tokio::spawn(async move {
                let mut tail = Vec::new();
                while let Ok(Some(chunk)) = events.chunk().await {
                    tail.extend_from_slice(&chunk);
                    if tail.windows(9).any(|w| w == b"host_down") {
                        *detected_at.lock().unwrap() = Some(Instant::now());
                        return;
                    }
                    tail.drain(..tail.len().saturating_sub(8));
                }
            })
        };
        let killed_at = Instant::now();
        for b in beats.iter().take(100) {
            b.abort();
        }
        let detection_of = detected_at.clone();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let times: Vec<Instant> = calls
                .lock()
                .unwrap()
                .iter()
                .filter(|(h, w, t)| *h >= 100 && *t > killed_at && lost.contains(w))
                .map(|(_, _, t)| *t)
                .collect();
            if times.len() >= lost.len() {
                let first = times.iter().min().copied().unwrap_or(killed_at);
                let last = times.iter().max().copied().unwrap_or(killed_at);
                watcher.abort();
                let detected = detected_at
                    .lock()
                    .unwrap()
                    .expect("the scheduler announced no host_down");
                replaced = Some((
                    lost.len(),
                    last.duration_since(first).as_secs_f64(),
                    last.saturating_duration_since(detected).as_secs_f64(),
                ));
                detection = detection_of
                    .lock()
                    .unwrap()
                    .map(|d| d.duration_since(killed_at).as_secs_f64());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "lost workloads were not re-placed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for b in beats {
        b.abort();
    }
    drop(followers);
    drop(scheduler);
    Figures {
        joins: join_rate,
        beats: rate,
        cpu,
        follower_cpu,
        placements,
        replaced,
        detection,
    }
}

/// An HTTP client trusting `trust` (TLS) and presenting `identity` (chain
/// and key PEM), or a plaintext one.
fn client(
    trust: Option<&roam_tls::Trust>,
    identity: Option<(&str, &str)>,
    idle: usize,
) -> reqwest::Client {
    let builder = reqwest::Client::builder().pool_max_idle_per_host(idle);
    match trust {
        None => builder.build().unwrap(),
        Some(trust) => {
            let slot = match identity {
                Some((chain, key)) => {
                    roam_tls::CertSlot::with(roam_tls::ca::certified_key(chain, key).unwrap())
                }
                None => Arc::default(),
            };
            roam_tls::Transport::tls(trust.clone(), slot)
                .client(builder)
                .unwrap()
        }
    }
}

/// The simulated hosts' heartbeat tasks and how many beats were answered
/// with a success.
pub struct Beats {
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    pub sent: Arc<AtomicU64>,
    /// Hosts whose first full report was taken (over TLS, each one's first
    /// is also its TLS handshake).
    pub reported: Arc<AtomicU64>,
    pub hosts: usize,
}

/// [`spawn_beats_as`] for `n` hosts sharing `http`, with `tokens` in
/// turn, every heartbeat a full report over HTTP.
pub async fn spawn_beats(
    http: &reqwest::Client,
    url: &str,
    tokens: &Arc<Vec<String>>,
    n: usize,
) -> (Beats, Arc<std::sync::atomic::AtomicBool>) {
    let hosts = (0..n)
        .map(|i| SimHost {
            name: format!("host-{i:05}"),
            token: tokens[i % tokens.len()].clone(),
            http: http.clone(),
            liveness: None,
        })
        .collect();
    spawn_beats_as(hosts, url, false).await
}

/// Each liveness id's key and the highest counter answered under it.
type Answered = std::collections::HashMap<u64, ([u8; KEY_LEN], Arc<AtomicU64>)>;

/// Sockets the simulated hosts' datagrams go out on (and their answers
/// come back to), shared round-robin.
const SOCKETS: usize = 32;

/// Every host heartbeats once a second, spread evenly over the second, with
/// the real request (path, join token or certificate, JSON body). With
/// `datagrams`, as `roam host` does: a full report first and every
/// [`FULL_REPORT_EVERY`], else a liveness datagram while the last one was
/// answered. A beat counts once the scheduler took it (a 2xx, or an
/// answer that verifies). Setting the flag returned stops them.
pub async fn spawn_beats_as(
    hosts: Vec<SimHost>,
    url: &str,
    datagrams: bool,
) -> (Beats, Arc<std::sync::atomic::AtomicBool>) {
    let n = hosts.len();
    let sent = Arc::new(AtomicU64::new(0));
    let first_reports = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // What each host's answers are checked with, and the highest counter
    // answered, by liveness id.
    let answered: Arc<Answered> = Arc::new(
        hosts
            .iter()
            .filter_map(|h| h.liveness)
            .map(|(id, key)| (id, (key, Arc::new(AtomicU64::new(0)))))
            .collect(),
    );
    let target: std::net::SocketAddr = url
        .split("://")
        .nth(1)
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (answered, sent, socket2) = (answered.clone(), sent.clone(), socket.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 128];
            while let Ok((len, _)) = socket2.recv_from(&mut buf).await {
                let Ok(d) = Datagram::parse(&buf[..len]) else {
                    continue;
                };
                if let Some((key, high)) = answered.get(&d.id)
                    && d.kind != Kind::Beat
                    && Datagram::verify(&buf[..len], key).is_ok()
                {
                    high.fetch_max(d.counter, Ordering::Relaxed);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        sockets.push(socket);
    }
    let mut tasks = Vec::new();
    for (i, host) in hosts.into_iter().enumerate() {
        let (url, sent, stop, answered, first_reports) = (
            url.to_string(),
            sent.clone(),
            stop.clone(),
            answered.clone(),
            first_reports.clone(),
        );
        let socket = sockets[i % SOCKETS].clone();
        tasks.push(tokio::spawn(async move {
            let SimHost {
                name,
                token,
                http,
                liveness,
            } = host;
            let liveness = liveness
                .filter(|_| datagrams)
                .and_then(|(id, key)| answered.get(&id).map(|(_, high)| (id, key, high.clone())));
            let mut counter = 0u64;
            let mut reported: Option<Instant> = None;
            let offset = Duration::from_micros((i as u64 * 1_000_000) / n as u64);
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + offset,
                Duration::from_secs(1),
            );
            // As a host sleeps a period between beats: a late one is not
            // made up for with a burst.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let beat = Heartbeat {
                capacity: Capacity {
                    memory: 64 << 30,
                    slots: 1000,
                },
                arch: "x86_64".into(),
                engine: "bench".into(),
                memory_used: 0,
                instances: Vec::new(),
                standbys: Vec::new(),
            };
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Some((id, key, high)) = &liveness
                    && reported.is_some_and(|at| at.elapsed() < FULL_REPORT_EVERY)
                    && high.load(Ordering::Relaxed) >= counter
                {
                    counter += 1;
                    let datagram = Datagram {
                        kind: Kind::Beat,
                        id: *id,
                        counter,
                    }
                    .seal(key);
                    let _ = socket.send_to(&datagram, target).await;
                    continue;
                }
                if let Ok(r) = http
                    .post(format!("{url}/v1/hosts/{name}/heartbeat"))
                    .bearer_auth(&token)
                    .json(&beat)
                    .send()
                    .await
                    && r.status().is_success()
                {
                    sent.fetch_add(1, Ordering::Relaxed);
                    reported = Some(match reported {
                        // Hosts that joined together would all send their
                        // next full report together: spread them over the
                        // period as hosts that joined over time are, so that
                        // a window sees its steady share of them (each a new
                        // TLS connection: idle ones close after 10 s).
                        None => {
                            first_reports.fetch_add(1, Ordering::Relaxed);
                            let phase = FULL_REPORT_EVERY.mul_f64(i as f64 / n as f64);
                            Instant::now()
                                .checked_sub(phase)
                                .unwrap_or_else(Instant::now)
                        }
                        Some(_) => Instant::now(),
                    });
                    if let Some((_, _, high)) = &liveness {
                        high.fetch_max(counter, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    (
        Beats {
            tasks,
            sent,
            reported: first_reports,
            hosts: n,
        },
        stop,
    )
}

/// Wait until every host's first report was taken (over TLS, its
/// handshake) and those connections went idle and closed (12 s), then
/// measure 10 s, the steady state: (share of
/// one core that `cpu` grew by, heartbeats answered per second).
pub async fn window(beats: &Beats, cpu: impl Fn() -> f64) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while beats.reported.load(Ordering::Relaxed) < beats.hosts as u64 {
        assert!(Instant::now() < deadline, "hosts did not all report");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connections of those first reports close after 10 s idle (the
    // server's keep-alive): measure once they have, the steady state.
    tokio::time::sleep(Duration::from_secs(12)).await;
    eprintln!("heartbeats: every host reported; the 10 s window opens");
    let (cpu0, beats0, t0) = (cpu(), beats.sent.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    (
        (cpu() - cpu0) / elapsed,
        (beats.sent.load(Ordering::Relaxed) - beats0) as f64 / elapsed,
    )
}
