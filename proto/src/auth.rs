//! Bearer credentials, as every Roam API carries them
//! (`Authorization: Bearer TOKEN`): one parser and one constant-time check
//! for both daemons.

/// The token of an `Authorization` header value, if it is `Bearer TOKEN`.
///
/// ```
/// assert_eq!(roam_proto::auth::bearer(Some("Bearer abc")), Some("abc"));
/// assert_eq!(roam_proto::auth::bearer(Some("Basic abc")), None);
/// ```
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    authorization?.strip_prefix("Bearer ")
}

/// Whether `authorization` is `Bearer SECRET`, compared in constant time;
/// an empty secret matches nothing.
///
/// ```
/// use roam_proto::auth::presents;
/// assert!(presents(Some("Bearer s3cret"), "s3cret"));
/// assert!(!presents(Some("Bearer other"), "s3cret"));
/// assert!(!presents(Some("Bearer "), ""));
/// ```
pub fn presents(authorization: Option<&str>, secret: &str) -> bool {
    let presented = bearer(authorization).unwrap_or("");
    !secret.is_empty()
        && constant_time_eq::constant_time_eq(presented.as_bytes(), secret.as_bytes())
}

/// Whether `authorization` is `Bearer TOKEN` for a token whose sha256
/// (hex) is `hash`, compared in constant time: the check of a credential
/// the checker only knows the hash of (a host and the cluster's scrape
/// credential). An empty token or hash matches nothing.
///
/// ```
/// use roam_proto::auth::presents_hashed;
/// let hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"; // ""
/// assert!(!presents_hashed(Some("Bearer "), hash));
/// let hash = "4e07408562bedb8b60ce05c1decfe3ad16b72230967de01f640b7e4729b49fce"; // "3"
/// assert!(presents_hashed(Some("Bearer 3"), hash));
/// assert!(!presents_hashed(Some("Bearer 4"), hash));
/// ```
pub fn presents_hashed(authorization: Option<&str>, hash: &str) -> bool {
    use sha2::Digest as _;
    let presented = bearer(authorization).unwrap_or("");
    let digest = hex::encode(sha2::Sha256::digest(presented.as_bytes()));
    !presented.is_empty()
        && !hash.is_empty()
        && constant_time_eq::constant_time_eq(digest.as_bytes(), hash.as_bytes())
}

/// A join token as handed to an operator: the secret the scheduler checks,
/// then `.` and the sha256 (hex) of the cluster CA certificate, which the
/// host checks before it sends the secret anywhere (as `kubeadm join
/// --discovery-token-ca-cert-hash` does). A plaintext cluster's tokens
/// carry no hash.
///
/// ```
/// use roam_proto::auth::JoinToken;
/// let t = JoinToken::parse("roam_ab.0123");
/// assert_eq!((t.secret, t.ca_hash), ("roam_ab", Some("0123")));
/// assert_eq!(JoinToken::parse("roam_ab").ca_hash, None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinToken<'a> {
    /// What the host presents as its bearer token.
    pub secret: &'a str,
    /// The CA hash, hex, if the token carries one.
    pub ca_hash: Option<&'a str>,
}

impl<'a> JoinToken<'a> {
    /// Split a token as written by `roam token create`.
    pub fn parse(token: &'a str) -> JoinToken<'a> {
        match token.split_once('.') {
            Some((secret, hash)) => JoinToken {
                secret,
                ca_hash: Some(hash),
            },
            None => JoinToken {
                secret: token,
                ca_hash: None,
            },
        }
    }
}
