//! Liveness datagrams: how a host that has nothing new to report tells the
//! scheduler it is alive without an HTTP request.
//!
//! A host's full report (`POST /v1/hosts/{name}/heartbeat`, over TLS) goes
//! only when it changed, when the scheduler asks for one, or every
//! [`FULL_REPORT_EVERY`]. Every other heartbeat period the host sends one
//! UDP datagram to the scheduler (the address and port of its API), which answers
//! it with one of the same size. Both are fixed-size and authenticated with
//! HMAC-SHA256 under a key the scheduler gave this host alone in its join
//! answer (over the same TLS connection as its certificate), so:
//!
//! - a host speaks only for itself: the datagram names the host by the
//!   random id the key belongs to, and no other key verifies it;
//! - a replay is refused: each beat carries a counter that must exceed the
//!   last one the scheduler accepted under that key (a rejoin gets a new
//!   key, and the counter starts again);
//! - an answer proves the scheduler that leads took the beat: a host whose
//!   beat was not answered by its next period sends the full report over
//!   HTTP instead, which finds the leader (`421`) or rejoins (`404`) as
//!   before. A path that drops UDP costs the old protocol, nothing more.
//!
//! Layout (big-endian), [`LEN`] bytes:
//! `MAGIC (4) | kind (1) | id (8) | counter (8) | HMAC-SHA256 of the 21 bytes before (32)`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How often a host sends its full report even when nothing changed, so
/// what the scheduler shows of it that is not a change (checkpoint bytes, a
/// recent checkpoint's age) is never older. Every real change is reported
/// at once, and the scheduler can ask for a report any time
/// ([`Kind::AckReport`]). Not shorter: over TLS a report this far apart is
/// a new connection (idle ones close after 10 s), whose full handshake
/// costs the scheduler ~200 datagrams' worth of CPU; at 10,000 hosts
/// every 5 minutes that was 33 handshakes a second, half of the whole
/// heartbeat budget (docs/BENCHMARKS.md). Kubernetes' kubelet, with its
/// cheap lease beside, refreshes a node's status every 5 minutes over a
/// connection it keeps open.
pub const FULL_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Every liveness datagram's length.
pub const LEN: usize = 4 + 1 + 8 + 8 + 32;

/// Bytes of a liveness key.
pub const KEY_LEN: usize = 32;

const MAGIC: &[u8; 4] = b"rmlv";
const SIGNED: usize = LEN - 32;

/// What a datagram is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Host → scheduler: alive, nothing new to report.
    Beat,
    /// Scheduler → host: the beat with this counter was taken.
    Ack,
    /// Scheduler → host: taken, and send the full report now (the
    /// scheduler had counted this host as down).
    AckReport,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Beat => 1,
            Kind::Ack => 2,
            Kind::AckReport => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Beat),
            2 => Some(Kind::Ack),
            3 => Some(Kind::AckReport),
            _ => None,
        }
    }
}

/// A datagram's fields, before its MAC is checked: `id` says which key
/// to check it with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Beat or answer.
    pub kind: Kind,
    /// The liveness id the scheduler gave the host at its join.
    pub id: u64,
    /// The beat's counter (an answer repeats the beat's).
    pub counter: u64,
}

/// What is wrong with a datagram (it is dropped; nothing is answered).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LivenessError {
    /// Not [`LEN`] bytes.
    #[error("a liveness datagram is {LEN} bytes, not {0}")]
    Length(usize),
    /// Does not start with the magic bytes.
    #[error("not a liveness datagram")]
    Magic,
    /// A kind this version does not know.
    #[error("unknown liveness datagram kind {0}")]
    Kind(u8),
    /// Forged, altered, or under another key.
    #[error("the liveness datagram's MAC does not verify")]
    Mac,
    /// Not hex of [`KEY_LEN`] bytes.
    #[error("a liveness key is {KEY_LEN} bytes of hex")]
    Key,
}

