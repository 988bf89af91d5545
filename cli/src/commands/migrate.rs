//! `roam migrate`, `roam drain`, `roam describe migration`: live migration
//! for operators, each followed live (`progress.rs`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use comfy_table::Table;
use reqwest::Method;
use roam_proto::paths::{self, NodeAction};
use roam_proto::{
    DrainOutcome, DrainResult, MigrateRequest, MigrationInfo, MigrationOptions, MigrationPhase,
    NodeInfo,
};

use super::ops::{Output, block_on, client};
use super::progress::Progress;
use crate::size::parse_size;

/// `roam migrate`
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Workload to move.
    pub workload: String,
    /// Target host.
    #[arg(long, conflicts_with = "selector")]
    pub to: Option<String>,
    /// Let placement pick a target among hosts matching this selector (and
    /// the workload's own rules).
    #[arg(long)]
    pub selector: Option<String>,
    /// Source host, when the workload has several replicas.
    #[arg(long)]
    pub from: Option<String>,
    /// Pre-copy rounds before the source stops anyway.
    #[arg(long, default_value_t = MigrationOptions::default().max_rounds)]
    pub max_rounds: u32,
    /// Stop pre-copying once a round's delta is at most this large.
    #[arg(long, value_parser = parse_size, default_value = "256KiB")]
    pub max_final: u64,
    /// Freeze first and copy everything once (no pre-copy): the baseline.
    #[arg(long)]
    pub stop_and_copy: bool,
    /// TCP connections the memory is streamed over at once.
    #[arg(long, default_value_t = MigrationOptions::default().page_streams,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(roam_proto::MAX_PAGE_STREAMS)))]
    pub page_streams: u32,
    /// Compress pages and deltas: `auto` while the link, not the CPU, is
    /// the bottleneck; `never`; `always` (every frame that shrinks).
    #[arg(long, default_value = "auto")]
    pub compression: roam_proto::Compression,
    /// Return once the migration has started; follow it with `roam describe migration ID`.
    #[arg(long, conflicts_with = "wait")]
    pub detach: bool,
    /// Wait for the end, showing progress (the default).
    #[arg(long)]
    pub wait: bool,
    /// Output format of the summary.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

pub(super) fn mib(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    }
}

pub(super) fn downtime(m: &MigrationInfo) -> String {
    match m.downtime_us {
        Some(us) => format!("{:.2} ms", us as f64 / 1000.0),
        None => "-".into(),
    }
}

fn summary(m: &MigrationInfo) {
    println!("Migration:  {}", m.id);
    println!("Workload:   {}", m.workload);
    println!("From:       {}", m.source);
    println!("To:         {}", m.target);
    println!("Phase:      {}", m.phase);
    println!("Generation: {}", m.generation);
    println!("Rounds:     {}", m.rounds);
    println!("Bytes:      {}", mib(m.bytes_sent));
    if m.wire_bytes > 0 && m.wire_bytes != m.bytes_sent {
        println!("On wire:    {}", mib(m.wire_bytes));
    }
    println!("Dirty rate: {}/s", mib(m.dirty_rate as u64));
    println!("Total time: {} ms", m.total_ms);
    println!("Downtime:   {}", downtime(m));
    if let Some(e) = &m.error {
        println!("Error:      {e}");
    }
    if !m.history.is_empty() {
        let steps: Vec<String> = m
            .history
            .iter()
            .map(|(phase, at)| format!("{phase} +{at}ms"))
            .collect();
        println!("History:    {}", steps.join(" → "));
    }
}

