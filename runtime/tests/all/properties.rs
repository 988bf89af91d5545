//! Property: capturing and restoring at arbitrary points — full snapshots and
//! chains of deltas, through the byte encoding — never changes what a
//! sequence of calls returns.

use std::sync::LazyLock;

use proptest::prelude::*;
use roam_runtime::snapshot::codec::{self, DecodeLimits};
use roam_runtime::{Instance, Module, Snapshot, Val};

use super::*;

#[derive(Clone, Debug)]
enum Op {
    Step(i32),
    Write(i32, i64),
    Grow(i32),
    SetSlot(i32, i32),
    GrowTable,
    KeepFunc(i32),
    /// Capture a full snapshot and continue in an instance restored from it.
    MoveFull,
    /// Start a replica from a full snapshot (kept in sync by deltas).
    StartReplica,
    /// Send a delta to the replica.
    SyncReplica,
    /// Send a final delta and continue in the replica.
    SwitchToReplica,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<i32>().prop_map(Op::Step),
        3 => (0..(8 * 65536 / 8), any::<i64>()).prop_map(|(a, v)| Op::Write(a * 8, v)),
        1 => any::<i32>().prop_map(Op::Grow),
        2 => (0..4, 0..4).prop_map(|(i, w)| Op::SetSlot(i, w)),
        1 => Just(Op::GrowTable),
        1 => (0..2).prop_map(Op::KeepFunc),
        1 => Just(Op::MoveFull),
        1 => Just(Op::StartReplica),
        2 => Just(Op::SyncReplica),
        1 => Just(Op::SwitchToReplica),
    ]
}

struct Fixture {
    rt: Runtime,
    module: Module,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    Fixture { rt, module }
});

fn through_bytes(snapshot: &Snapshot) -> Snapshot {
    codec::decode(&codec::encode(snapshot), None, &DecodeLimits::default()).unwrap()
}

/// Run the observable ops; returns every result. `migrate` enables the
/// capture/restore ops; without it they are skipped.
async fn run(ops: &[Op], migrate: bool) -> Vec<i64> {
    let f = &*FIXTURE;
    let mut current: Instance = f.rt.instantiate(&f.module, config()).await.unwrap();
    let mut replica: Option<Instance> = None;
    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::Step(x) => out.push(call_i64(&mut current, "step", &[Val::I32(*x)]).await),
            Op::Write(a, v)
                // Writes land only below the current memory size.
                if (*a as u64) + 8 <= current.memory_size() => {
                    current
                        .call("write", &[Val::I32(*a), Val::I64(*v)])
                        .await
                        .unwrap();
                }
            Op::Grow(x)
                if current.memory_size() < 8 * 65536 => {
                    out.push(i64::from(
                        call_i32(&mut current, "grow", &[Val::I32(*x)]).await,
                    ));
                }
            Op::SetSlot(i, w) => {
                current
                    .call("set_slot", &[Val::I32(*i), Val::I32(*w)])
                    .await
                    .unwrap();
            }
            Op::GrowTable => out.push(i64::from(call_i32(&mut current, "grow_table", &[]).await)),
            Op::KeepFunc(w) => {
                current.call("keep_func", &[Val::I32(*w)]).await.unwrap();
                out.push(call_i64(&mut current, "call_kept", &[]).await);
            }
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
    out.push(call_i64(&mut current, "digest", &[]).await);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn capture_and_restore_never_change_results(ops in prop::collection::vec(op(), 1..60)) {
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (plain, migrated) = tokio.block_on(async { (run(&ops, false).await, run(&ops, true).await) });
        prop_assert_eq!(plain, migrated);
    }
}
