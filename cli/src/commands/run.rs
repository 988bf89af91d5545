//! `roam run`: run a WASI command module locally, the way `wasmtime run` does.
//!
//! Guest stdout and stderr pass through, the guest's exit status becomes
//! roam's, a trap prints a one-line cause and the Wasm backtrace and exits
//! with 134 (as an abort would), and `--timeout` stops a guest that runs too
//! long with exit status 124 (as `timeout(1)` does).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use roam_runtime::{
    CallError, DirGrant, InstanceConfig, InstantiateError, Passthrough, Runtime, RuntimeConfig,
};

use crate::size::parse_size;

/// Exit status after a trap, as if the guest had aborted.
const EXIT_TRAP: u8 = 134;
/// Exit status after `--timeout`, as `timeout(1)` uses.
const EXIT_TIMEOUT: u8 = 124;

/// Arguments of `roam run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The WebAssembly module (wasm32-wasip1 command) to run; with
    /// `--listen -f workload.toml`, the manifest's `module` by default.
    #[arg(required_unless_present = "manifest")]
    pub file: Option<PathBuf>,
    /// With --listen: run the workload as a host runs it from this
    /// manifest: its name, grants, memory cap and environment, and a
    /// host's CPU budget per call (flags given with it win).
    #[arg(short = 'f', long = "file", requires = "listen")]
    pub manifest: Option<PathBuf>,
    /// With --listen: grant kv, timers, send (repeatable or
    /// comma-separated; added to the manifest's). Without a grant a
    /// workload's capability is denied, as in the cluster.
    #[arg(long = "grant", value_delimiter = ',', requires = "listen")]
    pub grants: Vec<String>,
    /// With --listen: grant every capability (the escape hatch for trying
    /// a module without its manifest).
    #[arg(long, requires = "listen")]
    pub grant_all: bool,
    /// Cap on the guest's linear memory, for example `64MiB`.
    #[arg(long, value_parser = parse_size, default_value = "4GiB")]
    pub max_memory: u64,
    /// Stop the guest after this long, for example `2s` or `500ms`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Set an environment variable for the guest (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Grant a host directory, optionally under another guest path (repeatable).
    #[arg(long = "dir", value_name = "HOST[::GUEST]", value_parser = parse_dir)]
    pub dirs: Vec<DirGrant>,
    /// Serve a Roam workload (built with roam-sdk) over HTTP on this address
    /// instead of running a command, like `spin up`. Port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// With --listen: capture the workload and restore it into a fresh
    /// instance after every event, to check that it survives migration.
    #[arg(long, requires = "listen")]
    pub roundtrip_snapshots: bool,
    /// With --listen: the workload's name (default: the file name without extension).
    #[arg(long, requires = "listen")]
    pub name: Option<String>,
    /// Arguments passed to the guest.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub(crate) fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not of the form KEY=VALUE")),
    }
}

fn parse_dir(s: &str) -> Result<DirGrant, String> {
    let (host, guest) = match s.split_once("::") {
        Some((h, g)) => (h, g),
        None => (s, s),
    };
    if host.is_empty() || guest.is_empty() {
        return Err(format!("`{s}` is not of the form HOST[::GUEST]"));
    }
    Ok(DirGrant {
        host: PathBuf::from(host),
        guest: guest.to_string(),
        read_only: false,
    })
}

/// Where `roam run` keeps compiled code: `$XDG_CACHE_HOME/roam` or `~/.cache/roam`.
pub(crate) fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("roam").join("compiled"))
}

/// Run `roam run`.
pub fn main(args: RunArgs) -> anyhow::Result<ExitCode> {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    tokio.block_on(run(args))
}

async fn run(mut args: RunArgs) -> anyhow::Result<ExitCode> {
    let manifest = match &args.manifest {
        Some(path) => Some((super::ops::Manifest::load(path)?, path.clone())),
        None => None,
    };
    let file = match (&args.file, &manifest) {
        (Some(f), _) => f.clone(),
        (None, Some((m, path))) => m.module_path(path).with_context(|| {
            format!(
                "`{}` names no `module`; give the module file",
                path.display()
            )
        })?,
        (None, None) => bail!("give the module file to run"),
    };
    args.file = Some(file.clone());
    let bytes =
        std::fs::read(&file).with_context(|| format!("cannot read `{}`", file.display()))?;
    let runtime = Runtime::new(RuntimeConfig {
        slots: 2,
        max_instance_memory: args.max_memory,
        cache_dir: cache_dir(),
        ..RuntimeConfig::default()
    })?;
    if args.listen.is_some() {
        return super::serve::serve(args, manifest.map(|(m, _)| m), runtime, bytes).await;
    }
    let name = file.display().to_string();
    let module = runtime
        .load(bytes)
        .await
        .with_context(|| format!("cannot load `{name}`"))?;
    if !module.exports_function("_start") {
        bail!(
            "module `{name}` exports no `_start` function: it is not a WASI command (a library or reactor module cannot be run on its own)"
        );
    }
    let mut config = InstanceConfig::new(&name);
    config.memory_limit = args.max_memory;
    config.cpu_budget = args.timeout;
    config.args = args.args;
    config.env = args.env;
    config.dirs = args.dirs;
    config.stdout = Passthrough::Stdout;
    config.stderr = Passthrough::Stderr;
    config.log_capacity = 4096;
    config.track_dirty = false;

    let timed_out = || {
        eprintln!(
            "error: `{name}` ran longer than its --timeout of {} and was stopped",
            humantime::format_duration(args.timeout.unwrap_or_default())
        );
        Ok(ExitCode::from(EXIT_TIMEOUT))
    };
    let work = async {
        let mut instance = runtime.instantiate(&module, config).await?;
        Ok::<_, InstantiateError>(instance.run_command().await)
    };
    let outcome = match args.timeout {
        // The CPU budget stops busy guests; this stops guests blocked in WASI.
        Some(t) => match tokio::time::timeout(t, work).await {
            Ok(r) => r,
            Err(_) => return timed_out(),
        },
        None => work.await,
    };
    match outcome {
        Ok(Ok(code)) => Ok(exit_code(code)),
        Ok(Err(CallError::CpuBudgetExceeded { .. }))
        | Err(InstantiateError::Init(CallError::CpuBudgetExceeded { .. })) => timed_out(),
        Ok(Err(CallError::Exit(code))) | Err(InstantiateError::Init(CallError::Exit(code))) => {
            Ok(exit_code(code))
        }
        Ok(Err(err)) | Err(InstantiateError::Init(err)) => {
            report_trap(&err);
            Ok(ExitCode::from(EXIT_TRAP))
        }
        Err(err) => Err(err).with_context(|| format!("cannot start `{name}`")),
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn report_trap(err: &CallError) {
    eprintln!("error: {err}");
    if let CallError::Trap { backtrace, .. } = err
        && !backtrace.is_empty()
    {
        eprintln!("{}", backtrace.trim_end());
    }
}
