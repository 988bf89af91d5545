//! What a failed event leaves behind: nothing. A trap, a CPU-budget stop,
//! a failing timer or message handler fails that one event; the workload
//! is rolled back to its state before it (memory and key-value data) and
//! serves on, and the event that failed is not run again.

use std::time::{Duration, Instant};

use roam_runtime::abi::codec::Request;
use roam_runtime::abi::{Grants, Place};
use roam_runtime::driver::{self, Checkpoints, DriverOptions, LocalBus, WorkloadHandle};
use roam_runtime::snapshot::codec::{self, DecodeLimits};
use roam_runtime::{InstanceConfig, Module, Runtime, RuntimeConfig, Workload};
use roam_tests::artifacts;

fn config() -> InstanceConfig {
    let mut c = InstanceConfig::new("faulty");
    c.grants = Grants::all();
    c.cpu_budget = Some(Duration::from_millis(200));
    c.info = Place {
        host: "h1".into(),
        site: "s1".into(),
    };
    c
}

/// A runtime with the `faulty` module loaded.
fn load_faulty() -> (Runtime, Module) {
    let rt = Runtime::new(RuntimeConfig {
        slots: 8,
        max_instance_memory: 64 << 20,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let module = rt
        .load_blocking(&std::fs::read(artifacts::FAULTY).unwrap())
        .unwrap();
    (rt, module)
}

async fn faulty(checkpoints: Checkpoints) -> WorkloadHandle {
    let (rt, module) = load_faulty();
    faulty_on(&rt, &module, &LocalBus::new(), "faulty", checkpoints).await
}

/// A `faulty` workload named `name`, driven on `bus`.
async fn faulty_on(
    rt: &Runtime,
    module: &Module,
    bus: &LocalBus,
    name: &str,
    checkpoints: Checkpoints,
) -> WorkloadHandle {
    let options = DriverOptions {
        checkpoints,
        router: Some(bus.router()),
        ..DriverOptions::default()
    };
    faulty_with(rt, module, bus, name, options).await
}

/// A `faulty` workload named `name`, driven on `bus` as `options` say.
async fn faulty_with(
    rt: &Runtime,
    module: &Module,
    bus: &LocalBus,
    name: &str,
    options: DriverOptions,
) -> WorkloadHandle {
    let mut config = config();
    config.name = name.into();
    let w = Workload::start(rt, module, config.clone()).await.unwrap();
    let h = driver::spawn(rt.clone(), module.clone(), config, w, options);
    bus.register(h.clone());
    h
}

/// Whether `f` is still pending after one more poll.
async fn pending<F: std::future::Future + Unpin>(f: &mut F) -> bool {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx).is_pending())
    })
    .await
}

/// A standby the test answers by hand: `h`'s output commits arrive here.
async fn hand_standby(h: &WorkloadHandle) -> tokio::sync::mpsc::Receiver<driver::CommitRequest> {
    let (tx, commits) = tokio::sync::mpsc::channel(1);
    h.commit_to(Some(tx), driver::CommitScope::All).await;
    commits
}

/// A trapping request's answer comes back without waiting for a commit
/// (a failure tells nothing of the state).
async fn fails_at_once(
    call: tokio::task::JoinHandle<Result<roam_runtime::abi::codec::Response, driver::DriverError>>,
) {
    let e = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the workload waited for the standby")
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("unreachable"), "{e}");
}

/// `POST target` to `h`, in a task of its own.
fn spawn_post(
    h: &WorkloadHandle,
    target: &'static str,
) -> tokio::task::JoinHandle<Result<roam_runtime::abi::codec::Response, driver::DriverError>> {
    let h = h.clone();
    tokio::spawn(async move { h.http(req("POST", target)).await })
}

fn req(method: &str, target: &str) -> Request {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Request {
        method: method.into(),
        path: path.into(),
        query: query.into(),
        ..Request::default()
    }
}

async fn text(h: &WorkloadHandle, method: &str, target: &str) -> String {
    let r = h.http(req(method, target)).await.unwrap();
    String::from_utf8(r.body).unwrap()
}

