//! Liveness datagrams in batches: one `recvmmsg(2)` takes up to [`SLOTS`]
//! queued datagrams and one `sendmmsg(2)` sends their answers, instead of
//! two system calls per beat. Ten thousand hosts beating once a second are
//! then a few hundred system calls a second.
//!
//! Every datagram is received into a fixed slot one byte longer than a
//! liveness datagram, so a longer one shows as too long (and is refused by
//! its length) instead of being read past.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use roam_proto::liveness;

/// Datagrams one batch takes.
pub(super) const SLOTS: usize = 128;

/// A slot's length: a liveness datagram and one byte more.
const SLOT: usize = liveness::LEN + 1;

const ADDR_LEN: libc::socklen_t = size_of::<libc::sockaddr_storage>() as libc::socklen_t;

/// The buffers of one batch, allocated once and reused.
pub(super) struct Batch {
    bufs: Box<[[u8; SLOT]; SLOTS]>,
    lens: [usize; SLOTS],
    /// Each datagram's sender, as the kernel wrote it.
    from: Box<[libc::sockaddr_storage; SLOTS]>,
    from_lens: [libc::socklen_t; SLOTS],
    received: usize,
    /// Answers to send: their bytes and the slot whose sender gets each.
    answers: Box<[[u8; liveness::LEN]; SLOTS]>,
    to: [usize; SLOTS],
    answered: usize,
}

impl Batch {
    pub(super) fn new() -> Batch {
        // SAFETY: `sockaddr_storage` is plain old data, for which all zero
        // bytes are a valid value.
        let empty_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        Batch {
            bufs: Box::new([[0; SLOT]; SLOTS]),
            lens: [0; SLOTS],
            from: Box::new([empty_addr; SLOTS]),
            from_lens: [0; SLOTS],
            received: 0,
            answers: Box::new([[0; liveness::LEN]; SLOTS]),
            to: [0; SLOTS],
            answered: 0,
        }
    }

