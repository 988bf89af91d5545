//! The operator console: one page and its assets, embedded in the binary
//! (an air-gapped site fetches nothing from elsewhere), and its sessions.
//!
//! Signing in exchanges a viewer, operator or admin token (sent once, as
//! the bearer of `POST /ui/session`) for a session cookie: `HttpOnly`,
//! `SameSite=Strict`, `Secure` over TLS. The browser's `EventSource` cannot
//! send an `Authorization` header; the cookie goes with it. The cookie is
//! `{token hash}.{expiry}.{mac}`, signed with the cluster's console key
//! (made by the first replica, kept in the store, so every replica accepts
//! every session, and a follower that forwards a call passes the cookie
//! on). The token behind it is looked up on every call: revoking the token
//! ends its sessions, and the session has the token's role. A call made
//! with the cookie that changes something must carry the session's
//! cross-site request token (`x-roam-csrf`), which only the console's own
//! page can read (`GET /ui/session`); the cookie alone is refused.
//!
//! Every answer under `/ui` forbids inline and foreign scripts and styles
//! (`Content-Security-Policy`) and framing. The page renders every value
//! as text (never as HTML): names, labels and reasons come from operators
//! and hosts.

use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ring::hmac;
use roam_proto::headers;
use roam_proto::reply::error;

use super::Scheduler;
use crate::auth::{self, Role};

/// The session cookie's name.
const COOKIE: &str = "roam_session";
/// How long a session lasts at most (less if its token ends sooner).
const SESSION_SECS: u64 = 12 * 3600;
/// A cookie value longer than this is not one of ours.
const MAX_COOKIE: usize = 256;
/// The store's key for the console key (hex).
const KEY: &str = "console.key";

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

/// What every answer under `/ui` carries.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's signing key.
pub(super) struct Console {
    key: hmac::Key,
}

impl Console {
    /// The cluster's console key: the store's, or, if it has none yet, a
    /// new one this replica offers (the first offer wins).
    pub(super) fn load(store: &crate::store::Store) -> anyhow::Result<Console> {
        let stored = match store.cluster_value(KEY)? {
            Some(k) => k,
            None => {
                let mut fresh = [0u8; 32];
                getrandom::fill(&mut fresh)
                    .map_err(|e| anyhow::anyhow!("no randomness for the console key: {e}"))?;
                store.bootstrap_cluster(&[(KEY, hex::encode(fresh).into_bytes())])?;
                store
                    .cluster_value(KEY)?
                    .context("the console key vanished from the store")?
            }
        };
        let key = hex::decode(&stored).context("the stored console key is not hex")?;
        anyhow::ensure!(key.len() >= 32, "the stored console key is too short");
        Ok(Console {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        })
    }

    /// What is signed: the purpose, a zero byte, the value (a MAC for one
    /// purpose is never one for another).
    fn message(purpose: &str, value: &str) -> Vec<u8> {
        [purpose.as_bytes(), &[0], value.as_bytes()].concat()
    }

    fn mac(&self, purpose: &str, value: &str) -> String {
        hex::encode(hmac::sign(&self.key, &Self::message(purpose, value)))
    }

    fn verify(&self, purpose: &str, value: &str, mac: &str) -> bool {
        hex::decode(mac)
            .is_ok_and(|tag| hmac::verify(&self.key, &Self::message(purpose, value), &tag).is_ok())
    }

    /// A session cookie's value for the token of `hash`, ending at
    /// `expires` (Unix seconds).
    fn issue(&self, hash: &str, expires: u64) -> String {
        let body = format!("{hash}.{expires}");
        let mac = self.mac("session", &body);
        format!("{body}.{mac}")
    }

    /// The token hash of session `value`, if we signed it and it has not
    /// ended by `now`.
    fn session<'a>(&self, value: &'a str, now: u64) -> Option<&'a str> {
        if value.len() > MAX_COOKIE {
            return None;
        }
        let (body, mac) = value.rsplit_once('.')?;
        let (hash, expires) = body.split_once('.')?;
        let expires: u64 = expires.parse().ok()?;
        (now < expires && self.verify("session", body, mac)).then_some(hash)
    }

    /// The cross-site request token of session `value`.
    fn csrf(&self, value: &str) -> String {
        self.mac("csrf", value)
    }
}

/// The session cookie's value in `headers`, if there is one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// A `Cookie` header without the console's session (for the ingress: a
/// workload never sees it); `None` if nothing else is left, or if it is not
/// text (then it cannot be told apart, and is dropped whole).
pub(super) fn strip_session(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?;
    let rest: Vec<&str> = text
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split('=').next() != Some(COOKIE))
        .collect();
    (!rest.is_empty()).then(|| rest.join("; "))
}

/// Whether a call of `method` may change something.
fn changes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

impl Scheduler {
    /// The token hash and role of the console session in `headers`, if it
    /// is valid and its token still lives (a join token signs nobody in).
    pub(super) fn session_role(&self, headers: &HeaderMap) -> Option<(String, Role)> {
        let now = auth::now_unix();
        let hash = self.console.session(cookie(headers)?, now)?;
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(hash)
            .filter(|r| r.live(now) && !matches!(r.role, Role::Join { .. }))
            .map(|r| (hash.to_string(), r.role.clone()))
    }

    /// A call authorized by its session cookie alone that changes
    /// something: refused unless it carries the session's cross-site
    /// request token.
    pub(super) fn csrf_refusal(&self, method: &Method, headers: &HeaderMap) -> Option<Response> {
        if !changes(method) || roam_proto::reply::bearer(headers).is_some() {
            return None;
        }
        let value = cookie(headers)?;
        let presented = headers
            .get(headers::CSRF)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if self.console.verify("csrf", value, presented) {
            return None;
        }
        Some(error(
            StatusCode::FORBIDDEN,
            format!(
                "a console call that changes something needs its session's `{}` header",
                headers::CSRF
            ),
        ))
    }
}

