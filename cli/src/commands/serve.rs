//! `roam run FILE --listen ADDR`: serve one Roam workload over HTTP locally.
//!
//! The developer's local loop (like `spin up`): requests to any path go to
//! the workload's `handle`; `POST /_roam/messages?from=NAME` queues the body
//! as a message from workload NAME. Guest logs are printed with the
//! workload's name and level. The local loop grants the workload every ABI
//! capability (key-value store, timers, sending); a cluster grants only
//! what the manifest asks for.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response as HttpResponse};
use roam_runtime::abi::{Grants, Place, Quotas};
use roam_runtime::driver::{self, DriverOptions, WorkloadHandle};
use roam_runtime::{InstanceConfig, Passthrough, Runtime, Workload};

use super::run::RunArgs;

/// Serve `bytes` as a workload until Ctrl-C.
pub async fn serve(args: RunArgs, runtime: Runtime, bytes: Vec<u8>) -> anyhow::Result<ExitCode> {
    let file = args.file.display().to_string();
    let name = args.name.clone().unwrap_or_else(|| {
        args.file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "workload".into())
    });
    let module = runtime
        .load(bytes)
        .await
        .with_context(|| format!("cannot load `{file}`"))?;

    let quotas = Quotas::default();
    let max_body = quotas.max_body;
    let mut config = InstanceConfig::new(&name);
    config.memory_limit = args.max_memory;
    config.cpu_budget = Some(args.timeout.unwrap_or(std::time::Duration::from_secs(10)));
    config.env = args.env.clone();
    config.dirs = args.dirs.clone();
    config.args = args.args.clone();
    config.stdout = Passthrough::Stderr;
    config.stderr = Passthrough::Stderr;
    config.track_dirty = false;
    config.grants = Grants::all();
    config.quotas = quotas;
    config.info = Place {
        host: "local".into(),
        site: "local".into(),
    };
    config.log_sink = Some(Arc::new(
        |workload: &str, record: &roam_runtime::abi::LogRecord| {
            let level =
                ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"][usize::from(record.level.min(4))];
            eprintln!("[{workload}] {level:5} {}", record.message);
        },
    ));

    let workload = Workload::start(&runtime, &module, config.clone())
        .await
        .with_context(|| format!("cannot start workload `{name}` from `{file}`"))?;
    let handle = driver::spawn(
        runtime,
        module,
        config,
        workload,
        DriverOptions {
            roundtrip_snapshots: args.roundtrip_snapshots,
            ..DriverOptions::default()
        },
    );

    let app = Router::new()
        .fallback(forward)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(handle.clone());
    let addr = args.listen.context("--listen is required to serve")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on `{addr}`"))?;
    let local = listener.local_addr()?;
    eprintln!(
        "roam: serving workload `{name}` on http://{local}{}",
        if args.roundtrip_snapshots {
            " (snapshot round trip after every event)"
        } else {
            ""
        }
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("HTTP server failed")?;
    handle.stop().await;
    Ok(ExitCode::SUCCESS)
}

async fn forward(
    State(handle): State<WorkloadHandle>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> HttpResponse {
    if uri.path() == "/_roam/messages" {
        if method != Method::POST {
            return (StatusCode::METHOD_NOT_ALLOWED, "POST a message body\n").into_response();
        }
        let from = uri
            .query()
            .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("from=")))
            .unwrap_or("local");
        return match handle
            .message(from, Default::default(), body.to_vec())
            .await
        {
            Ok(()) => (StatusCode::ACCEPTED, "queued\n").into_response(),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
        };
    }
    let request =
        roam_host::ingress::from_http(&method, uri.path().to_string(), &uri, &headers, &body);
    match handle.http(request).await {
        Ok(response) => roam_host::ingress::into_http(response),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
