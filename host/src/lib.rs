//! roam-host: the `roam host` daemon. It joins a scheduler, heartbeats,
//! runs the workloads the scheduler places on it (on `roam-runtime`), serves
//! their ingress, and takes either role in a live migration.
//!
//! | file | what it does |
//! | --- | --- |
//! | [`access`] | who may call which route: the table the router is built from |
//! | [`config`] | [`HostConfig`]: how the daemon runs |
//! | `daemon.rs` | the shared state, the listener and its routes, running workloads |
//! | `scheduler_client.rs` | every call to the scheduler: join, heartbeat, module fetch, message relay |
//! | `liveness.rs` | heartbeats with nothing new to report: one signed UDP datagram, while the scheduler answers them |
//! | `identity.rs` | TLS: the pinned CA, the host certificate (join, renewal, kept in the data dir) |
//! | `modules.rs` | module fetch (sha256-checked) and the compile gate |
//! | `control.rs` | the scheduler's control API: start, stop, logs, snapshot, restore, messages |
//! | [`ingress`] | `/w/{workload}/...`, with the generation check |
//! | `migration/` | live migration, both roles: `source.rs`, `target.rs`, `pages.rs` (page streams), `convergence.rs` (when pre-copy stops) |
//! | `fault.rs` | the `ROAM_FAULT_*` hooks fault tests use |
//!
//! Every route, header and message comes from `roam-proto`; the host never
//! writes a path or a header name itself.
#![deny(missing_docs)]

pub mod access;
pub mod config;
mod control;
mod daemon;
mod fault;
mod identity;
pub mod ingress;
mod liveness;
mod metrics;
mod migration;
mod modules;
mod scheduler_client;
mod standby;
mod upgrade;

pub use config::HostConfig;
pub use daemon::{run, workload_config};

/// Entry points for the fuzz targets (`fuzz/`): the parts of the host that
/// read bytes from the network, driven over a buffer. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// Read `stream` as a page stream of at most `total` bytes of pages into
    /// a memory of `memory_pages` pages, as a migration target does, until
    /// its end frame or the first refusal; the pages accepted.
    pub fn page_stream(stream: &[u8], total: u64, memory_pages: u64) -> Result<u64, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let mut io = stream;
            let mut reader =
                crate::migration::pages::FrameReader::new(&mut io, total, memory_pages);
            let mut pages = 0u64;
            loop {
                match reader.next().await {
                    Ok(Some((first, bytes))) => {
                        let count = (bytes.len() / roam_proto::pages::PAGE_SIZE) as u64;
                        assert!(
                            first
                                .checked_add(count)
                                .is_some_and(|end| end <= memory_pages),
                            "a frame past the memory was accepted"
                        );
                        pages += count;
                    }
                    Ok(None) => return Ok(pages),
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
    }
}
