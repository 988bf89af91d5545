//! Who may call which of a host's routes: one table ([`table`]), made of
//! the route lists of `control.rs` and `migration/`, from which the router
//! is built, so a route cannot exist without its rule. `docs/security.md`
//! holds the same table; `cli/tests/all/access.rs` checks that it lists
//! every route of [`table`] with the same rule, and each cell against a
//! running host.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{MethodRouter, any};
use roam_proto::reply::error;
use roam_proto::{headers, paths};
use roam_tls::Peer;

use crate::daemon::Host;
use crate::{control, ingress, metrics, migration, standby};

/// What a host's route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAccess {
    /// The scheduler: its certificate (over TLS) and the host secret it was
    /// handed at join.
    Scheduler,
    /// The source of a migration this host receives: the certificate of the
    /// host the scheduler named, and the migration's key.
    Source,
    /// The primary host a standby here was placed for: its certificate
    /// (the host the scheduler named), and the standby's key.
    Primary,
    /// The cluster's scrape credential (`roam scheduler
    /// --metrics-token-file`), over TLS when the cluster uses it.
    Scrape,
    /// Anyone (the ingress).
    Public,
}

impl HostAccess {
    /// As `docs/security.md` writes it.
    pub fn name(self) -> &'static str {
        match self {
            HostAccess::Scheduler => "scheduler",
            HostAccess::Source => "source host",
            HostAccess::Primary => "primary host",
            HostAccess::Scrape => "scrape",
            HostAccess::Public => "public",
        }
    }
}

/// A route of a host and its rule. `method` is `*` for every method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostRule {
    /// HTTP method, or `*`.
    pub method: &'static str,
    /// Route pattern (`roam_proto::paths::host`, `::ingress`).
    pub pattern: &'static str,
    /// Who may call it.
    pub access: HostAccess,
    /// Largest body read, bytes.
    pub limit: usize,
}

/// A rule and its handler.
pub(crate) type Route = (HostRule, MethodRouter<Arc<Host>>);

/// Small JSON calls.
pub(crate) const SMALL: usize = 64 << 10;
/// An instance spec (environment included).
pub(crate) const SPEC: usize = 4 << 20;
/// A message between workloads (over the ABI's 1 MiB default quota).
pub(crate) const MESSAGE: usize = 2 << 20;
/// A request through the ingress.
const INGRESS: usize = 8 << 20;

/// A route with its rule.
pub(crate) fn rule(
    method: &'static str,
    pattern: &'static str,
    access: HostAccess,
    limit: usize,
    handler: MethodRouter<Arc<Host>>,
) -> Route {
    let rule = HostRule {
        method,
        pattern,
        access,
        limit,
    };
    (rule, handler)
}

/// Every route of a host.
fn routes() -> Vec<Route> {
    use HostAccess::{Public, Scrape};
    use paths::ingress as w;
    let mut all = control::routes();
    all.extend(migration::control_routes());
    all.extend(migration::stream_routes());
    all.extend(standby::routes());
    all.extend([
        rule(
            "GET",
            paths::host::METRICS,
            Scrape,
            SMALL,
            axum::routing::get(metrics::metrics),
        ),
        rule("*", w::ROOT, Public, INGRESS, any(ingress::ingress)),
        rule("*", w::ROOT_SLASH, Public, INGRESS, any(ingress::ingress)),
        rule("*", w::ANY, Public, INGRESS, any(ingress::ingress)),
    ]);
    all
}

/// Every route's rule.
pub fn table() -> Vec<HostRule> {
    routes().into_iter().map(|(rule, _)| rule).collect()
}

/// The router, built from the table: each route with its body limit and
/// the check its rule asks for.
pub(crate) fn router(host: &Arc<Host>) -> Router<Arc<Host>> {
    let mut router = Router::new();
    for (rule, handler) in routes() {
        let handler = handler.layer(DefaultBodyLimit::max(rule.limit));
        let handler = match rule.access {
            HostAccess::Scheduler => handler.route_layer(axum::middleware::from_fn_with_state(
                host.clone(),
                require_scheduler,
            )),
            HostAccess::Source => handler.route_layer(axum::middleware::from_fn_with_state(
                host.clone(),
                migration::require_source,
            )),
            HostAccess::Primary => handler.route_layer(axum::middleware::from_fn_with_state(
                host.clone(),
                standby::require_primary,
            )),
            HostAccess::Scrape => handler.route_layer(axum::middleware::from_fn_with_state(
                host.clone(),
                require_scrape,
            )),
            HostAccess::Public => handler,
        };
        router = router.route(rule.pattern, handler);
    }
    router
}

