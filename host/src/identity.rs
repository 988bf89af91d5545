//! The host's identity over TLS.
//!
//! 1. **Trust the scheduler before sending anything.** The join token
//!    carries the hash of the cluster CA; the host fetches the CA over a
//!    connection whose server must show that CA and a certificate from it
//!    naming `scheduler.roam`, checks the hash, and keeps the CA in
//!    `DATA_DIR/tls/ca.crt`. Every later connection trusts that CA alone.
//! 2. **A certificate of its own.** The join carries a signing request for
//!    a key made here (the key never leaves the host); the scheduler answers
//!    with a certificate naming `NAME.host.roam`, kept with its key in
//!    `DATA_DIR/tls/` (readable by the owner only), so a restarted host
//!    rejoins with it even after its join token has expired.
//! 3. **Renewal at half-life**, presenting the current certificate. When
//!    the scheduler cannot be reached the host keeps trying; its workloads
//!    keep serving their clients throughout (an operator certificate on the
//!    ingress, `--tls-cert`, does not expire with the cluster one). Once
//!    the cluster certificate has expired, the scheduler and other hosts
//!    refuse it: no heartbeats, module fetches, message relays or
//!    migrations until the host has rejoined with its join token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use roam_proto::auth::JoinToken;
use roam_proto::{RenewCertificate, RenewedCertificate, paths};
use roam_tls::ca::{self, CaHash};
use roam_tls::{CertSlot, Identity, Transport, Trust};

/// The most read of the scheduler's CA certificate (PEM).
const MAX_CA_ANSWER: usize = 64 << 10;

use crate::config::HostConfig;
use crate::daemon::Host;

/// Where the revocation list is kept, in `DATA_DIR/tls`.
const REVOKED_FILE: &str = "revoked.json";

/// The host's TLS material.
pub(crate) struct HostTls {
    dir: PathBuf,
    identity: Identity,
    pub(crate) trust: Trust,
    /// The certificate presented, swapped in place on renewal.
    pub(crate) mine: Arc<CertSlot>,
    /// The operator's certificate for the ingress's clients.
    pub(crate) public: Option<Arc<rustls::sign::CertifiedKey>>,
}

/// A key made for a signing request, kept until the certificate arrives.
pub(crate) struct Pending {
    key_pem: String,
    pub(crate) csr: String,
}

