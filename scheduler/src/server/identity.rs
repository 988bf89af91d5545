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
use roam_tls::{Ca, CertSlot, Identity, Peer, Revoked, ServerCerts, Transport};
use serde::{Deserialize, Serialize};

use super::{Refusal, Scheduler, ServerConfig, parse};

/// The CA every replica sharing the store uses: the store's, or, if the
/// cluster has none yet, a new one that this replica offers (the first
/// offer wins; the others take it). Its certificate is also written to the
/// data directory (`ca.crt`), for clients.
fn shared_ca(config: &ServerConfig, store: &crate::store::Store) -> anyhow::Result<Ca> {
    let stored = |store: &crate::store::Store| -> anyhow::Result<Option<(String, String)>> {
        match (
            store.cluster_value("ca.crt")?,
            store.cluster_value("ca.key")?,
        ) {
            (Some(c), Some(k)) => Ok(Some((String::from_utf8(c)?, String::from_utf8(k)?))),
            _ => Ok(None),
        }
    };
    let (cert, key) = match stored(store)? {
        Some(pair) => pair,
        None => {
            let (cert, key) = Ca::generate()?;
            store.bootstrap_cluster(&[
                ("ca.crt", cert.clone().into_bytes()),
                ("ca.key", key.into_bytes()),
            ])?;
            stored(store)?.context("the cluster's CA vanished from the store")?
        }
    };
    let path = config.data_dir.join("ca.crt");
    std::fs::write(&path, &cert).with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(Ca::from_pem(&cert, &key)?)
}

/// How long the scheduler's own certificate lives; it issues itself a new
/// one at half-life.
const OWN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What the scheduler keeps of a host's identity: bound at its first join,
/// kept across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct HostRecord {
    /// The trusted labels of the token it first joined with.
    pub(super) labels: Labels,
    /// The certificates issued to it that have not expired yet (a renewed
    /// host holds two for a while): revoking the host revokes them all.
    #[serde(default)]
    pub(super) certificates: Vec<IssuedCert>,
    /// When `roam node revoke` ended this identity; the name cannot join
    /// again.
    #[serde(default)]
    pub(super) revoked_unix: Option<u64>,
    /// The URL it registered at its last join: every scheduler replica
    /// routes the ingress with it, followers included.
    #[serde(default)]
    pub(super) url: Option<String>,
}

/// A certificate issued to a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct IssuedCert {
    /// sha256 of its DER, hex.
    pub(super) fingerprint: String,
    /// End of validity, Unix seconds.
    pub(super) not_after_unix: u64,
}

/// A revoked certificate as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RevokedCert {
    /// The host it was issued to.
    pub(super) host: String,
    /// End of validity, Unix seconds: the entry can go after that.
    pub(super) not_after_unix: u64,
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
    /// Revoked host certificates: refused by the listener.
    pub(super) revoked: Arc<Revoked>,
}

impl ClusterTls {
    /// Load (or create) the CA and issue the scheduler's certificate.
    pub(super) fn load(
        config: &ServerConfig,
        store: &crate::store::Store,
    ) -> anyhow::Result<ClusterTls> {
        let ca = if store.shared() {
            shared_ca(config, store)?
        } else {
            Ca::load_or_create(&config.data_dir)?
        };
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
            revoked: Revoked::new(),
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
        let trust = self.ca.trust()?.with_revoked(self.revoked.clone());
        Ok(Arc::new(trust.server_config(certs)?))
    }

    /// How the scheduler reaches hosts. It dials only hosts in its
    /// registry, which a revoked host has left, and the one call it still
    /// makes to a revoked host is to hand it the revocation list naming it
    /// (an honest host then stops its workloads): so no revocation check on
    /// this side.
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

    /// A certificate for host `name` from its signing request (none in
    /// plaintext), recorded in the host's identity record before it is
    /// handed out. A join passes the trusted labels to bind (creating the
    /// record); a renewal passes `None` and needs the record to exist. A
    /// revoked name gets nothing.
    pub(super) fn issue_host_certificate(
        &self,
        name: &str,
        csr: &str,
        bind: Option<&Labels>,
    ) -> Result<String, Refusal> {
        let issued = match &self.tls {
            Some(tls) => {
                let identity = Identity::host(name)
                    .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))?;
                let issued = tls
                    .ca
                    .sign_request(csr, &identity, self.config.host_cert_lifetime)
                    .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, e.to_string()))?;
                Some(issued)
            }
            None => None,
        };
        let now = crate::auth::now_unix();
        let mut refused = None;
        self.store
            .update_host(name, |old: Option<HostRecord>| {
                let mut record = match (old, bind) {
                    (Some(r), _) if r.revoked_unix.is_some() => {
                        refused = Some(format!("host `{name}` was revoked"));
                        return Some(r);
                    }
                    (Some(r), None) => r,
                    (None, None) => {
                        refused = Some(format!("no host `{name}`"));
                        return None;
                    }
                    (old, Some(labels)) => HostRecord {
                        labels: labels.clone(),
                        ..old.unwrap_or_default()
                    },
                };
                record.certificates.retain(|c| c.not_after_unix > now);
                if let Some(issued) = &issued {
                    record.certificates.push(IssuedCert {
                        fingerprint: issued.fingerprint.clone(),
                        not_after_unix: unix(issued.not_after),
                    });
                }
                Some(record)
            })
            .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        match refused {
            Some(why) => Err(Refusal::new(StatusCode::FORBIDDEN, why)),
            None => Ok(issued.map(|i| i.chain_pem).unwrap_or_default()),
        }
    }

    /// Load the revoked certificates that have not expired (forgetting the
    /// others).
    pub(super) fn load_revoked(&self) -> anyhow::Result<()> {
        let Some(tls) = &self.tls else { return Ok(()) };
        let now = crate::auth::now_unix();
        self.store
            .prune_revoked(|e: &RevokedCert| e.not_after_unix <= now)?;
        let fingerprints: Vec<String> = self
            .store
            .revoked::<RevokedCert>()?
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        tls.revoked
            .replace(&fingerprints)
            .map_err(|e| anyhow::anyhow!("stored revocation list: {e}"))
    }

    /// The revocation list hosts get.
    pub(super) fn revocation_list(&self) -> Vec<String> {
        self.tls
            .as_ref()
            .map(|t| t.revoked.list())
            .unwrap_or_default()
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
    /// certificate naming it (and not revoked: the listener refuses those,
    /// this says it again where it matters).
    pub(super) fn acts_as(&self, peer: &Peer, name: &str) -> bool {
        let Some(tls) = &self.tls else { return false };
        peer.host() == Some(name)
            && !peer
                .fingerprint
                .as_deref()
                .is_some_and(|f| tls.revoked.contains(f))
    }
}

