//! WASI preview 1 for one instance, deny by default.
//!
//! A guest gets no preopened directories, no environment variables, no
//! arguments beyond its name and no sockets unless its [`InstanceConfig`]
//! grants them. Its stdout and stderr go to [`LogBuffer`]s.
//!
//! The monotonic clock is Roam's own ([`MonotonicClock`]): its reading is part
//! of the snapshot and a restored instance continues from it, so the clock
//! stays monotonic when a workload moves to a host whose clock started later.
//! That reading and the log cursors travel in the `roam.wasi` host section,
//! encoded and decoded by [`WasiSection`].

use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, HostMonotonicClock, WasiCtxBuilder};

use crate::error::InstantiateError;
use crate::instance::InstanceConfig;
use crate::logs::LogBuffer;

/// The `roam.wasi` host section of a snapshot: the WASI state Roam owns.
///
/// Layout, version 1, 28 bytes, every integer little-endian:
///
/// ```text
/// version u32 = 1 | monotonic clock ns u64 | stdout cursor u64 | stderr cursor u64
/// ```
///
/// ```
/// use roam_runtime::wasi::WasiSection;
/// let s = WasiSection { clock_ns: 7, stdout_cursor: 3, stderr_cursor: 1 };
/// assert_eq!(WasiSection::decode(&s.encode()), Ok(s));
/// assert!(WasiSection::decode(&[1, 0, 0, 0]).is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WasiSection {
    /// The monotonic clock's reading, nanoseconds.
    pub clock_ns: u64,
    /// Log records of stdout already read.
    pub stdout_cursor: u64,
    /// Log records of stderr already read.
    pub stderr_cursor: u64,
}

impl WasiSection {
    /// The section's name in a snapshot.
    pub const NAME: &str = "roam.wasi";
    /// The layout version this build writes and reads.
    const VERSION: u32 = 1;
    /// Bytes of version 1.
    const LEN: usize = 4 + 3 * 8;

    /// The section's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut data = Vec::with_capacity(Self::LEN);
        data.extend_from_slice(&Self::VERSION.to_le_bytes());
        for word in [self.clock_ns, self.stdout_cursor, self.stderr_cursor] {
            data.extend_from_slice(&word.to_le_bytes());
        }
        data
    }

    /// Read the section's bytes: exactly version 1's length and version.
    pub fn decode(data: &[u8]) -> Result<WasiSection, &'static str> {
        if data.len() != Self::LEN {
            return Err("wrong length");
        }
        let (version, words) = data.split_at(4);
        if version != Self::VERSION.to_le_bytes() {
            return Err("unsupported version");
        }
        let mut words = words
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()));
        let mut next = || words.next().ok_or("wrong length");
        Ok(WasiSection {
            clock_ns: next()?,
            stdout_cursor: next()?,
            stderr_cursor: next()?,
        })
    }
}

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
