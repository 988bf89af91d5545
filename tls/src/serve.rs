//! The server loop both daemons use: TLS (or plain HTTP behind
//! `--insecure-plaintext`), HTTP/1.1 with upgrades (the migration page
//! stream), a deadline on the TLS handshake and on reading a request's
//! head, a read idle timeout on bodies, a bound on one address's open
//! connections, and a graceful stop. Every request carries a [`Peer`] extension:
//! the client's address and, when it presented a certificate from the
//! cluster CA, the identity that certificate names.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::identity::Identity;
use crate::revoked::Revoked;
use crate::sha256_hex;

/// Who sent a request.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// The identity its verified client certificate names, if it presented
    /// one from the cluster CA.
    pub identity: Option<Identity>,
    /// sha256 of that certificate's DER, hex (what revocation lists name).
    pub fingerprint: Option<String>,
}

impl Peer {
    /// The host this peer's certificate names, if any.
    pub fn host(&self) -> Option<&str> {
        self.identity.as_ref().and_then(Identity::host_name)
    }

    /// Whether its certificate names the scheduler.
    pub fn is_scheduler(&self) -> bool {
        self.identity == Some(Identity::Scheduler)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Peer>().cloned().unwrap_or(Peer {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            identity: None,
            fingerprint: None,
        }))
    }
}

/// How long a client keeps an idle pooled connection: well under the
/// server's [`ServeOptions::header_read_timeout`], after which the server
/// closes it. A client that reused a connection the server had just closed
/// would see its request fail with "peer disconnected" (and a POST is not
/// retried).
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(5);

/// How [`serve`] runs.
#[derive(Clone)]
pub struct ServeOptions {
    /// TLS, or `None` for plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// A client that has not finished the TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// A client that has not sent a whole request head by then is dropped
    /// (on each request of a kept-alive connection too, so this is also how
    /// long an idle kept-alive connection stays open: clients must not reuse
    /// a pooled connection older than [`CLIENT_POOL_IDLE`]).
    pub header_read_timeout: Duration,
    /// On stop, how long open connections get to finish.
    pub grace: Duration,
    /// A request body that sends nothing for this long fails (a read idle
    /// timeout: it resets with every chunk that arrives).
    pub body_idle_timeout: Duration,
    /// Connections one client address may hold open at once; more are
    /// closed as they arrive. HTTP/1.1 runs one request at a time on a
    /// connection, so this bounds a client's requests in flight.
    pub max_connections_per_ip: usize,
    /// Certificates refused (the same set the TLS configuration checks at
    /// the handshake): checked again on every request, so a connection
    /// opened before a revocation serves nothing after it.
    pub revoked: Arc<Revoked>,
}

impl ServeOptions {
    /// Defaults: 10 s for the handshake and for a request head, 30 s of
    /// silence in a body, 512 connections per client address, 10 s of
    /// grace.
    pub fn new(tls: Option<Arc<rustls::ServerConfig>>) -> ServeOptions {
        ServeOptions {
            tls,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            grace: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            max_connections_per_ip: 512,
            revoked: Revoked::new(),
        }
    }
}

/// Serve `app` on `listener` until `shutdown` completes, then give open
/// connections [`ServeOptions::grace`] to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Every connection task holds a sender; all are gone once every
    // connection has closed.
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
    let acceptor = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let per_ip = PerIp::default();
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = per_ip.take(addr.ip(), options.max_connections_per_ip) else {
            tracing::debug!(%addr, "too many connections from this address; closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let options = options.clone();
        let stop = stop_rx.clone();
        let open = open_tx.clone();
        tokio::spawn(async move {
            let _open = open;
            let _slot = slot;
            match acceptor {
                None => {
                    let peer = Peer {
                        addr,
                        identity: None,
                        fingerprint: None,
                    };
                    connection(TokioIo::new(tcp), app, peer, &options, stop).await;
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%addr, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%addr, "TLS handshake timed out");
                                return;
                            }
                        };
                    let cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first());
                    let peer = Peer {
                        addr,
                        identity: cert.and_then(Identity::of_certificate),
                        fingerprint: cert.map(|c| sha256_hex(c)),
                    };
                    connection(TokioIo::new(stream), app, peer, &options, stop).await;
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(open_tx);
    let _ = tokio::time::timeout(options.grace, open_rx.recv()).await;
    Ok(())
}

/// Open connections per client address.
#[derive(Clone, Default)]
struct PerIp(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// One connection's place in [`PerIp`], given back when dropped.
struct Slot {
    per_ip: PerIp,
    ip: std::net::IpAddr,
}

impl PerIp {
    fn take(&self, ip: std::net::IpAddr, max: usize) -> Option<Slot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            per_ip: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.per_ip.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

async fn connection<I>(
    io: I,
    app: Router,
    peer: Peer,
    options: &ServeOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let idle = options.body_idle_timeout;
    let revoked = options.revoked.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let refused = peer
            .fingerprint
            .as_deref()
            .is_some_and(|f| revoked.contains(f));
        request.extensions_mut().insert(peer.clone());
        let app = app.clone();
        async move {
            if refused {
                use axum::response::IntoResponse as _;
                let body = r#"{"error":"this certificate is revoked"}"#;
                let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
                return Ok((axum::http::StatusCode::UNAUTHORIZED, json, body).into_response());
            }
            app.oneshot(request.map(|body| tower_http::timeout::TimeoutBody::new(idle, body)))
                .await
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}
