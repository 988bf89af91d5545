//! The ABI's host side: state that moves (timers, queued messages, key-value
//! data) and misuse that must fail one call, never the host.

use std::time::{Duration, Instant};

use roam_runtime::abi::codec::Request;
use roam_runtime::abi::{Grants, Place};
use roam_runtime::driver::{self, DriverOptions, LocalBus};
use roam_runtime::snapshot::codec::{self, DecodeLimits};
use roam_runtime::{
    CallError, HandleError, InstanceConfig, InstantiateError, Module, Runtime, RuntimeConfig, Val,
    Workload,
};
use roam_tests::artifacts;

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        slots: 32,
        max_instance_memory: 64 << 20,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

fn load(rt: &Runtime, path: &str) -> Module {
    rt.load_blocking(&std::fs::read(path).unwrap()).unwrap()
}

fn config(name: &str) -> InstanceConfig {
    let mut c = InstanceConfig::new(name);
    c.grants = Grants::all();
    c.info = Place {
        host: "h1".into(),
        site: "s1".into(),
    };
    c
}

fn get(path: &str) -> Request {
    Request {
        method: "GET".into(),
        path: path.into(),
        ..Request::default()
    }
}

fn put(target: &str, body: &str) -> Request {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Request {
        method: "PUT".into(),
        path: path.into(),
        query: query.into(),
        body: body.as_bytes().to_vec(),
        ..Request::default()
    }
}

