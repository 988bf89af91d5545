//! The scheduler's ingress (`/w/{workload}/...`) and the message relay
//! (`POST /v1/messages/{workload}`): both go to a live host whose copy is
//! confirmed running, with the workload's generation, and are resent when
//! the host refused them before dispatch, so requests that race a
//! migration's commit are neither lost nor applied twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use roam_proto::paths::{self, BadSegment};
use roam_proto::reply::error;
use roam_proto::{FromQuery, headers};

use super::Scheduler;
use super::host_client::Endpoint;

/// Where a workload runs, as the store records it.
pub(super) struct StoredRoute {
    hosts: Vec<Endpoint>,
    generation: u64,
}

impl Scheduler {
    /// Send a request built by `build(host, generation)` to the host that
    /// serves `workload`. A host's refusal before dispatch (wrong
    /// generation, workload moved) or a refused connection means the request
    /// was not applied: resolve again and resend, for a while. With
    /// `ahead`, a workload whose migration converged goes to its target
    /// already ([`Scheduler::switched_to`]).
    async fn send_to_serving(
        &self,
        workload: &str,
        ahead: bool,
        build: impl Fn(&Endpoint, u64) -> Result<reqwest::RequestBuilder, BadSegment>,
    ) -> Result<reqwest::Response, Response> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_millis(1);
        let mut attempt = 0usize;
        let mut refused_by: Option<String> = None;
        loop {
            attempt += 1;
            let moving = match refused_by.as_deref() {
                Some(host) => self.moving_to(workload, host),
                None if ahead => self.switched_to(workload),
                None => None,
            };
            let target = match (moving, self.serving(workload)) {
                (Some(to), _) => Some(to),
                (None, Some(to)) => Some((to, self.generation(workload))),
                (None, None) => self.stored_route(workload, attempt),
            };
            let retry = match target {
                Some((to, generation)) => {
                    let request = build(&to, generation)
                        .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
                    match request.send().await {
                        Ok(r) if r.headers().contains_key(headers::NOT_DISPATCHED) => {
                            refused_by = Some(to.name.clone());
                            let status = r.status();
                            let text = roam_tls::answer::error_text(r).await;
                            error(
                                StatusCode::from_u16(status.as_u16())
                                    .unwrap_or(StatusCode::BAD_GATEWAY),
                                text,
                            )
                        }
                        Ok(r) => return Ok(r),
                        // Not sent at all: as good as refused before
                        // dispatch (a request sent ahead to a migration's
                        // target that is gone goes to the source next).
                        Err(e) if e.is_connect() => {
                            refused_by = Some(to.name.clone());
                            error(StatusCode::BAD_GATEWAY, format!("host unreachable: {e}"))
                        }
                        Err(e) => {
                            return Err(error(
                                StatusCode::BAD_GATEWAY,
                                format!("host unreachable: {e}"),
                            ));
                        }
                    }
                }
                None => {
                    let refusal = error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("workload `{workload}` is not running anywhere"),
                    );
                    // Worth waiting for: a migration's commit, or a start
                    // that is on its way.
                    let placed = self
                        .assignments
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(workload)
                        .is_some_and(|hosts| !hosts.is_empty())
                        || !self.leadership.leads();
                    if !placed && !self.frozen().contains(workload) {
                        return Err(refusal);
                    }
                    refusal
                }
            };
            if Instant::now() + pause > deadline {
                return Err(retry);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Where `workload` runs as the store records it (for a follower, which
    /// hears no heartbeats, or a leader whose hosts have not reported yet):
    /// its hosts in turn, `attempt` picking one, at the recorded
    /// generation. A stale record only costs a retry: a host refuses,
    /// before dispatch, a generation that is not its copy's.
    fn stored_route(&self, workload: &str, attempt: usize) -> Option<(Endpoint, u64)> {
        let routes = self.stored_routes.read().unwrap_or_else(|e| e.into_inner());
        let route = routes.get(workload)?;
        let n = route.hosts.len();
        (n > 0).then(|| (route.hosts[attempt % n].clone(), route.generation))
    }

    /// Where every workload runs as the store records it (a follower's
    /// copy, see `follower.rs`).
    pub(super) fn read_routes(
        &self,
        assignments: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        generations: &HashMap<String, u64>,
    ) -> anyhow::Result<HashMap<String, StoredRoute>> {
        let hosts: HashMap<String, super::identity::HostRecord> =
            self.store.hosts()?.into_iter().collect();
        let mut routes = HashMap::new();
        for (workload, placed) in assignments {
            let mut endpoints = Vec::new();
            for host in placed {
                let Some(url) = hosts.get(host).and_then(|r| r.url.clone()) else {
                    continue;
                };
                let Ok(identity) = roam_tls::Identity::host(host) else {
                    continue;
                };
                let Ok(base) = self.transport.base(&identity, &url) else {
                    continue;
                };
                endpoints.push(Endpoint {
                    name: host.clone(),
                    url,
                    base,
                    secret: String::new(),
                });
            }
            let generation = generations.get(workload).copied().unwrap_or(0);
            routes.insert(
                workload.clone(),
                StoredRoute {
                    hosts: endpoints,
                    generation,
                },
            );
        }
        Ok(routes)
    }

    /// Where every workload runs as this replica's memory has it (its
    /// placements, the hosts that joined it, its generations): what a
    /// leader that steps down routes with until it reads the store again.
    pub(super) fn routes_from_memory(&self) -> HashMap<String, StoredRoute> {
        let assignments = self
            .assignments
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        assignments
            .into_iter()
            .map(|(workload, placed)| {
                let hosts = placed
                    .iter()
                    .filter_map(|h| self.hosts.get(h).map(|e| e.endpoint(h)))
                    .collect();
                let generation = self.generation(&workload);
                (workload, StoredRoute { hosts, generation })
            })
            .collect()
    }

    /// Where `workload` is moving once its migration's pre-copy converged
    /// (`stopping` and on): the target, at the migration's generation.
    /// Requests go there from then on, ahead of the freeze the scheduler
    /// orders next; the target holds them until it serves, so they need no
    /// round trip through the source after the commit point. If the
    /// migration is dropped instead, the target refuses them before
    /// dispatch and they go to the source (a request refused once is
    /// never sent ahead again).
    fn switched_to(&self, workload: &str) -> Option<(Endpoint, u64)> {
        let (target, generation) = self
            .migrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|m| {
                m.workload == workload
                    && matches!(
                        m.phase,
                        roam_proto::MigrationPhase::Stopping
                            | roam_proto::MigrationPhase::Prepared
                            | roam_proto::MigrationPhase::Committed
                    )
            })
            .map(|m| (m.target.clone(), m.generation))?;
        let e = self.hosts.get(&target)?;
        self.alive(&e).then(|| (e.endpoint(&target), generation))
    }

    /// Where `workload` is moving from `source`, once its migration passed
    /// the commit point: the target, at the migration's generation. A
    /// request the source refused before dispatch (it handed the workload
    /// off) goes there at once, without waiting for the routing to flip
    /// (the source's `committed` line may still be on its way); the target
    /// refuses it before dispatch if it does not serve that generation.
    fn moving_to(&self, workload: &str, source: &str) -> Option<(Endpoint, u64)> {
        let (target, generation) = self
            .migrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|m| {
                m.workload == workload
                    && m.source == source
                    && matches!(
                        m.phase,
                        roam_proto::MigrationPhase::Prepared
                            | roam_proto::MigrationPhase::Committed
                    )
            })
            .map(|m| (m.target.clone(), m.generation))?;
        let e = self.hosts.get(&target)?;
        self.alive(&e).then(|| (e.endpoint(&target), generation))
    }