impl HostTls {
    /// Trust the cluster's CA (pinned by the join token on first contact)
    /// and load the certificate kept from an earlier join, if still valid.
    pub(crate) async fn bootstrap(config: &HostConfig) -> anyhow::Result<HostTls> {
        let identity = Identity::host(&config.name)?;
        let dir = config.data_dir.join("tls");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
        let pin = JoinToken::parse(&config.token).ca_hash;
        let stored = read(&dir.join("ca.crt"));
        let trust = match (stored, pin) {
            (Some(pem), pin) => {
                let trust = Trust::from_pem(&pem)?;
                if let Some(pin) = pin
                    && pin != trust.hash().as_str()
                {
                    anyhow::bail!(
                        "the join token pins CA {pin}, but `{}` holds CA {} (another cluster's?); remove that directory to join this cluster",
                        dir.display(),
                        trust.hash()
                    );
                }
                trust
            }
            (None, Some(pin)) => {
                let pin = CaHash::parse(pin).context(
                    "the join token's CA hash is not 64 hex digits; copy the whole token `roam token create` printed",
                )?;
                let trust = fetch_ca(&config.schedulers(), pin).await?;
                std::fs::write(dir.join("ca.crt"), trust.pem())
                    .with_context(|| format!("cannot write `{}`", dir.display()))?;
                trust
            }
            (None, None) => anyhow::bail!(
                "the join token carries no CA hash (`SECRET.CA-HASH`, as `roam token create` prints it); without it this host cannot tell the real scheduler from an impostor. A scheduler run with --insecure-plaintext needs --insecure-plaintext here too"
            ),
        };
        // Revoked certificates, as last pushed: refused even before the
        // scheduler can be reached again.
        if let Some(json) = read(&dir.join(REVOKED_FILE)) {
            let list: Vec<String> = serde_json::from_str(&json).unwrap_or_default();
            if let Err(e) = trust.revoked().replace(&list) {
                tracing::warn!(error = %e, "ignoring the stored revocation list");
            }
        }
        let mine = Arc::new(CertSlot::default());
        if let (Some(chain), Some(key)) = (read(&dir.join("host.crt")), read(&dir.join("host.key")))
            && ca::not_after(&chain).is_some_and(|t| t > SystemTime::now())
            && let Ok(certified) = ca::certified_key(&chain, &key)
            && certified
                .cert
                .first()
                .and_then(Identity::of_certificate)
                .as_ref()
                == Some(&identity)
        {
            mine.set(certified);
        }
        let public = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let read = |p: &Path| {
                    std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read `{}`", p.display()))
                };
                Some(ca::certified_key(&read(cert)?, &read(key)?)?)
            }
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        Ok(HostTls {
            dir,
            identity,
            trust,
            mine,
            public,
        })
    }

    /// How the host reaches the scheduler and other hosts.
    pub(crate) fn transport(&self) -> Transport {
        Transport::tls(self.trust.clone(), self.mine.clone())
    }

    /// The listener's TLS configuration.
    pub(crate) fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        Ok(Arc::new(self.trust.server_config(
            roam_tls::ServerCerts {
                cluster: self.mine.clone(),
                public: self.public.clone(),
            },
        )?))
    }

    /// Refuse the certificates `fingerprints` names from now on (replacing
    /// the list), and keep the list for a restart. Whether this host's own
    /// certificate is among them.
    pub(crate) fn set_revoked(&self, fingerprints: &[String]) -> anyhow::Result<bool> {
        self.trust
            .revoked()
            .replace(fingerprints)
            .map_err(|e| anyhow::anyhow!(e))?;
        let json = serde_json::to_string(fingerprints)?;
        let path = self.dir.join(REVOKED_FILE);
        let tmp = self.dir.join(format!("{REVOKED_FILE}.tmp"));
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot keep the revocation list in `{}`", path.display()))?;
        Ok(self.revoked())
    }

    /// Whether this host's certificate is revoked.
    pub(crate) fn revoked(&self) -> bool {
        self.mine
            .get()
            .and_then(|k| k.cert.first().map(|c| self.trust.revoked().covers(c)))
            .unwrap_or(false)
    }

    /// A fresh key and a signing request for it.
    pub(crate) fn request(&self) -> anyhow::Result<Pending> {
        let (key_pem, csr) = ca::new_request(&self.identity)?;
        Ok(Pending { key_pem, csr })
    }

    /// Present the certificate the scheduler issued for `pending`'s key
    /// from now on, and keep both for a restart.
    pub(crate) fn install(&self, pending: Pending, chain_pem: &str) -> anyhow::Result<()> {
        let certified = ca::certified_key(chain_pem, &pending.key_pem)?;
        anyhow::ensure!(
            certified
                .cert
                .first()
                .and_then(Identity::of_certificate)
                .as_ref()
                == Some(&self.identity),
            "the scheduler issued a certificate that does not name {}",
            self.identity
        );
        roam_tls::write_private(&self.dir.join("host.key"), &pending.key_pem)
            .context("cannot keep the host key")?;
        std::fs::write(self.dir.join("host.crt"), chain_pem)
            .context("cannot keep the host certificate")?;
        self.mine.set(certified);
        Ok(())
    }

    /// When the current certificate should be renewed: at half its life
    /// (now, if there is none).
    fn renew_at(&self) -> SystemTime {
        let Some(key) = self.mine.get() else {
            return SystemTime::now();
        };
        let Some(leaf) = key.cert.first() else {
            return SystemTime::now();
        };
        match ca::validity(leaf) {
            Some((from, to)) => from + to.duration_since(from).unwrap_or_default() / 2,
            None => SystemTime::now(),
        }
    }
}

