//! Benchmarks of the runtime core, each beside its baseline from the same run.
//!
//! `cargo bench -p roam-runtime --bench runtime`, then
//! `python3 scripts/bench-report` to print the ratio tables that go into
//! `docs/BENCHMARKS.md`.
//!
//! - capture of 1, 64, 256 MiB (every page non-zero) vs memcpy of the same bytes
//!   into a resident buffer;
//! - restore of the same into a pooling slot that kept its pages resident vs memcpy;
//! - delta detection over 256 MiB with 1% of pages dirty vs memcpy of 256 MiB;
//! - instantiation of a cached module vs raw wasmtime instantiation of the
//!   un-rewritten module (same engine settings, same WASI linker).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark harness")]

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use roam_runtime::{Instance, InstanceConfig, Runtime, RuntimeConfig, Snapshot, Val};
use wasmtime::{InstanceAllocationStrategy, Linker, PoolingAllocationConfig, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;

const MIB: usize = 1 << 20;
const SIZES: [usize; 3] = [1, 64, 256];

const MEMORY_WAT: &str = r#"(module
  (memory 1 65536)
  (global $sp (mut i32) (i32.const 1024))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "touch") (param $stride i32) (param $v i32)
    (local $a i32)
    (block $done (loop $l
      (br_if $done (i32.ge_u (local.get $a) (i32.mul (memory.size) (i32.const 65536))))
      (i32.store (local.get $a) (local.get $v))
      (local.set $a (i32.add (local.get $a) (local.get $stride)))
      (br $l)))))"#;

const STATE_WAT: &str = include_str!("../tests/fixtures/state.wat");

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        slots: 8,
        max_instance_memory: 512 * MIB as u64,
        keep_resident: 300 * MIB,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn config(track: bool) -> InstanceConfig {
    let mut c = InstanceConfig::new("bench");
    c.memory_limit = 512 * MIB as u64;
    c.track_dirty = track;
    c.cpu_budget = None;
    c
}

/// An instance whose memory is `mib` MiB with every page non-zero.
async fn filled(rt: &Runtime, mib: usize, track: bool) -> Instance {
    let module = rt
        .load_blocking(&wat::parse_str(MEMORY_WAT).unwrap())
        .unwrap();
    let mut inst = rt.instantiate(&module, config(track)).await.unwrap();
    inst.call("grow", &[Val::I32((mib * 16 - 1) as i32)])
        .await
        .unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in inst.memory_data_mut().chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    inst
}

fn memcpy_baseline(c: &mut Criterion, group: &str, mib: usize) {
    let src = vec![7u8; mib * MIB];
    let mut dst = vec![1u8; mib * MIB];
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Bytes((mib * MIB) as u64));
    g.bench_function(BenchmarkId::new("memcpy", mib), |b| {
        b.iter(|| {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
        })
    });
    g.finish();
}

fn capture(c: &mut Criterion) {
    let rt = runtime();
    for mib in SIZES {
        memcpy_baseline(c, "capture", mib);
        let mut g = c.benchmark_group("capture");
        g.throughput(Throughput::Bytes((mib * MIB) as u64));
        if mib >= 64 {
            g.sample_size(20).measurement_time(Duration::from_secs(4));
        }
        for track in [false, true] {
            let mut inst = block_on(filled(&rt, mib, track));
            let mut reuse: Snapshot = inst.capture().unwrap();
            let name = if track { "roam_tracked" } else { "roam" };
            g.bench_function(BenchmarkId::new(name, mib), |b| {
                b.iter(|| inst.capture_into(&mut reuse).unwrap())
            });
            if !track {
                g.bench_function(BenchmarkId::new("roam_fresh_buffer", mib), |b| {
                    b.iter(|| inst.capture().unwrap())
                });
            }
        }
        g.finish();
    }
}

