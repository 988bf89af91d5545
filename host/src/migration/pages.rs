//! Round 0's page streams, both ends: writing a share of the memory as
//! frames, and reading frames with every check `roam_proto::pages` defines
//! done before a page lands. The frame format itself is in
//! `roam_proto::pages`; this file is its I/O.

use std::io::IoSlice;
use std::time::{Duration, Instant};

use roam_proto::Compression;
use roam_proto::pages::{
    self, Budget, FRAME_PAGES, FrameError, HEAD_LEN, Head, PAGE_SIZE, SUM_LEN,
};
use roam_runtime::driver::LiveMemory;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::{ReceiveError, SendError, StreamError};
use crate::fault::Fault;

/// A page stream that moves no bytes for this long is given up.
pub(crate) const STREAM_IDLE: Duration = Duration::from_secs(30);

/// Pages in one window: the unit the page streams share out (window `w`
/// goes over stream `w % streams`), and the most pages one frame carries.
/// 256 KiB: a window's copy stays in the core's cache while it is
/// checked for zero pages, checksummed and written.
pub(crate) const WINDOW_PAGES: u64 = 64;
const _: () = assert!(WINDOW_PAGES <= FRAME_PAGES as u64);

/// `fut`, or an error once it waited [`STREAM_IDLE`].
pub(crate) async fn timed<T>(
    what: &'static str,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, StreamError> {
    match tokio::time::timeout(STREAM_IDLE, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(error)) => Err(StreamError::Io { what, error }),
        Err(_) => Err(StreamError::Stalled {
            what,
            secs: STREAM_IDLE.as_secs(),
        }),
    }
}

/// Reads one page stream's frames, each checked against the memory's
/// bounds before its body is read, against its checksum after, and (when
/// compressed) decompressed into exactly its pages.
pub(crate) struct FrameReader<'a, R> {
    io: &'a mut R,
    /// One frame's pages (at most [`FRAME_PAGES`] of them).
    pages: Vec<u8>,
    /// One compressed body (shorter than its pages).
    body: Vec<u8>,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    budget: Budget,
}

impl<'a, R: AsyncRead + Unpin> FrameReader<'a, R> {
    /// Frames of at most `total` bytes of pages into a memory of
    /// `memory_pages` pages.
    pub(crate) fn new(io: &'a mut R, total: u64, memory_pages: u64) -> Self {
        FrameReader {
            io,
            pages: Vec::new(),
            body: Vec::new(),
            decompressor: None,
            budget: Budget::new(total, memory_pages),
        }
    }

    /// The next frame: its first page and its pages; `None` after the end
    /// frame, which must count the pages read.
    pub(crate) async fn next(&mut self) -> Result<Option<(u64, &[u8])>, ReceiveError> {
        let mut head = [0u8; HEAD_LEN];
        timed("reading a frame", self.io.read_exact(&mut head)).await?;
        let parsed = self.budget.head(&head)?;
        let body = if parsed.compressed() {
            &mut self.body
        } else {
            &mut self.pages
        };
        body.resize(parsed.body_len(), 0);
        timed("reading pages", self.io.read_exact(body)).await?;
        let mut sum = [0u8; SUM_LEN];
        timed("reading a checksum", self.io.read_exact(&mut sum)).await?;
        self.budget.check(&head, parsed, body, sum)?;
        match parsed {
            Head::Pages { first, count, .. } => {
                if parsed.compressed() {
                    self.pages.resize(parsed.pages_len(), 0);
                    let refused = FrameError::Decompress { first, count };
                    let decompressor = match &mut self.decompressor {
                        Some(d) => d,
                        None => self
                            .decompressor
                            .insert(zstd::bulk::Decompressor::new().map_err(|_| refused.clone())?),
                    };
                    // Writes at most the pages' length: a body that would
                    // decompress to more is an error, not an allocation.
                    let n = decompressor
                        .decompress_to_buffer(&self.body[..], &mut self.pages[..])
                        .map_err(|_| refused.clone())?;
                    if n != self.pages.len() {
                        return Err(refused.into());
                    }
                }
                Ok(Some((first, &self.pages)))
            }
            Head::End { sent } => {
                self.budget.end(sent)?;
                Ok(None)
            }
        }
    }
}

