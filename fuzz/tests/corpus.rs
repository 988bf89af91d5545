//! Every committed corpus input, and every input that once broke a target
//! (`regressions/TARGET/`), through its target on the stable toolchain: a
//! decoder change that makes one of them panic fails here, without a fuzzer.
#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

use std::path::Path;

#[test]
fn every_kept_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut ran = 0;
    for (target, run) in roam_fuzz::TARGETS {
        let mut seen = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let input = std::fs::read(&path).unwrap();
                let accepted = run(&input);
                // The seeds are well-formed: they must still get past the
                // first check, or the fuzzer starts from nothing.
                let seed = path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("seed-");
                assert!(
                    !seed || accepted,
                    "{} is no longer accepted",
                    path.display()
                );
                seen += 1;
            }
        }
        assert!(seen > 0, "no corpus for target `{target}`");
        ran += seen;
    }
    eprintln!("{ran} inputs");
}

/// The harness has one target per function, under the same names.
#[test]
fn the_harness_has_every_target() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("libfuzzer/fuzz_targets");
    for (target, _) in roam_fuzz::TARGETS {
        let source = std::fs::read_to_string(dir.join(format!("{target}.rs"))).unwrap();
        assert!(
            source.contains(&format!("roam_fuzz::{target}(")),
            "{target}"
        );
    }
}