/// Security headers on an answer under `/ui`.
fn guarded(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /ui`: the page.
pub(super) async fn page() -> Response {
    guarded(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response())
}

/// `GET /ui/assets/{file}`: a script or style of the page.
pub(super) async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return guarded(error(StatusCode::NOT_FOUND, "no such asset")),
    };
    guarded(([(header::CONTENT_TYPE, kind)], body).into_response())
}

/// What `GET /ui/session` and `POST /ui/session` answer.
#[derive(serde::Serialize)]
struct SessionInfo {
    role: &'static str,
    /// When the session ends, Unix seconds (none: signed in with a bearer).
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_unix: Option<u64>,
    /// The session's cross-site request token, for `x-roam-csrf`.
    #[serde(skip_serializing_if = "Option::is_none")]
    csrf: Option<String>,
}

/// `POST /ui/session` (viewer): the bearer token, for a session cookie.
pub(super) async fn sign_in(State(s): State<Arc<Scheduler>>, headers: HeaderMap) -> Response {
    if roam_proto::reply::bearer(&headers).is_none() {
        return guarded(error(
            StatusCode::BAD_REQUEST,
            "sign in with the token as the bearer (Authorization: Bearer TOKEN)",
        ));
    }
    let Some((hash, role)) = s.role(&headers) else {
        return guarded(error(StatusCode::UNAUTHORIZED, "not a valid token"));
    };
    let now = auth::now_unix();
    let token_ends = s
        .tokens
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&hash)
        .and_then(|r| r.expires);
    let expires = token_ends.map_or(now + SESSION_SECS, |e| e.min(now + SESSION_SECS));
    let value = s.console.issue(&hash, expires);
    let secure = if s.tls.is_some() { "; Secure" } else { "" };
    let set = format!(
        "{COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        expires.saturating_sub(now)
    );
    let info = SessionInfo {
        role: role.wire().as_str(),
        expires_unix: Some(expires),
        csrf: Some(s.console.csrf(&value)),
    };
    let mut response = axum::Json(info).into_response();
    match HeaderValue::from_str(&set) {
        Ok(v) => {
            response.headers_mut().insert(header::SET_COOKIE, v);
        }
        Err(e) => return guarded(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
    tracing::info!(role = role.wire().as_str(), "console sign-in");
    guarded(response)
}

/// `GET /ui/session` (viewer): who is signed in, and the session's
/// cross-site request token.
pub(super) async fn who(State(s): State<Arc<Scheduler>>, headers: HeaderMap) -> Response {
    let info = match s.session_role(&headers) {
        Some((_, role)) => {
            let value = cookie(&headers).unwrap_or_default();
            let expires = value.split('.').nth(1).and_then(|e| e.parse::<u64>().ok());
            SessionInfo {
                role: role.wire().as_str(),
                expires_unix: expires,
                csrf: Some(s.console.csrf(value)),
            }
        }
        None => match s.role(&headers) {
            Some((_, role)) => SessionInfo {
                role: role.wire().as_str(),
                expires_unix: None,
                csrf: None,
            },
            None => return guarded(error(StatusCode::UNAUTHORIZED, "not signed in")),
        },
    };
    guarded(axum::Json(info).into_response())
}

/// `DELETE /ui/session` (public): forget the cookie.
pub(super) async fn sign_out(State(s): State<Arc<Scheduler>>) -> Response {
    let secure = if s.tls.is_some() { "; Secure" } else { "" };
    let set = format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{secure}");
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&set) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    guarded(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console() -> Console {
        Console {
            key: hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]),
        }
    }

    #[test]
    fn a_session_is_what_was_signed_until_it_ends() {
        let c = console();
        let value = c.issue("abc", 100);
        assert_eq!(c.session(&value, 99), Some("abc"));
        assert_eq!(c.session(&value, 100), None, "ended");
        // Another hash, a later end or another key: not ours.
        let (_, mac) = value.rsplit_once('.').unwrap();
        assert_eq!(c.session(&format!("abd.100.{mac}"), 99), None);
        assert_eq!(c.session(&format!("abc.1000.{mac}"), 99), None);
        let other = Console {
            key: hmac::Key::new(hmac::HMAC_SHA256, &[8u8; 32]),
        };
        assert_eq!(other.session(&value, 99), None);
        for junk in ["", ".", "..", "a.b.c", "abc.x.00", &"a".repeat(300)] {
            assert_eq!(c.session(junk, 0), None, "{junk:?}");
        }
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; roam_session=x.1.y; b=2"),
        );
        assert_eq!(cookie(&h), Some("x.1.y"));
        h.insert(header::COOKIE, HeaderValue::from_static("roam_sessionx=1"));
        assert_eq!(cookie(&h), None);
    }

    #[test]
    fn the_ingress_passes_every_cookie_but_the_session() {
        let strip = |v: &'static str| strip_session(&HeaderValue::from_static(v));
        assert_eq!(
            strip("a=1; roam_session=x; b=2").as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(strip("roam_session=x"), None);
        assert_eq!(strip("roam_sessions=1").as_deref(), Some("roam_sessions=1"));
    }

    #[test]
    fn a_csrf_token_belongs_to_its_session() {
        let c = console();
        let (a, b) = (c.issue("a", 10), c.issue("b", 10));
        assert!(c.verify("csrf", &a, &c.csrf(&a)));
        assert!(!c.verify("csrf", &b, &c.csrf(&a)));
        assert!(!c.verify("csrf", &a, ""));
        assert!(!c.verify("session", &a, &c.csrf(&a)), "purposes differ");
    }
}
