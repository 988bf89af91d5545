//! Each kind of state survives capture, encoding and restore.

use roam_runtime::snapshot::codec::{self, DecodeLimits};
use roam_runtime::{Chain, Instance, Runtime, Snapshot, Val};

use super::*;

/// Capture, encode, decode and restore into a fresh instance.
async fn round_trip(rt: &Runtime, instance: &mut Instance) -> Instance {
    let snapshot = instance.capture().unwrap();
    let bytes = codec::encode(&snapshot);
    let decoded: Snapshot = codec::decode(
        &bytes,
        Some(&instance.module().digest()),
        &DecodeLimits::default(),
    )
    .unwrap();
    assert_eq!(decoded, snapshot);
    rt.restore(instance.module(), config(), &decoded)
        .await
        .unwrap()
}

#[tokio::test]
async fn restored_instance_continues_where_source_stopped() {
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    let mut a = rt.instantiate(&module, config()).await.unwrap();
    let mut b = rt.instantiate(&module, config()).await.unwrap();
    for x in 1..20 {
        call_i64(&mut a, "step", &[Val::I32(x)]).await;
        call_i64(&mut b, "step", &[Val::I32(x)]).await;
    }
    let mut restored = round_trip(&rt, &mut a).await;
    for x in 20..40 {
        let want = call_i64(&mut b, "step", &[Val::I32(x)]).await;
        let got = call_i64(&mut restored, "step", &[Val::I32(x)]).await;
        assert_eq!(got, want, "diverged at step {x}");
    }
}

#[tokio::test]
async fn start_function_runs_on_first_boot_only() {
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    let mut a = rt.instantiate(&module, config()).await.unwrap();
    assert_eq!(call_i32(&mut a, "started", &[]).await, 1);
    assert_eq!(call_i64(&mut a, "read", &[Val::I32(0)]).await, 1);
    let mut restored = round_trip(&rt, &mut a).await;
    assert_eq!(call_i32(&mut restored, "started", &[]).await, 1);
    assert_eq!(call_i64(&mut restored, "read", &[Val::I32(0)]).await, 1);
}

#[tokio::test]
async fn data_segment_bytes_the_guest_cleared_stay_cleared() {
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    let mut a = rt.instantiate(&module, config()).await.unwrap();
    assert_ne!(call_i64(&mut a, "read", &[Val::I32(16)]).await, 0);
    // Clear the whole first page so it is omitted from the snapshot.
    for addr in (0..4096).step_by(8) {
        a.call("write", &[Val::I32(addr), Val::I64(0)])
            .await
            .unwrap();
    }
    let mut restored = round_trip(&rt, &mut a).await;
    assert_eq!(call_i64(&mut restored, "read", &[Val::I32(16)]).await, 0);
    assert_eq!(call_i64(&mut restored, "read", &[Val::I32(0)]).await, 0);
}

#[tokio::test]
async fn table_changed_at_run_time_is_restored() {
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    let mut a = rt.instantiate(&module, config()).await.unwrap();
    a.call("set_slot", &[Val::I32(0), Val::I32(2)])
        .await
        .unwrap();
    a.call("set_slot", &[Val::I32(1), Val::I32(9)])
        .await
        .unwrap();
    a.call("set_slot", &[Val::I32(3), Val::I32(0)])
        .await
        .unwrap();
    assert_eq!(call_i32(&mut a, "grow_table", &[]).await, 4);
    let mut restored = round_trip(&rt, &mut a).await;
    let mut got = Vec::new();
    for i in 0..5 {
        got.push(call_i64(&mut restored, "slot", &[Val::I32(i)]).await);
    }
    assert_eq!(got, vec![3, -1, -1, 1, 3]);
}

#[tokio::test]
async fn funcref_global_is_restored() {
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    let mut a = rt.instantiate(&module, config()).await.unwrap();
    assert_eq!(call_i64(&mut a, "call_kept", &[]).await, -1);
    a.call("keep_func", &[Val::I32(1)]).await.unwrap();
    let mut restored = round_trip(&rt, &mut a).await;
    assert_eq!(call_i64(&mut restored, "call_kept", &[]).await, 2);
}

