//! roam-scheduler: Roam's control plane.
//!
//! So far it holds the pure decision logic the scheduler daemon is built on
//! (the daemon, host registry, store and API come with the cluster issue):
//!
//! - [`selector`]: label selectors (`jurisdiction=EU,site in (a,b)`);
//! - [`placement`]: filter-then-score placement with a reason for every
//!   rejected host;
//! - [`reconcile`]: desired versus running state, as commands.
#![deny(missing_docs)]

pub mod placement;
pub mod reconcile;
pub mod selector;
