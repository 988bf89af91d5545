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