#[tokio::test]
async fn memory_grown_at_run_time_is_restored() {
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    let mut a = rt.instantiate(&module, config()).await.unwrap();
    for x in 0..3 {
        assert_eq!(call_i32(&mut a, "grow", &[Val::I32(100 + x)]).await, 1 + x);
    }
    let size = a.memory_size();
    assert_eq!(size, 4 * 65536);
    let want = call_i64(&mut a, "digest", &[]).await;
    let mut restored = round_trip(&rt, &mut a).await;
    assert_eq!(restored.memory_size(), size);
    assert_eq!(call_i64(&mut restored, "digest", &[]).await, want);
    assert_eq!(
        call_i64(&mut restored, "read", &[Val::I32(4 * 65536 - 8)]).await,
        102
    );
}

#[tokio::test]
async fn zero_pages_are_omitted_from_snapshots() {
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    let mut a = rt.instantiate(&module, config()).await.unwrap();
    for _ in 0..15 {
        a.call("grow", &[Val::I32(0)]).await.unwrap();
    }
    let snapshot = a.capture().unwrap();
    // 1 MiB of memory; only page 0 (start counter, data segment) is non-zero.
    assert_eq!(snapshot.memories[0].byte_len, 16 * 65536);
    assert_eq!(snapshot.memories[0].pages, vec![0]);
}

#[tokio::test]
async fn delta_carries_only_changed_pages_and_applies_onto_restored_base() {
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    let mut a = rt.instantiate(&module, config()).await.unwrap();
    for _ in 0..7 {
        a.call("grow", &[Val::I32(1)]).await.unwrap();
    }
    let full = a.capture().unwrap();
    // The kernel tracks writes wherever it can; hashing is the fallback.
    assert_eq!(a.write_tracking(), roam_runtime::dirty::supported());
    let mut replica = rt.restore(&module, config(), &full).await.unwrap();

    a.call("write", &[Val::I32(5 * 65536 + 100), Val::I64(77)])
        .await
        .unwrap();
    a.call("step", &[Val::I32(3)]).await.unwrap();
    let delta = a.capture_delta().unwrap();
    assert_eq!(delta.base, Some(full.sequence));
    // step writes at 1024+12 (page 0); write hits page 80; the globals change too.
    assert_eq!(delta.memories[0].pages, vec![0, 80]);

    let bytes = codec::encode(&delta);
    let delta = codec::decode(&bytes, None, &DecodeLimits::default()).unwrap();
    replica.apply(&delta).unwrap();
    assert_eq!(
        call_i64(&mut replica, "digest", &[]).await,
        call_i64(&mut a, "digest", &[]).await
    );
    assert_eq!(
        call_i64(&mut replica, "read", &[Val::I32(5 * 65536 + 100)]).await,
        77
    );
}

#[tokio::test]
async fn delta_on_the_wrong_base_is_refused() {
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    let mut a = rt.instantiate(&module, config()).await.unwrap();
    let full = a.capture().unwrap();
    let mut replica = rt.restore(&module, config(), &full).await.unwrap();
    a.call("step", &[Val::I32(1)]).await.unwrap();
    let _skipped = a.capture_delta().unwrap();
    a.call("step", &[Val::I32(2)]).await.unwrap();
    let second = a.capture_delta().unwrap();
    let err = replica.apply(&second).unwrap_err();
    assert!(
        err.to_string().contains("delta applies on capture"),
        "{err}"
    );
    // A delta cannot start a restore either.
    assert!(rt.restore(&module, config(), &second).await.is_err());
}

#[tokio::test]
async fn snapshot_of_another_module_is_refused() {
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    let other = load_wat(&rt, LIMITS_WAT);
    let mut a = rt.instantiate(&module, config()).await.unwrap();
    let snapshot = a.capture().unwrap();
    let err = rt.restore(&other, config(), &snapshot).await.unwrap_err();
    assert!(err.to_string().contains("snapshot is for module"), "{err}");
    let bytes = codec::encode(&snapshot);
    let err = codec::decode(&bytes, Some(&other.digest()), &DecodeLimits::default()).unwrap_err();
    assert!(matches!(
        err,
        roam_runtime::SnapshotError::WrongModule { .. }
    ));
}