/// Poll `f` until it holds or 10 s have passed.
async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_trap_or_a_cpu_budget_stop_fails_that_request_and_keeps_the_state_before_it() {
    for checkpoints in [Checkpoints::EachEvent, Checkpoints::Every(Duration::ZERO)] {
        let h = faulty(checkpoints).await;
        for n in 1..=3 {
            assert_eq!(text(&h, "POST", "/count/a").await, format!("a={n}/{n}"));
        }
        let err = h.http(req("POST", "/trap/a")).await.unwrap_err();
        assert!(err.to_string().contains("unreachable"), "{err}");
        assert_eq!(
            text(&h, "GET", "/count/a").await,
            "a=3/3",
            "{checkpoints:?}: the trapping request's own count (in memory and kv) is undone, the rest kept"
        );
        let err = h.http(req("POST", "/spin/a")).await.unwrap_err();
        assert!(err.to_string().contains("CPU"), "{err}");
        assert_eq!(
            text(&h, "POST", "/count/a").await,
            "a=4/4",
            "{checkpoints:?}"
        );
        let failures = h.failures();
        assert_eq!((failures.rolled_back, failures.restarted), (2, 0));
        assert!(failures.last.unwrap().contains("CPU"));
    }
}

#[tokio::test]
async fn without_checkpoints_a_failure_restarts_from_the_initial_state() {
    let h = faulty(Checkpoints::Off).await;
    assert_eq!(text(&h, "POST", "/count/a").await, "a=1/1");
    assert!(h.http(req("POST", "/trap/a")).await.is_err());
    assert_eq!(text(&h, "GET", "/count/a").await, "a=0/0");
    assert_eq!(h.failures().restarted, 1);
}

#[tokio::test]
async fn a_failing_timer_is_rolled_back_and_not_fired_again() {
    let h = faulty(Checkpoints::EachEvent).await;
    assert_eq!(text(&h, "POST", "/count/t").await, "t=1/1");
    assert_eq!(text(&h, "POST", "/timer-trap/t?ms=0").await, "set");
    until("the timer to fail", async || h.failures().rolled_back == 1).await;
    // A later timer fires: had the failed one been kept, it would have
    // fired (and failed) again first.
    assert_eq!(text(&h, "POST", "/timer/u?ms=20").await, "set");
    until("the next timer", async || {
        text(&h, "GET", "/count/u").await == "u=1/1"
    })
    .await;
    assert_eq!(text(&h, "GET", "/count/t").await, "t=1/1");
    assert_eq!(h.failures().rolled_back, 1);
}

#[tokio::test]
async fn a_failing_message_is_left_out_and_the_messages_around_it_are_handled_once() {
    let h = faulty(Checkpoints::EachEvent).await;
    for target in ["/send/faulty/x", "/send/faulty/trap:m", "/send/faulty/y"] {
        assert_eq!(text(&h, "POST", target).await, "sent");
    }
    until("the messages", async || {
        text(&h, "GET", "/count/y").await == "y=1/1"
    })
    .await;
    assert_eq!(text(&h, "GET", "/count/x").await, "x=1/1");
    assert_eq!(text(&h, "GET", "/count/m").await, "m=0/0");
    assert_eq!(text(&h, "GET", "/handled").await, "faulty:x\nfaulty:y");
    assert_eq!(h.failures().rolled_back, 1);
}

#[tokio::test]
async fn a_snapshot_of_a_checkpointed_workload_is_its_current_state() {
    let h = faulty(Checkpoints::EachEvent).await;
    for _ in 0..5 {
        text(&h, "POST", "/count/s").await;
    }
    let bytes = h.snapshot().await.unwrap();
    let (rt, module) = load_faulty();
    let snapshot = codec::decode(&bytes, Some(&module.digest()), &DecodeLimits::default()).unwrap();
    let mut w = Workload::restore(&rt, &module, config(), &snapshot, None)
        .await
        .unwrap();
    let r = w.http(&req("GET", "/count/s")).await.unwrap();
    assert_eq!(r.body, b"s=5/5");
}

