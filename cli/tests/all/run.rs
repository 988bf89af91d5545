//! `roam run` runs third-party WASI programs unmodified, the way `wasmtime run` does.

use std::path::Path;
use std::process::{Command, Output};

use roam_tests::artifacts;

fn roam() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roam"));
    // Keep compiled-code caches inside the test's own scratch space.
    cmd.env(
        "XDG_CACHE_HOME",
        std::env::temp_dir().join("roam-test-cache"),
    );
    cmd
}

fn run(args: &[&str]) -> Output {
    let out = roam().arg("run").args(args).output().unwrap();
    eprintln!(
        "roam run {args:?} -> {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Run `program copy`-style in a granted directory and check the file it wrote.
fn copies_a_file_in_a_granted_dir(program: &str, args_prefix: &[&str], says: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "hello\nedge world\n").unwrap();
    let grant = format!("{}::/data", dir.path().display());
    let mut args = vec!["--dir", grant.as_str(), program, "--"];
    args.extend_from_slice(args_prefix);
    args.extend_from_slice(&["/data/in.txt", "/data/out.txt"]);
    let out = run(&args);
    assert!(out.status.success());
    assert!(stdout(&out).contains(says), "stdout: {}", stdout(&out));
    let written = std::fs::read_to_string(dir.path().join("out.txt")).unwrap();
    assert_eq!(written, "HELLO\nEDGE WORLD\n");
}

#[test]
fn runs_a_c_program_built_with_wasi_libc() {
    let program = artifacts::require(artifacts::COPY_C, "C");
    copies_a_file_in_a_granted_dir(program, &[], "c: copied 17 bytes");
}

#[test]
fn runs_a_cpp_program_built_with_libcxx() {
    let program = artifacts::require(artifacts::COPY_CPP, "C++");
    copies_a_file_in_a_granted_dir(program, &[], "c++: copied 17 bytes");
}

#[test]
fn runs_a_go_program_built_for_wasip1() {
    let program = artifacts::require(artifacts::COPY_GO, "Go");
    copies_a_file_in_a_granted_dir(program, &[], "go: copied 17 bytes");
}

#[test]
fn runs_a_rust_program() {
    copies_a_file_in_a_granted_dir(artifacts::WASI_DEMO, &["copy"], "copied 17 bytes, 2 lines");
}

#[test]
fn nothing_is_granted_by_default() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "x").unwrap();
    let path = dir.path().join("secret.txt");
    let out = run(&[
        artifacts::WASI_DEMO,
        "--",
        "copy",
        path.to_str().unwrap(),
        "/tmp/o",
    ]);
    assert!(!out.status.success());
    let out = run(&[artifacts::WASI_DEMO, "--", "env", "HOME"]);
    assert_eq!(stdout(&out), "<unset>\n");
}

#[test]
fn env_and_args_reach_the_guest() {
    let out = run(&[
        "--env",
        "GREETING=hej",
        artifacts::WASI_DEMO,
        "--",
        "env",
        "GREETING",
    ]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "hej\n");
}

#[test]
fn guest_exit_code_becomes_roams() {
    let out = run(&[artifacts::WASI_DEMO, "--", "exit", "7"]);
    assert_eq!(out.status.code(), Some(7));
}

#[test]
fn trap_prints_the_cause_and_wasm_backtrace() {
    let out = run(&[artifacts::WASI_DEMO, "--", "panic"]);
    assert_eq!(out.status.code(), Some(134));
    let err = stderr(&out);
    assert!(err.contains("deliberate panic"), "{err}");
    assert!(
        err.contains(
            "error: call to `_start` trapped: wasm trap: wasm `unreachable` instruction executed"
        ),
        "{err}"
    );
    assert!(err.contains("wasi_demo::main"), "backtrace missing: {err}");
}

#[test]
fn timeout_stops_a_busy_guest() {
    let out = run(&["--timeout", "200ms", artifacts::WASI_DEMO, "--", "spin"]);
    assert_eq!(out.status.code(), Some(124));
    assert!(
        stderr(&out).contains("ran longer than its --timeout of 200ms"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn timeout_stops_a_guest_blocked_in_wasi() {
    let out = run(&[
        "--timeout",
        "200ms",
        artifacts::WASI_DEMO,
        "--",
        "sleep",
        "60000",
    ]);
    assert_eq!(out.status.code(), Some(124));
}

#[test]
fn memory_cap_is_reported() {
    let out = run(&[
        "--max-memory",
        "16MiB",
        artifacts::WASI_DEMO,
        "--",
        "alloc",
        "64",
    ]);
    assert_eq!(out.status.code(), Some(134));
    assert!(
        stderr(&out).contains("over its limit of 16777216 bytes"),
        "{}",
        stderr(&out)
    );
    let out = run(&[
        "--max-memory",
        "128MiB",
        artifacts::WASI_DEMO,
        "--",
        "alloc",
        "64",
    ]);
    assert!(out.status.success());
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"definitely not wasm").unwrap();
    let out = run(&[junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("invalid WebAssembly module"),
        "{}",
        stderr(&out)
    );

    let out = run(&["/nonexistent/x.wasm"]);
    assert!(
        stderr(&out).contains("cannot read `/nonexistent/x.wasm`"),
        "{}",
        stderr(&out)
    );

    let out = run(&["--dir", "/nonexistent-dir", artifacts::WASI_DEMO]);
    assert!(
        stderr(&out).contains("cannot grant directory `/nonexistent-dir`"),
        "{}",
        stderr(&out)
    );

    let out = run(&[artifacts::STATEFUL]);
    assert!(
        stderr(&out).contains("exports no `_start` function"),
        "{}",
        stderr(&out)
    );
    assert!(Path::new(artifacts::STATEFUL).exists());
}
