//! The page stream: round 0 of a live migration carries the workload's
//! memory pages over one or more raw byte streams (`POST
//! /v1/migrations/{id}/pages` upgraded to [`crate::headers::PAGES_UPGRADE`]).
//!
//! A stream is a run of frames, each
//!
//! ```text
//! FIRST u64 LE | COUNT u32 LE | ENCODED u32 LE | body | xxh3-64 of head and body, u64 LE
//! ```
//!
//! where the body is the `COUNT` pages of 4 KiB as they are (`ENCODED` = 0),
//! or (`ENCODED` > 0) those pages compressed into `ENCODED` bytes, one zstd
//! frame that must decompress to exactly `COUNT` pages. A compressed body is
//! always shorter than the pages: a sender sends the pages as they are when
//! compressing does not shrink them. It is the sender's choice, frame by
//! frame (see the host's `migration::pages` for when it compresses); the
//! checksum covers the bytes on the wire, so a corrupted body is refused
//! before it is decompressed.
//!
//! A stream is ended by a frame with `FIRST` = [`END_OF_PAGES`], `COUNT` = 0,
//! whose third field counts the pages that stream sent (zero pages are not
//! sent). The receiver answers one line, [`Verdict`], and closes the stream.
//!
//! This module is the format without I/O: [`Budget`] checks each frame head
//! against the memory's bounds and the announced total *before* any page is
//! read, and the end frame's count against what arrived. Guarantees against
//! a hostile sender: a head that names pages outside the memory, more than
//! [`FRAME_PAGES`] pages, a compressed body not shorter than its pages, or
//! more bytes of pages than announced is refused before its body is read;
//! nothing is allocated beyond one frame's pages and body ([`FRAME_PAGES`] ×
//! [`PAGE_SIZE`], 1 MiB, each), and a compressed body that would decompress
//! to more or fewer bytes than its pages is refused; a verdict line is read
//! up to [`MAX_VERDICT`] bytes.

/// Bytes of a page (the snapshot format's page, `docs/snapshot-format.md`).
pub const PAGE_SIZE: usize = 4096;
/// Bytes of a frame head.
pub const HEAD_LEN: usize = 16;
/// Bytes of a frame's checksum.
pub const SUM_LEN: usize = 8;
/// Most pages one frame may carry (a source sends at most a window of 64).
pub const FRAME_PAGES: u32 = 256;
/// `FIRST` of the frame that ends a stream.
pub const END_OF_PAGES: u64 = u64::MAX;
/// Longest verdict line a sender reads.
pub const MAX_VERDICT: u64 = 4096;

/// The head of a frame of `count` pages from page `first` on, sent as they
/// are.
pub fn head(first: u64, count: u32) -> [u8; HEAD_LEN] {
    compressed_head(first, count, 0)
}

/// The head of a frame of `count` pages from page `first` on, compressed
/// into `encoded` bytes (0: sent as they are).
pub fn compressed_head(first: u64, count: u32, encoded: u32) -> [u8; HEAD_LEN] {
    let mut head = [0u8; HEAD_LEN];
    head[..8].copy_from_slice(&first.to_le_bytes());
    head[8..12].copy_from_slice(&count.to_le_bytes());
    head[12..].copy_from_slice(&encoded.to_le_bytes());
    head
}

/// The head of the end frame of a stream that sent `sent` pages.
pub fn end_head(sent: u32) -> [u8; HEAD_LEN] {
    let mut head = head(END_OF_PAGES, 0);
    head[12..].copy_from_slice(&sent.to_le_bytes());
    head
}

/// A frame's checksum: xxh3-64 of its head and body (the bytes on the
/// wire).
pub fn checksum(head: &[u8; HEAD_LEN], body: &[u8]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3Default::new();
    hasher.update(head);
    hasher.update(body);
    hasher.digest()
}

/// What a frame head announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// `count` pages from page `first` on follow, as they are
    /// (`encoded` = 0) or compressed into `encoded` bytes.
    Pages {
        /// First page.
        first: u64,
        /// Pages (1 to [`FRAME_PAGES`]).
        count: u32,
        /// Bytes of the compressed body (always fewer than the pages'),
        /// or 0 for pages as they are.
        encoded: u32,
    },
    /// The stream ends; it sent `sent` pages.
    End {
        /// Pages the sender counts.
        sent: u32,
    },
}

