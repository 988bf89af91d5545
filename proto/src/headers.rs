//! Every HTTP header and upgrade name Roam's processes exchange, and the
//! `I/N` value some of them carry.
//!
//! Roam's own headers start with `x-roam-`: hosts strip them from workload
//! responses and ingresses from client requests ([`is_roam_header`]), so a
//! guest or a client can never speak for Roam.

use std::fmt;
use std::str::FromStr;

/// The workload generation a request was routed for. A host refuses (409)
/// a request whose generation is not the one its copy runs at, before the
/// workload sees it, so the sender may safely retry elsewhere.
pub const GENERATION: &str = "x-roam-generation";

/// Set on an error a host answered before the workload saw the request
/// (wrong generation, workload not or no longer here): an ingress may send
/// such a request again elsewhere without applying it twice. Its value is
/// always `1`.
pub const NOT_DISPATCHED: &str = "x-roam-not-dispatched";

/// Set by the scheduler's message relay on its refusal of a message to a
/// workload that does not exist (not one that is not running yet): the
/// sender's host gives the message back to its sender instead of sending
/// it again. Its value is always `1`.
pub const UNKNOWN_WORKLOAD: &str = "x-roam-unknown-workload";

/// Server-sent events' standard header: the id of the last event a
/// reconnecting follower of `GET /v1/events` saw.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// On a call the operator console makes with its session cookie (rather
/// than a bearer token) that changes something: the session's cross-site
/// request token, which only the console's own page can read
/// (`GET /ui/session`). Without it the call is refused (403).
pub const CSRF: &str = "x-roam-csrf";

/// The leadership term of the scheduler making a control call to a host
/// (decimal). A host refuses (409) a call whose term is older than the
/// newest it has seen, so a deposed leader's calls are not obeyed.
pub const TERM: &str = "x-roam-term";

/// On a scheduler replica's `421 Misdirected Request`: the URL of the
/// replica that leads, where hosts and the CLI send the call instead
/// (absent while no replica leads).
pub const LEADER: &str = "x-roam-leader";

/// On a call a scheduler follower forwards to the leader: the follower's
/// replica id. A replica that gets a forwarded call and does not lead
/// answers `421` rather than forward it again.
pub const FORWARDED_BY: &str = "x-roam-forwarded-by";

/// On an answer a scheduler follower gave from its own copy of the stored
/// state (kept current by an etcd watch) because no leader answered: the
/// follower's replica id. What only the leader knows (host liveness,
/// rejected hosts, checkpoint ages) is missing from such an answer.
pub const FROM_CACHE: &str = "x-roam-from-cache";

/// `PUT /v1/instances/{workload}/restore`: the instance spec
/// ([`crate::StartInstance`]) as JSON; the body is the snapshot.
pub const INSTANCE: &str = "x-roam-instance";

/// A migration round's part: [`Index`] `I/N`.
pub const PART: &str = "x-roam-part";

/// A migration round's whole length in bytes (or, on a page stream, the
/// most bytes of pages all streams together carry).
pub const TOTAL: &str = "x-roam-total";

/// `1` on a migration's final round (the source is frozen).
pub const FINAL: &str = "x-roam-final";

/// `1` on the last part of a live migration's final round: the commit
/// message. The target applies the final state and serves at once, and
/// answers the part only once it serves (or could not start it); from
/// sending it on, the source never resumes by itself
/// (`docs/migration-protocol.md`, "The commit point").
pub const ACTIVATE: &str = "x-roam-activate";

/// xxh3-64 of a migration part's body, 16 lowercase hex digits.
pub const CHECKSUM: &str = "x-roam-checksum";

/// Which of a migration's page streams this is: [`Index`] `I/N`.
pub const STREAM: &str = "x-roam-stream";

/// The protocol a page stream's `POST` upgrades to (`upgrade: roam-pages`).
pub const PAGES_UPGRADE: &str = "roam-pages";

/// `content-encoding` of a migration part sent compressed: one zstd frame
/// that decompresses to the part (its checksum is of the part itself).
pub const ZSTD_ENCODING: &str = "zstd";

/// Whether a header is one of Roam's own (`x-roam-*`, any case): hosts
/// strip them from workload responses, ingresses from client requests.
///
/// ```
/// assert!(roam_proto::headers::is_roam_header("X-Roam-Generation"));
/// assert!(!roam_proto::headers::is_roam_header("x-request-id"));
/// ```
pub fn is_roam_header(name: &str) -> bool {
    name.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("x-roam-"))
}

/// `I/N`: item `index` (from 0) of `count`, as a part of a round or a page
/// stream of several.
///
/// ```
/// use roam_proto::headers::Index;
/// let i: Index = "2/5".parse().unwrap();
/// assert_eq!((i.index, i.count), (2, 5));
/// assert_eq!(i.to_string(), "2/5");
/// assert!("5/5".parse::<Index>().is_err() && "1/0".parse::<Index>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Index {
    /// Which one, from 0.
    pub index: u32,
    /// Of how many (at least 1).
    pub count: u32,
}

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// An `I/N` value that is malformed or names an item past the count.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not `I/N` with I below N")]
pub struct BadIndex(pub String);

impl FromStr for Index {
    type Err = BadIndex;

    fn from_str(value: &str) -> Result<Index, BadIndex> {
        let bad = || BadIndex(value.chars().take(32).collect());
        let (i, n) = value.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.parse().map_err(|_| bad())?;
        let count: u32 = n.parse().map_err(|_| bad())?;
        if index >= count {
            return Err(bad());
        }
        Ok(Index { index, count })
    }
}
