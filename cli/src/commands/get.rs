//! `roam get KIND [-o json] [-w]`: a list of nodes, workloads, instances,
//! migrations or scheduler replicas, as a table or JSON; with `-w`, the
//! list and then every row that changes, as it changes (each event of the
//! scheduler's stream, and at least every two seconds for what changes
//! without one, such as memory in use), as `kubectl get -w` does.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use comfy_table::Table;
use reqwest::Method;
use roam_proto::paths;
use roam_proto::{InstanceInfo, MigrationInfo, NodeInfo, WorkloadInfo};

use super::client::Client;
use super::migrate::{downtime, mib};
use super::ops::{Kind, Output, block_on, client};

/// How often a watch reads the list when no event says it changed.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// One row: what names it, its cells, and its object as JSON.
struct Row {
    key: String,
    cells: Vec<String>,
    json: serde_json::Value,
}

/// A list as fetched.
struct Listing {
    header: &'static [&'static str],
    rows: Vec<Row>,
    /// The whole answer, as the API gave it (`-o json`).
    pretty: String,
    /// A line under the table.
    footer: Option<String>,
}

fn row(key: String, cells: Vec<String>, object: &impl serde::Serialize) -> anyhow::Result<Row> {
    Ok(Row {
        key,
        cells,
        json: serde_json::to_value(object)?,
    })
}

async fn fetch(c: &Client, kind: Kind) -> anyhow::Result<Listing> {
    let mut footer = None;
    let (header, rows, pretty): (&'static [&'static str], Vec<Row>, String) = match kind {
        Kind::Nodes => {
            let nodes: Vec<NodeInfo> = c.json(c.request(Method::GET, &paths::nodes())).await?;
            let rows = nodes
                .iter()
                .map(|n| {
                    let label = |k: &str| n.labels.get(k).cloned().unwrap_or_default();
                    let cells = vec![
                        n.name.clone(),
                        n.status.to_string(),
                        n.arch.clone(),
                        label("engine"),
                        label("site"),
                        label("jurisdiction"),
                        format!("{}/{} MiB", n.memory_used >> 20, n.capacity.memory >> 20),
                        n.instances.join(","),
                        n.url.clone(),
                    ];
                    row(n.name.clone(), cells, n)
                })
                .collect::<anyhow::Result<_>>()?;
            let header: &[&str] = &[
                "NAME",
                "STATUS",
                "ARCH",
                "ENGINE",
                "SITE",
                "JURISDICTION",
                "MEMORY",
                "WORKLOADS",
                "URL",
            ];
            (header, rows, serde_json::to_string_pretty(&nodes)?)
        }
        Kind::Workloads => {
            let ws: Vec<WorkloadInfo> = c.json(c.request(Method::GET, &paths::workloads())).await?;
            let rows = ws
                .iter()
                .map(|w| {
                    let protected = if w.protection.is_empty() {
                        "-".to_string()
                    } else {
                        format!(
                            "{}/{}",
                            w.protection.values().filter(|p| p.protected).count(),
                            w.hosts.len()
                        )
                    };
                    let cells = vec![
                        w.spec.name.clone(),
                        format!("{}/{}", w.hosts.len(), w.spec.replicas),
                        w.hosts.join(","),
                        w.spec.selector.clone(),
                        w.spec.durability.to_string(),
                        protected,
                        w.spec.digest.chars().take(19).collect(),
                    ];
                    row(w.spec.name.clone(), cells, w)
                })
                .collect::<anyhow::Result<_>>()?;
            let header: &[&str] = &[
                "NAME",
                "REPLICAS",
                "HOSTS",
                "SELECTOR",
                "DURABILITY",
                "PROTECTED",
                "DIGEST",
            ];
            (header, rows, serde_json::to_string_pretty(&ws)?)
        }
        Kind::Instances => {
            let is: Vec<InstanceInfo> = c.json(c.request(Method::GET, &paths::instances())).await?;
            let rows = is
                .iter()
                .map(|i| {
                    let cells = vec![
                        i.workload.clone(),
                        i.host.clone(),
                        i.ready.to_string(),
                        i.rolled_back.to_string(),
                        i.restarted.to_string(),
                        i.last_failure.clone().unwrap_or_default(),
                        i.standby.clone().unwrap_or_else(|| "-".into()),
                        i.checkpoint_age_ms
                            .map_or_else(|| "-".into(), |ms| format!("{ms} ms")),
                    ];
                    row(format!("{}@{}", i.workload, i.host), cells, i)
                })
                .collect::<anyhow::Result<_>>()?;
            let header: &[&str] = &[
                "WORKLOAD",
                "HOST",
                "READY",
                "ROLLED BACK",
                "RESTARTED",
                "LAST FAILURE",
                "STANDBY",
                "CHECKPOINT AGE",
            ];
            (header, rows, serde_json::to_string_pretty(&is)?)
        }
        Kind::Migrations => {
            let all: Vec<MigrationInfo> =
                c.json(c.request(Method::GET, &paths::migrations())).await?;
            let rows = all
                .iter()
                .map(|m| {
                    let cells = vec![
                        m.id.clone(),
                        m.workload.clone(),
                        m.source.clone(),
                        m.target.clone(),
                        m.phase.to_string(),
                        m.rounds.to_string(),
                        mib(m.bytes_sent),
                        format!("{} ms", m.total_ms),
                        downtime(m),
                    ];
                    row(m.id.clone(), cells, m)
                })
                .collect::<anyhow::Result<_>>()?;
            let header: &[&str] = &[
                "ID", "WORKLOAD", "FROM", "TO", "PHASE", "ROUNDS", "BYTES", "TOTAL", "DOWNTIME",
            ];
            (header, rows, serde_json::to_string_pretty(&all)?)
        }
        Kind::Schedulers => {
            let info: roam_proto::SchedulersInfo =
                c.json(c.request(Method::GET, &paths::schedulers())).await?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let ago = |ms: u64| {
                humantime::format_duration(Duration::from_secs(now.saturating_sub(ms) / 1000))
                    .to_string()
            };
            let rows = info
                .replicas
                .iter()
                .map(|r| {
                    let cells = vec![
                        r.member.id.clone(),
                        if r.leader { "leader" } else { "follower" }.to_string(),
                        r.term.map(|t| t.to_string()).unwrap_or_default(),
                        r.leader_since_unix_ms.map(ago).unwrap_or_default(),
                        ago(r.member.started_unix_ms),
                        r.member.url.clone(),
                    ];
                    row(r.member.id.clone(), cells, r)
                })
                .collect::<anyhow::Result<_>>()?;
            footer = Some(format!(
                "store: {} — {}{}",
                info.store,
                if info.store_healthy {
                    ""
                } else {
                    "UNHEALTHY: "
                },
                info.store_health
            ));
            let header: &[&str] = &["REPLICA", "ROLE", "TERM", "LEADING FOR", "UP FOR", "URL"];
            (header, rows, serde_json::to_string_pretty(&info)?)
        }
    };
    Ok(Listing {
        header,
        rows,
        pretty,
        footer,
    })
}

