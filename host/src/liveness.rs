//! This host's side of the liveness datagrams (`roam_proto::liveness`):
//! when its report has not changed, a heartbeat is one UDP datagram to the
//! scheduler, which answers it. The full report goes over HTTP when it
//! changed, every [`FULL_REPORT_EVERY`], when the scheduler asks for it,
//! and whenever the last datagram went unanswered — so a scheduler that
//! died, stepped down or forgot this host is found out by the HTTP path
//! one period later, as before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use roam_proto::liveness::{Datagram, FULL_REPORT_EVERY, KEY_LEN, Kind, key_from_hex};
use roam_proto::{Heartbeat, LivenessGrant};

/// Beats in a row without an answer after which datagrams are given up
/// for [`GIVE_UP_FOR`] (a path that drops UDP): HTTP alone meanwhile.
const GIVE_UP_AFTER: u32 = 3;
const GIVE_UP_FOR: Duration = Duration::from_secs(300);

/// A liveness channel to the scheduler that let this host in.
pub(crate) struct Channel {
    socket: Arc<tokio::net::UdpSocket>,
    to: SocketAddr,
    id: u64,
    key: [u8; KEY_LEN],
    /// The counter of the last beat sent (0: none yet).
    sent: AtomicU64,
    /// The highest counter the scheduler answered.
    answered: Arc<AtomicU64>,
    /// The scheduler asked for the full report.
    report_wanted: Arc<AtomicBool>,
    /// Beats in a row that went unanswered.
    misses: AtomicU32,
    given_up_until: std::sync::Mutex<Option<Instant>>,
    reader: tokio::task::AbortHandle,
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Channel {
    /// Open a channel to the scheduler reached at `url` (UDP, its host and
    /// port), with the grant's id and key.
    pub(crate) async fn open(url: &str, grant: &LivenessGrant) -> anyhow::Result<Channel> {
        let key = key_from_hex(&grant.key)?;
        let parsed = reqwest::Url::parse(url).with_context(|| format!("scheduler URL `{url}`"))?;
        let host = parsed
            .host_str()
            .with_context(|| format!("scheduler URL `{url}` names no host"))?;
        let port = parsed
            .port_or_known_default()
            .with_context(|| format!("scheduler URL `{url}` names no port"))?;
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let to = match literal.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => tokio::net::lookup_host((host, port))
                .await?
                .next()
                .with_context(|| format!("`{host}` resolves to no address"))?,
        };
        let any: SocketAddr = if to.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = Arc::new(tokio::net::UdpSocket::bind(any).await?);
        let answered = Arc::new(AtomicU64::new(0));
        let report_wanted = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(read_answers(
            socket.clone(),
            grant.id,
            key,
            answered.clone(),
            report_wanted.clone(),
        ))
        .abort_handle();
        Ok(Channel {
            socket,
            to,
            id: grant.id,
            key,
            sent: AtomicU64::new(0),
            answered,
            report_wanted,
            misses: AtomicU32::new(0),
            given_up_until: std::sync::Mutex::new(None),
            reader,
        })
    }

    /// Whether this period's heartbeat may be a datagram: the last one was
    /// answered, the scheduler did not ask for the report, and datagrams
    /// were not given up on. Counts a miss when the last went unanswered.
    pub(crate) fn usable(&self) -> bool {
        let mut given_up = self
            .given_up_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if given_up.is_some_and(|until| Instant::now() < until) {
            return false;
        }
        *given_up = None;
        let sent = self.sent.load(Ordering::Acquire);
        if self.answered.load(Ordering::Acquire) < sent {
            let misses = self.misses.fetch_add(1, Ordering::AcqRel) + 1;
            if misses >= GIVE_UP_AFTER {
                tracing::warn!(
                    scheduler = %self.to,
                    "liveness datagrams go unanswered; heartbeats go over HTTP for {} s",
                    GIVE_UP_FOR.as_secs()
                );
                *given_up = Some(Instant::now() + GIVE_UP_FOR);
                self.misses.store(0, Ordering::Release);
            }
            return false;
        }
        self.misses.store(0, Ordering::Release);
        !self.report_wanted.load(Ordering::Acquire)
    }

    /// The full report went over HTTP: the next period may beat again.
    pub(crate) fn reported(&self) {
        self.report_wanted.store(false, Ordering::Release);
        self.answered
            .fetch_max(self.sent.load(Ordering::Acquire), Ordering::AcqRel);
    }

