//! `roam`: run, host, schedule and move WebAssembly workloads.
//!
//! A thin main: clap parses, each subcommand builds its config and calls one
//! `run` function in `commands/`.

mod commands;
mod size;

use clap::{Parser, Subcommand};

/// Run WebAssembly workloads on any edge host and move them, state and all.
#[derive(Parser, Debug)]
#[command(name = "roam", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a WASI command module locally, like `wasmtime run`.
    Run(commands::run::RunArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROAM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => commands::run::main(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
