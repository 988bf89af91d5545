//! Error answers as both daemons give them: an [`crate::ErrorBody`] with a
//! status, and the mark of a request refused before dispatch.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::{ErrorBody, headers};

/// A JSON error answer.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

/// An error answered before the workload saw the request, marked with
/// [`headers::NOT_DISPATCHED`] so that an ingress may retry it elsewhere
/// without applying it twice.
pub fn not_dispatched(status: StatusCode, message: impl Into<String>) -> Response {
    let mut r = error(status, message);
    r.headers_mut()
        .insert(headers::NOT_DISPATCHED, HeaderValue::from_static("1"));
    r
}

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    crate::auth::bearer(
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
}

/// Whether a request's bearer token is one whose sha256 (hex) is `hash`
/// (constant time; see [`crate::auth::presents_hashed`]).
pub fn presents_hashed(headers: &HeaderMap, hash: &str) -> bool {
    crate::auth::presents_hashed(
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        hash,
    )
}

/// Whether a request presents `secret` as its bearer token (constant time;
/// an empty secret matches nothing).
pub fn presents(headers: &HeaderMap, secret: &str) -> bool {
    crate::auth::presents(
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        secret,
    )
}