#[tokio::test]
async fn real_snapshot_truncated_or_bit_flipped_never_restores() {
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    let mut a = rt.instantiate(&module, config()).await.unwrap();
    a.call("step", &[Val::I32(5)]).await.unwrap();
    let bytes = codec::encode(&a.capture().unwrap());
    let limits = DecodeLimits::default();
    for len in 0..bytes.len() {
        assert!(
            codec::decode(&bytes[..len], None, &limits).is_err(),
            "truncated at {len}"
        );
    }
    let mut b = bytes.clone();
    for i in 0..b.len() {
        for bit in 0..8 {
            b[i] ^= 1 << bit;
            assert!(
                codec::decode(&b, None, &limits).is_err(),
                "bit {bit} of byte {i}"
            );
            b[i] ^= 1 << bit;
        }
    }
    // And the intact bytes still restore.
    let s = codec::decode(&bytes, None, &limits).unwrap();
    rt.restore(&module, config(), &s).await.unwrap();
}

#[tokio::test]
async fn monotonic_clock_never_goes_back_across_restore() {
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    let mut a = rt.instantiate(&module, config()).await.unwrap();
    // Pretend the source host's clock has run for an hour.
    let snapshot = {
        let mut s = a.capture().unwrap();
        let section = s.host.iter_mut().find(|h| h.name == "roam.wasi").unwrap();
        section.data[4..12].copy_from_slice(&3_600_000_000_000u64.to_le_bytes());
        s
    };
    let restored = rt.restore(&module, config(), &snapshot).await.unwrap();
    assert!(restored.monotonic_now() >= 3_600_000_000_000);
}

/// Write tracking ends with its instance: the next instance in the pooling
/// slots gets its own, sees only its own writes, and nothing of the last one.
#[tokio::test]
async fn write_tracking_does_not_outlive_its_instance() {
    let rt = keep_resident_runtime(1);
    let module = load_wat(&rt, STATE_WAT);
    for round in 0..3i64 {
        let mut a = rt.instantiate(&module, config()).await.unwrap();
        a.call("grow", &[Val::I32(2)]).await.unwrap();
        a.capture().unwrap();
        assert_eq!(a.write_tracking(), roam_runtime::dirty::supported());
        a.call("write", &[Val::I32(65536 + 8), Val::I64(round + 1)])
            .await
            .unwrap();
        let delta = a.capture_delta().unwrap();
        assert_eq!(delta.memories[0].pages, vec![16], "round {round}");
        drop(a);
    }
}

/// A migration's first round reads the pages from the running instance
/// after a capture without them: whatever the guest writes meanwhile, those
/// pages plus the next delta rebuild exactly the source's state.
#[tokio::test]
async fn pages_read_after_a_capture_without_them_plus_the_delta_rebuild_the_state() {
    if !roam_runtime::dirty::supported() {
        eprintln!("skipped: no kernel write tracking here");
        return;
    }
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    let mut a = rt.instantiate(&module, config()).await.unwrap();
    for _ in 0..3 {
        a.call("grow", &[Val::I32(3)]).await.unwrap();
    }
    a.call("write", &[Val::I32(2 * 65536), Val::I64(1)])
        .await
        .unwrap();
    let state = a.capture_without_pages().unwrap();
    assert!(state.memories[0].pages.is_empty());
    // Written after the capture, before and after the pages are read.
    a.call("write", &[Val::I32(65536 + 8), Val::I64(5)])
        .await
        .unwrap();
    let pages = a.memory_data_mut().to_vec();
    a.call("write", &[Val::I32(2 * 65536), Val::I64(9)])
        .await
        .unwrap();
    a.call("step", &[Val::I32(4)]).await.unwrap();
    let delta = a.capture_delta_of(Chain::Migration).unwrap();
    assert_eq!(delta.base, Some(state.sequence));
    assert_eq!(delta.memories[0].pages, vec![0, 16, 32]);

    let mut replica = rt.reserve(&module, config()).await.unwrap();
    replica.apply(&state).unwrap();
    assert_eq!(replica.memory_data_mut().len(), pages.len());
    replica.memory_data_mut().copy_from_slice(&pages);
    replica.apply(&delta).unwrap();
    assert_eq!(
        call_i64(&mut replica, "digest", &[]).await,
        call_i64(&mut a, "digest", &[]).await
    );
    assert_eq!(
        call_i64(&mut replica, "read", &[Val::I32(2 * 65536)]).await,
        9
    );
}

