//! roam-scheduler: Roam's control plane.
//!
//! So far it holds the pure decision logic the scheduler daemon is built on
//! (the daemon, host registry, store and API come with the cluster issue):
//!
//! - [`selector`]: label selectors (`jurisdiction=EU,site in (a,b)`);
//! - [`placement`]: filter-then-score placement with a reason for every
//!   rejected host;
//! - [`reconcile`]: desired versus running state, as commands;
//! - [`auth`]: tokens (CSPRNG, stored hashed, constant-time checks) and the
//!   trusted labels a join token binds;
//! - [`store`]: desired state in redb, committed before a change is acknowledged.
#![deny(missing_docs)]

pub mod auth;
pub mod placement;
pub mod reconcile;
pub mod selector;
pub mod server;
pub mod store;