    /// Receive what is queued on `fd`, up to [`SLOTS`] datagrams, without
    /// waiting: how many (`WouldBlock` when none). Forgets the last batch
    /// and its answers.
    pub(super) fn recv(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.received = 0;
        self.answered = 0;
        let bufs = self.bufs.as_mut_ptr();
        let from = self.from.as_mut_ptr();
        let mut iovs: [libc::iovec; SLOTS] = std::array::from_fn(|i| libc::iovec {
            // In bounds: `i < SLOTS`, the length of both arrays.
            iov_base: bufs.wrapping_add(i).cast(),
            iov_len: SLOT,
        });
        // SAFETY: `mmsghdr` is plain old data, for which all zero bytes
        // (null pointers, zero lengths) are a valid value.
        let mut hdrs: [libc::mmsghdr; SLOTS] = unsafe { std::mem::zeroed() };
        for (i, h) in hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_name = from.wrapping_add(i).cast();
            h.msg_hdr.msg_namelen = ADDR_LEN;
            h.msg_hdr.msg_iov = &mut iovs[i];
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: each of the `SLOTS` headers points at one buffer of `SLOT`
        // bytes and one `sockaddr_storage` of this batch, and at one iovec of
        // `iovs`, all alive and not otherwise borrowed for the call; their
        // lengths are their true sizes, and the kernel writes only within
        // them. MSG_DONTWAIT: the call never blocks the runtime's thread.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                SLOTS as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = (n as usize).min(SLOTS);
        for (i, h) in hdrs.iter().take(n).enumerate() {
            self.lens[i] = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                // Longer than a slot: refused by its length.
                SLOT
            } else {
                (h.msg_len as usize).min(SLOT)
            };
            self.from_lens[i] = h.msg_hdr.msg_namelen.min(ADDR_LEN);
        }
        self.received = n;
        Ok(n)
    }

    /// The `i`th datagram received (empty past the batch).
    pub(super) fn datagram(&self, i: usize) -> &[u8] {
        if i >= self.received {
            return &[];
        }
        &self.bufs[i][..self.lens[i]]
    }

    /// Queue `answer` for the sender of the `i`th datagram.
    pub(super) fn answer(&mut self, i: usize, answer: [u8; liveness::LEN]) {
        if i >= self.received || self.answered >= SLOTS {
            return;
        }
        self.answers[self.answered] = answer;
        self.to[self.answered] = i;
        self.answered += 1;
    }

    /// Send the queued answers on `fd` without waiting: how many went
    /// (`WouldBlock` when the socket took none). An answer the kernel
    /// refuses for its own peer (an address it cannot send to) is dropped
    /// alone and the rest still go; once the socket is full the rest are
    /// dropped. A host whose beat goes unanswered reports over HTTP instead.
    pub(super) fn send(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        let (mut next, mut sent) = (0, 0);
        let result = loop {
            if next >= self.answered {
                break Ok(sent);
            }
            let answers = self.answers.as_mut_ptr();
            let from = self.from.as_mut_ptr();
            let mut iovs: [libc::iovec; SLOTS] = std::array::from_fn(|k| libc::iovec {
                iov_base: answers.wrapping_add(k).cast(),
                iov_len: liveness::LEN,
            });
            // SAFETY: as in `recv`, all zero bytes are a valid `mmsghdr`.
            let mut hdrs: [libc::mmsghdr; SLOTS] = unsafe { std::mem::zeroed() };
            let count = self.answered - next;
            for k in 0..count {
                let slot = self.to[next + k];
                let h = &mut hdrs[k].msg_hdr;
                h.msg_name = from.wrapping_add(slot).cast();
                h.msg_namelen = self.from_lens[slot];
                h.msg_iov = &mut iovs[next + k];
                h.msg_iovlen = 1;
            }
            // SAFETY: the first `count` headers point at answers and
            // addresses of this batch (`next + k < answered <= SLOTS` and
            // `slot < received <= SLOTS`) with their true lengths, alive and
            // not otherwise borrowed for the call; the kernel only reads
            // them (and writes each header's `msg_len`).
            let n = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    count as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                next += n as usize;
                sent += n as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock if sent == 0 => break Err(e),
                io::ErrorKind::WouldBlock => break Ok(sent),
                // The first answer left is refused for its peer: skip it.
                _ => next += 1,
            }
        };
        self.answered = 0;
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]

    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_batch_takes_every_queued_datagram_refuses_none_silently_and_answers_each_sender() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let clients: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        clients[0].send_to(&[1u8; liveness::LEN], addr).unwrap();
        // Too long: seen as one byte longer than a datagram, not cut to one.
        clients[1].send_to(&[2u8; 4096], addr).unwrap();
        clients[2].send_to(&[3u8; 7], addr).unwrap();

        let mut batch = Batch::new();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < 3 && std::time::Instant::now() < deadline {
            match batch.recv(server.as_fd()) {
                Ok(n) => {
                    for i in 0..n {
                        got.push(batch.datagram(i).to_vec());
                        batch.answer(i, [got.len() as u8; liveness::LEN]);
                    }
                    assert_eq!(batch.send(server.as_fd()).unwrap(), n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.len(), 3, "every datagram is received");
        assert_eq!(got[0], vec![1u8; liveness::LEN]);
        assert_eq!(
            got[1].len(),
            liveness::LEN + 1,
            "a long datagram reads as too long"
        );
        assert_eq!(got[2], vec![3u8; 7]);
        assert!(batch.datagram(3).is_empty());
        // Each sender got the answer meant for it.
        for (i, c) in clients.iter().enumerate() {
            c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0u8; 128];
            let (n, from) = c.recv_from(&mut buf).unwrap();
            assert_eq!(from, addr);
            assert_eq!(&buf[..n], &[i as u8 + 1; liveness::LEN][..]);
        }
        assert!(matches!(
            batch.recv(server.as_fd()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        ));
    }

    #[test]
    fn an_answer_the_kernel_refuses_for_its_peer_costs_no_other_answer() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let clients: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for c in &clients {
            c.send_to(&[1u8; liveness::LEN], addr).unwrap();
        }
        // Loopback queues each datagram as it is sent: one batch takes all.
        let mut batch = Batch::new();
        assert_eq!(batch.recv(server.as_fd()).unwrap(), 3);
        // The first peer's address cannot be sent to (no address at all).
        batch.from_lens[0] = 0;
        for i in 0..3 {
            batch.answer(i, [i as u8 + 1; liveness::LEN]);
        }
        assert_eq!(batch.send(server.as_fd()).unwrap(), 2);
        for (i, c) in clients.iter().enumerate().skip(1) {
            c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0u8; 128];
            let (n, _) = c.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i as u8 + 1; liveness::LEN][..]);
        }
    }
}
