//! Who may call which of a host's routes: one table ([`table`]), made of
//! the route lists of `control.rs` and `migration/`, from which the router
//! is built, so a route cannot exist without its rule. `docs/security.md`
//! holds the same table; `cli/tests/all/access.rs` checks that it lists
//! every route of [`table`] with the same rule, and each cell against a
//! running host.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{MethodRouter, any};
use roam_proto::paths;
use roam_proto::reply::error;
use roam_tls::Peer;

use crate::daemon::Host;
use crate::{control, ingress, migration, standby};

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
    use HostAccess::Public;
    use paths::ingress as w;
    let mut all = control::routes();
    all.extend(migration::control_routes());
    all.extend(migration::stream_routes());
    all.extend(standby::routes());
    all.extend([
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
    if host.authorized(request.headers()) {
        next.run(request).await
    } else {
        error(StatusCode::UNAUTHORIZED, "missing or wrong host secret")
    }
}
