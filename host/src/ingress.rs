//! The host's ingress: `/w/{workload}/{path...}` goes to the workload
//! running here, refused before dispatch (and marked so,
//! [`roam_proto::headers::NOT_DISPATCHED`]) when it carries another
//! generation or the workload is not, or no longer, here. Also the
//! conversions between HTTP and the guest ABI's request and response,
//! which `roam run --listen` uses too.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use roam_proto::reply::{error, not_dispatched};
use roam_proto::{headers, paths};
use roam_runtime::abi::codec::{Request, Response as WorkloadResponse};

use crate::control::not_here;
use crate::daemon::Host;

/// `/w/{workload}/{path...}`: a request to a workload on this host.
pub(crate) async fn ingress(
    State(host): State<Arc<Host>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((workload, path)) = paths::ingress_target(uri.path()) else {
        return error(StatusCode::NOT_FOUND, paths::ingress::USAGE);
    };
    let wanted = headers
        .get(headers::GENERATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut waited = false;
    let (handle, series) = loop {
        let workloads = host.workloads.lock().await;
        match workloads.get(workload) {
            Some(r) if wanted.is_none_or(|g| g == r.status.generation) => {
                break (r.handle.clone(), r.tracking.series().cloned());
            }
            Some(r) => {
                return not_dispatched(
                    StatusCode::CONFLICT,
                    format!(
                        "stale generation: `{workload}` runs here at generation {}, the request was routed for {}",
                        r.status.generation,
                        wanted.unwrap_or_default()
                    ),
                );
            }
            None => {
                drop(workloads);
                // A request the source of an arriving migration forwarded
                // ahead of its commit message: it waits for the activation.
                if let (Some(generation), false) = (wanted, waited) {
                    waited = true;
                    let began = std::time::Instant::now();
                    let arrived =
                        crate::migration::wait_for_arrival(&host, workload, generation).await;
                    tracing::debug!(%workload, generation, arrived, waited_ms = began.elapsed().as_secs_f64() * 1e3, "a request waited for its workload's arrival");
                    if arrived {
                        continue;
                    }
                }
                return match host.migrations.moved_to(workload) {
                    Some(url) => {
                        not_dispatched(StatusCode::CONFLICT, format!("`{workload}` moved to {url}"))
                    }
                    None => not_here(workload),
                };
            }
        }
    };
    // A copy with a standby answers only while its standby grants it a
    // lease: once the standby is told to take over, this one stops.
    if !host.may_serve(workload).await {
        return not_dispatched(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("`{workload}` here holds no lease from its standby; it may have failed over"),
        );
    }
    let started = std::time::Instant::now();
    let request = from_http(&method, path.to_string(), &uri, &headers, &body);
    let response = match handle.http(request).await {
        // The standby may be taking over now: withhold the answer.
        Ok(_) if !host.still_leased(workload) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "`{workload}` here lost its lease while the request ran; its answer is withheld"
            ),
        ),
        Ok(r) => into_http(r),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Some(series) = series {
        series.request(response.status().as_u16(), started.elapsed());
    }
    response
}

/// Turn an HTTP request into a workload request for `path`, every header
/// included (`Authorization` too: the ingress takes no credential, so a
/// bearer token is the workload's to check).
pub fn from_http(
    method: &Method,
    path: String,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Request {
    Request {
        method: method.to_string(),
        path,
        query: uri.query().unwrap_or("").to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    }
}

/// Turn a workload response into an HTTP response.
pub fn into_http(r: WorkloadResponse) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut out = (status, r.body).into_response();
    // `x-roam-*` headers are Roam's word to an ingress; a guest cannot speak it.
    for (k, v) in r
        .headers
        .into_iter()
        .filter(|(k, _)| !headers::is_roam_header(k))
    {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::try_from(k),
            axum::http::HeaderValue::try_from(v),
        ) {
            out.headers_mut().append(k, v);
        }
    }
    out
}