    /// A live host where `workload` is known to run: its start was
    /// confirmed, or the host reported it.
    fn serving(&self, workload: &str) -> Option<Endpoint> {
        let assignments = self.assignments.lock().unwrap_or_else(|e| e.into_inner());
        let confirmed = self.confirmed.lock().unwrap_or_else(|e| e.into_inner());
        assignments.get(workload)?.iter().find_map(|h| {
            let e = self.hosts.get(h)?;
            let running = confirmed.contains(&(workload.to_string(), h.clone()))
                || e.instances.iter().any(|i| i.workload == workload);
            (self.alive(&e) && running).then(|| e.endpoint(h))
        })
    }
}

/// `POST /v1/messages/{workload}` (join token): a message from a workload
/// on one host to a workload on another. Answered once the receiver's host
/// took it (the sender's host then forgets it); 404 with
/// [`headers::UNKNOWN_WORKLOAD`] when no such workload exists.
pub(super) async fn relay_message(
    State(s): State<Arc<Scheduler>>,
    Path(workload): Path<String>,
    Query(q): Query<FromQuery>,
    peer: roam_tls::Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let host = match s.calling_host(&peer, &headers) {
        Ok(h) => h,
        Err(r) => return r.into_response(),
    };
    // A host speaks only for the workloads placed on it.
    if let Some(host) = host
        && !s.placed_on(&q.from).contains(&host)
    {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "workload `{}` does not run on host `{host}`",
                q.from.chars().take(64).collect::<String>()
            ),
        );
    }
    if !s.has_workload(&workload) {
        // Said apart from "not running yet": the sender's host gives the
        // message back to its sender rather than sending it again.
        let mut refusal = error(
            StatusCode::NOT_FOUND,
            format!(
                "no workload named `{}`",
                workload.chars().take(64).collect::<String>()
            ),
        );
        refusal.headers_mut().insert(
            headers::UNKNOWN_WORKLOAD,
            axum::http::HeaderValue::from_static("1"),
        );
        return refusal;
    }
    let sent = s
        .send_to_serving(&workload, false, |to, _| {
            s.client.message(to, &workload, &q, body.clone())
        })
        .await;
    match sent {
        Err(response) => response,
        Ok(r) if r.status().is_success() => StatusCode::ACCEPTED.into_response(),
        Ok(r) => error(
            StatusCode::BAD_GATEWAY,
            format!("host answered {}", r.status()),
        ),
    }
}

