//! One module per subcommand (or family of subcommands).

pub mod client;
pub mod config;
pub mod daemons;
pub mod events;
pub mod get;
pub mod local_etcd;
pub mod migrate;
pub mod oci;
pub mod ops;
pub mod progress;
pub mod rollout;
pub mod run;
pub mod scaffold;
pub mod serve;
pub mod up;