/// `sync`'s output commit checkpoints once per group of events. A trap in
/// the middle of a group rolls back to the group's start and runs the
/// group's other events again (none of their answers was out yet): every
/// request but the trapping one is applied exactly once, and each caller
/// hears the count its request made.
#[tokio::test]
async fn a_trap_in_a_group_of_held_answers_fails_only_that_request() {
    let h = faulty(Checkpoints::EachEvent).await;
    // The first event takes the first checkpoint; groups begin after it.
    assert_eq!(text(&h, "POST", "/count/a").await, "a=1/1");
    // A standby that takes a few milliseconds per commit, so events queue
    // up behind each one and form groups.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<driver::CommitRequest>(1);
    let commits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let commits = commits.clone();
        tokio::spawn(async move {
            while let Some((_, ack)) = rx.recv().await {
                tokio::time::sleep(Duration::from_millis(3)).await;
                commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = ack.send(Ok(()));
            }
        });
    }
    h.commit_to(Some(tx), driver::CommitScope::All).await;
    let mut calls = Vec::new();
    for i in 0..61 {
        let h = h.clone();
        let target = if i == 30 { "/trap/a" } else { "/count/a" };
        calls.push(tokio::spawn(
            async move { h.http(req("POST", target)).await },
        ));
    }
    let mut counts = Vec::new();
    let mut failed = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(r) => {
                let body = String::from_utf8(r.body).unwrap();
                let (memory, kv) = body
                    .strip_prefix("a=")
                    .and_then(|b| b.split_once('/'))
                    .unwrap();
                assert_eq!(memory, kv, "{body}");
                counts.push(memory.parse::<u32>().unwrap());
            }
            Err(e) => {
                assert!(e.to_string().contains("unreachable"), "{e}");
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 1);
    counts.sort_unstable();
    assert_eq!(counts, (2..=61).collect::<Vec<_>>(), "each applied once");
    assert_eq!(text(&h, "GET", "/count/a").await, "a=61/61");
    assert_eq!(h.failures().rolled_back, 1);
    let commits = commits.load(std::sync::atomic::Ordering::Relaxed);
    assert!(commits < 30, "{commits} commits for 61 events: no groups");
}

/// Output commit is a pipeline: the workload runs on while the standby
/// takes a commit (here, held as long as the test likes), and each answer
/// goes out once the commit of its own state is acknowledged. A request
/// that fails meanwhile rolls back to the state being committed, not to
/// the one before it.
#[tokio::test]
async fn the_next_group_runs_while_the_standby_takes_a_commit() {
    let h = faulty(Checkpoints::EachEvent).await;
    assert_eq!(text(&h, "POST", "/count/a").await, "a=1/1");
    let mut commits = hand_standby(&h).await;
    let call = |target| spawn_post(&h, target);
    let a = call("/count/a");
    let (_, ack_a) = commits
        .recv()
        .await
        .expect("a commit for the first request");
    // The standby has not answered: a failure's answer (it tells nothing of
    // the state) still comes back, so the workload is not waiting for it.
    fails_at_once(call("/trap/a")).await;
    let b = call("/count/a");
    assert!(!a.is_finished(), "an answer went out before its commit");
    ack_a.send(Ok(())).unwrap();
    let answer = a.await.unwrap().unwrap();
    assert_eq!(String::from_utf8(answer.body).unwrap(), "a=2/2");
    let (_, ack_b) = commits
        .recv()
        .await
        .expect("a commit for the second request");
    assert!(!b.is_finished(), "an answer went out before its commit");
    ack_b.send(Ok(())).unwrap();
    let answer = b.await.unwrap().unwrap();
    assert_eq!(String::from_utf8(answer.body).unwrap(), "a=3/3");
}

/// A message leaves a `sync` sender once the standby acknowledged the
/// state that sent it, even while the next group's answers (and the
/// messages it sent) still wait for theirs.
#[tokio::test]
async fn a_committed_message_goes_while_the_next_group_waits() {
    let (rt, module) = load_faulty();
    let bus = LocalBus::new();
    let sender = faulty_on(&rt, &module, &bus, "faulty", Checkpoints::EachEvent).await;
    let peer = faulty_on(&rt, &module, &bus, "peer", Checkpoints::EachEvent).await;
    assert_eq!(text(&sender, "POST", "/count/a").await, "a=1/1");
    let mut commits = hand_standby(&sender).await;
    let call = |target| spawn_post(&sender, target);
    let x = call("/send/peer/x");
    let (_, ack_x) = commits.recv().await.expect("a commit for the first send");
    let y = call("/send/peer/y");
    // Answered at once, after `y` ran: `y` is held in the next group.
    fails_at_once(call("/trap/a")).await;
    assert_eq!(
        text(&peer, "GET", "/handled").await,
        "",
        "sent before its commit"
    );
    ack_x.send(Ok(())).unwrap();
    x.await.unwrap().unwrap();
    until("the committed message", async || {
        text(&peer, "GET", "/handled").await == "faulty:x"
    })
    .await;
    let (_, ack_y) = commits.recv().await.expect("a commit for the second send");
    assert_eq!(text(&peer, "GET", "/handled").await, "faulty:x");
    assert!(!y.is_finished(), "an answer went out before its commit");
    ack_y.send(Ok(())).unwrap();
    y.await.unwrap().unwrap();
    until("the second message", async || {
        text(&peer, "GET", "/handled").await == "faulty:x\nfaulty:y"
    })
    .await;
}