impl Head {
    /// Bytes of the pages the frame carries (once decompressed).
    pub fn pages_len(self) -> usize {
        match self {
            Head::Pages { count, .. } => count as usize * PAGE_SIZE,
            Head::End { .. } => 0,
        }
    }

    /// Bytes of the body that follows the head on the wire.
    pub fn body_len(self) -> usize {
        match self {
            Head::Pages { encoded: 0, .. } => self.pages_len(),
            Head::Pages { encoded, .. } => encoded as usize,
            Head::End { .. } => 0,
        }
    }

    /// Whether the body is compressed.
    pub fn compressed(self) -> bool {
        matches!(self, Head::Pages { encoded, .. } if encoded > 0)
    }
}

/// Why a page stream was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The head names pages outside the memory, too many, or a compressed
    /// body not shorter than its pages.
    #[error(
        "a frame names pages {first}..+{count}, outside the memory's {memory_pages} pages or over {FRAME_PAGES} pages, or a compressed body not shorter than its pages"
    )]
    OutOfBounds {
        /// First page named.
        first: u64,
        /// Pages named.
        count: u32,
        /// Pages in the receiver's memory.
        memory_pages: u64,
    },
    /// More bytes of pages than announced.
    #[error("more than the announced {total} bytes of pages")]
    OverTotal {
        /// Bytes announced.
        total: u64,
    },
    /// The frame's checksum does not match its head and pages.
    #[error("the frame of pages {first}..+{count}: checksum mismatch")]
    Checksum {
        /// First page.
        first: u64,
        /// Pages.
        count: u32,
    },
    /// A compressed body that does not decompress to exactly its pages.
    #[error("the frame of pages {first}..+{count}: its compressed body is not {count} pages")]
    Decompress {
        /// First page.
        first: u64,
        /// Pages.
        count: u32,
    },
    /// The end frame counts other pages than arrived.
    #[error("{received} pages received, {sent} sent")]
    Count {
        /// Pages that arrived.
        received: u64,
        /// Pages the end frame counts.
        sent: u32,
    },
}

/// What one stream may still carry: checks each head before its pages are
/// read, and the end frame's count.
#[derive(Clone, Debug)]
pub struct Budget {
    total: u64,
    received: u64,
    memory_pages: u64,
}

impl Budget {
    /// A stream of at most `total` bytes of pages into a memory of
    /// `memory_pages` pages.
    pub fn new(total: u64, memory_pages: u64) -> Budget {
        Budget {
            total,
            received: 0,
            memory_pages,
        }
    }

    /// Check a frame head, counting its pages against the total.
    pub fn head(&mut self, head: &[u8; HEAD_LEN]) -> Result<Head, FrameError> {
        let first = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
        let count = u32::from_le_bytes(head[8..12].try_into().unwrap_or_default());
        let last = u32::from_le_bytes(head[12..].try_into().unwrap_or_default());
        if count == 0 && first == END_OF_PAGES {
            return Ok(Head::End { sent: last });
        }
        if count == 0
            || count > FRAME_PAGES
            || last as usize >= count as usize * PAGE_SIZE
            || first
                .checked_add(u64::from(count))
                .is_none_or(|end| end > self.memory_pages)
        {
            return Err(FrameError::OutOfBounds {
                first,
                count,
                memory_pages: self.memory_pages,
            });
        }
        self.received += u64::from(count) * PAGE_SIZE as u64;
        if self.received > self.total {
            return Err(FrameError::OverTotal { total: self.total });
        }
        Ok(Head::Pages {
            first,
            count,
            encoded: last,
        })
    }

    /// Check a frame's checksum.
    pub fn check(
        &self,
        head: &[u8; HEAD_LEN],
        parsed: Head,
        pages: &[u8],
        sum: [u8; SUM_LEN],
    ) -> Result<(), FrameError> {
        if u64::from_le_bytes(sum) == checksum(head, pages) {
            return Ok(());
        }
        let (first, count) = match parsed {
            Head::Pages { first, count, .. } => (first, count),
            Head::End { .. } => (END_OF_PAGES, 0),
        };
        Err(FrameError::Checksum { first, count })
    }

