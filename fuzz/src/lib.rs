//! What Roam's fuzz targets run: one function per decoder that reads bytes
//! an adversary chose (a guest, a host, anyone on the network). Each takes
//! any input without panicking, allocating beyond its bounds or looping,
//! and checks what it can of the result (a decoded value encodes back to
//! itself; a rewritten module is still valid).
//!
//! `libfuzzer/` runs these under libFuzzer (`cargo +nightly fuzz`, see
//! `docs/fuzzing.md`); `tests/corpus.rs` runs the committed corpus and every
//! input that once broke a target through them on the stable toolchain, as
//! regression tests.
#![allow(
    clippy::panic,
    reason = "a fuzz target reports a broken invariant by panicking"
)]

use std::sync::OnceLock;

use roam_runtime::abi::state::AbiState;
use roam_runtime::snapshot::codec::{self, DecodeLimits};
use roam_runtime::wasi::WasiSection;
use roam_runtime::{Runtime, RuntimeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A target: whether it accepted the input.
pub type Target = fn(&[u8]) -> bool;

/// The targets, by the name `libfuzzer/fuzz_targets/` and `corpus/` use;
/// each says whether the input was accepted (decoded, parsed, loaded), so
/// the tests can check that the seeds still reach past the first check.
pub const TARGETS: &[(&str, Target)] = &[
    ("snapshot", snapshot),
    ("sections", sections),
    ("pages", pages),
    ("guest_response", guest_response),
    ("module", module),
    ("selector", selector),
    ("json", json),
];

/// Bounds for the snapshot decoder: small enough that a fuzzer's input
/// cannot make it allocate much, as a host's are for what it accepts.
const SNAPSHOT_LIMITS: DecodeLimits = DecodeLimits {
    max_total: 16 << 20,
    max_memory_bytes: 16 << 20,
    max_table_entries: 1 << 16,
};

/// An encoded snapshot (from another host, or an operator's restore).
pub fn snapshot(data: &[u8]) -> bool {
    let Ok(decoded) = codec::decode(data, None, &SNAPSHOT_LIMITS) else {
        return false;
    };
    let again = codec::decode(&codec::encode(&decoded), None, &SNAPSHOT_LIMITS);
    assert_eq!(again.ok(), Some(decoded), "a snapshot does not round-trip");
    true
}

/// A snapshot's custom sections: the first byte picks `roam.abi` (the
/// workload's kv, timers, messages) or the WASI section.
pub fn sections(data: &[u8]) -> bool {
    let Some((&which, data)) = data.split_first() else {
        return false;
    };
    if which % 2 == 0 {
        let mut state = AbiState::default();
        if state.decode_into(data).is_err() {
            return false;
        }
        let encoded = state.encode();
        let mut again = AbiState::default();
        assert!(again.decode_into(&encoded).is_ok());
        assert_eq!(again.encode(), encoded, "roam.abi does not round-trip");
        true
    } else if let Ok(section) = WasiSection::decode(data) {
        assert_eq!(
            section.encode(),
            data,
            "the WASI section does not round-trip"
        );
        true
    } else {
        false
    }
}

/// A migration's page stream, as the target reads it: frames into a
/// memory of 256 pages, 128 pages at most.
pub fn pages(data: &[u8]) -> bool {
    roam_host::fuzzing::page_stream(data, 128 * 4096, 256).is_ok()
}

/// A guest's response to a request.
pub fn guest_response(data: &[u8]) -> bool {
    roam_runtime::abi::codec::decode_response(data, 1 << 20).is_ok()
}

/// The module loader: validation, the rewriter (the rewritten module must
/// validate too) and, for what passes, compilation and linking.
pub fn module(data: &[u8]) -> bool {
    if wasmparser::Validator::new().validate_all(data).is_err() {
        return false;
    }
    let Ok(rewritten) = roam_runtime::rewrite::rewrite(data) else {
        return false;
    };
    if let Err(e) = wasmparser::Validator::new().validate_all(&rewritten.bytes) {
        panic!("the rewriter made an invalid module from a valid one: {e}");
    }
    runtime().is_some_and(|r| r.load_blocking(data).is_ok())
}

/// One runtime for every input (making one reserves its pooled memory).
fn runtime() -> Option<&'static Runtime> {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            Runtime::new(RuntimeConfig {
                slots: 2,
                max_module_size: 1 << 20,
                ..RuntimeConfig::default()
            })
            .ok()
        })
        .as_ref()
}

/// A placement selector (`roam deploy --selector`, a workload spec).
pub fn selector(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(parsed) = roam_scheduler::selector::Selector::parse(text) else {
        return false;
    };
    let shown = parsed.to_string();
    let again = roam_scheduler::selector::Selector::parse(&shown);
    assert_eq!(
        again.as_ref().ok(),
        Some(&parsed),
        "`{shown}` parses differently"
    );
    true
}

/// Every JSON body the daemons accept (16 types): the first byte picks the type, the
/// rest is the body. What parses is checked as the daemon checks it, and
/// must serialise to JSON that parses back to the same value.
pub fn json(data: &[u8]) -> bool {
    use roam_proto::*;
    let Some((&which, body)) = data.split_first() else {
        return false;
    };
    match which % 16 {
        0 => body_of::<JoinRequest>(body).is_some_and(|r| {
            names::host(&r.name).is_ok() && roam_scheduler::auth::check_labels(&r.labels).is_ok()
        }),
        1 => body_of::<Heartbeat>(body).is_some(),
        2 => body_of::<WorkloadSpec>(body).is_some_and(|spec| {
            names::workload(&spec.name).is_ok() & selector(spec.selector.as_bytes())
        }),
        3 => body_of::<TokenRequest>(body).is_some(),
        4 => body_of::<RenewCertificate>(body).is_some(),
        5 => body_of::<MigrateRequest>(body).is_some(),
        6 => body_of::<StartInstance>(body).is_some(),
        7 => body_of::<PrepareMigration>(body).is_some(),
        8 => body_of::<SendMigration>(body).is_some(),
        9 => body_of::<MigrationDecision>(body).is_some(),
        10 => body_of::<Revocations>(body).is_some(),
        11 => body_of::<FromQuery>(body).is_some(),
        12 => body_of::<StopQuery>(body).is_some(),
        13 => body_of::<StartStandby>(body).is_some(),
        14 => body_of::<StandbyTarget>(body).is_some(),
        _ => body_of::<Promote>(body).is_some(),
    }
}

/// `body` as a `T`, checked to survive a JSON round trip.
fn body_of<T>(body: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let value: T = serde_json::from_slice(body).ok()?;
    let Ok(text) = serde_json::to_vec(&value) else {
        panic!("{value:?} does not serialise");
    };
    match serde_json::from_slice::<T>(&text) {
        Ok(again) => assert_eq!(again, value, "a body does not round-trip"),
        Err(e) => panic!("{value:?} serialises to JSON that does not parse: {e}"),
    }
    Some(value)
}
