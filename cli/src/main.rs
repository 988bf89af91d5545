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
    /// How daemons (and the CLI) log to stderr: `text` for people, `json`
    /// (one object a line) for log collectors.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "ROAM_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// The client context to use (`roam config get-contexts`) instead of
    /// the current one.
    #[arg(long, global = true, env = "ROAM_CONTEXT")]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a workload project (Rust with roam-sdk, or C): builds, tests and
    /// runs as it is.
    New(commands::scaffold::NewArgs),
    /// Build the workload project here for wasm32-wasip1.
    Build(commands::scaffold::BuildArgs),
    /// Run a WASI command module locally, like `wasmtime run` (or serve a workload with --listen).
    Run(commands::run::RunArgs),
    /// Start a local cluster: a scheduler and three hosts on loopback.
    Up(commands::up::UpArgs),
    /// Run the scheduler (control plane).
    Scheduler(commands::daemons::SchedulerArgs),
    /// Run a host daemon that joins a scheduler.
    Host(commands::daemons::HostArgs),
    /// Manage join tokens.
    #[command(subcommand)]
    Token(commands::ops::TokenCommand),
    /// The client's contexts: which scheduler, with which token and CA.
    #[command(subcommand)]
    Config(commands::config::ConfigCommand),
    /// Push a module to an OCI registry as a Wasm artifact (signed with --sign).
    Push(commands::oci::PushArgs),
    /// Signing keys for modules.
    #[command(subcommand)]
    Key(commands::oci::KeyCommand),
    /// Deploy a workload: a module with --name, or a workload.toml with -f.
    Deploy(commands::ops::DeployArgs),
    /// A workload's rollout: `status` (wait until every replica runs the
    /// new revision), `undo` (back to the one before).
    #[command(subcommand)]
    Rollout(commands::rollout::RolloutCommand),
    /// List nodes, workloads or instances.
    Get {
        /// What to list.
        kind: commands::ops::Kind,
        /// Output format (with -w, `json` is one `{"type", "object"}` a line).
        #[arg(short, long, value_enum, default_value = "table")]
        output: commands::ops::Output,
        /// Then watch: print each row that is added, changes or goes, as
        /// it happens, until interrupted.
        #[arg(short, long)]
        watch: bool,
    },
    /// Show a workload (where it runs, why other hosts were rejected) or a migration.
    Describe {
        /// `workload` or `migration`.
        #[arg(value_parser = ["workload", "migration"])]
        kind: String,
        /// Workload name or migration id.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: commands::ops::Output,
    },
    /// Move a running workload to another host live, state and all.
    Migrate(commands::migrate::MigrateArgs),
    /// Cordon a host and live-migrate every workload off it.
    Drain {
        /// Host name.
        host: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: commands::ops::Output,
    },
    /// Print the cluster's events (those the scheduler keeps); with -f, then follow them.
    Events {
        /// Keep printing new events as they happen.
        #[arg(short, long)]
        follow: bool,
        /// Output format (`json`: one event object a line).
        #[arg(short, long, value_enum, default_value = "table")]
        output: commands::ops::Output,
    },
    /// Show a workload's logs.
    Logs {
        /// Workload name.
        name: String,
        /// Keep printing new records as they come, each once.
        #[arg(short, long)]
        follow: bool,
        /// Only each replica's newest N records to begin with.
        #[arg(long)]
        tail: Option<u32>,
        /// Output format (`json`: one record object a line).
        #[arg(short, long, value_enum, default_value = "table")]
        output: commands::ops::Output,
    },
    /// Send a request to a workload through the scheduler's ingress.
    Invoke {
        /// Workload name.
        name: String,
        /// Path.
        #[arg(default_value = "/")]
        path: String,
        /// Request body (makes it a POST unless --method says otherwise).
        #[arg(long)]
        data: Option<String>,
        /// HTTP method.
        #[arg(long, short = 'X')]
        method: Option<String>,
    },
    /// Delete a workload.
    Delete {
        /// Workload name.
        name: String,
    },
    /// Stop placing new workloads on a host.
    Cordon {
        /// Host name.
        host: String,
    },
    /// Allow placing workloads on a host again.
    Uncordon {
        /// Host name.
        host: String,
    },
    /// Manage hosts' identities.
    #[command(subcommand)]
    Node(commands::ops::NodeCommand),
    /// Print shell completions.
    Completions {
        /// Shell.
        shell: clap_complete::Shell,
    },
}

/// mimalloc: per-request allocations (HTTP, the scheduler's proxying) cost
/// ~15% of the scheduler ingress's CPU under glibc malloc (perf, c=32).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(context) = cli.context.clone() {
        let _ = commands::config::CHOSEN.set(context);
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROAM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        // Each line one JSON object: time, level, target, the fields
        // (a migration's `migration` id among them) and the spans.
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
    let result = match cli.command {
        Command::New(args) => commands::scaffold::new(args),
        Command::Build(args) => commands::scaffold::build(args),
        Command::Run(args) => commands::run::main(args),
        Command::Up(args) => commands::up::main(args),
        Command::Scheduler(args) => commands::daemons::scheduler(args),
        Command::Host(args) => commands::daemons::host(args),
        Command::Token(cmd) => commands::ops::token(cmd),
        Command::Config(cmd) => commands::config::main(cmd),
        Command::Deploy(args) => commands::ops::deploy(args),
        Command::Push(args) => commands::oci::push(args),
        Command::Key(cmd) => commands::oci::key(cmd),
        Command::Rollout(cmd) => commands::rollout::main(cmd),
        Command::Get {
            kind,
            output,
            watch,
        } => commands::get::get(kind, output, watch),
        Command::Describe { kind, name, output } if kind == "migration" => {
            commands::migrate::describe(&name, output)
        }
        Command::Describe { name, output, .. } => commands::ops::describe(&name, output),
        Command::Migrate(args) => commands::migrate::migrate(args),
        Command::Drain { host, output } => commands::migrate::drain(&host, output),
        Command::Logs {
            name,
            follow,
            tail,
            output,
        } => commands::ops::logs(&name, follow, tail, output),
        Command::Events { follow, output } => commands::events::events(follow, output),
        Command::Invoke {
            name,
            path,
            data,
            method,
        } => commands::ops::invoke(&name, &path, data, method),
        Command::Delete { name } => commands::ops::delete(&name),
        Command::Cordon { host } => commands::ops::cordon(&host, true),
        Command::Uncordon { host } => commands::ops::cordon(&host, false),
        Command::Node(cmd) => commands::ops::node(cmd),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "roam", &mut std::io::stdout());
            Ok(std::process::ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
