//! Who is who over TLS: the cluster CA (created on first start in the data
//! directory), the scheduler's own certificate (`scheduler.roam`, renewed
//! in place), the operator's certificate for clients outside the cluster,
//! host certificates issued at join and renewed by their host, and the
//! durable record that binds a host name to the trusted labels it first
//! joined with.
//!
//! Host certificates live [`ServerConfig::host_cert_lifetime`] (24 h by
//! default); a host renews at half-life, presenting the current one. Routes
//! a host calls (heartbeat, module download, message relay, renewal,
//! rejoin) accept only the host its certificate names.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use roam_proto::reply::error;
use roam_proto::{Labels, RenewCertificate, RenewedCertificate};
use roam_tls::{Ca, CertSlot, Identity, Peer, ServerCerts, Transport};
use serde::{Deserialize, Serialize};

use super::{Refusal, Scheduler, ServerConfig, parse};

/// How long the scheduler's own certificate lives; it issues itself a new
/// one at half-life.
const OWN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What the scheduler keeps of a host's identity: bound at its first join,
/// kept across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct HostRecord {
    /// The trusted labels of the token it first joined with.
    pub(super) labels: Labels,
}

/// The scheduler's TLS material.
pub(super) struct ClusterTls {
    pub(super) ca: Ca,
    /// `scheduler.roam`, shown to cluster peers and used as client
    /// certificate on calls to hosts.
    pub(super) mine: Arc<CertSlot>,
    /// Extra names the scheduler's certificate carries.
    sans: Vec<String>,
    /// The operator's certificate, for everyone else.
    public: Option<Arc<rustls::sign::CertifiedKey>>,
}

impl ClusterTls {
    /// Load (or create) the CA and issue the scheduler's certificate.
    pub(super) fn load(config: &ServerConfig) -> anyhow::Result<ClusterTls> {
        let ca = Ca::load_or_create(&config.data_dir)?;
        let mut sans = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        if !config.listen.ip().is_unspecified() {
            sans.push(config.listen.ip().to_string());
        }
        for san in &config.tls_san {
            if !sans.contains(san) {
                sans.push(san.clone());
            }
        }
        let public = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let read = |p: &std::path::Path| {
                    std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read `{}`", p.display()))
                };
                Some(roam_tls::ca::certified_key(&read(cert)?, &read(key)?)?)
            }
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        let tls = ClusterTls {
            mine: Arc::new(CertSlot::default()),
            ca,
            sans,
            public,
        };
        tls.renew_own()?;
        Ok(tls)
    }

    /// Issue the scheduler a fresh certificate.
    fn renew_own(&self) -> anyhow::Result<()> {
        let creds = self
            .ca
            .issue(&Identity::Scheduler, &self.sans, OWN_LIFETIME)?;
        self.mine.set(creds.certified_key()?);
        Ok(())
    }

    /// The listener's TLS configuration.
    pub(super) fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let certs = ServerCerts {
            cluster: self.mine.clone(),
            public: self.public.clone(),
        };
        Ok(Arc::new(self.ca.trust()?.server_config(certs)?))
    }

    /// How the scheduler reaches hosts.
    pub(super) fn transport(&self) -> anyhow::Result<Transport> {
        Ok(Transport::tls(self.ca.trust()?, self.mine.clone()))
    }
}

impl Scheduler {
    /// Renew the scheduler's own certificate at half-life, forever.
    pub(super) async fn renew_own_loop(self: Arc<Self>) {
        let Some(tls) = &self.tls else { return };
        loop {
            tokio::time::sleep(OWN_LIFETIME / 2).await;
            if let Err(e) = tls.renew_own() {
                tracing::error!(error = %e, "cannot renew the scheduler's certificate");
            }
        }
    }

    /// A certificate for host `name` from its signing request.
    pub(super) fn issue_host_certificate(&self, name: &str, csr: &str) -> Result<String, Refusal> {
        let Some(tls) = &self.tls else {
            return Ok(String::new());
        };
        let identity = Identity::host(name)
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        tls.ca
            .sign_request(csr, &identity, self.config.host_cert_lifetime)
            .map(|issued| issued.chain_pem)
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))
    }

    /// The recorded identity of host `name`.
    pub(super) fn host_record(&self, name: &str) -> Result<Option<HostRecord>, Refusal> {
        self.store
            .host(name)
            .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }

    /// Let in only host `name`, by its certificate: none is 401, another
    /// host's 403.
    pub(super) fn require_host(&self, peer: &Peer, name: &str) -> Result<(), Refusal> {
        match peer.identity.as_ref() {
            _ if self.acts_as(peer, name) => Ok(()),
            None => Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                format!("host `{name}`'s certificate is required"),
            )),
            Some(other) => Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!("{other} cannot act as host `{name}`"),
            )),
        }
    }

    /// Whether `peer` may act as host `name`: over TLS only with a
    /// certificate naming it.
    pub(super) fn acts_as(&self, peer: &Peer, name: &str) -> bool {
        self.tls.is_some() && peer.host() == Some(name)
    }
}

/// `GET /v1/ca`: the CA certificate (public; a host checks it against the
/// hash its join token carries).
pub(super) async fn ca(State(s): State<Arc<Scheduler>>) -> Response {
    match &s.tls {
        Some(tls) => (
            [(axum::http::header::CONTENT_TYPE, "application/x-pem-file")],
            tls.ca.pem().to_string(),
        )
            .into_response(),
        None => error(StatusCode::NOT_FOUND, "this cluster runs without TLS"),
    }
}

/// `POST /v1/hosts/{name}/certificate`: a host renews its certificate,
/// presenting the current one.
pub(super) async fn renew(
    State(s): State<Arc<Scheduler>>,
    Path(name): Path<String>,
    peer: Peer,
    body: Bytes,
) -> Response {
    if let Err(r) = s.require_host(&peer, &name) {
        return r.into_response();
    }
    let req: RenewCertificate = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match s.host_record(&name) {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no host `{name}`")),
        Err(r) => return r.into_response(),
    }
    match s.issue_host_certificate(&name, &req.csr) {
        Ok(certificate) => {
            s.event(
                "host_certificate_renewed",
                serde_json::json!({ "host": name }),
            );
            Json(RenewedCertificate { certificate }).into_response()
        }
        Err(r) => r.into_response(),
    }
}