/// What a page stream sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Pages (4 KiB each).
    pub(crate) pages: u64,
    /// Bytes on the wire: heads, bodies (compressed or not), checksums.
    pub(crate) wire: u64,
    /// Whether it was compressing when it ended: the link, not the CPU,
    /// held it back (later rounds are compressed too then).
    pub(crate) compressing: bool,
}

impl std::ops::AddAssign for Sent {
    fn add_assign(&mut self, other: Sent) {
        self.pages += other.pages;
        self.wire += other.wire;
        self.compressing |= other.compressing;
    }
}

/// The zstd level of compressed frames: the fastest of the standard levels
/// (on JSON-like memory it sends ~0.2 of the bytes at ~400 MB/s a core;
/// lz4 sends ~0.33 at ~550 MB/s).
const LEVEL: i32 = 1;

/// Writes one page stream's frames, compressing them while the link, not
/// the CPU, is what holds the stream back ([`Policy`]).
pub(crate) struct FrameWriter<'a, W> {
    io: &'a mut W,
    policy: Policy,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// Room for one compressed body (less than one frame's pages).
    body: Vec<u8>,
    sent: Sent,
}

impl<'a, W: AsyncWrite + Unpin> FrameWriter<'a, W> {
    /// A stream whose setup (connection and upgrade) took `setup`: a long
    /// one means a long round trip, where compressing starts at once.
    pub(crate) fn new(io: &'a mut W, setup: Duration, mode: Compression) -> Self {
        FrameWriter {
            io,
            policy: Policy::new(setup, mode, Instant::now()),
            compressor: None,
            body: Vec::new(),
            sent: Sent::default(),
        }
    }

    /// One frame: `bytes` (whole pages, at most [`FRAME_PAGES`]) for the
    /// pages from `first` on, compressed when the policy says so and it
    /// shrinks them, with its head and checksum in one vectored write.
    pub(crate) async fn frame(&mut self, first: u64, bytes: &[u8]) -> Result<(), StreamError> {
        let count = (bytes.len() / PAGE_SIZE) as u32;
        let mut compressing = None;
        let mut encoded = 0;
        if self.policy.compress_next() {
            encoded = self.compress(bytes, &mut compressing).unwrap_or(0);
        }
        let body = if encoded > 0 {
            &self.body[..encoded]
        } else {
            bytes
        };
        let encoded = encoded as u32;
        let head = pages::compressed_head(first, count, encoded);
        let sum = pages::checksum(&head, body).to_le_bytes();
        let wire = HEAD_LEN + body.len() + SUM_LEN;
        let began = Instant::now();
        let mut parts = [IoSlice::new(&head), IoSlice::new(body), IoSlice::new(&sum)];
        let mut parts = &mut parts[..];
        while !parts.is_empty() {
            let n = timed("writing pages", self.io.write_vectored(parts)).await?;
            if n == 0 {
                return Err(StreamError::Closed);
            }
            IoSlice::advance_slices(&mut parts, n);
        }
        let now = Instant::now();
        self.sent.pages += u64::from(count);
        self.sent.wire += wire as u64;
        self.policy.wrote(
            Wrote {
                pages: bytes.len(),
                wire,
                writing: now - began,
                compressing,
            },
            now,
        );
        Ok(())
    }

