//! WASI preview 1 for one instance, deny by default.
//!
//! A guest gets no preopened directories, no environment variables, no
//! arguments beyond its name and no sockets unless its [`InstanceConfig`]
//! grants them. Its stdout and stderr go to [`LogBuffer`]s.
//!
//! The monotonic clock is Roam's own ([`MonotonicClock`]): its reading is part
//! of the snapshot and a restored instance continues from it, so the clock
//! stays monotonic when a workload moves to a host whose clock started later.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, HostMonotonicClock, WasiCtxBuilder};

use crate::error::InstantiateError;
use crate::instance::InstanceConfig;
use crate::logs::LogBuffer;

/// A monotonic clock whose reading can be carried across hosts.
#[derive(Clone, Debug)]
pub struct MonotonicClock {
    /// (host instant at which the reading was `base` nanoseconds, base)
    origin: Arc<Mutex<(Instant, u64)>>,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock {
            origin: Arc::new(Mutex::new((Instant::now(), 0))),
        }
    }
}

impl MonotonicClock {
    /// Current reading in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        let (at, base) = *self.origin.lock().unwrap_or_else(|e| e.into_inner());
        base.saturating_add(u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Continue from `reading` nanoseconds (never goes backwards).
    pub fn resume_from(&self, reading: u64) {
        let now = self.now_ns();
        let mut origin = self.origin.lock().unwrap_or_else(|e| e.into_inner());
        *origin = (Instant::now(), reading.max(now));
    }
}

impl HostMonotonicClock for MonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.now_ns()
    }
}

/// Build the WASI context an instance's config grants.
pub(crate) fn build(
    config: &InstanceConfig,
    stdout: &LogBuffer,
    stderr: &LogBuffer,
    clock: &MonotonicClock,
) -> Result<WasiP1Ctx, InstantiateError> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .arg(&config.name)
        .args(&config.args)
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .monotonic_clock(clock.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for (k, v) in &config.env {
        builder.env(k, v);
    }
    for dir in &config.dirs {
        let perms = if dir.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        builder
            .preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| InstantiateError::Dir {
                path: dir.host.display().to_string(),
                reason: format!("{e:#}"),
            })?;
    }
    Ok(builder.build_p1())
}
