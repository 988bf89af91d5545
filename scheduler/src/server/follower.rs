//! What a follower (a replica that does not lead) serves, with the etcd
//! store.
//!
//! - **A copy of the stored state, kept current by an etcd watch.** Every
//!   change under the store's prefix (modules and the CA aside) wakes
//!   [`Scheduler::view_loop`], which reads the tables again into the same
//!   memory the leader keeps (tokens, workloads, cordons, drains,
//!   placements, generations) and the ingress's routes. A follower checks
//!   tokens, routes the ingress and answers `GET /v1/schedulers` from it.
//! - **Every other operator call is forwarded to the leader** (a reverse
//!   proxy over the cluster's TLS, the caller's token passed on; the
//!   leader authorizes it), so each replica answers with the leader's
//!   whole view: host liveness, usage and migrations live only in the
//!   leader's memory. While no leader answers (an election is under way),
//!   a follower answers the reads of stored state — workloads, where they
//!   are placed, tokens — from its copy, marked
//!   [`headers::FROM_CACHE`]; everything else gets `421`.
//! - **Host calls** (join, heartbeat, certificate renewal, drain, the
//!   message relay, module downloads) get `421` naming the leader: hosts
//!   speak to the leader themselves, with their own certificates, which a
//!   proxy could not present.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use roam_proto::headers;
use roam_proto::paths::scheduler as r;
use roam_proto::reply::error;

use super::Scheduler;

/// A change is read this long after it was seen, so a burst of writes is
/// read once.
const SETTLE: Duration = Duration::from_millis(20);

/// Read everything again this often even without a change (a watch that
/// broke without a word).
const ANYWAY: Duration = Duration::from_secs(10);

/// How long a follower waits to connect to the leader.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Headers of one connection, not passed on by a proxy (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What a follower does with a call that is not its own.
pub(super) enum Follow {
    /// Forward it to the leader at this URL.
    Forward(String),
    /// Answer it from the watched copy.
    FromCache,
    /// `421`.
    Misdirect,
}

impl Scheduler {
    /// Keep this replica's copy of the stored state current while it
    /// follows (with a shared store; nothing to do with the embedded one).
    pub(super) async fn view_loop(self: Arc<Self>) {
        let Some(mut changes) = self.store.watch() else {
            return;
        };
        // A copy at once: a follower started into a quiet cluster would
        // otherwise know no token until the first change.
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() {
                        // The store is gone: the scheduler is stopping.
                        return;
                    },
                    () = tokio::time::sleep(ANYWAY) => {}
                }
                tokio::time::sleep(SETTLE).await;
            }
            first = false;
            changes.borrow_and_update();
            if self.leadership.leading_flag() {
                continue;
            }
            let s = self.clone();
            match tokio::task::spawn_blocking(move || s.refresh_view()).await {
                Ok(Ok(())) => {}
                // Keep serving from the last copy.
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the stored state"),
                Err(e) => tracing::error!(error = %e, "reading the stored state failed"),
            }
        }
    }

    /// Read the stored state into memory, unless this replica leads (then
    /// its memory is ahead of any read: it writes the store, then memory).
    fn refresh_view(&self) -> anyhow::Result<()> {
        let _one = self.view_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.leadership.leading_flag() {
            return Ok(());
        }
        let view = self.read_view()?;
        // From the placements and generations just read: the ingress
        // routes by exactly what the rest of the copy says.
        let routes = self.read_routes(&view.assignments, &view.generations)?;
        self.apply_view(view);
        *self
            .stored_routes
            .write()
            .unwrap_or_else(|e| e.into_inner()) = routes;
        Ok(())
    }

    /// What this follower does with `method` `pattern`, a token route.
    pub(super) fn follow(&self, method: &Method, pattern: &str, forwarded: bool) -> Follow {
        let cached = cached(method, pattern);
        match self.leadership.leader_url() {
            // A forwarded call reached a replica that no longer leads:
            // the caller asks again (no loop between two replicas that
            // each think the other leads).
            _ if forwarded => Follow::Misdirect,
            Some(url) => Follow::Forward(url),
            None if cached => Follow::FromCache,
            None => Follow::Misdirect,
        }
    }

    /// Send `request` to the leader at `leader` and pass its answer back,
    /// both bodies streamed. `Err`: the leader could not be reached, or
    /// leads no longer, and the call is a `GET`, given back as it came (its
    /// body is empty) for the caller to answer otherwise.
    pub(super) async fn forward(
        &self,
        leader: &str,
        request: axum::extract::Request,
    ) -> Result<Response, axum::extract::Request> {
        let Some(url) = self.leader_target(leader, request.uri()) else {
            return Ok(super::leadership::misdirected(self));
        };
        let (parts, body) = request.into_parts();
        let mut out = self.leader_http.request(parts.method.clone(), url);
        for (name, value) in &parts.headers {
            if !hop_by_hop(name) && name != axum::http::header::HOST {
                out = out.header(name, value);
            }
        }
        out = out.header(headers::FORWARDED_BY, self.leadership.me.id.as_str());
        let get = parts.method == Method::GET;
        let out = if get {
            out
        } else {
            out.body(reqwest::Body::wrap_stream(body.into_data_stream()))
        };
        let answer = match out.send().await {
            // The replica this one took for the leader leads no longer
            // (it is deposed, and nobody else leads yet): nothing was done.
            Ok(a) if get && a.status() == reqwest::StatusCode::MISDIRECTED_REQUEST => {
                return Err(axum::extract::Request::from_parts(parts, Body::empty()));
            }
            Ok(a) => a,
            Err(e) if e.is_connect() => {
                tracing::debug!(error = %e, leader, "the leader does not answer");
                return if get {
                    Err(axum::extract::Request::from_parts(parts, Body::empty()))
                } else {
                    Ok(super::leadership::misdirected(self))
                };
            }
            Err(e) => {
                return Ok(error(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "the leader ({leader}) did not answer: the call may or may not have been done ({e})"
                    ),
                ));
            }
        };
        let status =
            StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut response = Response::builder().status(status);
        for (name, value) in answer.headers() {
            if !hop_by_hop(name) {
                response = response.header(name, value);
            }
        }
        Ok(response
            .body(Body::from_stream(answer.bytes_stream()))
            .unwrap_or_else(|e| error(StatusCode::BAD_GATEWAY, e.to_string())))
    }

    /// The leader's URL for `uri`'s path and query, reached as the
    /// scheduler (its certificate must name one, under the cluster's CA).
    fn leader_target(&self, leader: &str, uri: &axum::http::Uri) -> Option<reqwest::Url> {
        let base = self
            .transport
            .base(&roam_tls::Identity::Scheduler, leader)
            .ok()?;
        let mut url = reqwest::Url::parse(&base).ok()?;
        url.set_path(uri.path());
        url.set_query(uri.query());
        Some(url)
    }
}

/// Whether a follower may answer `method` `pattern` from its copy: reads
/// of stored state only.
pub(super) fn cached(method: &Method, pattern: &str) -> bool {
    *method == Method::GET && [r::WORKLOADS, r::WORKLOAD, r::TOKENS].contains(&pattern)
}

fn hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Mark an answer given from the watched copy.
pub(super) fn from_cache(s: &Scheduler, mut answer: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&s.leadership.me.id) {
        answer.headers_mut().insert(headers::FROM_CACHE, v);
    }
    answer.into_response()
}