async fn move_workload(rt: &Runtime, module: &Module, w: &mut Workload, name: &str) -> Workload {
    let snapshot = w.instance_mut().capture().unwrap();
    let bytes = codec::encode(&snapshot);
    let snapshot = codec::decode(&bytes, Some(&module.digest()), &DecodeLimits::default()).unwrap();
    let mut there = config(name);
    there.info = Place {
        host: "h2".into(),
        site: "s2".into(),
    };
    Workload::restore(
        rt,
        module,
        there,
        &snapshot,
        Some((
            &Place {
                host: "h1".into(),
                site: "s1".into(),
            },
            roam_runtime::abi::codec::MoveKind::Migrated,
        )),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn kv_data_and_pending_timers_survive_a_move_and_fire_on_time() {
    let rt = runtime();
    let module = load(&rt, artifacts::KV_CACHE);
    let mut w = Workload::start(&rt, &module, config("cache"))
        .await
        .unwrap();
    let set_at = Instant::now();
    assert_eq!(
        w.http(&put("/soon?ttl=250", "x")).await.unwrap().status,
        201
    );
    assert_eq!(w.http(&put("/kept", "y")).await.unwrap().status, 201);
    let mut moved = move_workload(&rt, &module, &mut w, "cache").await;
    drop(w);
    assert_eq!(moved.instance().abi().timers.len(), 1);
    assert_eq!(moved.http(&get("/soon")).await.unwrap().status, 200);
    // Wait for the timer on the restored workload's clock, then fire it.
    let wait = moved.next_timer_in().unwrap();
    assert!(wait <= Duration::from_millis(250));
    tokio::time::sleep(wait).await;
    assert_eq!(moved.fire_due_timers().await.unwrap(), 1);
    assert!(set_at.elapsed() >= Duration::from_millis(250));
    assert_eq!(moved.http(&get("/soon")).await.unwrap().status, 404);
    assert_eq!(moved.http(&get("/kept")).await.unwrap().body, b"y");
}

#[tokio::test]
async fn queued_messages_survive_a_move_and_are_delivered_once() {
    let rt = runtime();
    let module = load(&rt, artifacts::SENSOR_AGGREGATOR);
    let mut w = Workload::start(&rt, &module, config("agg")).await.unwrap();
    for v in [1, 2, 3] {
        w.enqueue("probe", format!("t {v}").into_bytes()).unwrap();
    }
    assert_eq!(w.deliver_messages().await.unwrap(), 3);
    // Two more arrive but are not handled before the move.
    w.enqueue("probe", b"t 10".to_vec()).unwrap();
    w.enqueue("probe", b"t 20".to_vec()).unwrap();
    let mut moved = move_workload(&rt, &module, &mut w, "agg").await;
    assert_eq!(moved.deliver_messages().await.unwrap(), 2);
    assert_eq!(moved.deliver_messages().await.unwrap(), 0);
    let body = String::from_utf8(moved.http(&get("/sensors/t")).await.unwrap().body).unwrap();
    assert!(body.contains("\"n\":5"), "{body}");
    assert!(body.contains("\"max\":20"), "{body}");
}

#[tokio::test]
async fn restore_hook_is_told_where_the_workload_moved() {
    let rt = runtime();
    let module = load(&rt, artifacts::COUNTER);
    let mut w = Workload::start(&rt, &module, config("counter"))
        .await
        .unwrap();
    w.http(&Request {
        method: "POST".into(),
        path: "/a".into(),
        ..Request::default()
    })
    .await
    .unwrap();
    let moved = move_workload(&rt, &module, &mut w, "counter").await;
    let logs: Vec<String> = moved
        .instance()
        .abi()
        .logs
        .iter()
        .map(|r| r.message.clone())
        .collect();
    assert_eq!(logs, vec!["Migrated from s1/h1 to s2/h2".to_string()]);
}

#[tokio::test]
async fn messages_are_routed_between_workloads_on_one_host() {
    let rt = runtime();
    let bus = LocalBus::new();
    let options = DriverOptions {
        router: Some(bus.router()),
        ..DriverOptions::default()
    };
    let mut handles = Vec::new();
    for (name, path) in [
        ("sensor-aggregator", artifacts::SENSOR_AGGREGATOR),
        ("sensor-probe", artifacts::SENSOR_PROBE),
    ] {
        let module = load(&rt, path);
        let w = Workload::start(&rt, &module, config(name)).await.unwrap();
        let h = driver::spawn(rt.clone(), module, config(name), w, options.clone());
        bus.register(h.clone());
        handles.push(h);
    }
    for v in 1..=5 {
        let req = Request {
            method: "POST".into(),
            path: "/read".into(),
            query: format!("sensor=t9&value={v}"),
            ..Request::default()
        };
        assert_eq!(handles[1].http(req).await.unwrap().status, 202);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body =
            String::from_utf8(handles[0].http(get("/sensors/t9")).await.unwrap().body).unwrap();
        if body.contains("\"n\":5") {
            assert!(body.contains("\"mean\":3.000"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "messages never arrived: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // An unknown destination is said so by the bus, not lost silently.
    let router = bus.router();
    let outcome = router(
        "x",
        roam_runtime::abi::OutboundMessage {
            to: "nobody".into(),
            body: vec![],
            id: Default::default(),
        },
    )
    .await;
    assert!(
        matches!(&outcome, roam_runtime::driver::Delivery::Unknown(why) if why.contains("no workload named `nobody`")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_resent_message_is_acknowledged_and_handled_once() {
    let rt = runtime();
    let module = load(&rt, artifacts::SENSOR_AGGREGATOR);
    let name = "sensor-aggregator";
    let w = Workload::start(&rt, &module, config(name)).await.unwrap();
    let h = driver::spawn(
        rt.clone(),
        module,
        config(name),
        w,
        DriverOptions::default(),
    );
    let reading = |seq| roam_runtime::abi::MessageId { stream: 42, seq };
    for (seq, body) in [
        (1, "t1 10"),
        (2, "t1 20"),
        (2, "t1 20"),
        (1, "t1 10"),
        (3, "t1 30"),
    ] {
        // Every copy is acknowledged: the sender may forget it.
        h.message("probe", reading(seq), body.as_bytes().to_vec())
            .await
            .unwrap();
    }
    let body = String::from_utf8(h.http(get("/sensors/t1")).await.unwrap().body).unwrap();
    assert!(
        body.contains("\"n\":3") && body.contains("\"mean\":20.000"),
        "{body}"
    );
    // Another stream of the same sender (after its rollback) is new.
    h.message(
        "probe",
        roam_runtime::abi::MessageId { stream: 43, seq: 1 },
        b"t1 40".to_vec(),
    )
    .await
    .unwrap();
    let body = String::from_utf8(h.http(get("/sensors/t1")).await.unwrap().body).unwrap();
    assert!(body.contains("\"n\":4"), "{body}");
}

/// A minimal workload in WAT whose exports misuse the ABI on purpose.
const ABUSER: &str = r#"(module
  (import "roam" "log" (func $log (param i32 i32 i32)))
  (import "roam" "kv_set" (func $kv_set (param i32 i32 i32 i32) (result i32)))
  (import "roam" "kv_get" (func $kv_get (param i32 i32 i32 i32) (result i64)))
  (import "roam" "random_fill" (func $random (param i32 i32) (result i32)))
  (import "roam" "send" (func $send (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $mode (mut i32) (i32.const 0))
  (data (i32.const 0) "ok")
  (func (export "roam_abi_version") (result i32) (global.get $version))
  (global $version (mut i32) (i32.const 1))
  (func (export "set_version") (param i32) (global.set $version (local.get 0)))
  (func (export "roam_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "set_mode") (param i32) (global.set $mode (local.get 0)))
  ;; A valid response is stored at 256: status 200, 0 headers, body "ok".
  (data (i32.const 256) "\c8\00\00\00\00\00\00\00\02\00\00\00ok")
  (func (export "roam_http") (param i32 i32) (result i64)
    (if (i32.eq (global.get $mode) (i32.const 1)) (then unreachable))
    ;; 2: a response pointer outside memory
    (if (i32.eq (global.get $mode) (i32.const 2)) (then (return (i64.const 0x7fff000000000010))))
    ;; 3: a malformed response (status 7)
    (if (i32.eq (global.get $mode) (i32.const 3)) (then
      (i32.store (i32.const 512) (i32.const 7))
      (return (i64.const 0x000002000000000c))))
    (i64.const 0x000001000000000e))
  (func (export "log_oob") (call $log (i32.const 2) (i32.const 65530) (i32.const 100)))
  (func (export "log_huge") (call $log (i32.const 2) (i32.const 0) (i32.const 0x7fffffff)))
  (func (export "kv_huge") (result i32) (call $kv_set (i32.const 0) (i32.const 2) (i32.const 0) (i32.const 0x7fffffff)))
  (func (export "kv_negative") (result i32) (call $kv_set (i32.const 0) (i32.const -5) (i32.const 0) (i32.const 1)))
  (func (export "kv_roundtrip") (result i64)
    (drop (call $kv_set (i32.const 0) (i32.const 2) (i32.const 0) (i32.const 2)))
    (call $kv_get (i32.const 0) (i32.const 2) (i32.const 2048) (i32.const 16)))
  (func (export "random_huge") (result i32) (call $random (i32.const 0) (i32.const 0x1000000)))
  (func (export "send_oob") (result i32) (call $send (i32.const 0) (i32.const 2) (i32.const -16) (i32.const 32)))
)"#;

fn abuser(rt: &Runtime) -> Module {
    rt.load_blocking(&wat::parse_str(ABUSER).unwrap()).unwrap()
}

async fn call_i32(w: &mut Workload, name: &str) -> i32 {
    match w.instance_mut().call(name, &[]).await.unwrap().as_slice() {
        [Val::I32(v)] => *v,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn out_of_bounds_pointers_trap_that_call_only() {
    let rt = runtime();
    let module = abuser(&rt);
    let mut w = Workload::start(&rt, &module, config("abuser"))
        .await
        .unwrap();
    let err = w.instance_mut().call("log_oob", &[]).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("roam::log: guest buffer 0xfffa+100 is outside its 65536-byte memory"),
        "{err}"
    );
    let mut other = Workload::start(&rt, &module, config("abuser-2"))
        .await
        .unwrap();
    let err = other
        .instance_mut()
        .call("send_oob", &[])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("roam::send: guest buffer"),
        "{err}"
    );
    // Another workload on the same host keeps serving.
    let mut healthy = Workload::start(&rt, &module, config("healthy"))
        .await
        .unwrap();
    assert_eq!(healthy.http(&get("/")).await.unwrap().body, b"ok");
}

#[tokio::test]
async fn huge_and_negative_lengths_get_error_codes_not_allocations() {
    let rt = runtime();
    let module = abuser(&rt);
    let mut w = Workload::start(&rt, &module, config("abuser"))
        .await
        .unwrap();
    assert_eq!(
        call_i32(&mut w, "kv_huge").await,
        roam_runtime::abi::codes::TOO_LARGE
    );
    assert_eq!(
        call_i32(&mut w, "kv_negative").await,
        roam_runtime::abi::codes::INVALID
    );
    assert_eq!(
        call_i32(&mut w, "random_huge").await,
        roam_runtime::abi::codes::TOO_LARGE
    );
    // A log line with a huge length is cut to the quota, never copied whole.
    w.instance_mut().call("log_huge", &[]).await.unwrap();
    let line = w.instance().abi().logs.back().unwrap();
    assert_eq!(
        line.message.chars().count(),
        w.instance().abi().quotas.max_log_line
    );
}

#[tokio::test]
async fn grants_are_checked_at_configuration_and_on_every_call() {
    let rt = runtime();
    let module = abuser(&rt);
    let mut denied = config("abuser");
    denied.grants = Grants::default();
    let err = Workload::start(&rt, &module, denied).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "workload `abuser` imports `roam::kv_set` but is not granted `kv`"
    );
    let mut w = Workload::start(&rt, &module, config("abuser"))
        .await
        .unwrap();
    match w
        .instance_mut()
        .call("kv_roundtrip", &[])
        .await
        .unwrap()
        .as_slice()
    {
        [Val::I64(2)] => {}
        other => panic!("{other:?}"),
    }
    w.instance_mut().abi_mut().grants.kv = false;
    match w
        .instance_mut()
        .call("kv_roundtrip", &[])
        .await
        .unwrap()
        .as_slice()
    {
        [Val::I64(v)] => assert_eq!(*v, i64::from(roam_runtime::abi::codes::DENIED)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn broken_responses_and_traps_are_errors_for_that_request() {
    let rt = runtime();
    let module = abuser(&rt);
    let mut w = Workload::start(&rt, &module, config("abuser"))
        .await
        .unwrap();
    assert_eq!(w.http(&get("/")).await.unwrap().status, 200);
    for (mode, expect) in [
        (2, "outside guest memory"),
        (3, "status 7 is not an HTTP status"),
    ] {
        w.instance_mut()
            .call("set_mode", &[Val::I32(mode)])
            .await
            .unwrap();
        let err = w.http(&get("/")).await.unwrap_err();
        assert!(matches!(err, HandleError::Abi(_)), "{err}");
        assert!(err.to_string().contains(expect), "{err}");
    }
    w.instance_mut()
        .call("set_mode", &[Val::I32(1)])
        .await
        .unwrap();
    let err = w.http(&get("/")).await.unwrap_err();
    assert!(
        matches!(err, HandleError::Call(CallError::Trap { .. })),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_abi_version_and_missing_exports_are_refused_by_name() {
    let rt = runtime();
    let v2 = ABUSER.replace(
        "(global $version (mut i32) (i32.const 1))",
        "(global $version (mut i32) (i32.const 2))",
    );
    let module = rt.load_blocking(&wat::parse_str(&v2).unwrap()).unwrap();
    let err = Workload::start(&rt, &module, config("future"))
        .await
        .unwrap_err();
    assert!(matches!(err, InstantiateError::Abi(_)));
    assert!(
        err.to_string()
            .contains("built for Roam ABI v2, but this host implements ABI v1"),
        "{err}"
    );
    let no_alloc = ABUSER.replace("(export \"roam_alloc\")", "");
    let module = rt
        .load_blocking(&wat::parse_str(&no_alloc).unwrap())
        .unwrap();
    let err = Workload::start(&rt, &module, config("partial"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("exports no `roam_alloc` function"),
        "{err}"
    );
}

/// The abuser driven by a driver without checkpoints, its first instance
/// trapping on every request (mode 1); instances that replace it serve
/// (mode 0). (With checkpoints, it would be rolled back to mode 1.)
async fn trapping_driver() -> driver::WorkloadHandle {
    let rt = runtime();
    let module = abuser(&rt);
    let mut w = Workload::start(&rt, &module, config("abuser"))
        .await
        .unwrap();
    w.instance_mut()
        .call("set_mode", &[Val::I32(1)])
        .await
        .unwrap();
    driver::spawn(
        rt.clone(),
        module,
        config("abuser"),
        w,
        DriverOptions {
            checkpoints: driver::Checkpoints::Off,
            ..DriverOptions::default()
        },
    )
}

#[tokio::test]
async fn the_driver_answers_a_trapping_request_with_an_error_and_keeps_serving() {
    let h = trapping_driver().await;
    let err = h.http(get("/")).await.unwrap_err();
    assert!(err.to_string().contains("unreachable"), "{err}");
    // The driver replaced the poisoned instance; the workload serves again.
    assert_eq!(h.http(get("/")).await.unwrap().body, b"ok");
}

/// Memory lent out for a migration's first round stays the workload's own
/// until it is given back: an instance that fails meanwhile is replaced
/// only then (the copy never reads a freed or reused slot), and the
/// workload serves again right after.
#[tokio::test]
async fn the_driver_replaces_a_failed_instance_only_after_its_memory_is_given_back() {
    if !roam_runtime::dirty::supported() {
        eprintln!("skipped: no kernel write tracking here");
        return;
    }
    let h = trapping_driver().await;
    let (_, memory) = h.capture_live().await.unwrap();
    let mut before = vec![0u8; memory.len()];
    assert_eq!(memory.read(0, &mut before), before.len());
    assert!(h.capture_live().await.is_err(), "lent once at a time");
    // This request traps; the driver answers it, then must wait for the
    // memory before it replaces the instance.
    assert!(h.http(get("/")).await.is_err());
    let waiting = tokio::time::timeout(Duration::from_millis(300), h.http(get("/"))).await;
    assert!(
        waiting.is_err(),
        "served while the failed instance's memory was lent"
    );
    // Still the failed instance's memory (the trapping request wrote into
    // it, so not byte for byte), not a freed slot reading as zeros.
    let mut now = vec![0u8; memory.len()];
    memory.read(0, &mut now);
    let data = |m: &[u8]| m.iter().filter(|&&b| b != 0).count();
    assert!(data(&before) > 0 && data(&now) >= data(&before) / 2);
    drop(memory);
    assert_eq!(h.http(get("/")).await.unwrap().body, b"ok");
}

#[tokio::test]
async fn a_delta_of_a_module_that_cannot_change_its_tables_leaves_them_out_and_applies() {
    let rt = runtime();
    let module = load(&rt, artifacts::COUNTER);
    let mut a = Workload::start(&rt, &module, config("counter"))
        .await
        .unwrap();
    let post = Request {
        method: "POST".into(),
        path: "/a".into(),
        ..Request::default()
    };
    a.http(&post).await.unwrap();
    a.instance_mut().set_track_dirty(true);
    let full = a.instance_mut().capture().unwrap();
    assert!(!full.tables.is_empty(), "a full capture has every table");
    let mut b = Workload::restore(&rt, &module, config("counter"), &full, None)
        .await
        .unwrap();
    a.http(&post).await.unwrap();
    let delta = a.instance_mut().capture_delta().unwrap();
    assert!(
        delta.tables.is_empty(),
        "the counter never changes its table"
    );
    b.instance_mut().apply(&delta).unwrap();
    let body = String::from_utf8(b.http(&get("/a")).await.unwrap().body).unwrap();
    assert!(body.contains("\"count\":2"), "{body}");
}