    /// Check the end frame's count against the pages received.
    pub fn end(&self, sent: u32) -> Result<(), FrameError> {
        let received = self.received / PAGE_SIZE as u64;
        if u64::from(sent) == received {
            Ok(())
        } else {
            Err(FrameError::Count { received, sent })
        }
    }
}

/// The receiver's answer on a page stream, one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every frame landed.
    Ok,
    /// Refused, and why.
    Refused(String),
}

impl Verdict {
    /// The line sent (`ok` or `error: REASON`, newline-terminated).
    pub fn line(&self) -> String {
        match self {
            Verdict::Ok => "ok\n".into(),
            Verdict::Refused(reason) => format!("error: {}\n", reason.replace('\n', " ")),
        }
    }

    /// The verdict a line carries; `None` for anything else (a cut stream).
    ///
    /// ```
    /// use roam_proto::pages::Verdict;
    /// let refused = Verdict::Refused("bad frame".into());
    /// assert_eq!(Verdict::parse(&refused.line()), Some(refused));
    /// assert_eq!(Verdict::parse("ok\n"), Some(Verdict::Ok));
    /// assert_eq!(Verdict::parse("o"), None);
    /// ```
    pub fn parse(line: &str) -> Option<Verdict> {
        let line = line.trim_end();
        if line == "ok" {
            return Some(Verdict::Ok);
        }
        line.strip_prefix("error: ")
            .map(|reason| Verdict::Refused(reason.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_outside_the_memory_or_over_the_total_are_refused_before_pages() {
        let mut b = Budget::new(8 * PAGE_SIZE as u64, 10);
        assert_eq!(
            b.head(&head(0, 4)),
            Ok(Head::Pages {
                first: 0,
                count: 4,
                encoded: 0
            })
        );
        assert!(matches!(
            b.head(&head(9, 2)),
            Err(FrameError::OutOfBounds { .. })
        ));
        assert!(matches!(
            b.head(&head(u64::MAX - 1, 2)),
            Err(FrameError::OutOfBounds { .. })
        ));
        assert!(matches!(
            b.head(&head(0, FRAME_PAGES + 1)),
            Err(FrameError::OutOfBounds { .. })
        ));
        assert!(matches!(
            b.head(&head(0, 0)),
            Err(FrameError::OutOfBounds { .. })
        ));
        let mut padded = head(0, 1);
        padded[15] = 1;
        assert!(matches!(
            b.head(&padded),
            Err(FrameError::OutOfBounds { .. })
        ));
        assert_eq!(
            b.head(&head(4, 4)),
            Ok(Head::Pages {
                first: 4,
                count: 4,
                encoded: 0
            })
        );
        assert_eq!(
            b.head(&head(8, 1)),
            Err(FrameError::OverTotal { total: 8 * 4096 })
        );
    }

    #[test]
    fn a_compressed_body_must_be_shorter_than_its_pages() {
        let mut b = Budget::new(1 << 20, 100);
        let small = b.head(&compressed_head(0, 2, 100)).unwrap();
        assert_eq!((small.body_len(), small.pages_len()), (100, 2 * PAGE_SIZE));
        assert!(small.compressed());
        assert!(
            b.head(&compressed_head(0, 2, 2 * PAGE_SIZE as u32 - 1))
                .is_ok()
        );
        for encoded in [2 * PAGE_SIZE as u32, u32::MAX] {
            assert!(matches!(
                b.head(&compressed_head(0, 2, encoded)),
                Err(FrameError::OutOfBounds { .. })
            ));
        }
        let plain = b.head(&head(0, 2)).unwrap();
        assert_eq!(plain.body_len(), 2 * PAGE_SIZE);
        assert!(!plain.compressed());
    }

    #[test]
    fn the_end_frame_must_count_what_arrived() {
        let mut b = Budget::new(1 << 20, 100);
        b.head(&head(3, 5)).unwrap();
        assert_eq!(b.head(&end_head(5)), Ok(Head::End { sent: 5 }));
        assert!(b.end(5).is_ok());
        assert_eq!(
            b.end(4),
            Err(FrameError::Count {
                received: 5,
                sent: 4
            })
        );
    }
}