/// The CA certificate of the schedulers at `join` (any replica answers),
/// over a connection pinned to `pin`; its hash checked again.
async fn fetch_ca(join: &[String], pin: CaHash) -> anyhow::Result<Trust> {
    anyhow::ensure!(!join.is_empty(), "no scheduler URL to join");
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0usize;
    let pem = loop {
        let url = &join[attempt % join.len()];
        attempt += 1;
        let (client, base) = roam_tls::transport::pinned_client(
            pin.clone(),
            url,
            reqwest::Client::builder().timeout(Duration::from_secs(30)),
        )?;
        match client.get(paths::ca().on(&base)).send().await {
            Ok(r) if r.status().is_success() => {
                let pem = roam_tls::answer::bytes(r, MAX_CA_ANSWER).await?;
                break String::from_utf8(pem).context("the scheduler's CA is not text")?;
            }
            Ok(r) => anyhow::bail!("the scheduler answered {} for its CA", r.status()),
            Err(e) if unreachable(&e) => {
                tracing::warn!(error = %e, %url, "scheduler unreachable; retrying");
            }
            Err(e) => anyhow::bail!(
                "cannot reach a scheduler at {url} holding the CA the join token pins: {}",
                chain(&e)
            ),
        }
        if attempt.is_multiple_of(join.len()) {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    };
    let trust = Trust::from_pem(&pem)?;
    anyhow::ensure!(
        *trust.hash() == pin,
        "the scheduler sent CA {} but the join token pins {pin}",
        trust.hash()
    );
    Ok(trust)
}

/// Whether `e` is worth trying again: nothing answered (refused, reset,
/// timed out), as opposed to a server that answered with the wrong
/// certificate.
fn unreachable(e: &reqwest::Error) -> bool {
    if e.is_timeout() {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<rustls::Error>().is_some() {
            return false;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return false;
            }
            return matches!(
                io.kind(),
                ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut | NotConnected
            );
        }
        source = s.source();
    }
    false
}

/// An error with its causes, `: `-separated (reqwest's own message
/// leaves out why a connection failed, such as a refused certificate).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

impl Host {
    /// Renew the host certificate at half-life, until it is revoked; on
    /// failure try again every 10 s.
    pub(crate) async fn renewals(self: Arc<Self>) {
        let Some(tls) = &self.tls else { return };
        while !tls.revoked() {
            let wait = tls
                .renew_at()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(wait).await;
            match self.renew(tls).await {
                Ok(()) => tracing::info!("host certificate renewed"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the host certificate; retrying in 10s");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
        }
    }

    async fn renew(&self, tls: &HostTls) -> anyhow::Result<()> {
        let pending = tls.request()?;
        let renewed: RenewedCertificate = self
            .scheduler
            .renew(
                &self.config.name,
                &RenewCertificate {
                    csr: pending.csr.clone(),
                },
            )
            .await?;
        tls.install(pending, &renewed.certificate)
    }
}

impl Host {
    /// Take a revocation list: refuse those certificates from now on. If
    /// this host's own certificate is on it, its identity is over: every
    /// workload here stops (the scheduler is placing them elsewhere), and
    /// the host stops heartbeating and renewing.
    pub(crate) async fn revocations(&self, fingerprints: &[String]) -> anyhow::Result<()> {
        let Some(tls) = &self.tls else {
            anyhow::bail!("this host runs without TLS: there are no certificates to revoke");
        };
        if !tls.set_revoked(fingerprints)? {
            return Ok(());
        }
        tracing::error!(
            "this host's certificate was revoked (`roam node revoke`): stopping every workload; it no longer belongs to the cluster"
        );
        let stopped: Vec<_> = self.workloads.lock().await.drain().collect();
        for (name, running) in stopped {
            self.bus.unregister(&name);
            running.handle.stop().await;
        }
        Ok(())
    }
}