/// Refuse control routes to anyone but the scheduler: over TLS its
/// certificate, and always the host secret handed out at join.
async fn require_scheduler(
    State(host): State<Arc<Host>>,
    peer: Peer,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if host.tls.is_some() && !peer.is_scheduler() {
        return error(
            StatusCode::FORBIDDEN,
            "control routes are the scheduler's; its certificate is required",
        );
    }
    if !host.authorized(request.headers()) {
        // Over TLS only a scheduler replica gets here: its secret is from
        // before this host's last join, so it led before the one this
        // host joined last (every new leader has hosts rejoin it).
        if host.tls.is_some() {
            tracing::warn!(
                method = %request.method(),
                path = request.uri().path(),
                "refused a control call from a deposed scheduler leader: its host secret is from before this host's last join"
            );
        }
        return error(StatusCode::UNAUTHORIZED, "missing or wrong host secret");
    }
    // A leader deposed while paused may still call: its term is older than
    // one this host has seen, and it is not obeyed.
    match check_term(&host.term, request.headers().get(headers::TERM)) {
        Ok(()) => next.run(request).await,
        Err(TermRefused::Unreadable) => {
            error(StatusCode::BAD_REQUEST, "a term is a decimal number")
        }
        Err(TermRefused::Older { term, newest }) => {
            let message = format!(
                "refused: this call comes from scheduler term {term}, and a leader of term {newest} exists"
            );
            tracing::warn!(
                method = %request.method(),
                path = request.uri().path(),
                term,
                newest,
                "refused a control call from a deposed scheduler leader: its term is older than one seen"
            );
            let mut response = error(StatusCode::CONFLICT, message);
            // Tells the caller this is a stale term, not a conflict of the
            // call itself (an abort refused once committed is also 409).
            response
                .headers_mut()
                .insert(headers::TERM, axum::http::HeaderValue::from(newest));
            response
        }
    }
}

/// Refuse `/metrics` to anyone without the cluster's scrape credential.
async fn require_scrape(
    State(host): State<Arc<Host>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let hash = host
        .scrape
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if hash.is_empty() {
        return error(
            StatusCode::UNAUTHORIZED,
            "this cluster has no scrape credential (roam scheduler --metrics-token-file): metrics are served to nobody",
        );
    }
    if !roam_proto::reply::presents_hashed(request.headers(), &hash) {
        return error(
            StatusCode::UNAUTHORIZED,
            "the cluster's scrape credential is required",
        );
    }
    next.run(request).await
}

/// Why [`check_term`] refused a call.
#[derive(Debug, PartialEq, Eq)]
enum TermRefused {
    /// The header is not a decimal number.
    Unreadable,
    /// A leader of a newer term exists.
    Older { term: u64, newest: u64 },
}

/// Admit a control call of scheduler term `header` (none: 0) only if no
/// newer term was seen, and remember it as the newest if it is.
fn check_term(
    newest: &AtomicU64,
    header: Option<&axum::http::HeaderValue>,
) -> Result<(), TermRefused> {
    let term = match header {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(TermRefused::Unreadable)?,
    };
    let seen = newest.fetch_max(term, Ordering::AcqRel).max(term);
    if term < seen {
        return Err(TermRefused::Older { term, newest: seen });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_of_a_term_older_than_one_seen_are_refused() {
        let newest = AtomicU64::new(0);
        let term = |t: &str| axum::http::HeaderValue::from_str(t).unwrap();
        assert!(check_term(&newest, None).is_ok());
        assert!(check_term(&newest, Some(&term("7"))).is_ok());
        assert!(check_term(&newest, Some(&term("7"))).is_ok());
        assert_eq!(
            check_term(&newest, Some(&term("5"))),
            Err(TermRefused::Older { term: 5, newest: 7 })
        );
        assert!(check_term(&newest, None).is_err(), "no term is term 0");
        assert_eq!(
            check_term(&newest, Some(&term("x"))),
            Err(TermRefused::Unreadable)
        );
        assert_eq!(newest.load(Ordering::Acquire), 7, "refusals change nothing");
        assert!(check_term(&newest, Some(&term("9"))).is_ok());
        assert_eq!(newest.load(Ordering::Acquire), 9);
    }
}