fn mac(key: &[u8; KEY_LEN]) -> Hmac<Sha256> {
    // HMAC takes a key of any length; 32 bytes cannot be refused.
    <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

impl Datagram {
    /// The datagram, signed with `key`.
    pub fn seal(&self, key: &[u8; KEY_LEN]) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4] = self.kind.byte();
        out[5..13].copy_from_slice(&self.id.to_be_bytes());
        out[13..21].copy_from_slice(&self.counter.to_be_bytes());
        let mut m = mac(key);
        m.update(&out[..SIGNED]);
        out[SIGNED..].copy_from_slice(&m.finalize().into_bytes());
        out
    }

    /// Read the fields of `bytes` (its MAC not checked yet: see
    /// [`Datagram::verify`]). Any input is safe: it is only compared and
    /// copied at fixed offsets.
    pub fn parse(bytes: &[u8]) -> Result<Datagram, LivenessError> {
        if bytes.len() != LEN {
            return Err(LivenessError::Length(bytes.len()));
        }
        if &bytes[..4] != MAGIC {
            return Err(LivenessError::Magic);
        }
        let kind = Kind::from_byte(bytes[4]).ok_or(LivenessError::Kind(bytes[4]))?;
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(b)
        };
        Ok(Datagram {
            kind,
            id: word(5),
            counter: word(13),
        })
    }

    /// Whether `bytes` (which [`Datagram::parse`] read) carries a valid
    /// MAC under `key` (compared in constant time).
    pub fn verify(bytes: &[u8], key: &[u8; KEY_LEN]) -> Result<(), LivenessError> {
        if bytes.len() != LEN {
            return Err(LivenessError::Length(bytes.len()));
        }
        let mut m = mac(key);
        m.update(&bytes[..SIGNED]);
        m.verify_slice(&bytes[SIGNED..])
            .map_err(|_| LivenessError::Mac)
    }

    /// [`Datagram::parse`], then [`Datagram::verify`] with `key`.
    pub fn open(bytes: &[u8], key: &[u8; KEY_LEN]) -> Result<Datagram, LivenessError> {
        let d = Datagram::parse(bytes)?;
        Datagram::verify(bytes, key)?;
        Ok(d)
    }
}

/// A key as the join answer carries it (hex).
pub fn key_from_hex(text: &str) -> Result<[u8; KEY_LEN], LivenessError> {
    // The length first: the text comes from the network.
    if text.len() != 2 * KEY_LEN {
        return Err(LivenessError::Key);
    }
    let bytes = hex::decode(text).map_err(|_| LivenessError::Key)?;
    bytes.try_into().map_err(|_| LivenessError::Key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; KEY_LEN] = [7; KEY_LEN];

    #[test]
    fn a_sealed_datagram_opens_with_its_key_only() {
        let d = Datagram {
            kind: Kind::Beat,
            id: 0x0102_0304_0506_0708,
            counter: 42,
        };
        let bytes = d.seal(&KEY);
        assert_eq!(Datagram::open(&bytes, &KEY), Ok(d));
        assert_eq!(
            Datagram::open(&bytes, &[8; KEY_LEN]),
            Err(LivenessError::Mac)
        );
    }

    #[test]
    fn any_changed_byte_or_length_is_refused() {
        let bytes = Datagram {
            kind: Kind::Ack,
            id: 9,
            counter: 10,
        }
        .seal(&KEY);
        for i in 0..LEN {
            let mut bad = bytes;
            bad[i] ^= 0x40;
            assert!(Datagram::open(&bad, &KEY).is_err(), "byte {i} flipped");
        }
        assert_eq!(
            Datagram::open(&bytes[..LEN - 1], &KEY),
            Err(LivenessError::Length(LEN - 1))
        );
        let mut long = bytes.to_vec();
        long.push(0);
        assert_eq!(
            Datagram::open(&long, &KEY),
            Err(LivenessError::Length(LEN + 1))
        );
        // A beat reflected back as an answer does not verify as one.
        let beat = Datagram {
            kind: Kind::Beat,
            id: 9,
            counter: 10,
        }
        .seal(&KEY);
        let mut reflected = beat;
        reflected[4] = 2;
        assert_eq!(Datagram::open(&reflected, &KEY), Err(LivenessError::Mac));
    }

    #[test]
    fn keys_are_read_from_hex_of_the_right_length() {
        assert_eq!(key_from_hex(&hex::encode(KEY)), Ok(KEY));
        assert_eq!(key_from_hex("00"), Err(LivenessError::Key));
        assert_eq!(key_from_hex("zz"), Err(LivenessError::Key));
    }
}