/// `roam migrate WORKLOAD --to HOST`
pub fn migrate(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let c = client()?;
        let request = MigrateRequest {
            workload: args.workload.clone(),
            to: args.to.clone(),
            selector: args.selector.clone(),
            from: args.from.clone(),
            options: MigrationOptions {
                max_rounds: args.max_rounds,
                max_final_bytes: args.max_final,
                stop_and_copy: args.stop_and_copy,
                page_streams: args.page_streams,
                compression: args.compression,
            },
        };
        let started: MigrationInfo = c
            .json(c.request(Method::POST, &paths::migrations()).json(&request))
            .await?;
        if args.detach {
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&started)?),
                Output::Table => println!(
                    "migration {} of `{}` from {} to {} started",
                    started.id, started.workload, started.source, started.target
                ),
            }
            return Ok(ExitCode::SUCCESS);
        }
        let mut progress = Progress::spinner(&format!("{} → {}:", started.source, started.target));
        let done = loop {
            let m: MigrationInfo = c
                .json(c.request(Method::GET, &paths::migration(&started.id)?))
                .await?;
            let line = format!(
                "{} round {} sent {} dirty {}/s",
                m.phase,
                m.rounds,
                mib(m.bytes_sent),
                mib(m.dirty_rate as u64)
            );
            if m.finished() {
                progress.finish(0, line);
                break m;
            }
            progress.show(0, line);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        match args.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&done)?),
            Output::Table => summary(&done),
        }
        Ok(if done.phase == MigrationPhase::Done {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// `roam describe migration ID`
pub fn describe(id: &str, output: Output) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let c = client()?;
        let m: MigrationInfo = c
            .json(c.request(Method::GET, &paths::migration(id)?))
            .await?;
        match output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&m)?),
            Output::Table => summary(&m),
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `roam drain HOST`
pub fn drain(host: &str, output: Output) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let c = client()?;
        eprintln!("draining `{host}`: cordoned; moving its workloads off it");
        let on_host = |nodes: &[NodeInfo]| {
            nodes
                .iter()
                .find(|n| n.name == host)
                .map_or(0, |n| n.instances.len() as u64)
        };
        let nodes: Vec<NodeInfo> = c.json(c.request(Method::GET, &paths::nodes())).await?;
        let total = on_host(&nodes);
        let mut progress = Progress::bar(&format!("draining {host}"), total);
        // Asking again joins the drain under way (or the one a new leader
        // goes on with): safe to send again if the leader dies meanwhile.
        let drain = c.json_idempotent(
            c.request(Method::POST, &paths::node_action(host, NodeAction::Drain)?),
        );
        tokio::pin!(drain);
        let outcomes: Vec<DrainOutcome> = loop {
            tokio::select! {
                outcomes = &mut drain => break outcomes?,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            // What is left on the host, and its migrations in flight.
            let (Ok(nodes), Ok(moving)) = tokio::join!(
                c.json::<Vec<NodeInfo>>(c.request(Method::GET, &paths::nodes())),
                c.json::<Vec<MigrationInfo>>(c.request(Method::GET, &paths::migrations())),
            ) else {
                continue;
            };
            let moving: Vec<String> = moving
                .iter()
                .filter(|m| m.source == host && !m.finished())
                .map(|m| {
                    format!(
                        "{} → {} {} round {} {}",
                        m.workload,
                        m.target,
                        m.phase,
                        m.rounds,
                        mib(m.bytes_sent)
                    )
                })
                .collect();
            let left = on_host(&nodes);
            progress.show(total.saturating_sub(left), moving.join("; "));
        };
        let moved = outcomes
            .iter()
            .filter(|o| o.outcome != DrainResult::Failed)
            .count() as u64;
        progress.finish(
            moved.min(total),
            format!("{moved} moved, {} failed", outcomes.len() as u64 - moved),
        );
        if let Output::Json = output {
            println!("{}", serde_json::to_string_pretty(&outcomes)?);
        } else {
            let mut t = Table::new();
            t.set_header(["WORKLOAD", "OUTCOME", "MIGRATION", "DETAIL"]);
            for o in &outcomes {
                t.add_row([
                    o.workload.clone(),
                    o.outcome.to_string(),
                    o.migration.clone().unwrap_or_else(|| "-".into()),
                    o.detail.clone(),
                ]);
            }
            println!("{t}");
        }
        if outcomes.iter().any(|o| o.outcome == DrainResult::Failed) {
            bail!("some workloads could not be moved off `{host}`");
        }
        Ok(ExitCode::SUCCESS)
    })
}
