//! `roam rollout status|undo`: where a workload's rollout stands (its
//! replicas brought to its current revision one group at a time, each
//! with its state), and going back to the revision before.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Subcommand;
use reqwest::Method;
use roam_proto::{RolloutStatus, WorkloadSpec, paths, rollout_state};

use super::client::Client;
use super::ops::{Output, block_on, client};

/// `roam rollout`
#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Show a workload's rollout, and wait until it is complete (or
    /// stopped, with the reason).
    Status {
        /// Workload name.
        name: String,
        /// Print where it stands now and return.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
        timeout: Duration,
        /// Output format (`json`: the status as it ends).
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Go back to the previous revision's module and settings, replica by
    /// replica, the state handed back through the upgrade hooks (refused
    /// with the reason when the versions cannot).
    Undo {
        /// Workload name.
        name: String,
        /// Then wait until every replica runs it.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
        timeout: Duration,
    },
}

/// `roam rollout …`
pub fn main(cmd: RolloutCommand) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let c = client()?;
        match cmd {
            RolloutCommand::Status {
                name,
                no_wait,
                timeout,
                output,
            } => {
                let status = if no_wait {
                    status(&c, &name).await?
                } else {
                    match wait(&c, &name, timeout).await {
                        Ok(s) => s,
                        Err(e) if matches!(output, Output::Json) => {
                            eprintln!("{e:#}");
                            status(&c, &name).await?
                        }
                        Err(e) => return Err(e),
                    }
                };
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                    Output::Table => print(&status),
                }
                Ok(if status.state == rollout_state::FAILED {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                })
            }
            RolloutCommand::Undo {
                name,
                wait: then_wait,
                timeout,
            } => {
                let spec: WorkloadSpec = c
                    .json(c.request(Method::POST, &paths::workload_undo(&name)?))
                    .await?;
                println!(
                    "workload `{}` rolling back to {} (revision {})",
                    spec.name, spec.digest, spec.revision
                );
                if then_wait {
                    wait(&c, &name, timeout).await?;
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

async fn status(c: &Client, name: &str) -> anyhow::Result<RolloutStatus> {
    c.json(c.request(Method::GET, &paths::workload_rollout(name)?))
        .await
}

fn print(s: &RolloutStatus) {
    println!("Workload:  {}", s.workload);
    println!("Revision:  {} ({})", s.revision, s.digest);
    if let Some(p) = s.previous {
        println!("Previous:  {p}");
    }
    println!("Updated:   {}/{}", s.updated, s.replicas);
    println!("State:     {}", s.state);
    if let Some(m) = &s.message {
        println!("Reason:    {m}");
    }
    for (host, revision) in &s.hosts {
        println!("  {host}: revision {revision}");
    }
}

/// Until every replica of `name` runs its current revision: a bar of
/// replicas updated; an error with the host's reason when the rollout
/// stopped, or after `timeout`.
pub(super) async fn wait(
    c: &Client,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<RolloutStatus> {
    let deadline = Instant::now() + timeout;
    let first = status(c, name).await?;
    let mut progress = super::progress::Progress::bar(
        &format!("{name}: replicas at revision {}", first.revision),
        u64::from(first.replicas),
    );
    let mut last = first;
    loop {
        let hosts: Vec<String> = last
            .hosts
            .iter()
            .filter(|(_, r)| **r == last.revision)
            .map(|(h, _)| h.clone())
            .collect();
        let shown = if hosts.is_empty() {
            String::new()
        } else {
            format!("on {}", hosts.join(", "))
        };
        match last.state.as_str() {
            rollout_state::COMPLETE => {
                progress.finish(u64::from(last.updated), shown);
                return Ok(last);
            }
            rollout_state::FAILED => {
                progress.finish(u64::from(last.updated), "stopped".into());
                bail!(
                    "`{name}`: rollout to revision {} stopped at {}/{}: {}",
                    last.revision,
                    last.updated,
                    last.replicas,
                    last.message.as_deref().unwrap_or("no reason given")
                );
            }
            _ => progress.show(u64::from(last.updated), shown),
        }
        if Instant::now() > deadline {
            bail!(
                "`{name}`: {}/{} replica(s) at revision {} after {}",
                last.updated,
                last.replicas,
                last.revision,
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = status(c, name).await?;
    }
}
