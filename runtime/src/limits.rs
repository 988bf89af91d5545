//! Per-instance limits: the memory cap and the per-call CPU budget.
//!
//! Memory: [`Limiter`] is the store's `ResourceLimiter`. Growth beyond the cap
//! is denied the standard way (`memory.grow` returns -1, so a guest can handle
//! it) and remembered, so that when the guest then traps — as Rust's
//! allocator does — the error says the memory cap was the cause.
//!
//! CPU: wasmtime's epoch interruption calls back into the host every tick
//! while a guest runs. [`CpuMeter`] counts the ticks of the current call;
//! below the budget the guest yields to the async executor (a fair share for
//! the other instances on this thread), at the budget the call is stopped
//! with [`CpuBudgetExceeded`].

use std::time::Duration;

use wasmtime::ResourceLimiter;

/// Largest table an instance may grow to; protects the host from a guest
/// growing a table without bound.
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The store's resource limiter.
#[derive(Debug)]
pub struct Limiter {
    /// Memory cap in bytes.
    pub memory_limit: u64,
    /// The last denied growth in this call: the size requested.
    pub denied: Option<u64>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_limit {
            self.denied = Some(desired as u64);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }
}

/// Ticks used by the current call against its budget.
#[derive(Debug, Default)]
pub struct CpuMeter {
    /// Ticks seen in this call.
    pub used: u64,
    /// Ticks allowed per call; `None` for no limit.
    pub budget: Option<u64>,
}

impl CpuMeter {
    /// Called on every epoch tick while the guest runs: `true` to stop it.
    pub fn tick(&mut self) -> bool {
        self.used += 1;
        self.budget.is_some_and(|b| self.used >= b)
    }
}

/// The error a call is stopped with when it exceeds its CPU budget.
#[derive(Debug, thiserror::Error)]
#[error("CPU budget of {0:?} exceeded")]
pub struct CpuBudgetExceeded(pub Duration);

/// Ticks of `tick` needed to cover `budget` (at least one).
pub fn budget_ticks(budget: Duration, tick: Duration) -> u64 {
    let tick = tick.as_nanos().max(1);
    (budget.as_nanos().div_ceil(tick) as u64).max(1)
}
