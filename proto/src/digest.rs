//! The module digest: the sha256 of a module's original bytes, its name
//! everywhere in Roam (scheduler, hosts, snapshots), written `sha256:HEX`.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// The sha256 of a module's original bytes.
///
/// ```
/// use roam_proto::Digest;
/// let d = Digest::of(b"\0asm");
/// assert_eq!(Digest::parse(&d.to_string()), Some(d));
/// assert_eq!(Digest::parse(&d.hex()), Some(d));
/// assert_eq!(Digest::parse("sha256:xyz"), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// A digest from its raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parse the `sha256:HEX` or bare hex form (64 hex digits).
    pub fn parse(s: &str) -> Option<Digest> {
        let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).ok()?;
        Some(Digest(out))
    }

    /// Lowercase hex without prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", &self.hex()[..12])
    }
}