    /// Compress `bytes` into `self.body`; the compressed length, or `None`
    /// when that failed or did not shrink them (the frame then goes as it
    /// is).
    fn compress(&mut self, bytes: &[u8], took: &mut Option<(Duration, usize)>) -> Option<usize> {
        let began = Instant::now();
        let compressor = match &mut self.compressor {
            Some(c) => c,
            None => match zstd::bulk::Compressor::new(LEVEL) {
                Ok(c) => self.compressor.insert(c),
                Err(_) => return None,
            },
        };
        // Room for one byte less than the pages: zstd fails rather than
        // write past it, so a body that does not shrink is never sent.
        let room = bytes.len().saturating_sub(1);
        if self.body.len() < room {
            self.body.resize(room, 0);
        }
        let body = &mut self.body[..room];
        let mut run = || compressor.compress_to_buffer(bytes, &mut *body).ok();
        // A frame takes ~0.5 ms to compress: on the daemon's runtime, let
        // its other tasks (other workloads' requests) move to another
        // worker meanwhile.
        let n = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
            _ => run(),
        }
        .filter(|&n| n > 0);
        *took = Some((began.elapsed(), n.unwrap_or(bytes.len())));
        n
    }

    /// The end frame, with the number of pages sent; what the stream sent.
    pub(crate) async fn end(self) -> Result<Sent, SendError> {
        let sent = u32::try_from(self.sent.pages).map_err(|_| SendError::TooManyPages)?;
        let head = pages::end_head(sent);
        let sum = pages::checksum(&head, &[]).to_le_bytes();
        timed("writing the end", self.io.write_all(&head)).await?;
        timed("writing the end", self.io.write_all(&sum)).await?;
        timed("flushing", self.io.flush()).await?;
        Ok(Sent {
            pages: self.sent.pages,
            wire: self.sent.wire + (HEAD_LEN + SUM_LEN) as u64,
            compressing: self.policy.compress_next(),
        })
    }
}

/// What one frame cost.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wrote {
    /// Bytes of pages it carried.
    pub(crate) pages: usize,
    /// Bytes on the wire.
    pub(crate) wire: usize,
    /// Time spent writing it (waiting for the link, when it is full).
    pub(crate) writing: Duration,
    /// Time spent compressing it and the bytes that came out, if it was.
    pub(crate) compressing: Option<(Duration, usize)>,
}

/// When a page stream compresses: when the link, not the CPU, is what holds
/// it back. Decided every [`Policy::PERIOD`] bytes of pages from what the
/// stream measured in it:
///
/// - sending pages as they are, it compresses from the next period on when
///   it moved them at less than a quarter of the rate the compressor last
///   managed for two periods in a row (the link is the bottleneck;
///   compressing then costs no time and sends fewer bytes; a quarter and
///   two periods, so that a busy moment on loopback does not count);
/// - compressing, it sends pages as they are again when writing took less
///   than a tenth of the period (the link kept up with the compressor: the
///   CPU is the bottleneck), or when what it compressed shrank by less than
///   a tenth (the memory does not compress; it tries again
///   [`Policy::REST`] periods later).
///
/// Until a stream's send buffers fill, writing never waits, so every link
/// looks fast at first; a stream whose setup took longer than
/// [`Policy::FAR`] (a round trip on a link across sites) therefore starts
/// compressing and keeps at it until [`Policy::SETTLED`] bytes are on the
/// wire. On loopback a stream only compresses when the machine is so busy
/// that it moves its pages slower than the compressor would.
///
/// `--compression never` and `always` fix the choice for every frame.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    mode: Compression,
    compress: bool,
    /// Compressing from the start (a far peer), not yet settled.
    guessed: bool,
    /// Periods left before compression is tried again.
    rest: u32,
    /// Periods in a row that moved pages slower than the compressor would.
    slow: u32,
    /// Compressor throughput, bytes of pages per second (a moving average).
    compress_rate: f64,
    wire_total: u64,
    period: Period,
}

#[derive(Clone, Debug, Default)]
struct Period {
    began: Option<Instant>,
    pages: u64,
    writing: Duration,
    compressed_in: u64,
    compressed_out: u64,
    compressing: Duration,
}

impl Policy {
    /// Bytes of pages per decision.
    pub(crate) const PERIOD: u64 = 1 << 20;
    /// A setup this long means a peer across a slow link.
    pub(crate) const FAR: Duration = Duration::from_millis(10);
    /// Bytes on the wire after which a stream's buffers are full.
    pub(crate) const SETTLED: u64 = 8 << 20;
    /// Periods of pages sent as they are after memory that did not compress.
    pub(crate) const REST: u32 = 16;
    /// What the compressor is assumed to manage before it was measured.
    const PRIOR_RATE: f64 = 300e6;
    /// A stream sending pages as they are compresses once it moved them
    /// this many times slower than the compressor would ...
    const SLOWER: f64 = 4.0;
    /// ... for this many periods in a row (a hiccup on loopback is not a
    /// slow link).
    const SLOW_PERIODS: u32 = 2;

