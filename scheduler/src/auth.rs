//! Tokens and the labels that carry trust.
//!
//! Every API call carries a bearer token. Tokens are 32 bytes from the OS
//! CSPRNG, shown once (`roam_` + hex) and stored only as their sha256, so a
//! leaked store does not leak tokens. Presented tokens are hashed and
//! looked up by that hash. The lookup is not constant-time, and need not
//! be: an attacker who learns how much of a hash matched learns nothing
//! about which token would produce it (sha256 is preimage resistant), so
//! timing cannot be used to guess a token byte by byte.
//!
//! A *join token* binds trusted labels — site, region, jurisdiction,
//! provider — chosen by the operator when creating it. A host that joins
//! with it gets exactly those values; it may add other labels (its CPU
//! architecture, say) but cannot set, change or drop a trusted one, so a
//! host cannot move itself into the EU.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::selector::Labels;

/// Labels only a join token can set.
pub const TRUSTED_LABELS: &[&str] = &["site", "region", "jurisdiction", "provider"];

/// Prefix of every token, so leaked tokens are easy to scan for.
pub const TOKEN_PREFIX: &str = "roam_";

/// What a token may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Every API call, tokens included.
    Admin,
    /// Deploy, migrate, drain, cordon; and all a viewer sees.
    Operator,
    /// Read-only, without secrets.
    Viewer,
    /// A host joining with trusted labels.
    Join {
        /// Trusted labels bound to the token.
        labels: Labels,
    },
}

impl Role {
    /// The role as the API names it.
    pub fn wire(&self) -> roam_proto::TokenRole {
        match self {
            Role::Admin => roam_proto::TokenRole::Admin,
            Role::Operator => roam_proto::TokenRole::Operator,
            Role::Viewer => roam_proto::TokenRole::Viewer,
            Role::Join { .. } => roam_proto::TokenRole::Join,
        }
    }

    /// Whether this role may do what `needed` may (admin ⊇ operator ⊇
    /// viewer; a join token is for joining only).
    pub fn covers(&self, needed: &Role) -> bool {
        let rank = |r: &Role| match r {
            Role::Admin => 3,
            Role::Operator => 2,
            Role::Viewer => 1,
            Role::Join { .. } => 0,
        };
        !matches!(self, Role::Join { .. }) && rank(self) >= rank(needed)
    }
}

/// A stored token: its hash, role, lifetime and uses, never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// sha256 of the token, hex.
    pub hash: String,
    /// What it may do.
    pub role: Role,
    /// When it was made, seconds since the Unix epoch.
    #[serde(default)]
    pub created: u64,
    /// When it expires, if it does.
    #[serde(default)]
    pub expires: Option<u64>,
    /// Joins it still admits, if limited.
    #[serde(default)]
    pub uses_left: Option<u32>,
}

impl TokenRecord {
    /// Its id: the first 16 hex digits of its hash (not a secret: the hash
    /// of a 256-bit random token reveals nothing of it).
    pub fn id(&self) -> &str {
        self.hash.get(..16).unwrap_or(&self.hash)
    }

    /// Whether it still admits anything at `now` (seconds since the epoch).
    pub fn live(&self, now: u64) -> bool {
        self.expires.is_none_or(|e| now < e) && self.uses_left != Some(0)
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A token, or the operator asked for labels a join token cannot carry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The OS random source failed.
    #[error("cannot read the OS random source: {0}")]
    Random(String),
    /// A join token label is not one of the trusted labels.
    #[error("`{0}` is not a trusted label; join tokens bind only {TRUSTED_LABELS:?}")]
    NotTrusted(String),
    /// A label out of bounds.
    #[error("{0}")]
    BadLabel(String),
    /// A host claimed a trusted label its token does not grant.
    #[error("host claims `{key}={claimed}` but its join token binds `{key}={bound}`")]
    LabelConflict {
        /// Label key.
        key: String,
        /// What the host claimed.
        claimed: String,
        /// What the token binds (`<unset>` when it binds nothing).
        bound: String,
    },
}

/// A fresh token from the OS CSPRNG: `roam_` + 64 hex digits.
pub fn new_token() -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Check that `labels` are all trusted labels, for a new join token.
pub fn check_join_labels(labels: &Labels) -> Result<(), AuthError> {
    if let Some(k) = labels
        .keys()
        .find(|k| !TRUSTED_LABELS.contains(&k.as_str()))
    {
        return Err(AuthError::NotTrusted(k.clone()));
    }
    check_labels(labels)
}

/// Every label's key and value within bounds ([`roam_proto::names::label`]),
/// and not too many.
pub fn check_labels(labels: &Labels) -> Result<(), AuthError> {
    if labels.len() > roam_proto::names::MAX_LABELS {
        return Err(AuthError::BadLabel(format!(
            "{} labels; at most {}",
            labels.len(),
            roam_proto::names::MAX_LABELS
        )));
    }
    for (k, v) in labels {
        roam_proto::names::label(k, v).map_err(|e| AuthError::BadLabel(e.to_string()))?;
    }
    Ok(())
}

/// The labels a host ends up with: its own untrusted labels plus the
/// trusted ones its token binds. Refuses a host that claims a trusted label
/// with another value than the token's (or one the token does not bind).
pub fn host_labels(claimed: &Labels, bound: &Labels) -> Result<Labels, AuthError> {
    let mut out: Labels = BTreeMap::new();
    for (k, v) in claimed {
        if TRUSTED_LABELS.contains(&k.as_str()) {
            let bound_value = bound.get(k);
            if bound_value != Some(v) {
                return Err(AuthError::LabelConflict {
                    key: k.clone(),
                    claimed: v.clone(),
                    bound: bound_value.cloned().unwrap_or_else(|| "<unset>".into()),
                });
            }
        }
        out.insert(k.clone(), v.clone());
    }
    for (k, v) in bound {
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tokens_are_random_and_verified_by_hash() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("roam_") && a.len() == 5 + 64);
        assert_eq!(hash_token(&a), hash_token(&a.clone()));
        assert_ne!(hash_token(&a), hash_token(&b));
    }

    #[test]
    fn a_host_cannot_claim_another_sites_labels() {
        let bound = labels(&[("site", "eu-west-1"), ("jurisdiction", "EU")]);
        let ok = host_labels(
            &labels(&[("arch", "aarch64"), ("site", "eu-west-1")]),
            &bound,
        )
        .unwrap();
        assert_eq!(
            ok,
            labels(&[
                ("arch", "aarch64"),
                ("jurisdiction", "EU"),
                ("site", "eu-west-1")
            ])
        );
        let err = host_labels(&labels(&[("site", "us-east-1")]), &bound).unwrap_err();
        assert_eq!(
            err.to_string(),
            "host claims `site=us-east-1` but its join token binds `site=eu-west-1`"
        );
        let err = host_labels(&labels(&[("provider", "acme")]), &bound).unwrap_err();
        assert!(err.to_string().contains("binds `provider=<unset>`"));
        assert_eq!(
            check_join_labels(&labels(&[("arch", "x86_64")])),
            Err(AuthError::NotTrusted("arch".into()))
        );
    }
}
