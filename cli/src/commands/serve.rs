//! `roam run FILE --listen ADDR`: serve one Roam workload over HTTP locally.
//!
//! The developer's local loop (like `spin up`): requests to any path go to
//! the workload's `handle`; `POST /_roam/messages?from=NAME` queues the body
//! as a message from workload NAME. Guest logs are printed with the
//! workload's name and level. Capabilities are granted as in the cluster:
//! what `-f workload.toml` and `--grant` say, nothing else; `--grant-all`
//! grants every one. With `-f`, the instance is configured by the same
//! function a host uses (`roam_host::workload_config`): memory cap,
//! environment, grants, the CPU budget per call.

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

use super::ops::Manifest;
use super::run::RunArgs;

/// Serve `bytes` as a workload until Ctrl-C, as `manifest` says if given.
pub(super) async fn serve(
    args: RunArgs,
    manifest: Option<Manifest>,
    runtime: Runtime,
    bytes: Vec<u8>,
) -> anyhow::Result<ExitCode> {
    let path = args.file.clone().unwrap_or_default();
    let file = path.display().to_string();
    let name = args
        .name
        .clone()
        .or_else(|| manifest.as_ref().map(|m| m.name.clone()))
        .unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "workload".into())
        });
    let module = runtime
        .load(bytes)
        .await
        .with_context(|| format!("cannot load `{file}`"))?;

    let flags = super::ops::grants(&args.grants)?;
    let place = Place {
        host: "local".into(),
        site: "local".into(),
    };
    let mut config = match &manifest {
        // As a host runs it.
        Some(m) => {
            let mut env = m.env.clone();
            env.extend(args.env.iter().cloned());
            let mut grants = m.grants.clone();
            grants.kv |= flags.kv;
            grants.timers |= flags.timers;
            grants.send.extend(flags.send);
            grants.send.dedup();
            let mut config = roam_host::workload_config(&name, m.memory()?, &env, &grants, place);
            if let Some(t) = args.timeout {
                config.cpu_budget = Some(t);
            }
            config
        }
        None => {
            let mut config = InstanceConfig::new(&name);
            config.memory_limit = args.max_memory;
            config.cpu_budget = Some(args.timeout.unwrap_or(std::time::Duration::from_secs(10)));
            config.env = args.env.clone();
            config.grants = flags;
            config.info = place;
            config
        }
    };
    if args.grant_all {
        config.grants = Grants::all();
    }
    let quotas = Quotas::default();
    let max_body = quotas.max_body;
    config.dirs = args.dirs.clone();
    config.args = args.args.clone();
    config.stdout = Passthrough::Stderr;
    config.stderr = Passthrough::Stderr;
    config.track_dirty = false;
    config.quotas = quotas;
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