/// A `sync` workload that has never had a standby holds its answers (its
/// state exists nowhere else): they go out once a standby acknowledged the
/// state behind them, or once the scheduler grants it to serve
/// unprotected (no host can keep a standby).
#[tokio::test]
async fn a_sync_workload_without_a_standby_holds_its_answers_until_one_or_the_grant() {
    let (rt, module) = load_faulty();
    for grant in [false, true] {
        let options = DriverOptions {
            checkpoints: Checkpoints::EachEvent,
            hold: Some(driver::CommitScope::All),
            ..DriverOptions::default()
        };
        let h = faulty_with(&rt, &module, &LocalBus::new(), "faulty", options).await;
        assert!(h.waiting_for_standby());
        let mut a = Box::pin(h.http(req("POST", "/count/a")));
        assert!(pending(&mut a).await);
        // Queued after it, answered at once (a failure tells nothing of
        // the state): `a` has run by then, and its answer is held.
        let e = h.http(req("POST", "/trap/a")).await.unwrap_err();
        assert!(e.to_string().contains("unreachable"), "{e}");
        assert!(pending(&mut a).await, "answered with no standby");
        if grant {
            h.commit_to(None, driver::CommitScope::All).await;
        } else {
            let mut commits = hand_standby(&h).await;
            let (snapshot, ack) = commits.recv().await.expect("a commit");
            assert!(!h.waiting_for_standby());
            assert!(snapshot.is_full(), "a new standby gets the whole state");
            assert!(pending(&mut a).await, "answered before its commit");
            ack.send(Ok(())).unwrap();
        }
        let answer = a.await.unwrap();
        assert_eq!(String::from_utf8(answer.body).unwrap(), "a=1/1");
        assert!(!h.waiting_for_standby());
    }
}

/// A live migration does not stop output commit: while its rounds are
/// captured, the workload's answers still wait for the standby's
/// acknowledgement, and the migration's own deltas still rebuild the state.
#[tokio::test]
async fn answers_wait_for_the_standby_during_a_live_migration() {
    let (rt, module) = load_faulty();
    let h = faulty_on(
        &rt,
        &module,
        &LocalBus::new(),
        "faulty",
        Checkpoints::EachEvent,
    )
    .await;
    assert_eq!(text(&h, "POST", "/count/a").await, "a=1/1");
    let mut commits = hand_standby(&h).await;
    let b = spawn_post(&h, "/count/a");
    let (_, ack) = commits.recv().await.expect("a commit");
    ack.send(Ok(())).unwrap();
    assert_eq!(
        String::from_utf8(b.await.unwrap().unwrap().body).unwrap(),
        "a=2/2"
    );

    // The migration's first round.
    let full = h.capture_full(Vec::new()).await.unwrap();
    let c = spawn_post(&h, "/count/a");
    let (_, ack) = tokio::time::timeout(Duration::from_secs(10), commits.recv())
        .await
        .expect("no commit during the migration: the answer went out unprotected")
        .expect("a commit");
    assert!(!c.is_finished(), "answered before its commit");
    ack.send(Ok(())).unwrap();
    assert_eq!(
        String::from_utf8(c.await.unwrap().unwrap().body).unwrap(),
        "a=3/3"
    );

    // The migration's next round: the checkpoints did not move its base.
    let delta = h.capture_delta().await.unwrap();
    let delta = codec::decode(&delta.bytes, None, &DecodeLimits::default()).unwrap();
    let mut target = Workload::restore(&rt, &module, config(), &full, None)
        .await
        .unwrap();
    target.instance_mut().apply(&delta).unwrap();
    let answer = target.http(&req("GET", "/count/a")).await.unwrap();
    assert_eq!(String::from_utf8(answer.body).unwrap(), "a=3/3");

    // Aborted: it serves on, committing as before.
    h.resume().await;
    let d = spawn_post(&h, "/count/a");
    let (_, ack) = commits.recv().await.expect("a commit after the migration");
    ack.send(Ok(())).unwrap();
    assert_eq!(
        String::from_utf8(d.await.unwrap().unwrap().body).unwrap(),
        "a=4/4"
    );
}
