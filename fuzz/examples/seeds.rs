//! Write the seed corpus: one or more well-formed inputs per target, so the
//! fuzzer starts from inputs that reach deep into each decoder.
//!
//! `cargo run -p roam-fuzz --example seeds` (rewrites `fuzz/corpus/*/seed-*`).
#![allow(clippy::unwrap_used, reason = "a generator that fails should stop")]

use std::path::Path;

use roam_proto::pages::{self, PAGE_SIZE};
use roam_runtime::Digest;
use roam_runtime::abi::state::{AbiState, InboundMessage, OutboundMessage, Timer};
use roam_runtime::snapshot::codec;
use roam_runtime::snapshot::{HostSection, MemoryImage, Snapshot, TableImage, Value};
use roam_runtime::wasi::WasiSection;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    };

    // roam.abi and the WASI section.
    let mut abi = AbiState::default();
    abi.kv.insert(b"apples".to_vec(), b"3".to_vec());
    abi.kv_bytes = 7;
    abi.timers.insert(
        1,
        Timer {
            due_ns: 5_000,
            payload: b"tick".to_vec(),
        },
    );
    abi.next_timer = 2;
    // A fixed stream, so the seeds are the same every time.
    abi.stream = 0x5eed;
    let id = abi.next_message_id();
    abi.outbox.push_back(OutboundMessage {
        to: "counter".into(),
        body: b"hi".to_vec(),
        id,
    });
    abi.take_message("probe", roam_runtime::abi::MessageId { stream: 5, seq: 2 });
    abi.inbox.push_back(InboundMessage {
        from: "probe".into(),
        body: b"42".to_vec(),
    });
    abi.log_cursor = 9;
    let abi = abi.encode();
    let wasi = WasiSection {
        clock_ns: 1_000,
        stdout_cursor: 3,
        stderr_cursor: 0,
    }
    .encode();
    write("sections", "abi", &[[0u8].as_slice(), &abi].concat());
    write("sections", "wasi", &[[1u8].as_slice(), &wasi].concat());

    // Snapshots: a full one and a delta.
    let mut data = vec![0u8; 2 * PAGE_SIZE];
    data[..PAGE_SIZE]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    let full = Snapshot {
        module: Digest::of(b"module"),
        lineage: 7,
        sequence: 1,
        base: None,
        generation: 3,
        globals: vec![
            (0, Value::I32(1)),
            (1, Value::I64(2)),
            (2, Value::F32(3)),
            (3, Value::F64(4)),
            (4, Value::V128(5)),
            (5, Value::FuncRef(Some(0))),
            (6, Value::FuncRef(None)),
        ],
        memories: vec![MemoryImage {
            index: 0,
            byte_len: 65536,
            pages: vec![0, 3],
            data,
        }],
        tables: vec![TableImage {
            index: 0,
            entries: vec![Some(0), None],
        }],
        host: vec![
            HostSection {
                name: "roam.abi".into(),
                data: abi,
            },
            HostSection {
                name: "roam.wasi".into(),
                data: wasi,
            },
        ],
    };
    write("snapshot", "full", &codec::encode(&full));
    let delta = Snapshot {
        sequence: 2,
        base: Some(1),
        tables: vec![],
        ..full
    };
    write("snapshot", "delta", &codec::encode(&delta));

    // A page stream: two frames, then the end frame counting them.
    let mut stream = Vec::new();
    let mut frame = |first: u64, count: u32, fill: u8| {
        let head = pages::head(first, count);
        let body = vec![fill; count as usize * PAGE_SIZE];
        stream.extend_from_slice(&head);
        stream.extend_from_slice(&body);
        stream.extend_from_slice(&pages::checksum(&head, &body).to_le_bytes());
    };
    frame(0, 2, 0xab);
    frame(10, 1, 0x01);
    let end = pages::end_head(3);
    stream.extend_from_slice(&end);
    stream.extend_from_slice(&pages::checksum(&end, &[]).to_le_bytes());
    write("pages", "three", &stream);

    // A page stream with one compressed frame of four pages.
    let text: Vec<u8> = (0..4 * PAGE_SIZE)
        .map(|i| b"{\"id\":1,\"city\":\"Lisbon\"}\n"[i % 25])
        .collect();
    let body = zstd::bulk::compress(&text, 1).unwrap();
    let head = pages::compressed_head(3, 4, body.len() as u32);
    let mut stream = head.to_vec();
    stream.extend_from_slice(&body);
    stream.extend_from_slice(&pages::checksum(&head, &body).to_le_bytes());
    let end = pages::end_head(4);
    stream.extend_from_slice(&end);
    stream.extend_from_slice(&pages::checksum(&end, &[]).to_le_bytes());
    write("pages", "compressed", &stream);

    // A guest's response: status, headers, body.
    let mut response = Vec::new();
    response.extend_from_slice(&200u32.to_le_bytes());
    response.extend_from_slice(&1u32.to_le_bytes());
    for s in ["content-type", "text/plain"] {
        response.extend_from_slice(&(s.len() as u32).to_le_bytes());
        response.extend_from_slice(s.as_bytes());
    }
    response.extend_from_slice(&5u32.to_le_bytes());
    response.extend_from_slice(b"hello");
    write("guest_response", "hello", &response);

    // Modules: state of every kind the rewriter exports and restores.
    for (name, wat) in [
        (
            "counter",
            r#"(module
            (memory (export "memory") 1 4)
            (global $n (mut i32) (i32.const 0))
            (global $big (mut i64) (i64.const 0))
            (table 2 funcref)
            (elem (i32.const 0) $bump)
            (func $bump (export "bump") (result i32)
                (global.set $n (i32.add (global.get $n) (i32.const 1)))
                (i32.store (i32.const 16) (global.get $n))
                (global.get $n))
            (func (export "_start")))"#,
        ),
        (
            "imports",
            r#"(module
            (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (data (i32.const 8) "hello\n")
            (func (export "_start")))"#,
        ),
    ] {
        write("module", name, &wat::parse_str(wat).unwrap());
    }

    // Selectors.
    for (name, text) in [
        ("eq", "jurisdiction=EU"),
        (
            "sets",
            "jurisdiction=EU,site in (eu-west-1,eu-central-1),!gpu",
        ),
        ("not", "region!=us-east-1,tier notin (spot,preempt),arch"),
    ] {
        write("selector", name, text.as_bytes());
    }

    // JSON bodies, the first byte picking the type (see `roam_fuzz::json`).
    for (which, name, body) in [
        (
            0u8,
            "join",
            r#"{"protocol":3,"name":"eu-1","url":"https://10.0.0.1:7801","labels":{"site":"eu-west-1"},"capacity":{"memory":1073741824,"slots":8},"arch":"x86_64","engine":"k","engine_kind":"cranelift","instances":[{"workload":"counter","digest":"sha256:00","memory":65536,"generation":2}],"csr":"-----BEGIN CERTIFICATE REQUEST-----"}"#,
        ),
        (
            1,
            "heartbeat",
            r#"{"capacity":{"memory":1073741824,"slots":8},"arch":"x86_64","engine":"k","memory_used":0,"instances":[]}"#,
        ),
        (
            2,
            "deploy",
            r#"{"name":"counter","digest":"sha256:00","replicas":2,"selector":"jurisdiction=EU","memory":1048576,"env":{"A":"b"},"grants":{"kv":true}}"#,
        ),
        (
            3,
            "token",
            r#"{"role":"join","labels":{"site":"eu-west-1"},"ttl_secs":3600,"uses":1}"#,
        ),
        (
            4,
            "renew",
            r#"{"csr":"-----BEGIN CERTIFICATE REQUEST-----"}"#,
        ),
        (5, "migrate", r#"{"workload":"counter","to":"eu-2"}"#),
        (
            6,
            "start",
            r#"{"digest":"sha256:00","memory":1048576,"generation":1,"env":{},"grants":{}}"#,
        ),
        (
            10,
            "revoked",
            r#"{"fingerprints":["0000000000000000000000000000000000000000000000000000000000000000"]}"#,
        ),
        (11, "from", r#"{"from":"counter"}"#),
        (12, "stop", r#"{"below_generation":3}"#),
        (
            13,
            "standby",
            r#"{"instance":{"digest":"sha256:00","memory":1048576,"generation":1,"env":{},"grants":{},"durability":"sync"},"primary":"eu-1","primary_site":"eu-west-1","key":"0123456789abcdef0123","lease_ms":1500}"#,
        ),
        (
            14,
            "stream",
            r#"{"host":"eu-2","url":"https://10.0.0.2:7801","key":"0123456789abcdef0123","interval_ms":100,"lease_ms":1500}"#,
        ),
        (15, "promote", r#"{"generation":4}"#),
    ] {
        write(
            "json",
            name,
            &[[which].as_slice(), body.as_bytes()].concat(),
        );
    }
}