    /// Send one beat. A failure to send shows as an unanswered beat.
    pub(crate) async fn beat(&self) {
        let counter = self.sent.fetch_add(1, Ordering::AcqRel) + 1;
        let datagram = Datagram {
            kind: Kind::Beat,
            id: self.id,
            counter,
        }
        .seal(&self.key);
        if let Err(e) = self.socket.send_to(&datagram, self.to).await {
            tracing::debug!(error = %e, "liveness datagram not sent");
        }
    }
}

/// Take the scheduler's answers: each must verify under this host's key
/// and name a beat that was sent.
async fn read_answers(
    socket: Arc<tokio::net::UdpSocket>,
    id: u64,
    key: [u8; KEY_LEN],
    answered: Arc<AtomicU64>,
    report_wanted: Arc<AtomicBool>,
) {
    let mut buf = [0u8; roam_proto::liveness::LEN + 1];
    loop {
        let n = match socket.recv_from(&mut buf).await {
            Ok((n, _)) => n,
            Err(_) => continue,
        };
        let Some(Ok(answer)) = buf.get(..n).map(|b| Datagram::open(b, &key)) else {
            continue;
        };
        if answer.id != id || answer.kind == Kind::Beat {
            continue;
        }
        if answer.kind == Kind::AckReport {
            report_wanted.store(true, Ordering::Release);
        }
        answered.fetch_max(answer.counter, Ordering::AcqRel);
    }
}

/// What of a report counts as a change worth sending: everything but the
/// checkpoint bytes, and a checkpoint age while it is recent for its
/// link's interval (`interval_of` the workload; a healthy link's age moves
/// all the time, and the scheduler takes the last recent age it was sent
/// as recent, `Protection::is_recent`). An age past that is a change every
/// second, so a standby falling behind is reported each second.
pub(crate) fn material(beat: &Heartbeat, interval_of: impl Fn(&str) -> Option<u64>) -> Heartbeat {
    let mut beat = beat.clone();
    for i in &mut beat.instances {
        i.checkpoint_bytes = 0;
        let interval =
            interval_of(&i.workload).unwrap_or(roam_proto::DEFAULT_CHECKPOINT_INTERVAL_MS);
        i.checkpoint_age_ms = i.checkpoint_age_ms.map(|ms| {
            if roam_proto::Protection::is_recent(ms, interval) {
                0
            } else {
                ms / 1000 * 1000 + 1
            }
        });
    }
    beat
}

/// Whether a report with this material content may be skipped for a
/// datagram: the last one sent over HTTP said the same, less than
/// [`FULL_REPORT_EVERY`] ago.
pub(crate) fn unchanged(last: Option<&(Heartbeat, Instant)>, now: &Heartbeat) -> bool {
    last.is_some_and(|(sent, at)| sent == now && at.elapsed() < FULL_REPORT_EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use roam_proto::InstanceStatus;

    fn beat(age: Option<u64>, bytes: u64) -> Heartbeat {
        Heartbeat {
            instances: vec![InstanceStatus {
                workload: "w".into(),
                checkpoint_age_ms: age,
                checkpoint_bytes: bytes,
                ..InstanceStatus::default()
            }],
            ..Heartbeat::default()
        }
    }

    #[test]
    fn a_healthy_links_moving_age_and_bytes_are_no_change_but_falling_behind_is() {
        // A 100 ms interval: recent up to 1.5 s.
        let m = |age, bytes| material(&beat(age, bytes), |_| Some(100));
        let last = (m(Some(20), 100), Instant::now());
        assert!(unchanged(Some(&last), &m(Some(1400), 5000)));
        assert!(!unchanged(Some(&last), &m(Some(1600), 5000)));
        assert!(!unchanged(Some(&last), &m(None, 100)));
        let behind = (m(Some(1600), 0), Instant::now());
        assert!(unchanged(Some(&behind), &m(Some(1900), 0)));
        assert!(!unchanged(Some(&behind), &m(Some(2100), 0)));
        assert!(!unchanged(None, &m(Some(20), 0)));
        // A 10 s interval: 40 s is still recent.
        let slow = |age| material(&beat(age, 0), |_| Some(10_000));
        assert!(unchanged(
            Some(&(slow(Some(10)), Instant::now())),
            &slow(Some(40_000))
        ));
    }
}