/// `roam get KIND [-o json] [-w]`
pub fn get(kind: Kind, output: Output, watch: bool) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let c = client()?;
        let listing = fetch(&c, kind).await?;
        if watch {
            return self::watch(&c, kind, output, listing).await;
        }
        match output {
            Output::Json => println!("{}", listing.pretty),
            Output::Table => {
                let mut t = Table::new();
                t.set_header(listing.header);
                for r in listing.rows {
                    t.add_row(r.cells);
                }
                println!("{t}");
                if let Some(footer) = listing.footer {
                    println!("{footer}");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Cells padded to `widths`, as one line (a cell wider than its column
/// pushes the rest along, as `kubectl get -w` does).
fn line(cells: &[String], widths: &[usize]) -> String {
    let mut out = String::new();
    for (i, cell) in cells.iter().enumerate() {
        if i + 1 == cells.len() {
            out.push_str(cell);
        } else {
            let width = widths.get(i).copied().unwrap_or(0);
            out.push_str(&format!("{cell:<width$}   "));
        }
    }
    out
}

/// A watch event as a JSON line: `{"type": ADDED|MODIFIED|DELETED,
/// "object": ...}` (the shape of `kubectl get -w --output-watch-events`).
fn json_event(kind: &str, object: &serde_json::Value) -> String {
    serde_json::json!({ "type": kind, "object": object }).to_string()
}

async fn watch(c: &Client, kind: Kind, output: Output, first: Listing) -> anyhow::Result<ExitCode> {
    let widths: Vec<usize> = (0..first.header.len())
        .map(|i| {
            first
                .rows
                .iter()
                .filter_map(|r| r.cells.get(i))
                .map(|c| c.chars().count())
                .chain([first.header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let print = |event: &str, r: &Row| match output {
        Output::Json => println!("{}", json_event(event, &r.json)),
        Output::Table if event == "DELETED" => {
            let mut cells = r.cells.clone();
            if let Some(first) = cells.first_mut() {
                first.push_str(" (deleted)");
            }
            println!("{}", line(&cells, &widths));
        }
        Output::Table => println!("{}", line(&r.cells, &widths)),
    };
    if let Output::Table = output {
        let header: Vec<String> = first.header.iter().map(|h| h.to_string()).collect();
        println!("{}", line(&header, &widths));
    }
    let mut shown: BTreeMap<String, Row> = BTreeMap::new();
    for r in first.rows {
        print("ADDED", &r);
        shown.insert(r.key.clone(), r);
    }
    // Each event of the cluster is a reason to look again.
    let changed = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(super::events::on_each_event(client()?, changed.clone()));
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(WATCH_EVERY) => {}
        }
        let listing = match fetch(c, kind).await {
            Ok(l) => l,
            // A restart or a new leader: the client tried the other
            // replicas; try again at the next tick, for a minute.
            Err(e)
                if failing_since
                    .get_or_insert_with(std::time::Instant::now)
                    .elapsed()
                    < Duration::from_secs(60) =>
            {
                tracing::debug!(error = %format!("{e:#}"), "cannot read the list; trying again");
                continue;
            }
            Err(e) => return Err(e),
        };
        failing_since = None;
        let mut now: BTreeMap<String, Row> = BTreeMap::new();
        for r in listing.rows {
            match shown.get(&r.key) {
                None => print("ADDED", &r),
                Some(old) if old.cells != r.cells || old.json != r.json => print("MODIFIED", &r),
                Some(_) => {}
            }
            now.insert(r.key.clone(), r);
        }
        for (key, old) in &shown {
            if !now.contains_key(key) {
                print("DELETED", old);
            }
        }
        shown = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_line_keeps_the_first_tables_columns() {
        let widths = [4, 6];
        let cells = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(line(&cells(&["a", "b", "c"]), &widths), "a      b        c");
        assert_eq!(
            line(&cells(&["longer", "b", "c"]), &widths),
            "longer   b        c"
        );
    }
}
