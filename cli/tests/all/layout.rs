//! The architecture's rules, checked: the crates depend on each other only
//! as ARCHITECTURE.md says, and every route, header and phase name is
//! written in `proto/` only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Which Roam crates each may depend on (normal dependencies, through any
/// path): cli → host, scheduler (and runtime for `roam run`, proto and tls
/// for the API client); host → runtime, proto, tls; scheduler → proto, tls;
/// tls → proto (names); runtime → proto only for the shared vocabulary
/// (digest, grants, place); proto and sdk on none; fuzz (the fuzz targets)
/// on what it fuzzes, and nothing on it.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "roam",
        &[
            "roam-host",
            "roam-scheduler",
            "roam-runtime",
            "roam-proto",
            "roam-tls",
        ],
    ),
    ("roam-host", &["roam-runtime", "roam-proto", "roam-tls"]),
    ("roam-scheduler", &["roam-proto", "roam-tls"]),
    ("roam-tls", &["roam-proto"]),
    ("roam-runtime", &["roam-proto"]),
    ("roam-proto", &[]),
    ("roam-sdk", &[]),
    (
        "roam-fuzz",
        &[
            "roam-host",
            "roam-scheduler",
            "roam-runtime",
            "roam-proto",
            "roam-tls",
        ],
    ),
];

/// Crates the engine library must not depend on: it has no HTTP server or
/// client.
const NOT_IN_RUNTIME: &[&str] = &["axum", "reqwest", "hyper", "hyper-util", "rustls"];

#[test]
fn crates_depend_on_each_other_only_as_the_architecture_allows() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let ours: BTreeSet<&str> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    // Normal (and build) dependencies among workspace crates.
    let mut deps: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut direct: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for p in packages {
        let name = p["name"].as_str().unwrap();
        for d in p["dependencies"].as_array().unwrap() {
            if d["kind"].as_str() == Some("dev") {
                continue;
            }
            let dep = d["name"].as_str().unwrap();
            direct.entry(name).or_default().insert(dep);
            if ours.contains(dep) {
                deps.entry(name).or_default().insert(dep);
            }
        }
    }
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(c) = todo.pop() {
            for d in deps.get(c.as_str()).into_iter().flatten() {
                if seen.insert(d.to_string()) {
                    todo.push(d.to_string());
                }
            }
        }
        seen
    };
    let mut broken = Vec::new();
    for (krate, allowed) in ALLOWED {
        assert!(ours.contains(krate), "no crate `{krate}` in the workspace");
        for d in reach(krate) {
            if !allowed.contains(&d.as_str()) {
                broken.push(format!("{krate} reaches {d}"));
            }
        }
    }
    for d in NOT_IN_RUNTIME {
        if direct.get("roam-runtime").is_some_and(|s| s.contains(d)) {
            broken.push(format!("roam-runtime depends on {d}"));
        }
    }
    assert!(broken.is_empty(), "forbidden dependencies: {broken:?}");
}

/// Files that speak the wire format on purpose, as an outside client would
/// (end-to-end tests and benches drive the APIs by their paths and read
/// phases from JSON).
const SPEAK_THE_WIRE: &[&str] = &[
    "cli/tests/all/cluster.rs",
    "cli/tests/all/migrate.rs",
    "cli/tests/all/trust.rs",
    "cli/tests/all/relay.rs",
    "cli/tests/all/wire.rs",
    "cli/tests/all/access.rs",
    "cli/tests/all/layout.rs",
    "cli/benches/common/mod.rs",
    "cli/benches/common/fleet.rs",
    "cli/benches/control_plane.rs",
    "cli/benches/coldstart.rs",
    "cli/benches/density.rs",
    "cli/benches/failover.rs",
    "cli/benches/heartbeats.rs",
    "cli/benches/migration.rs",
    "cli/benches/requests.rs",
];

/// Every phase name of the protocol (`proto/src/migration.rs`).
const PHASES: &[&str] = &[
    "sending",
    "prepared",
    "committing",
    "committed",
    "aborted",
    "receiving",
    "ready",
    "serving",
    "preparing",
    "precopy",
    "stopping",
    "done",
    "failed",
    "resolving",
    "migrated",
    "restarted",
];

