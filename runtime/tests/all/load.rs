//! Modules are refused with a message that names the culprit.

use roam_runtime::LoadError;

use super::*;

fn load_err(rt: &Runtime, bytes: &[u8]) -> LoadError {
    rt.load_blocking(bytes).unwrap_err()
}

#[test]
fn malformed_module_is_refused_with_the_validator_message() {
    let rt = runtime();
    let err = load_err(&rt, b"\0asm\x01\0\0\0\x01\x05garbage");
    assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
    let err = load_err(&rt, b"not wasm at all");
    assert!(
        err.to_string().starts_with("invalid WebAssembly module"),
        "{err}"
    );
}

#[test]
fn oversized_module_is_refused_before_parsing() {
    let rt = Runtime::new(RuntimeConfig {
        slots: 1,
        max_module_size: 1024,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let err = load_err(&rt, &vec![0u8; 4096]);
    assert!(
        matches!(
            err,
            LoadError::TooLarge {
                size: 4096,
                limit: 1024
            }
        ),
        "{err}"
    );
}

#[test]
fn shared_memory_is_refused() {
    let rt = runtime();
    let wasm = wat::parse_str("(module (memory 1 1 shared))").unwrap();
    let err = load_err(&rt, &wasm);
    assert!(matches!(err, LoadError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("shared memory"), "{err}");
}

#[test]
fn missing_import_is_named() {
    let rt = runtime();
    let wasm = wat::parse_str(r#"(module (import "env" "launch_rockets" (func)))"#).unwrap();
    let err = load_err(&rt, &wasm);
    assert_eq!(
        err.to_string(),
        "module imports `env::launch_rockets`, which this host does not provide"
    );
}

#[test]
fn component_is_refused() {
    let rt = runtime();
    let wasm = wat::parse_str("(component)").unwrap();
    assert!(matches!(load_err(&rt, &wasm), LoadError::NotACoreModule));
}

#[test]
fn modules_are_named_by_sha256_of_their_bytes() {
    let rt = runtime();
    let wasm = wat::parse_str(STATE_WAT).unwrap();
    let module = rt.load_blocking(&wasm).unwrap();
    assert_eq!(module.digest(), roam_runtime::Digest::of(&wasm));
    assert!(module.digest().to_string().starts_with("sha256:"));
}

#[test]
fn compiled_code_is_cached_on_disk_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let make = || {
        Runtime::new(RuntimeConfig {
            slots: 2,
            cache_dir: Some(dir.path().to_path_buf()),
            ..RuntimeConfig::default()
        })
        .unwrap()
    };
    let wasm = wat::parse_str(STATE_WAT).unwrap();
    let first = make().load_blocking(&wasm).unwrap();
    assert!(!first.from_cache());
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1);
    let second = make().load_blocking(&wasm).unwrap();
    assert!(second.from_cache());
    // A corrupted cache file is dropped and rebuilt, never trusted.
    let path = files[0].as_ref().unwrap().path();
    std::fs::write(&path, b"garbage").unwrap();
    let third = make().load_blocking(&wasm).unwrap();
    assert!(!third.from_cache());
}