    pub(crate) fn new(setup: Duration, mode: Compression, now: Instant) -> Policy {
        let far = match mode {
            Compression::Auto => setup >= Self::FAR,
            Compression::Never => false,
            Compression::Always => true,
        };
        Policy {
            mode,
            compress: far,
            guessed: far,
            rest: 0,
            slow: 0,
            compress_rate: Self::PRIOR_RATE,
            wire_total: 0,
            period: Period {
                began: Some(now),
                ..Period::default()
            },
        }
    }

    /// Whether to compress the next frame.
    pub(crate) fn compress_next(&self) -> bool {
        self.compress
    }

    /// Count a frame written at `now`; decide at the end of a period.
    pub(crate) fn wrote(&mut self, frame: Wrote, now: Instant) {
        self.wire_total += frame.wire as u64;
        let p = &mut self.period;
        p.pages += frame.pages as u64;
        p.writing += frame.writing;
        if let Some((took, out)) = frame.compressing {
            p.compressed_in += frame.pages as u64;
            p.compressed_out += out as u64;
            p.compressing += took;
        }
        if p.pages < Self::PERIOD || self.mode != Compression::Auto {
            return;
        }
        let period = std::mem::take(&mut self.period);
        self.period.began = Some(now);
        let wall = period
            .began
            .map_or(Duration::ZERO, |b| now.saturating_duration_since(b))
            .as_secs_f64()
            .max(1e-6);
        if period.compressed_in > 0 && !period.compressing.is_zero() {
            let rate = period.compressed_in as f64 / period.compressing.as_secs_f64();
            self.compress_rate = (self.compress_rate + rate) / 2.0;
        }
        if self.guessed && self.wire_total >= Self::SETTLED {
            self.guessed = false;
        }
        if self.compress {
            let shrank = period.compressed_in > 0
                && (period.compressed_out as f64) < 0.9 * period.compressed_in as f64;
            if period.compressed_in > 0 && !shrank {
                self.compress = false;
                self.guessed = false;
                self.rest = Self::REST;
            } else if !self.guessed && period.writing.as_secs_f64() < 0.1 * wall {
                self.compress = false;
            }
        } else if self.rest > 0 {
            self.rest -= 1;
        } else {
            let moved = period.pages as f64 / wall;
            self.slow = if moved < self.compress_rate / Self::SLOWER {
                self.slow + 1
            } else {
                0
            };
            self.compress = self.slow >= Self::SLOW_PERIODS;
        }
    }
}

/// The windows one page stream carries: `w % streams == index`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Share {
    pub(crate) index: u64,
    pub(crate) streams: u64,
}

impl Share {
    pub(crate) fn carries(self, page: u64) -> bool {
        (page / WINDOW_PAGES) % self.streams == self.index
    }
}

/// Write this stream's `share` of the captured `pages` (their bytes in
/// order in `data`) as frames of consecutive pages inside one window.
/// Returns the pages written.
pub(crate) async fn write_captured<W: AsyncWrite + Unpin>(
    io: &mut FrameWriter<'_, W>,
    pages: &[u64],
    data: &[u8],
    share: Share,
) -> Result<u64, SendError> {
    let mut written = 0;
    let mut i = 0;
    while i < pages.len() {
        let first = pages[i];
        let window_end = (first / WINDOW_PAGES + 1) * WINDOW_PAGES;
        let mut count = 1;
        while i + count < pages.len()
            && pages[i + count] == first + count as u64
            && first + (count as u64) < window_end
        {
            count += 1;
        }
        if share.carries(first) {
            let bytes = data
                .get(i * PAGE_SIZE..(i + count) * PAGE_SIZE)
                .ok_or(SendError::ShortCapture)?;
            io.frame(first, bytes).await?;
            written += count as u64;
        }
        i += count;
    }
    Ok(written)
}