/// Why a string literal belongs in `proto/`, if it does.
fn wire_word(literal: &str) -> Option<&'static str> {
    let lower = literal.to_ascii_lowercase();
    if literal.contains("/v1/") || literal.starts_with("/w/") || literal.contains("/w/{") {
        Some("a route path")
    } else if lower.contains("x-roam-") || lower.contains("roam-pages") {
        Some("a header or upgrade name")
    } else if PHASES.contains(&literal) {
        Some("a phase name")
    } else {
        None
    }
}

/// The string literals of Rust source, with their line numbers (comments,
/// char literals and lifetimes skipped; raw strings read whole).
fn literals(source: &str) -> Vec<(usize, String)> {
    let b = source.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < b.len() {
        match b[i] {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    line += usize::from(b[i] == b'\n');
                    i += 1;
                }
                i += 2;
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}') or a lifetime.
                if b.get(i + 1) == Some(&b'\\') {
                    i += 2;
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                } else if b.get(i + 2) == Some(&b'\'') {
                    i += 3;
                } else {
                    let len = source[i + 1..].chars().next().map_or(1, char::len_utf8);
                    if b.get(i + 1 + len) == Some(&b'\'') {
                        i += 2 + len;
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let start = j + 1;
                let close = format!("\"{}", "#".repeat(hashes));
                let end = source[start..].find(&close).map_or(b.len(), |e| start + e);
                out.push((line, source[start..end].to_string()));
                line += source[start..end].matches('\n').count();
                i = end + close.len();
            }
            b'"' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                let text = &source[start..j.min(b.len())];
                out.push((line, text.to_string()));
                line += text.matches('\n').count();
                i = j + 1;
            }
            _ => i += 1,
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if !["target", ".git", "proto", "node_modules"].contains(&name.as_str()) {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn routes_headers_and_phases_are_written_only_in_proto() {
    let root = workspace();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 50, "found only {} Rust files", files.len());
    let mut found = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if SPEAK_THE_WIRE.contains(&rel.as_str()) {
            continue;
        }
        let source = std::fs::read_to_string(&file).unwrap();
        for (line, literal) in literals(&source) {
            if let Some(what) = wire_word(&literal) {
                found.push(format!("{rel}:{line}: {what}: {literal:?}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "write these with roam_proto's paths, headers and enums:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_literal_scanner_sees_what_it_must() {
    let src = r##"
        // "/v1/comment" is skipped
        let a = "/v1/nodes"; let c = '"'; fn f<'a>(x: &'a str) {}
        let b = r#"x-roam-part"#; let d = "done"; let e = "not done";
        /* "prepared" */ let f = format!("{}/v1/x", u);
    "##;
    let words: Vec<String> = literals(src)
        .into_iter()
        .filter(|(_, l)| wire_word(l).is_some())
        .map(|(_, l)| l)
        .collect();
    assert_eq!(words, ["/v1/nodes", "x-roam-part", "done", "{}/v1/x"]);
}

/// Every `--flag` of `text` (a unit's `ExecStart`, the image's example
/// commands) after `roam ROLE` is one `roam ROLE --help` lists.
fn flags_exist(role: &str, line: &str, help: &str) {
    let Some(rest) = line.split(&format!("roam {role}")).nth(1) else {
        return;
    };
    for word in rest.split_whitespace().filter(|w| w.starts_with("--")) {
        let flag = word.split('=').next().unwrap();
        assert!(help.contains(flag), "`{line}`: `roam {role}` has no {flag}");
    }
}

#[test]
fn the_deployment_files_run_the_daemons_with_flags_they_have() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for (role, unit) in [
        ("scheduler", "deploy/systemd/roam-scheduler.service"),
        ("host", "deploy/systemd/roam-host.service"),
    ] {
        let help = Command::new(env!("CARGO_BIN_EXE_roam"))
            .args([role, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout).into_owned();
        let text = std::fs::read_to_string(root.join(unit)).unwrap();
        let exec: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ExecStart="))
            .collect();
        assert_eq!(exec.len(), 1, "{unit}");
        flags_exist(role, exec[0], &help);
        let image = std::fs::read_to_string(root.join("deploy/Containerfile")).unwrap();
        for line in image.lines().filter(|l| l.contains("roam ")) {
            flags_exist(role, line, &help);
        }
        // systemd's own check, where systemd is installed (the binary the
        // unit names is this build's).
        if Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok()
        {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join(Path::new(unit).file_name().unwrap());
            std::fs::write(
                &file,
                text.replace("/usr/local/bin/roam", env!("CARGO_BIN_EXE_roam")),
            )
            .unwrap();
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "{unit}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
