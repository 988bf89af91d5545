//! Captured guest output: a bounded buffer per stream.
//!
//! Guests write stdout and stderr through WASI. Each stream goes into a
//! [`LogBuffer`] that keeps the most recent `capacity` bytes (older bytes are
//! dropped, never the newest) and counts every byte ever written — the log
//! cursor, which lets a reader ask for "everything after byte N" and notice
//! when it fell behind. Optionally the bytes are also passed through to the
//! host's own stdout/stderr, as `roam run` does.

use std::collections::VecDeque;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Default capacity of a captured stream.
pub const DEFAULT_LOG_CAPACITY: usize = 64 << 10;

/// Where captured bytes are copied besides the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passthrough {
    /// Keep the bytes only in the buffer.
    None,
    /// Also write them to the host's stdout.
    Stdout,
    /// Also write them to the host's stderr.
    Stderr,
}

#[derive(Debug)]
struct Inner {
    buf: VecDeque<u8>,
    capacity: usize,
    /// Bytes ever written.
    total: u64,
}

/// A bounded, shareable capture of one output stream.
#[derive(Clone, Debug)]
pub struct LogBuffer {
    inner: Arc<Mutex<Inner>>,
    passthrough: Passthrough,
}

impl LogBuffer {
    /// A buffer that keeps the last `capacity` bytes.
    pub fn new(capacity: usize, passthrough: Passthrough) -> Self {
        LogBuffer {
            inner: Arc::new(Mutex::new(Inner {
                buf: VecDeque::new(),
                capacity,
                total: 0,
            })),
            passthrough,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a writer panicked mid-append; the bytes
        // are still a valid log.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append bytes, dropping the oldest beyond capacity.
    pub fn write(&self, bytes: &[u8]) {
        {
            let mut inner = self.lock();
            inner.total += bytes.len() as u64;
            let cap = inner.capacity;
            let keep = &bytes[bytes.len().saturating_sub(cap)..];
            let overflow = (inner.buf.len() + keep.len()).saturating_sub(cap);
            let drop = overflow.min(inner.buf.len());
            inner.buf.drain(..drop);
            inner.buf.extend(keep);
        }
        // Passing through is best effort: a closed host stdout must not fail the guest.
        match self.passthrough {
            Passthrough::None => {}
            Passthrough::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(bytes);
                let _ = out.flush();
            }
            Passthrough::Stderr => {
                let mut out = std::io::stderr().lock();
                let _ = out.write_all(bytes);
                let _ = out.flush();
            }
        }
    }

    /// The retained bytes.
    pub fn contents(&self) -> Vec<u8> {
        let inner = self.lock();
        inner.buf.iter().copied().collect()
    }

    /// Bytes ever written (the cursor just past the newest byte).
    pub fn cursor(&self) -> u64 {
        self.lock().total
    }

    /// Retained bytes written at or after `cursor`, and the cursor of the
    /// first byte returned (larger than `cursor` when older bytes were dropped).
    pub fn read_from(&self, cursor: u64) -> (u64, Vec<u8>) {
        let inner = self.lock();
        let first = inner.total - inner.buf.len() as u64;
        let start = cursor.clamp(first, inner.total);
        let skip = (start - first) as usize;
        (start, inner.buf.iter().skip(skip).copied().collect())
    }

    /// Set the cursor, as when restoring an instance that had written
    /// `total` bytes before it moved. Retained bytes are kept.
    pub fn set_cursor(&self, total: u64) {
        let mut inner = self.lock();
        inner.total = total.max(inner.buf.len() as u64);
    }
}

impl IsTerminal for LogBuffer {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogBuffer {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for LogBuffer {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_bytes_and_counts_all() {
        let log = LogBuffer::new(8, Passthrough::None);
        log.write(b"hello ");
        log.write(b"world!");
        assert_eq!(log.contents(), b"o world!");
        assert_eq!(log.cursor(), 12);
        let (start, bytes) = log.read_from(0);
        assert_eq!((start, bytes.as_slice()), (4, &b"o world!"[..]));
        let (start, bytes) = log.read_from(10);
        assert_eq!((start, bytes.as_slice()), (10, &b"d!"[..]));
        log.write(b"0123456789abc");
        assert_eq!(log.contents(), b"56789abc");
    }
}
