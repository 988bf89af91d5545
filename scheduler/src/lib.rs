//! roam-scheduler: Roam's control plane.
//!
//! The pure decision logic the daemon is built on, each tested alone:
//!
//! - [`selector`]: label selectors (`jurisdiction=EU,site in (a,b)`);
//! - [`placement`]: filter-then-score placement with a reason for every
//!   rejected host;
//! - [`reconcile`]: desired versus running state, as commands;
//! - [`auth`]: tokens (CSPRNG, stored hashed, constant-time checks) and the
//!   trusted labels a join token binds;
//! - [`store`]: desired state in redb, committed before a change is acknowledged;
//! - [`oci`]: OCI registries: Wasm artifacts pushed and pulled by
//!   digest, cosign-compatible signatures made and checked;
//! - [`verdict`]: what the scheduler concludes about a migration from what
//!   its hosts answer (commit, abort, ask again), keeping the rule that the
//!   source never resumes while the target may serve.
//!
//! And the daemon itself, [`server`] (`roam scheduler`): host registry,
//! reconciler, ingress, operator API, metrics, live migrations and their
//! recovery, drain — one file per concern, every call to a host through
//! one client.
#![deny(missing_docs)]

pub mod auth;
pub mod oci;
pub mod placement;
pub mod reconcile;
pub mod selector;
pub mod server;
pub mod store;
pub mod verdict;
