//! Round 0's page streams, both ends: writing a share of the memory as
//! frames, and reading frames with every check `roam_proto::pages` defines
//! done before a page lands. The frame format itself is in
//! `roam_proto::pages`; this file is its I/O.

use std::io::IoSlice;
use std::time::Duration;

use roam_proto::pages::{self, Budget, FRAME_PAGES, HEAD_LEN, Head, PAGE_SIZE, SUM_LEN};
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
/// bounds before its pages are read and against its checksum after.
pub(crate) struct FrameReader<'a, R> {
    io: &'a mut R,
    /// One frame's pages (at most [`FRAME_PAGES`] of them).
    pages: Vec<u8>,
    budget: Budget,
}

impl<'a, R: AsyncRead + Unpin> FrameReader<'a, R> {
    /// Frames of at most `total` bytes of pages into a memory of
    /// `memory_pages` pages.
    pub(crate) fn new(io: &'a mut R, total: u64, memory_pages: u64) -> Self {
        FrameReader {
            io,
            pages: Vec::new(),
            budget: Budget::new(total, memory_pages),
        }
    }

    /// The next frame: its first page and its pages; `None` after the end
    /// frame, which must count the pages read.
    pub(crate) async fn next(&mut self) -> Result<Option<(u64, &[u8])>, ReceiveError> {
        let mut head = [0u8; HEAD_LEN];
        timed("reading a frame", self.io.read_exact(&mut head)).await?;
        let parsed = self.budget.head(&head)?;
        self.pages.resize(parsed.pages_len(), 0);
        timed("reading pages", self.io.read_exact(&mut self.pages)).await?;
        let mut sum = [0u8; SUM_LEN];
        timed("reading a checksum", self.io.read_exact(&mut sum)).await?;
        self.budget.check(&head, parsed, &self.pages, sum)?;
        match parsed {
            Head::Pages { first, .. } => Ok(Some((first, &self.pages))),
            Head::End { sent } => {
                self.budget.end(sent)?;
                Ok(None)
            }
        }
    }
}

/// One frame: `bytes` (whole pages, at most [`FRAME_PAGES`]) for the pages
/// from `first` on, its head and checksum in one vectored write.
pub(crate) async fn write_frame(
    io: &mut (impl AsyncWrite + Unpin),
    first: u64,
    bytes: &[u8],
) -> Result<(), StreamError> {
    let head = pages::head(first, (bytes.len() / PAGE_SIZE) as u32);
    let sum = pages::checksum(&head, bytes).to_le_bytes();
    let mut parts = [IoSlice::new(&head), IoSlice::new(bytes), IoSlice::new(&sum)];
    let mut parts = &mut parts[..];
    while !parts.is_empty() {
        let n = timed("writing pages", io.write_vectored(parts)).await?;
        if n == 0 {
            return Err(StreamError::Closed);
        }
        IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

/// The end frame, with the number of pages sent.
pub(crate) async fn write_end(
    io: &mut (impl AsyncWrite + Unpin),
    sent: u64,
) -> Result<(), SendError> {
    let sent = u32::try_from(sent).map_err(|_| SendError::TooManyPages)?;
    let head = pages::end_head(sent);
    let sum = pages::checksum(&head, &[]).to_le_bytes();
    timed("writing the end", io.write_all(&head)).await?;
    timed("writing the end", io.write_all(&sum)).await?;
    timed("flushing", io.flush()).await?;
    Ok(())
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
pub(crate) async fn write_captured(
    io: &mut (impl AsyncWrite + Unpin),
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
            write_frame(io, first, bytes).await?;
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
pub(crate) async fn write_live(
    io: &mut (impl AsyncWrite + Unpin),
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
            write_frame(io, first + start as u64, bytes).await?;
            written += (p - start) as u64;
        }
        at += WINDOW * share.streams as usize;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use roam_proto::pages::FrameError;

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
            let n = write_captured(&mut wire, &pages, &data, ALL).await?;
            write_end(&mut wire, n).await
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
                let n = write_live(&mut wire, &memory, ALL).await?;
                write_end(&mut wire, n).await.map(|()| n)
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
                        let n = write_live(&mut a, &memory, share).await?;
                        write_end(&mut a, n).await?;
                        let m = write_captured(&mut b, &sent, &data, share).await?;
                        write_end(&mut b, m).await?;
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
}
