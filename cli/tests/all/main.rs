//! End-to-end tests of the `roam` binary: real processes, real guests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests report failure by panicking"
)]

mod access;
mod arch;
mod cluster;
mod console;
mod control_plane;
mod failover;
mod layout;
mod migrate;
mod observe;
mod registry;
mod relay;
mod rollout;
mod run;
mod serve;
mod trust;
mod up;
mod wire;