/// Write this stream's `share` of the running workload's memory: each
/// window copied first (so a frame's checksum covers exactly the bytes
/// sent) into a buffer that stays in cache, its runs of non-zero pages
/// sent as frames. Returns the pages written.
pub(crate) async fn write_live<W: AsyncWrite + Unpin>(
    io: &mut FrameWriter<'_, W>,
    memory: &LiveMemory,
    share: Share,
) -> Result<u64, SendError> {
    const WINDOW: usize = WINDOW_PAGES as usize * PAGE_SIZE;
    let mut window = vec![0u8; WINDOW];
    let mut written = 0u64;
    let delay = Fault::Window.delay();
    let mut at = share.index as usize * WINDOW;
    while at < memory.len() {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let n = memory.read(at, &mut window);
        let first = (at / PAGE_SIZE) as u64;
        let nonzero: Vec<bool> = window[..n]
            .chunks(PAGE_SIZE)
            .map(|p| !roam_runtime::snapshot::is_zero(p))
            .collect();
        let mut p = 0;
        while p < nonzero.len() {
            if !nonzero[p] {
                p += 1;
                continue;
            }
            let start = p;
            while p < nonzero.len() && nonzero[p] {
                p += 1;
            }
            let bytes = &window[start * PAGE_SIZE..(p * PAGE_SIZE).min(n)];
            io.frame(first + start as u64, bytes).await?;
            written += (p - start) as u64;
        }
        at += WINDOW * share.streams as usize;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {

    use super::*;

    const PAGE: u64 = PAGE_SIZE as u64;

    #[test]
    fn the_wire_page_is_the_snapshot_page() {
        assert_eq!(PAGE_SIZE, roam_runtime::snapshot::PAGE_SIZE);
    }

    /// Pages as the source writes them: 300 pages in runs of 1..100, so
    /// frames of 1..64 pages; the memory has 1000 pages.
    fn stream() -> (Vec<u64>, Vec<u8>, Vec<u8>) {
        let mut pages = Vec::new();
        let mut next = 3u64;
        for run in [1u64, 100, 2, 64, 65, 68] {
            pages.extend(next..next + run);
            next += run + 7;
        }
        let data: Vec<u8> = (0..pages.len() * 4096)
            .map(|i| (i * 31 / 7) as u8)
            .collect();
        let mut wire = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut frames = FrameWriter::new(&mut wire, Duration::ZERO, Compression::Auto);
            write_captured(&mut frames, &pages, &data, ALL).await?;
            frames.end().await.map(|_| ())
        })
        .unwrap();
        (pages, data, wire)
    }

    const ALL: Share = Share {
        index: 0,
        streams: 1,
    };

    /// Land a page stream in a memory of 1000 pages, as the target does.
    fn read(wire: &[u8], total: usize) -> Result<Vec<u8>, ReceiveError> {
        let mut memory = vec![0u8; 1000 * 4096];
        read_into(&mut memory, wire, total)?;
        Ok(memory)
    }

    fn read_into(memory: &mut [u8], wire: &[u8], total: usize) -> Result<(), ReceiveError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let pages = memory.len() as u64 / PAGE;
        rt.block_on(async {
            let mut io = wire;
            let mut frames = FrameReader::new(&mut io, total as u64, pages);
            while let Some((first, bytes)) = frames.next().await? {
                let at = first as usize * 4096;
                memory[at..at + bytes.len()].copy_from_slice(bytes);
            }
            Ok(())
        })
    }

    /// Live memory: zero pages are skipped, runs cross window edges, and
    /// what lands is the memory.
    #[test]
    fn live_memory_streams_its_non_zero_pages() {
        let mut bytes = vec![0u8; 700 * 4096];
        for p in (0..250).chain(255..260).chain([300, 301, 699]) {
            bytes[p * 4096..(p + 1) * 4096].fill((p % 200) as u8 + 1);
        }
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        let memory = LiveMemory::lend(bytes).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let mut wire = Vec::new();
        let pages = rt
            .block_on(async {
                let mut frames = FrameWriter::new(&mut wire, Duration::ZERO, Compression::Auto);
                let n = write_live(&mut frames, &memory, ALL).await?;
                frames.end().await.map(|_| n)
            })
            .unwrap();
        assert_eq!(pages, 250 + 5 + 3);
        assert!(
            wire.len() < (pages as usize + 8) * 4096,
            "zero pages are not sent"
        );
        let memory = read(&wire, bytes.len()).unwrap();
        assert_eq!(&memory[..bytes.len()], bytes);
    }

    /// Several streams: each carries only its windows, none is left out,
    /// and together they rebuild the memory — live or captured.
    #[test]
    fn page_streams_share_the_memory_out_by_window() {
        let mut bytes = vec![0u8; 1000 * 4096];
        for p in (0..1000).filter(|p| p % 7 != 3) {
            bytes[p * 4096..(p + 1) * 4096].fill((p % 250) as u8 + 1);
        }
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        let sent: Vec<u64> = (0..1000u64).filter(|p| p % 7 != 3).collect();
        let data: Vec<u8> = sent
            .iter()
            .flat_map(|&p| bytes[p as usize * 4096..(p as usize + 1) * 4096].to_vec())
            .collect();
        let memory = LiveMemory::lend(bytes).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        for streams in [1u64, 2, 3, 8] {
            let mut live = vec![0u8; bytes.len()];
            let mut captured = vec![0u8; bytes.len()];
            let mut total = 0;
            for index in 0..streams {
                let share = Share { index, streams };
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let (n, m) = rt
                    .block_on(async {
                        let mut frames =
                            FrameWriter::new(&mut a, Duration::ZERO, Compression::Auto);
                        let n = write_live(&mut frames, &memory, share).await?;
                        frames.end().await?;
                        let mut frames =
                            FrameWriter::new(&mut b, Duration::ZERO, Compression::Auto);
                        let m = write_captured(&mut frames, &sent, &data, share).await?;
                        frames.end().await?;
                        Ok::<_, SendError>((n, m))
                    })
                    .unwrap();
                assert_eq!(n, m, "{index}/{streams}");
                total += n;
                // Only this stream's windows arrive.
                let mut alone = vec![0u8; bytes.len()];
                read_into(&mut alone, &a, bytes.len()).unwrap();
                for (p, page) in alone.chunks(4096).enumerate() {
                    let mine = share.carries(p as u64) && p % 7 != 3;
                    assert_eq!(
                        page.iter().any(|&b| b != 0),
                        mine,
                        "page {p} on {index}/{streams}"
                    );
                }
                read_into(&mut live, &a, bytes.len()).unwrap();
                read_into(&mut captured, &b, bytes.len()).unwrap();
            }
            assert_eq!(total, sent.len() as u64, "{streams} streams");
            assert!(live == bytes, "{streams} streams rebuild the live memory");
            assert!(captured == bytes, "{streams} streams rebuild the capture");
        }
    }

    #[test]
    fn page_frames_land_where_they_belong() {
        let (pages, data, wire) = stream();
        let memory = read(&wire, data.len()).unwrap();
        for (i, &p) in pages.iter().enumerate() {
            let p = p as usize;
            assert_eq!(
                memory[p * 4096..(p + 1) * 4096],
                data[i * 4096..(i + 1) * 4096]
            );
        }
        assert!(
            memory[..3 * 4096].iter().all(|&b| b == 0),
            "untouched pages stay"
        );
    }

    #[test]
    fn a_corrupted_cut_or_oversized_page_stream_is_refused() {
        let (_, data, wire) = stream();
        // Any flipped byte: in a header, the pages or a checksum.
        for at in (0..wire.len())
            .step_by(997)
            .chain([0, 8, 12, 16, wire.len() - 1])
        {
            let mut bad = wire.clone();
            bad[at] ^= 0x40;
            assert!(read(&bad, data.len()).is_err(), "flipped byte {at}");
        }
        // Cut anywhere.
        for len in [0, 10, 16, 5000, wire.len() / 2, wire.len() - 1] {
            assert!(read(&wire[..len], data.len()).is_err(), "cut at {len}");
        }
        // More bytes than announced; an end frame that counts other pages
        // than arrived (checksum made to match).
        assert!(read(&wire, data.len() - 4096).is_err());
        assert!(
            read(&wire, data.len() + 4096).is_ok(),
            "the total is a bound"
        );
        let mut bad = wire.clone();
        let end = bad.len() - 24;
        bad[end + 12] ^= 1;
        let sum = xxhash_rust::xxh3::xxh3_64(&bad[end..end + 16]).to_le_bytes();
        bad[end + 16..].copy_from_slice(&sum);
        let err = read(&bad, data.len()).unwrap_err();
        assert!(
            matches!(err, ReceiveError::Frame(FrameError::Count { .. })),
            "{err}"
        );
        // A frame past the memory's end or over FRAME_PAGES, even with a
        // matching checksum, is refused before anything is read into memory.
        for (first, count) in [(999u64, 2u32), (u64::MAX - 1, 2), (0, FRAME_PAGES + 1)] {
            let head = pages::head(first, count);
            let mut frame = head.to_vec();
            let body = vec![1u8; count as usize * 4096];
            frame.extend(&body);
            frame.extend(pages::checksum(&head, &body).to_le_bytes());
            let err = read(&frame, body.len()).unwrap_err();
            assert!(
                matches!(err, ReceiveError::Frame(FrameError::OutOfBounds { .. })),
                "{err}"
            );
        }
    }

    /// JSON-like text, as a cache holds: compresses well.
    fn json_like(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 256);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut id = 0u64;
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let city = ["Lisbon", "Berlin", "Milan", "Warsaw"][(x % 4) as usize];
            out.extend(
                format!(
                    "{{\"id\":{id},\"city\":\"{city}\",\"score\":{},\"session\":\"{x:016x}\"}}\n",
                    x >> 54
                )
                .bytes(),
            );
            id += 1;
        }
        out.truncate(len);
        out
    }

    fn pseudo_random(len: usize) -> Vec<u8> {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8 | 1
            })
            .collect()
    }

    /// A stream to a far peer compresses from the start: JSON-like memory
    /// crosses in a fraction of its bytes and lands exactly; memory that
    /// does not compress goes as it is, costing no more than raw frames.
    #[test]
    fn a_far_stream_compresses_what_compresses_and_lands_it_exactly() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        for (content, most) in [
            (json_like(1000 * 4096), 0.35),
            (pseudo_random(1000 * 4096), 1.01),
        ] {
            let bytes: &'static [u8] = Box::leak(content.into_boxed_slice());
            let memory = LiveMemory::lend(bytes).unwrap();
            let mut wire = Vec::new();
            let sent = rt
                .block_on(async {
                    let mut frames = FrameWriter::new(&mut wire, Policy::FAR, Compression::Auto);
                    write_live(&mut frames, &memory, ALL).await?;
                    frames.end().await
                })
                .unwrap();
            assert_eq!(sent.pages, 1000);
            assert_eq!(sent.wire, wire.len() as u64);
            let ratio = wire.len() as f64 / bytes.len() as f64;
            assert!(ratio < most, "{ratio} of the memory went on the wire");
            assert!(read(&wire, bytes.len()).unwrap() == bytes);
        }
    }

    /// A compressed body is checked like any other, and one that does not
    /// decompress to exactly its pages is refused — also with a matching
    /// checksum (a hostile sender).
    #[test]
    fn a_compressed_body_that_is_not_its_pages_is_refused() {
        let pages = json_like(8 * 4096);
        let frame = |count: u32, body: &[u8]| {
            let head = pages::compressed_head(0, count, body.len() as u32);
            let mut frame = head.to_vec();
            frame.extend(body);
            frame.extend(pages::checksum(&head, body).to_le_bytes());
            let end = pages::end_head(count);
            frame.extend(end);
            frame.extend(pages::checksum(&end, &[]).to_le_bytes());
            frame
        };
        let good = zstd::bulk::compress(&pages, 1).unwrap();
        assert!(read(&frame(8, &good), pages.len()).unwrap()[..pages.len()] == pages[..]);
        // Decompresses to more than its pages, to fewer, or not at all.
        for (count, body) in [
            (7, good.clone()),
            (8, zstd::bulk::compress(&pages[..7 * 4096], 1).unwrap()),
            (8, good[..good.len() / 2].to_vec()),
            (8, vec![0x5a; 100]),
        ] {
            let err = read(&frame(count, &body), pages.len()).unwrap_err();
            assert!(
                matches!(err, ReceiveError::Frame(FrameError::Decompress { .. })),
                "{err}"
            );
        }
        // A bomb: 1 MiB of zeros claimed as one page.
        let bomb = zstd::bulk::compress(&vec![0u8; 1 << 20], 1).unwrap();
        assert!(read(&frame(1, &bomb), pages.len()).is_err());
        // Flipped bytes in a compressed frame.
        let wire = frame(8, &good);
        for at in 0..wire.len() - 24 {
            let mut bad = wire.clone();
            bad[at] ^= 0x10;
            assert!(read(&bad, pages.len()).is_err(), "flipped byte {at}");
        }
    }

    fn frame(
        pages: usize,
        wire: usize,
        writing_us: u64,
        compressed: Option<(u64, usize)>,
    ) -> Wrote {
        Wrote {
            pages,
            wire,
            writing: Duration::from_micros(writing_us),
            compressing: compressed.map(|(us, out)| (Duration::from_micros(us), out)),
        }
    }

    /// Feed `periods` periods of 1 MiB frames, each taking `wall_us`.
    fn run(
        policy: &mut Policy,
        now: &mut Instant,
        periods: u32,
        wall_us: u64,
        f: impl Fn(bool) -> Wrote,
    ) -> bool {
        for _ in 0..periods {
            let compressing = policy.compress_next();
            *now += Duration::from_micros(wall_us);
            policy.wrote(f(compressing), *now);
        }
        policy.compress_next()
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn compression_follows_the_bottleneck() {
        let mut now = Instant::now();
        // Loopback: 1 MiB in 0.5 ms, never compressed.
        let mut policy = Policy::new(Duration::from_micros(300), Compression::Auto, now);
        assert!(!policy.compress_next());
        assert!(!run(&mut policy, &mut now, 50, 500, |_| frame(
            MIB, MIB, 200, None
        )));
        // A slow link: 1 MiB in 17 ms, most of it writing: compress, once
        // it lasted two periods; a hiccup between does not count.
        let slow_raw = |_| frame(MIB, MIB, 16_000, None);
        let fast_raw = |_| frame(MIB, MIB, 200, None);
        assert!(!run(&mut policy, &mut now, 1, 17_000, slow_raw));
        assert!(!run(&mut policy, &mut now, 1, 500, fast_raw));
        assert!(!run(&mut policy, &mut now, 1, 17_000, slow_raw));
        assert!(run(&mut policy, &mut now, 1, 17_000, slow_raw));
        // Compressing, the link still the bottleneck (a third writing): keep on.
        let slow = |c: bool| {
            if c {
                frame(MIB, MIB / 5, 1_300, Some((2_500, MIB / 5)))
            } else {
                frame(MIB, MIB, 16_000, None)
            }
        };
        assert!(run(&mut policy, &mut now, 20, 4_000, slow));
        // The link got fast: writing is a sliver of the time: stop.
        assert!(!run(&mut policy, &mut now, 1, 2_600, |_| frame(
            MIB,
            MIB / 5,
            50,
            Some((2_500, MIB / 5))
        )));
        // Memory that does not compress on a slow link: rest, then try again.
        let mut policy = Policy::new(Duration::from_millis(60), Compression::Auto, now);
        assert!(policy.compress_next(), "a far peer starts compressing");
        let random = |c: bool| {
            if c {
                frame(MIB, MIB, 16_000, Some((1_000, MIB)))
            } else {
                frame(MIB, MIB, 16_000, None)
            }
        };
        assert!(!run(&mut policy, &mut now, 1, 17_000, random));
        assert!(!run(&mut policy, &mut now, Policy::REST, 17_000, random));
        assert!(!run(&mut policy, &mut now, 1, 17_000, random));
        assert!(run(&mut policy, &mut now, 1, 17_000, random), "tried again");
        // A far peer's first frames fill its buffers without waiting: it
        // keeps compressing until they are full.
        let mut policy = Policy::new(Duration::from_millis(60), Compression::Auto, now);
        let filling = |_| frame(MIB, MIB / 5, 20, Some((2_500, MIB / 5)));
        assert!(run(&mut policy, &mut now, 30, 2_600, filling));
        assert!(
            !run(&mut policy, &mut now, 20, 2_600, filling),
            "settled: the link kept up"
        );
    }
}