/// `/w/{workload}/{path...}`: proxied to a live host that runs the workload.
pub(super) async fn ingress(
    State(s): State<Arc<Scheduler>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((workload, path)) = paths::ingress_target(uri.path()) else {
        return error(StatusCode::NOT_FOUND, paths::ingress::USAGE);
    };
    let Ok(method) = reqwest::Method::from_bytes(method.as_str().as_bytes()) else {
        return error(StatusCode::METHOD_NOT_ALLOWED, "unsupported method");
    };
    let rest = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let sent = s
        .send_to_serving(workload, true, |to, generation| {
            let mut request = s
                .client
                .ingress(to, method.clone(), workload, &rest, generation)?
                .body(body.clone());
            for (k, v) in &headers {
                if k == axum::http::header::COOKIE {
                    // The console's session is for Roam, never a workload.
                    if let Some(rest) = super::console::strip_session(v) {
                        request = request.header(k.as_str(), rest);
                    }
                } else if k != axum::http::header::HOST
                    && k != axum::http::header::CONTENT_LENGTH
                    && !headers::is_roam_header(k.as_str())
                {
                    request = request.header(k.as_str(), v.as_bytes());
                }
            }
            Ok(request)
        })
        .await;
    match sent {
        Err(response) => response,
        Ok(r) => {
            let status = r.status();
            // As the host sent them (a header that repeats, each time; any
            // bytes a header may hold), less what framed its connection.
            let mut out_headers = r.headers().clone();
            for hop in [
                axum::http::header::CONTENT_LENGTH,
                axum::http::header::TRANSFER_ENCODING,
                axum::http::header::CONNECTION,
            ] {
                out_headers.remove(hop);
            }
            let bytes = match roam_tls::answer::bytes(r, roam_proto::MAX_HTTP_BODY).await {
                Ok(b) => b,
                Err(e) => {
                    return error(
                        StatusCode::BAD_GATEWAY,
                        format!("the workload's answer could not be read: {e}"),
                    );
                }
            };
            let mut out = (status, bytes).into_response();
            out.headers_mut().extend(out_headers);
            out
        }
    }
}
