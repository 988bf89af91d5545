//! Who may call which route: one table ([`routes`]) from which the router is
//! built, so a route cannot exist without its rule, and one check before
//! any body is read ([`authorize`]). `docs/security.md` holds the same
//! table; `cli/tests/all/access.rs` checks that it lists every route of
//! [`table`] with the same rule, and every cell against running daemons.
//!
//! Token roles nest: admin ⊇ operator ⊇ viewer. A join token only joins.
//! Routes meant for hosts take the host's certificate; what a certificate
//! may do there (only its own heartbeat, only messages from its workloads)
//! the route itself checks, since it depends on the path and the body.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{MatchedPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{MethodRouter, any, delete, get, post, put};
use roam_proto::paths::{self, scheduler as r};
use roam_proto::reply::error;

use super::{Scheduler, api, identity, ingress, metrics, migrations, registry};
use crate::auth::Role;

/// What a route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Anyone (the ingress, the CA certificate, metrics).
    Public,
    /// A viewer, operator or admin token.
    Viewer,
    /// An operator or admin token.
    Operator,
    /// An admin token.
    Admin,
    /// A join token, or the certificate of the host being rejoined.
    Join,
    /// The certificate of the host the path names.
    ThisHost,
    /// The certificate of the host that runs the sending workload
    /// (`?from=`).
    SendingHost,
    /// The certificate of a joined host, or an operator token.
    HostOrOperator,
}

impl Access {
    /// As `docs/security.md` writes it.
    pub fn name(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Viewer => "viewer",
            Access::Operator => "operator",
            Access::Admin => "admin",
            Access::Join => "join",
            Access::ThisHost => "this host",
            Access::SendingHost => "sending host",
            Access::HostOrOperator => "host or operator",
        }
    }
}

/// A route and its rule. `method` is `*` for every method (the ingress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteRule {
    /// HTTP method, or `*`.
    pub method: &'static str,
    /// Route pattern (`roam_proto::paths::scheduler`).
    pub pattern: &'static str,
    /// Who may call it.
    pub access: Access,
}

type Handler = MethodRouter<Arc<Scheduler>>;

/// Every route of the scheduler: its rule and its handler.
fn routes() -> Vec<(RouteRule, Handler)> {
    use Access::*;
    let rule = |method, pattern, access| RouteRule {
        method,
        pattern,
        access,
    };
    vec![
        (rule("POST", r::TOKENS, Admin), post(api::create_token)),
        (rule("GET", r::TOKENS, Admin), get(api::list_tokens)),
        (rule("DELETE", r::TOKEN, Admin), delete(api::revoke_token)),
        (rule("GET", r::NODES, Viewer), get(registry::nodes)),
        (
            rule("POST", r::NODE_ACTION, Operator),
            post(registry::node_action),
        ),
        (rule("PUT", r::MODULES, Operator), put(api::upload_module)),
        (
            rule("GET", r::MODULE, HostOrOperator),
            get(api::download_module),
        ),
        (rule("GET", r::WORKLOADS, Viewer), get(api::workloads)),
        (rule("POST", r::WORKLOADS, Operator), post(api::deploy)),
        (rule("GET", r::WORKLOAD, Viewer), get(api::workload)),
        (
            rule("DELETE", r::WORKLOAD, Operator),
            delete(api::delete_workload),
        ),
        (
            rule("GET", r::WORKLOAD_LOGS, Viewer),
            get(api::workload_logs),
        ),
        (
            rule("POST", r::WORKLOAD_SNAPSHOT, Operator),
            post(api::snapshot_workload),
        ),
        (
            rule("POST", r::WORKLOAD_RESTORE, Operator),
            post(api::restore_workload),
        ),
        (rule("GET", r::INSTANCES, Viewer), get(api::instances)),
        (rule("GET", r::MIGRATIONS, Viewer), get(migrations::list)),
        (
            rule("POST", r::MIGRATIONS, Operator),
            post(migrations::create),
        ),
        (rule("GET", r::MIGRATION, Viewer), get(migrations::show)),
        (rule("GET", r::EVENTS, Viewer), get(api::events)),
        (rule("POST", r::JOIN, Join), post(registry::join)),
        (
            rule("POST", r::HEARTBEAT, ThisHost),
            post(registry::heartbeat),
        ),
        (
            rule("POST", r::HOST_CERTIFICATE, ThisHost),
            post(identity::renew),
        ),
        (
            rule("POST", r::MESSAGE, SendingHost),
            post(ingress::relay_message),
        ),
        (rule("GET", r::METRICS, Public), get(metrics::metrics)),
        (rule("GET", r::CA, Public), get(identity::ca)),
        (
            rule("*", paths::ingress::ROOT, Public),
            any(ingress::ingress),
        ),
        (
            rule("*", paths::ingress::ROOT_SLASH, Public),
            any(ingress::ingress),
        ),
        (
            rule("*", paths::ingress::ANY, Public),
            any(ingress::ingress),
        ),
    ]
}

/// Every route's rule.
pub fn table() -> Vec<RouteRule> {
    routes().into_iter().map(|(rule, _)| rule).collect()
}

/// The router, built from the table, with [`authorize`] in front of every
/// route.
pub(super) fn router(s: &Arc<Scheduler>) -> axum::Router<Arc<Scheduler>> {
    let mut router = axum::Router::new();
    for (rule, handler) in routes() {
        router = router.route(rule.pattern, handler);
    }
    router.route_layer(axum::middleware::from_fn_with_state(s.clone(), authorize))
}

/// The rules by (method, pattern), for [`authorize`].
pub(super) fn rules() -> HashMap<(String, &'static str), Access> {
    table()
        .into_iter()
        .map(|r| ((r.method.to_string(), r.pattern), r.access))
        .collect()
}

/// Check a token route's caller before the handler (and before any body is
/// read); host routes are checked by their handlers. A route without a rule
/// is refused to everyone.
async fn authorize(
    State(s): State<Arc<Scheduler>>,
    matched: Option<MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(matched) = matched else {
        return next.run(request).await;
    };
    let method = request.method().as_str().to_string();
    let access = s
        .access
        .get(&(method, matched.as_str()))
        .or_else(|| s.access.get(&("*".to_string(), matched.as_str())))
        .copied();
    let needed = match access {
        None => {
            return error(
                StatusCode::FORBIDDEN,
                "this route has no access rule; refused",
            );
        }
        Some(Access::Viewer) => Role::Viewer,
        Some(Access::Operator) => Role::Operator,
        Some(Access::Admin) => Role::Admin,
        Some(
            Access::Public
            | Access::Join
            | Access::ThisHost
            | Access::SendingHost
            | Access::HostOrOperator,
        ) => return next.run(request).await,
    };
    match s.role(request.headers()) {
        Some((_, role)) if role.covers(&needed) => next.run(request).await,
        Some((_, role)) if !matches!(role, Role::Join { .. }) => error(
            StatusCode::FORBIDDEN,
            format!(
                "a {} token cannot do this; it needs {}",
                role.wire().as_str(),
                needed.wire().as_str()
            ),
        ),
        _ => error(
            StatusCode::UNAUTHORIZED,
            format!("a valid {} token is required", needed.wire().as_str()),
        ),
    }
}

impl Scheduler {
    /// Whether the caller's token covers `needed`.
    pub(super) fn token_covers(&self, headers: &HeaderMap, needed: &Role) -> bool {
        self.role(headers).is_some_and(|(_, r)| r.covers(needed))
    }
}