fn restore(c: &mut Criterion) {
    let rt = runtime();
    for mib in SIZES {
        memcpy_baseline(c, "restore", mib);
        let mut source = block_on(filled(&rt, mib, false));
        let snapshot = source.capture().unwrap();
        let module = source.module().clone();
        drop(source);
        let mut g = c.benchmark_group("restore");
        g.throughput(Throughput::Bytes((mib * MIB) as u64));
        if mib >= 64 {
            g.sample_size(20).measurement_time(Duration::from_secs(4));
        }
        let tokio = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for track in [false, true] {
            let name = if track { "roam_tracked" } else { "roam" };
            g.bench_function(BenchmarkId::new(name, mib), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let inst = tokio
                            .block_on(rt.restore(&module, config(track), &snapshot))
                            .unwrap();
                        total += start.elapsed();
                        // Returning the slot (zeroing the kept-resident pages) is not restore.
                        drop(inst);
                    }
                    total
                })
            });
        }
        g.finish();
    }
}

fn delta(c: &mut Criterion) {
    let rt = runtime();
    let mib = 256;
    memcpy_baseline(c, "delta_detect", mib);
    let mut inst = block_on(filled(&rt, mib, true));
    inst.capture().unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("delta_detect");
    g.throughput(Throughput::Bytes((mib * MIB) as u64));
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    let mut v = 0;
    g.bench_function(BenchmarkId::new("roam_1pct_dirty", mib), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                v += 1;
                // Dirty every 100th page (1%), outside the timed region.
                tokio
                    .block_on(inst.call("touch", &[Val::I32(4096 * 100), Val::I32(v)]))
                    .unwrap();
                let start = Instant::now();
                let d = inst.capture_delta().unwrap();
                total += start.elapsed();
                assert_eq!(d.memories[0].pages.len(), mib * 256 / 100 + 1);
            }
            total
        })
    });
    let pages = vec![5u8; mib * MIB];
    g.bench_function(BenchmarkId::new("xxh3_only", mib), |b| {
        b.iter(|| {
            pages
                .chunks(4096)
                .map(xxhash_rust::xxh3::xxh3_64)
                .fold(0u64, |a, h| a ^ h)
        })
    });
    g.finish();
}

struct Raw {
    wasi: WasiP1Ctx,
}

fn instantiate(c: &mut Criterion) {
    let rt = runtime();
    let wasm = wat::parse_str(STATE_WAT).unwrap();
    let module = rt.load_blocking(&wasm).unwrap();
    let tokio = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    // Raw wasmtime: the same engine settings, the un-rewritten module.
    let mut pool = PoolingAllocationConfig::new();
    pool.total_core_instances(8)
        .total_memories(8)
        .total_tables(16)
        .total_stacks(8)
        .max_memories_per_module(1)
        .max_tables_per_module(4)
        .table_elements(100_000)
        .max_memory_size(512 * MIB)
        .linear_memory_keep_resident(300 * MIB);
    let mut cfg = wasmtime::Config::new();
    cfg.epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = wasmtime::Engine::new(&cfg).unwrap();
    let mut linker: Linker<Raw> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s| &mut s.wasi).unwrap();
    let raw_module = wasmtime::Module::new(&engine, &wasm).unwrap();
    let pre = linker.instantiate_pre(&raw_module).unwrap();

    let mut g = c.benchmark_group("instantiate");
    g.bench_function("wasmtime_raw", |b| {
        b.iter(|| {
            tokio.block_on(async {
                let mut store = Store::new(
                    &engine,
                    Raw {
                        wasi: WasiCtxBuilder::new().build_p1(),
                    },
                );
                store.set_epoch_deadline(1_000_000);
                let i = pre.instantiate_async(&mut store).await.unwrap();
                std::hint::black_box(i);
            })
        })
    });
    g.bench_function("roam", |b| {
        b.iter(|| {
            tokio.block_on(async {
                let i = rt.instantiate(&module, config(false)).await.unwrap();
                std::hint::black_box(i);
            })
        })
    });
    g.finish();
}

criterion_group!(benches, capture, restore, delta, instantiate);
criterion_main!(benches);