/// `POST /v1/nodes/{name}/revoke`: end host `name`'s identity. Every
/// certificate issued to it that has not expired is refused from now on by
/// the scheduler (at the handshake, and on connections already open) and by
/// every host (the list is pushed to them); the name cannot join again; the
/// host leaves the registry, so its replicas count as lost and are placed
/// elsewhere (started fresh: the state of a host no longer trusted is not
/// carried over). The host itself is sent the list too: an honest one stops
/// its workloads on seeing its own certificate there.
pub(super) async fn revoke(State(s): State<Arc<Scheduler>>, Path(name): Path<String>) -> Response {
    let Some(tls) = &s.tls else {
        return error(
            StatusCode::CONFLICT,
            "this cluster runs without TLS (--insecure-plaintext): hosts have no certificates to revoke",
        );
    };
    if let Err(e) = roam_proto::names::host(&name) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let now = crate::auth::now_unix();
    let revoked = s.store.revoke_host(&name, |mut record: HostRecord| {
        let entries: Vec<(String, RevokedCert)> = record
            .certificates
            .drain(..)
            .filter(|c| c.not_after_unix > now)
            .map(|c| {
                let entry = RevokedCert {
                    host: name.clone(),
                    not_after_unix: c.not_after_unix,
                };
                (c.fingerprint, entry)
            })
            .collect();
        record.revoked_unix.get_or_insert(now);
        (record, entries)
    });
    let fingerprints = match revoked {
        Ok(Some(f)) => f,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no host `{name}`")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Err(e) = tls.revoked.extend(&fingerprints) {
        // Fingerprints this scheduler computed itself: cannot happen.
        tracing::error!(error = %e, "cannot refuse the revoked certificates");
    }
    s.revocations
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let entry = s.hosts.remove(&name).map(|(_, e)| e);
    s.liveness
        .forget(entry.as_ref().and_then(|e| e.liveness.as_ref()));
    let workloads: Vec<String> = s
        .assignments
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, hosts)| hosts.contains(&name))
        .map(|(w, _)| w.clone())
        .collect();
    let join_token = entry.as_ref().and_then(|e| {
        let tokens = s.tokens.read().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(&e.token_hash)
            .filter(|t| t.live(now))
            .map(|t| t.id().to_string())
    });
    s.event(
        "host_revoked",
        serde_json::json!({
            "host": name,
            "certificates": fingerprints.len(),
            "workloads": workloads,
        }),
    );
    s.touch();
    s.revocations_changed.notify_one();
    if let Some(entry) = entry {
        let s2 = s.clone();
        let to = entry.endpoint(&name);
        tokio::spawn(async move {
            if let Err(e) = s2.client.put_revoked(&to, s2.revocation_list()).await {
                tracing::info!(host = %to.name, error = %e, "the revoked host was not told");
            }
        });
    }
    Json(roam_proto::HostRevoked {
        host: name,
        certificates: fingerprints.len(),
        workloads,
        join_token,
    })
    .into_response()
}

impl Scheduler {
    /// Send the revocation list to every host that has not got the latest,
    /// until each has it.
    pub(super) async fn revocations_loop(self: Arc<Self>) {
        if self.tls.is_none() {
            return;
        }
        loop {
            tokio::select! {
                () = self.revocations_changed.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            let version = self.revocations.load(std::sync::atomic::Ordering::Acquire);
            let behind: Vec<_> = self
                .hosts
                .iter()
                .filter(|e| e.revocations_seen < version && self.alive(e))
                .map(|e| e.endpoint(e.key()))
                .collect();
            if behind.is_empty() {
                continue;
            }
            let list = self.revocation_list();
            let this = &self;
            let pushes = behind.into_iter().map(|to| {
                let list = list.clone();
                async move {
                    let result = this.client.put_revoked(&to, list).await;
                    (to, result)
                }
            });
            for (to, result) in futures_util::future::join_all(pushes).await {
                match result {
                    Ok(()) => {
                        if let Some(mut e) = self.hosts.get_mut(&to.name) {
                            e.revocations_seen = e.revocations_seen.max(version);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(host = %to.name, error = %e, "revocation list not delivered; will retry")
                    }
                }
            }
        }
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
    match s.issue_host_certificate(&name, &req.csr, None) {
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

/// Unix seconds of `t`.
fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
