//! `roam new` and `roam build`: a workload project from nothing, and its
//! module. roam-sdk is not on crates.io, so `roam new` writes out the SDK
//! sources this binary was built with (`vendor/roam-sdk`), and the
//! project depends on them by path: it builds from any directory, with
//! the SDK that matches the `roam` that runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

/// The language of a new project.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Lang {
    /// Rust with roam-sdk (`wasm32-wasip1`).
    #[default]
    Rust,
    /// C against the ABI directly (clang and wasi-libc).
    C,
}

/// `roam new`
#[derive(Args, Debug)]
pub struct NewArgs {
    /// The workload's name (a DNS label: lowercase letters, digits, `-`;
    /// starting with a letter); also the directory made for it.
    pub name: String,
    /// Language.
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: Lang,
    /// Where to make it (default: `./NAME`).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `roam build`
#[derive(Args, Debug)]
pub struct BuildArgs {
    /// The project (default: this directory).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

/// The SDK's sources as this binary carries them: path in the crate, text.
const SDK: &[(&str, &str)] = &[
    ("src/lib.rs", include_str!("../../../sdk/src/lib.rs")),
    (
        "src/__private.rs",
        include_str!("../../../sdk/src/__private.rs"),
    ),
    ("src/host.rs", include_str!("../../../sdk/src/host.rs")),
    ("src/http.rs", include_str!("../../../sdk/src/http.rs")),
    ("src/kv.rs", include_str!("../../../sdk/src/kv.rs")),
    (
        "src/logging.rs",
        include_str!("../../../sdk/src/logging.rs"),
    ),
    (
        "src/messages.rs",
        include_str!("../../../sdk/src/messages.rs"),
    ),
    ("src/random.rs", include_str!("../../../sdk/src/random.rs")),
    ("src/sys.rs", include_str!("../../../sdk/src/sys.rs")),
    ("src/time.rs", include_str!("../../../sdk/src/time.rs")),
    ("src/timers.rs", include_str!("../../../sdk/src/timers.rs")),
];

/// The vendored SDK's manifest: roam-sdk's own, without the workspace's
/// inheritance.
const SDK_MANIFEST: &str = r#"[package]
name = "roam-sdk"
version = "{{version}}"
edition = "2024"
license = "Apache-2.0"
description = "Write stateful WebAssembly workloads for Roam (written out by `roam new`)"
publish = false

[dependencies]
log = { version = "0.4", features = ["std"] }
form_urlencoded = "1"
"#;

/// A Rust project: path, template.
const RUST: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/rust/Cargo.toml.in"),
    ),
    (
        "src/lib.rs",
        include_str!("../../templates/rust/src/lib.rs.in"),
    ),
    (
        "workload.toml",
        include_str!("../../templates/rust/workload.toml.in"),
    ),
    (
        ".gitignore",
        include_str!("../../templates/rust/gitignore.in"),
    ),
    (
        "README.md",
        include_str!("../../templates/rust/README.md.in"),
    ),
];

/// A C project: path, template.
const C: &[(&str, &str)] = &[
    ("Makefile", include_str!("../../templates/c/Makefile.in")),
    ("app.c", include_str!("../../templates/c/app.c.in")),
    (
        "workload.toml",
        include_str!("../../templates/c/workload.toml.in"),
    ),
    (".gitignore", include_str!("../../templates/c/gitignore.in")),
];

fn fill(template: &str, name: &str) -> String {
    template
        .replace("{{name}}", name)
        .replace("{{crate}}", &name.replace('-', "_"))
        .replace("{{version}}", env!("CARGO_PKG_VERSION"))
}

/// `roam new NAME [--lang rust|c] [--dir DIR]`
pub fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let name = &args.name;
    roam_proto::names::workload(name).map_err(|e| anyhow::anyhow!("`{name}`: {e}"))?;
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        bail!("`{name}`: a workload project's name starts with a letter (it is a crate name too)");
    }
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "`{}` exists and is not empty; nothing written",
            dir.display()
        );
    }
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    match args.lang {
        Lang::Rust => {
            for (path, template) in RUST {
                files.push((dir.join(path), fill(template, name)));
            }
            let sdk = dir.join("vendor/roam-sdk");
            files.push((sdk.join("Cargo.toml"), fill(SDK_MANIFEST, name)));
            for (path, text) in SDK {
                files.push((sdk.join(path), (*text).to_string()));
            }
        }
        Lang::C => {
            for (path, template) in C {
                files.push((dir.join(path), fill(template, name)));
            }
        }
    }
    for (path, text) in &files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create `{}`", parent.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    println!(
        "created `{}` ({:?}, {} files)",
        dir.display(),
        args.lang,
        files.len()
    );
    match args.lang {
        Lang::Rust => println!(
            "next: cd {} && cargo test && roam build && roam run --listen 127.0.0.1:8080 -f workload.toml",
            dir.display()
        ),
        Lang::C => println!(
            "next: cd {} && make test && roam run --listen 127.0.0.1:8080 -f workload.toml",
            dir.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `roam build [DIR]`: the project's module for `wasm32-wasip1` (cargo for
/// a Cargo project, make for a Makefile one); prints its path.
pub fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.dir;
    let (program, run): (String, Vec<&str>) = if dir.join("Cargo.toml").exists() {
        // Into the project's own `target/`, where its workload.toml looks,
        // whatever CARGO_TARGET_DIR says.
        (
            std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            vec![
                "build",
                "--release",
                "--target",
                "wasm32-wasip1",
                "--target-dir",
                "target",
            ],
        )
    } else if dir.join("Makefile").exists() {
        ("make".into(), vec![])
    } else {
        bail!(
            "`{}` has no Cargo.toml or Makefile: not a workload project (make one with `roam new NAME`)",
            dir.display()
        );
    };
    let status = Command::new(&program)
        .args(&run)
        .current_dir(dir)
        .status()
        .with_context(|| format!("cannot run `{program}`"))?;
    if !status.success() {
        if program != "make" {
            eprintln!("roam build: if the target is missing: rustup target add wasm32-wasip1");
        }
        bail!("`{program} {}` failed ({status})", run.join(" "));
    }
    match module_of(dir) {
        Some(path) if path.exists() => println!("{}", path.display()),
        Some(path) => bail!("the build did not write `{}`", path.display()),
        None => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// The module a project's `workload.toml` names, if it has one.
fn module_of(dir: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(dir.join("workload.toml")).ok()?;
    let value: toml::Value = toml::from_str(&text).ok()?;
    let module = value.get("module")?.as_str()?;
    // `roam build` in the project prints `target/…`, not `./target/…`.
    Some(if dir == Path::new(".") {
        PathBuf::from(module)
    } else {
        dir.join(module)
    })
}
