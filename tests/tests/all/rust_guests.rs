//! A Rust reactor keeps its state in the heap, behind the allocator and the
//! compiler's stack pointer; capture and restore must carry all of it.

use std::sync::LazyLock;

use proptest::prelude::*;
use roam_runtime::snapshot::codec::{self, DecodeLimits};
use roam_runtime::{Instance, InstanceConfig, Module, Runtime, RuntimeConfig, Snapshot, Val};
use roam_tests::artifacts;

struct Fixture {
    rt: Runtime,
    module: Module,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let rt = Runtime::new(RuntimeConfig {
        slots: 32,
        max_instance_memory: 64 << 20,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let bytes = std::fs::read(artifacts::STATEFUL).unwrap();
    let module = rt.load_blocking(&bytes).unwrap();
    Fixture { rt, module }
});

fn config() -> InstanceConfig {
    let mut c = InstanceConfig::new("stateful");
    c.track_dirty = true;
    c
}

async fn u64_call(i: &mut Instance, name: &str, args: &[Val]) -> u64 {
    match i.call(name, args).await.unwrap().as_slice() {
        [Val::I64(v)] => *v as u64,
        other => panic!("{name} returned {other:?}"),
    }
}

fn through_bytes(s: &Snapshot) -> Snapshot {
    codec::decode(&codec::encode(s), None, &DecodeLimits::default()).unwrap()
}

#[tokio::test]
async fn rust_heap_state_survives_restore() {
    let f = &*FIXTURE;
    let mut a = f.rt.instantiate(&f.module, config()).await.unwrap();
    for i in 0..100u32 {
        u64_call(
            &mut a,
            "push",
            &[Val::I32(i as i32), Val::I64(i64::from(i) * 7)],
        )
        .await;
    }
    u64_call(&mut a, "blob", &[Val::I32(512), Val::I64(9)]).await;
    let before = u64_call(&mut a, "digest", &[]).await;
    let snapshot = through_bytes(&a.capture().unwrap());
    assert!(snapshot.memories[0].byte_len > 512 * 1024);
    let mut b = f.rt.restore(&f.module, config(), &snapshot).await.unwrap();
    assert_eq!(u64_call(&mut b, "digest", &[]).await, before);
    // Both continue identically, including allocation and deep recursion.
    for (x, y) in [(1, 2), (3, 4), (5, 6)] {
        let want = u64_call(&mut a, "push", &[Val::I32(x), Val::I64(y)]).await;
        assert_eq!(
            u64_call(&mut b, "push", &[Val::I32(x), Val::I64(y)]).await,
            want
        );
    }
    assert_eq!(
        u64_call(&mut b, "deep", &[Val::I32(2000)]).await,
        u64_call(&mut a, "deep", &[Val::I32(2000)]).await
    );
}

#[tokio::test]
async fn guest_stdout_is_captured_per_instance() {
    let f = &*FIXTURE;
    let mut a = f.rt.instantiate(&f.module, config()).await.unwrap();
    let mut b = f.rt.instantiate(&f.module, config()).await.unwrap();
    a.call("hello", &[]).await.unwrap();
    a.call("hello", &[]).await.unwrap();
    assert_eq!(
        a.stdout().contents(),
        b"hello from stateful\nhello from stateful\n"
    );
    assert!(b.stdout().contents().is_empty());
    b.call("hello", &[]).await.unwrap();
    // The log cursor moves with the workload.
    let restored =
        f.rt.restore(&f.module, config(), &a.capture().unwrap())
            .await
            .unwrap();
    assert_eq!(restored.stdout().cursor(), 40);
}

#[derive(Clone, Debug)]
enum Op {
    Push(u32, u64),
    Blob(u32, u64),
    DropBlob,
    Deep(u32),
    MoveFull,
    StartReplica,
    SyncReplica,
    SwitchToReplica,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (any::<u32>(), any::<u64>()).prop_map(|(k, v)| Op::Push(k, v)),
        2 => (1..300u32, any::<u64>()).prop_map(|(k, s)| Op::Blob(k, s)),
        1 => Just(Op::DropBlob),
        1 => (0..5000u32).prop_map(Op::Deep),
        1 => Just(Op::MoveFull),
        1 => Just(Op::StartReplica),
        2 => Just(Op::SyncReplica),
        1 => Just(Op::SwitchToReplica),
    ]
}

async fn run(ops: &[Op], migrate: bool) -> Vec<u64> {
    let f = &*FIXTURE;
    let mut current = f.rt.instantiate(&f.module, config()).await.unwrap();
    let mut replica: Option<Instance> = None;
    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::Push(k, v) => out.push(
                u64_call(
                    &mut current,
                    "push",
                    &[Val::I32(*k as i32), Val::I64(*v as i64)],
                )
                .await,
            ),
            Op::Blob(k, s) => out.push(
                u64_call(
                    &mut current,
                    "blob",
                    &[Val::I32(*k as i32), Val::I64(*s as i64)],
                )
                .await,
            ),
            Op::DropBlob => out.push(u64_call(&mut current, "drop_blob", &[]).await),
            Op::Deep(n) => out.push(u64_call(&mut current, "deep", &[Val::I32(*n as i32)]).await),
            Op::MoveFull if migrate => {
                let s = through_bytes(&current.capture().unwrap());
                current = f.rt.restore(&f.module, config(), &s).await.unwrap();
                replica = None;
            }
            Op::StartReplica if migrate => {
                let s = through_bytes(&current.capture().unwrap());
                replica = Some(f.rt.restore(&f.module, config(), &s).await.unwrap());
            }
            Op::SyncReplica if migrate => {
                if let Some(r) = replica.as_mut() {
                    r.apply(&through_bytes(&current.capture_delta().unwrap()))
                        .unwrap();
                }
            }
            Op::SwitchToReplica if migrate => {
                if let Some(mut r) = replica.take() {
                    r.apply(&through_bytes(&current.capture_delta().unwrap()))
                        .unwrap();
                    current = r;
                }
            }
            _ => {}
        }
    }
    out.push(u64_call(&mut current, "digest", &[]).await);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn rust_guest_gives_the_same_results_when_moved_at_random_points(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (plain, moved) = tokio.block_on(async { (run(&ops, false).await, run(&ops, true).await) });
        prop_assert_eq!(plain, moved);
    }
}
