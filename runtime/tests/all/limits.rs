//! A misbehaving guest fails its own call with a clear error; the host and
//! other instances carry on.

use std::time::{Duration, Instant};

use roam_runtime::{CallError, InstanceConfig, Val};

use super::*;

#[tokio::test]
async fn runaway_loop_is_stopped_as_a_cpu_budget_error() {
    let rt = runtime();
    let module = load_wat(&rt, LIMITS_WAT);
    let budget = Duration::from_millis(50);
    let mut cfg = config();
    cfg.cpu_budget = Some(budget);
    let mut spinner = rt.instantiate(&module, cfg).await.unwrap();
    let started = Instant::now();
    let err = spinner.call("spin", &[]).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, CallError::CpuBudgetExceeded { budget: b, .. } if b == budget),
        "{err}"
    );
    assert!(err.to_string().contains("exceeded its CPU budget"), "{err}");
    // Generous bound against a loaded machine; the tick count is what stops it.
    assert!(took < budget * 20, "took {took:?}");
    // The instance is poisoned, the host is fine.
    assert!(matches!(
        spinner.call("ok", &[]).await,
        Err(CallError::Poisoned)
    ));
    let mut other = rt.instantiate(&module, config()).await.unwrap();
    assert_eq!(call_i32(&mut other, "ok", &[]).await, 42);
}

#[tokio::test]
async fn memory_growth_beyond_the_cap_is_refused_to_the_guest() {
    let rt = runtime();
    let module = load_wat(&rt, LIMITS_WAT);
    let mut cfg = config();
    cfg.memory_limit = 4 * 65536;
    let mut inst = rt.instantiate(&module, cfg).await.unwrap();
    assert_eq!(call_i32(&mut inst, "try_grow", &[Val::I32(3)]).await, 1);
    assert_eq!(call_i32(&mut inst, "try_grow", &[Val::I32(1)]).await, -1);
    // The guest handled -1; the instance still works.
    assert_eq!(call_i32(&mut inst, "ok", &[]).await, 42);
}

#[tokio::test]
async fn memory_bomb_fails_with_a_memory_limit_error() {
    let rt = runtime();
    let module = load_wat(&rt, LIMITS_WAT);
    let mut cfg = config();
    cfg.memory_limit = 2 << 20;
    let mut inst = rt.instantiate(&module, cfg).await.unwrap();
    let err = inst.call("bomb", &[]).await.unwrap_err();
    match &err {
        CallError::MemoryLimitExceeded {
            limit, requested, ..
        } => {
            assert_eq!(*limit, 2 << 20);
            assert!(*requested > 2 << 20);
        }
        other => panic!("expected a memory limit error, got {other}"),
    }
    assert!(
        err.to_string().contains("over its limit of 2097152 bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn deep_recursion_is_a_trap_not_a_crash() {
    let rt = runtime();
    let module = load_wat(&rt, LIMITS_WAT);
    let mut inst = rt.instantiate(&module, config()).await.unwrap();
    let err = inst.call("recurse", &[Val::I32(0)]).await.unwrap_err();
    assert!(
        matches!(&err, CallError::Trap { message, .. } if message.contains("call stack exhausted")),
        "{err}"
    );
}

#[tokio::test]
async fn trap_poisons_the_instance_and_a_snapshot_brings_it_back() {
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    let mut inst = rt.instantiate(&module, config()).await.unwrap();
    inst.call("step", &[Val::I32(7)]).await.unwrap();
    let want = call_i64(&mut inst, "digest", &[]).await;
    let snapshot = inst.capture().unwrap();
    let err = inst.call("trap", &[]).await.unwrap_err();
    match &err {
        CallError::Trap {
            message, backtrace, ..
        } => {
            assert!(message.contains("unreachable"), "{message}");
            assert!(!backtrace.is_empty());
        }
        other => panic!("expected a trap, got {other}"),
    }
    assert!(inst.capture().is_err());
    let mut back = rt.restore(&module, config(), &snapshot).await.unwrap();
    assert_eq!(call_i64(&mut back, "digest", &[]).await, want);
}

#[tokio::test]
async fn wrong_arguments_are_refused_without_poisoning() {
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    let mut inst = rt.instantiate(&module, config()).await.unwrap();
    let err = inst.call("step", &[Val::I64(1)]).await.unwrap_err();
    assert!(matches!(err, CallError::BadArguments { .. }), "{err}");
    let err = inst.call("nope", &[]).await.unwrap_err();
    assert!(matches!(err, CallError::NoSuchExport(_)), "{err}");
    call_i64(&mut inst, "step", &[Val::I32(1)]).await;
}

#[tokio::test]
async fn instance_slots_run_out_cleanly() {
    let rt = Runtime::new(RuntimeConfig {
        slots: 3,
        max_instance_memory: 1 << 20,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let module = load_wat(&rt, LIMITS_WAT);
    let mut cfg = InstanceConfig::new("t");
    cfg.memory_limit = 1 << 20;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(rt.instantiate(&module, cfg.clone()).await.unwrap());
    }
    let err = rt.instantiate(&module, cfg.clone()).await.unwrap_err();
    assert!(
        matches!(err, roam_runtime::InstantiateError::NoCapacity(_)),
        "{err}"
    );
    held.pop();
    rt.instantiate(&module, cfg).await.unwrap();
}

/// A host with many slots sizes each memory's reservation from its largest
/// instance memory (explicit bounds checks) instead of 4 GiB: thousands of
/// instances fit, and every access is still checked against the memory's
/// current size.
#[tokio::test]
async fn many_slots_get_cap_sized_memories_that_still_check_bounds() {
    const WAT: &str = r#"(module
        (memory 1)
        (func (export "peek") (param i32) (result i32) (i32.load8_u (local.get 0)))
        (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))"#;
    let rt = Runtime::new(RuntimeConfig {
        slots: 5000,
        max_instance_memory: 4 * 65536,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let module = load_wat(&rt, WAT);
    // One compiled copy per module: a second load of the same bytes is it.
    let again = load_wat(&rt, WAT);
    assert_eq!(again.digest(), module.digest());
    assert!(rt.loaded(&module.digest()).is_some());
    let mut cfg = InstanceConfig::new("t");
    cfg.memory_limit = 4 * 65536;
    let mut held = Vec::new();
    for _ in 0..1000 {
        held.push(rt.instantiate(&module, cfg.clone()).await.unwrap());
    }
    let inst = &mut held[999];
    assert_eq!(call_i32(inst, "peek", &[Val::I32(65535)]).await, 0);
    let err = inst.call("peek", &[Val::I32(65536)]).await.unwrap_err();
    assert!(err.to_string().contains("out of bounds"), "{err}");
    let inst = &mut held[998];
    assert_eq!(call_i32(inst, "grow", &[Val::I32(3)]).await, 1);
    assert_eq!(call_i32(inst, "peek", &[Val::I32(4 * 65536 - 1)]).await, 0);
    assert_eq!(call_i32(inst, "grow", &[Val::I32(1)]).await, -1);
    let err = inst.call("peek", &[Val::I32(4 * 65536)]).await.unwrap_err();
    assert!(err.to_string().contains("out of bounds"), "{err}");
}