/// With `keep_resident`, a freed slot is reused before a fresh one, also by
/// another module: the new instance lands in memory faulted in already, and
/// sees nothing of the last one's (zeroed in place).
#[tokio::test]
async fn a_resident_slot_is_reused_by_another_module_and_comes_zeroed() {
    let rt = keep_resident_runtime(4);
    let first = load_wat(&rt, STATE_WAT);
    let other = load_wat(&rt, "(module (memory 3))");
    let mut a = rt.instantiate(&first, config()).await.unwrap();
    a.call("grow", &[Val::I32(2)]).await.unwrap();
    a.call("write", &[Val::I32(65536 + 8), Val::I64(0x5eed)])
        .await
        .unwrap();
    let base = a.memory_data_mut().as_ptr() as usize;
    drop(a);
    let mut b = rt.instantiate(&other, config()).await.unwrap();
    assert_eq!(
        b.memory_data_mut().as_ptr() as usize,
        base,
        "a fresh slot was taken while a resident one was free"
    );
    assert_eq!(b.memory_data_mut().len(), 3 * 65536);
    assert!(b.memory_data_mut().iter().all(|&x| x == 0));
}

/// A runtime of `slots` slots that keeps 8 MiB of each freed one resident.
fn keep_resident_runtime(slots: u32) -> Runtime {
    Runtime::new(RuntimeConfig {
        slots,
        max_instance_memory: 64 << 20,
        keep_resident: 8 << 20,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

/// A live migration and the checkpoints kept during it (a `sync`
/// workload's commits to its standby) are two delta chains over one write
/// tracker: each chain's deltas, applied in order on its own full capture,
/// rebuild the source's state exactly, however their captures interleave.
#[tokio::test]
async fn checkpoint_and_migration_deltas_interleave_and_each_chain_rebuilds_the_state() {
    let rt = runtime();
    let module = load_wat(&rt, STATE_WAT);
    let mut a = rt.instantiate(&module, config()).await.unwrap();
    for _ in 0..10 {
        a.call("grow", &[Val::I32(3)]).await.unwrap();
    }
    a.set_track_dirty(true);
    let checkpoint = a.capture().unwrap();
    let mut standby = rt.restore(&module, config(), &checkpoint).await.unwrap();
    a.call("write", &[Val::I32(65536 + 8), Val::I64(3)])
        .await
        .unwrap();
    let migration = a.capture_with(Vec::new(), Chain::Migration).unwrap();
    let mut target = rt.restore(&module, config(), &migration).await.unwrap();
    // Writes between the captures of either chain, to pages both chains
    // and only one of them see, and memory grown in between.
    let mut x = 0;
    for round in 0..4i64 {
        for (at, chain) in [
            (2 * 65536, Chain::Checkpoint),
            (4 * 65536 + 16, Chain::Migration),
        ] {
            x += 1;
            a.call(
                "write",
                &[Val::I32(at + round as i32 * 4096), Val::I64(round * 10 + x)],
            )
            .await
            .unwrap();
            a.call("step", &[Val::I32(x as i32)]).await.unwrap();
            if round == 2 {
                a.call("grow", &[Val::I32(1)]).await.unwrap();
                a.call("write", &[Val::I32(9 * 65536 + 4), Val::I64(x)])
                    .await
                    .unwrap();
            }
            let delta = a.capture_delta_of(chain).unwrap();
            let delta =
                codec::decode(&codec::encode(&delta), None, &DecodeLimits::default()).unwrap();
            match chain {
                Chain::Checkpoint => standby.apply(&delta).unwrap(),
                Chain::Migration => target.apply(&delta).unwrap(),
            }
        }
    }
    a.call("write", &[Val::I32(65536 + 8), Val::I64(99)])
        .await
        .unwrap();
    for chain in [Chain::Checkpoint, Chain::Migration] {
        let delta = a.capture_delta_of(chain).unwrap();
        match chain {
            Chain::Checkpoint => standby.apply(&delta).unwrap(),
            Chain::Migration => target.apply(&delta).unwrap(),
        }
    }
    let want = call_i64(&mut a, "digest", &[]).await;
    for (name, copy) in [("standby", &mut standby), ("target", &mut target)] {
        assert_eq!(call_i64(copy, "digest", &[]).await, want, "{name}");
        assert_eq!(copy.memory_data_mut(), a.memory_data_mut(), "{name}");
    }
}
