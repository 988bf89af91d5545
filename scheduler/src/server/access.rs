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
use roam_proto::paths::scheduler as r;
use roam_proto::reply::error;

use super::{
    Scheduler, api, console, events, identity, ingress, leadership, metrics, migrations, registry,
};
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
    /// The cluster's scrape credential, or a viewer token.
    Scrape,
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
            Access::Scrape => "scrape or viewer",
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
    /// Largest body read, bytes (after the caller is let in; a longer one
    /// is refused with 413 as it arrives, never buffered whole).
    pub limit: usize,
}

/// Bodies of small JSON calls.
const SMALL: usize = 64 << 10;
/// A host's report of what it runs (join, heartbeat).
const REPORT: usize = 4 << 20;
/// Modules and snapshots.
const LARGE: usize = 64 << 20;
/// A message between workloads (the ABI's default quota).
const MESSAGE: usize = 1 << 20;
/// A request through the ingress.
const INGRESS: usize = 8 << 20;

type Handler = MethodRouter<Arc<Scheduler>>;

/// Every route of the scheduler: its rule, its body limit and its handler.
fn routes() -> Vec<(RouteRule, Handler)> {
    use Access::*;
    use roam_proto::paths::ingress as w;
    let on = |method, pattern, access, limit, handler| {
        let rule = RouteRule {
            method,
            pattern,
            access,
            limit,
        };
        (rule, handler)
    };
    vec![
        on("POST", r::TOKENS, Admin, SMALL, post(api::create_token)),
        on("GET", r::TOKENS, Admin, SMALL, get(api::list_tokens)),
        on("DELETE", r::TOKEN, Admin, SMALL, delete(api::revoke_token)),
        on("GET", r::NODES, Viewer, SMALL, get(registry::nodes)),
        on(
            "GET",
            r::SCHEDULERS,
            Viewer,
            SMALL,
            get(leadership::schedulers),
        ),
        on(
            "POST",
            r::NODE_ACTION,
            Operator,
            SMALL,
            post(registry::node_action),
        ),
        on("POST", r::NODE_REVOKE, Admin, SMALL, post(identity::revoke)),
        on("PUT", r::MODULES, Operator, LARGE, put(api::upload_module)),
        on(
            "GET",
            r::MODULE,
            HostOrOperator,
            SMALL,
            get(api::download_module),
        ),
        on("GET", r::WORKLOADS, Viewer, SMALL, get(api::workloads)),
        on("POST", r::WORKLOADS, Operator, REPORT, post(api::deploy)),
        on("GET", r::WORKLOAD, Viewer, SMALL, get(api::workload)),
        on(
            "DELETE",
            r::WORKLOAD,
            Operator,
            SMALL,
            delete(api::delete_workload),
        ),
        on(
            "GET",
            r::WORKLOAD_LOGS,
            Viewer,
            SMALL,
            get(api::workload_logs),
        ),
        on(
            "POST",
            r::WORKLOAD_SNAPSHOT,
            Operator,
            SMALL,
            post(api::snapshot_workload),
        ),
        on(
            "POST",
            r::WORKLOAD_RESTORE,
            Operator,
            LARGE,
            post(api::restore_workload),
        ),
        on(
            "GET",
            r::WORKLOAD_ROLLOUT,
            Viewer,
            SMALL,
            get(api::rollout_status),
        ),
        on(
            "POST",
            r::WORKLOAD_UNDO,
            Operator,
            SMALL,
            post(api::rollout_undo),
        ),
        on("GET", r::INSTANCES, Viewer, SMALL, get(api::instances)),
        on("GET", r::MIGRATIONS, Viewer, SMALL, get(migrations::list)),
        on(
            "POST",
            r::MIGRATIONS,
            Operator,
            SMALL,
            post(migrations::create),
        ),
        on("GET", r::MIGRATION, Viewer, SMALL, get(migrations::show)),
        on("GET", r::EVENTS, Viewer, SMALL, get(events::events)),
        on("POST", r::JOIN, Join, REPORT, post(registry::join)),
        on(
            "POST",
            r::HEARTBEAT,
            ThisHost,
            REPORT,
            post(registry::heartbeat),
        ),
        on(
            "POST",
            r::HOST_DRAIN,
            ThisHost,
            SMALL,
            post(registry::leave),
        ),
        on(
            "POST",
            r::HOST_CERTIFICATE,
            ThisHost,
            SMALL,
            post(identity::renew),
        ),
        on(
            "POST",
            r::MESSAGE,
            SendingHost,
            MESSAGE,
            post(ingress::relay_message),
        ),
        on("GET", r::METRICS, Scrape, SMALL, get(metrics::metrics)),
        on("GET", r::CA, Public, SMALL, get(identity::ca)),
        on("GET", r::UI, Public, SMALL, get(console::page)),
        on("GET", r::UI_ASSET, Public, SMALL, get(console::asset)),
        on("POST", r::UI_SESSION, Viewer, SMALL, post(console::sign_in)),
        on("GET", r::UI_SESSION, Viewer, SMALL, get(console::who)),
        on(
            "DELETE",
            r::UI_SESSION,
            Public,
            SMALL,
            delete(console::sign_out),
        ),
        on("*", w::ROOT, Public, INGRESS, any(ingress::ingress)),
        on("*", w::ROOT_SLASH, Public, INGRESS, any(ingress::ingress)),
        on("*", w::ANY, Public, INGRESS, any(ingress::ingress)),
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
        router = router.route(
            rule.pattern,
            handler.layer(axum::extract::DefaultBodyLimit::max(rule.limit)),
        );
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
    let needed = match s.rule(request.method(), matched.as_str()) {
        None => {
            return error(
                StatusCode::FORBIDDEN,
                "this route has no access rule; refused",
            );
        }
        Some(Access::Viewer) => Role::Viewer,
        Some(Access::Scrape)
            if s.scrape.as_deref().is_some_and(|hash| {
                roam_proto::reply::presents_hashed(request.headers(), hash)
            }) =>
        {
            return next.run(request).await;
        }
        Some(Access::Scrape) => Role::Viewer,
        Some(Access::Operator) => Role::Operator,
        Some(Access::Admin) => Role::Admin,
        Some(Access::Public) => return next.run(request).await,
        // Host routes: a first look before any body is read (a host
        // certificate, or a join token); the handler checks which host.
        Some(host_route) => {
            let peer = request
                .extensions()
                .get::<roam_tls::Peer>()
                .and_then(|p| p.host())
                .is_some();
            let headers = request.headers();
            let let_in = match host_route {
                Access::Join => peer || s.join_token(headers).is_some(),
                Access::HostOrOperator if s.host_credential(peer, headers) => true,
                Access::HostOrOperator => {
                    let operator = s.token_covers(headers, &Role::Operator);
                    if let Some(refused) = operator
                        .then(|| s.csrf_refusal(request.method(), headers))
                        .flatten()
                    {
                        return refused;
                    }
                    operator
                }
                _ => s.host_credential(peer, headers),
            };
            return if let_in {
                next.run(request).await
            } else if s.spent_token(headers) {
                error(StatusCode::UNAUTHORIZED, "the token is used up or expired")
            } else {
                error(
                    StatusCode::UNAUTHORIZED,
                    if s.tls.is_some() {
                        "a host certificate (or, to join, a join token) is required"
                    } else {
                        "a join token is required"
                    },
                )
            };
        }
    };
    match s.role(request.headers()) {
        Some((_, role)) if role.covers(&needed) => {
            match s.csrf_refusal(request.method(), request.headers()) {
                Some(refused) => refused,
                None => next.run(request).await,
            }
        }
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
    /// The rule of route `pattern` for `method` (or for every method).
    pub(super) fn rule(&self, method: &axum::http::Method, pattern: &str) -> Option<Access> {
        let key = |m: &str| (m.to_string(), pattern);
        self.access
            .get(&key(method.as_str()))
            .or_else(|| self.access.get(&key("*")))
            .copied()
    }

    /// Whether a caller with (`peer`) or without a host certificate holds
    /// a host's credential: over TLS the certificate, in plaintext a join
    /// token.
    fn host_credential(&self, peer: bool, headers: &HeaderMap) -> bool {
        if self.tls.is_some() {
            peer
        } else {
            self.join_token(headers).is_some()
        }
    }

    /// Whether the caller's token covers `needed`.
    pub(super) fn token_covers(&self, headers: &HeaderMap, needed: &Role) -> bool {
        self.role(headers).is_some_and(|(_, r)| r.covers(needed))
    }
}
