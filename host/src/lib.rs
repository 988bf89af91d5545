//! roam-host: the `roam host` daemon. It joins a scheduler, heartbeats,
//! runs the workloads the scheduler places on it (on `roam-runtime`), serves
//! their ingress, and takes either role in a live migration.
//!
//! | file | what it does |
//! | --- | --- |
//! | [`config`] | [`HostConfig`]: how the daemon runs |
//! | `daemon.rs` | the shared state, the listener and its routes, running workloads |
//! | `scheduler_client.rs` | every call to the scheduler: join, heartbeat, module fetch, message relay |
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

pub mod config;
mod control;
mod daemon;
mod fault;
mod identity;
pub mod ingress;
mod migration;
mod modules;
mod scheduler_client;

pub use config::HostConfig;
pub use daemon::run;
