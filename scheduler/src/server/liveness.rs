//! Liveness datagrams (`roam_proto::liveness`): a host with nothing new to
//! report beats with one authenticated UDP datagram instead of an HTTP
//! request, and this replica, while it leads, answers each one it took.
//!
//! The socket is read in batches: when it becomes readable, everything
//! queued is taken and answered, up to [`mmsg::SLOTS`] datagrams a system
//! call each way, then the loop rests [`BATCH`] before it looks again. Ten
//! thousand hosts beating once a second then cost about a hundred wake-ups
//! a second and a few hundred system calls, instead of ten thousand wake-ups
//! and twenty thousand calls.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use roam_proto::LivenessGrant;
use roam_proto::liveness::{self, Datagram, KEY_LEN, Kind};
use tokio::io::Interest;

use super::Scheduler;
use super::mmsg::{self, Batch};

/// How long the reading loop rests after draining the socket.
/// Answers wait at most this long, against a host's period of a second or
/// more (the kernel queues what arrives meanwhile: [`RECV_BUFFER`]).
const BATCH: Duration = Duration::from_millis(10);

/// The receive buffer asked of the kernel: room for a few batches of ten
/// thousand hosts' beats (the kernel may grant less).
const RECV_BUFFER: usize = 4 << 20;

/// A host's liveness key, as the scheduler keeps it in the host's entry.
#[derive(Clone)]
pub(super) struct HostLiveness {
    id: u64,
    key: [u8; KEY_LEN],
    /// The highest counter taken under this key: a beat must exceed it.
    counter: u64,
}

/// The liveness socket and which host each id names.
pub(super) struct Liveness {
    socket: Option<Arc<tokio::net::UdpSocket>>,
    ids: DashMap<u64, Arc<str>>,
}

impl Liveness {
    /// Bind UDP on the API's address and port, where hosts send their
    /// datagrams (a host's path to the API is its path to this). Without it
    /// (the port is taken for UDP) no host is given a key, and every
    /// report goes over HTTP.
    pub(super) fn bind(api: SocketAddr) -> Liveness {
        let socket = std::net::UdpSocket::bind(api).and_then(|s| {
            s.set_nonblocking(true)?;
            let s = socket2::Socket::from(s);
            // Best effort: the kernel caps it at `rmem_max`.
            let _ = s.set_recv_buffer_size(RECV_BUFFER);
            tokio::net::UdpSocket::from_std(s.into())
        });
        match socket {
            Ok(s) => Liveness {
                socket: Some(Arc::new(s)),
                ids: DashMap::new(),
            },
            Err(e) => {
                tracing::warn!(error = %e, %api, "no liveness socket: hosts send every heartbeat over HTTP");
                Liveness {
                    socket: None,
                    ids: DashMap::new(),
                }
            }
        }
    }

    /// A new id and key for host `name` (joining again), replacing
    /// `previous`: what the host's entry keeps, and what its join answer
    /// carries.
    pub(super) fn grant(
        &self,
        name: &str,
        previous: Option<&HostLiveness>,
    ) -> Option<(HostLiveness, LivenessGrant)> {
        self.socket.as_ref()?;
        let mut random = [0u8; 8 + KEY_LEN];
        if let Err(e) = getrandom::fill(&mut random) {
            tracing::warn!(error = %e, "no liveness key: the host reports over HTTP only");
            return None;
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&random[..8]);
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&random[8..]);
        let id = u64::from_be_bytes(id);
        if let Some(p) = previous {
            self.ids.remove(&p.id);
        }
        self.ids.insert(id, Arc::from(name));
        let grant = LivenessGrant {
            id,
            key: hex::encode(key),
        };
        Some((
            HostLiveness {
                id,
                key,
                counter: 0,
            },
            grant,
        ))
    }

    /// Forget a host's id (it left, was revoked, or this replica reloads).
    pub(super) fn forget(&self, entry: Option<&HostLiveness>) {
        if let Some(l) = entry {
            self.ids.remove(&l.id);
        }
    }

    pub(super) fn clear(&self) {
        self.ids.clear();
    }
}

impl Scheduler {
    /// Read and answer liveness datagrams until the process ends.
    pub(super) async fn liveness_loop(self: Arc<Self>) {
        let Some(socket) = self.liveness.socket.clone() else {
            return;
        };
        let mut batch = Batch::new();
        loop {
            if socket.readable().await.is_err() {
                return;
            }
            // Everything queued, a batch at a time (one system call to
            // receive, one to answer).
            loop {
                let received = socket.try_io(Interest::READABLE, || batch.recv(socket.as_fd()));
                // Nothing queued, or an error a datagram socket reports
                // for one peer (an ICMP error for an earlier answer): look
                // again after the rest.
                let Ok(n) = received else {
                    break;
                };
                for i in 0..n {
                    match self.take_beat(batch.datagram(i)) {
                        Some(answer) => {
                            self.metrics.datagrams.inc();
                            batch.answer(i, answer);
                        }
                        None => {
                            self.metrics.datagrams_refused.inc();
                        }
                    }
                }
                // Answers the socket cannot take now are dropped: their
                // hosts report over HTTP instead.
                let _ = socket.try_io(Interest::WRITABLE, || batch.send(socket.as_fd()));
                if n < mmsg::SLOTS {
                    break;
                }
            }
            tokio::time::sleep(BATCH).await;
        }
    }

    /// Take one datagram: a beat under a key this replica gave, newer than
    /// the last it took, while it leads, from a host it counts as alive.
    /// Returns the answer to send back, if any.
    fn take_beat(&self, bytes: &[u8]) -> Option<[u8; liveness::LEN]> {
        let beat = Datagram::parse(bytes).ok()?;
        if beat.kind != Kind::Beat || !self.leadership.leads() {
            return None;
        }
        let name = self.liveness.ids.get(&beat.id).map(|n| n.value().clone())?;
        let mut entry = self.hosts.get_mut(&*name)?;
        let alive = self.alive(&entry);
        let l = entry.liveness.as_mut().filter(|l| l.id == beat.id)?;
        Datagram::verify(bytes, &l.key).ok()?;
        if beat.counter <= l.counter {
            // Replayed, or reordered behind a newer one.
            return None;
        }
        l.counter = beat.counter;
        let key = l.key;
        // A host counted as down comes back with its full report (what it
        // runs now), as it did before datagrams: it is only told to send it.
        let kind = if alive {
            entry.last_seen = Instant::now();
            Kind::Ack
        } else {
            Kind::AckReport
        };
        Some(
            Datagram {
                kind,
                id: beat.id,
                counter: beat.counter,
            }
            .seal(&key),
        )
    }
}
