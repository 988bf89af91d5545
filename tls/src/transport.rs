//! How a process talks to the cluster, and the rustls configurations.
//!
//! [`Transport::Tls`]: the cluster CA is the only root; the process
//! presents its own certificate ([`CertSlot`], swapped in place when it is
//! renewed); a peer is addressed as `https://IDENTITY:PORT`, where
//! `IDENTITY` is the DNS name its certificate must carry (`eu-1.host.roam`)
//! and a resolver maps that name to the address the peer registered. So the
//! ordinary WebPKI check of the server's certificate against the URL's name
//! is the identity check, whatever address is dialled, and the name goes
//! out as SNI, which lets a listener with an operator-supplied certificate
//! still show cluster peers the cluster one ([`ServerCerts`]).
//!
//! [`Transport::Plain`]: HTTP, only behind `--insecure-plaintext`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::ca::CaHash;
use crate::identity::Identity;
use crate::resolve::Names;
use crate::revoked::{CheckClient, CheckServer, Revoked};
use crate::{TlsError, provider};

/// The cluster CA as the one root of trust, and the certificates it
/// issued that are revoked.
#[derive(Clone, Debug)]
pub struct Trust {
    roots: Arc<RootCertStore>,
    pem: String,
    hash: CaHash,
    revoked: Arc<Revoked>,
}

impl Trust {
    /// Trust the CA certificate in `pem`.
    pub fn from_pem(pem: &str) -> Result<Trust, TlsError> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| TlsError::Certificate(format!("bad CA certificate: {e}")))?;
        let hash = CaHash::of(&der);
        let mut roots = RootCertStore::empty();
        roots
            .add(der)
            .map_err(|e| TlsError::Certificate(format!("unusable CA certificate: {e}")))?;
        Ok(Trust {
            roots: Arc::new(roots),
            pem: pem.to_string(),
            hash,
            revoked: Revoked::new(),
        })
    }

    /// The same CA, refusing the certificates `revoked` holds (shared: a
    /// change to it applies to every configuration made from this trust).
    pub fn with_revoked(mut self, revoked: Arc<Revoked>) -> Trust {
        self.revoked = revoked;
        self
    }

    /// The revoked certificates.
    pub fn revoked(&self) -> &Arc<Revoked> {
        &self.revoked
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Its hash.
    pub fn hash(&self) -> &CaHash {
        &self.hash
    }

    /// A client configuration that trusts only this CA (less the revoked
    /// certificates) and presents `mine`.
    pub fn client_config(&self, mine: Arc<CertSlot>) -> Result<rustls::ClientConfig, TlsError> {
        let inner = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier = CheckServer {
            inner,
            revoked: self.revoked.clone(),
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(mine);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // A resumed session keeps the identity of the handshake that made
        // its ticket: one made before a host had its certificate would
        // make every later connection anonymous, and one made with an old
        // certificate would outlive its renewal or revocation. Connections
        // are pooled, so full handshakes are rare.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }

    /// A server configuration presenting `certs` that asks clients for a
    /// certificate from this CA, not revoked (and lets those without one in:
    /// routes decide who they serve, from [`crate::Peer`]).
    pub fn server_config(&self, certs: ServerCerts) -> Result<rustls::ServerConfig, TlsError> {
        let inner = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier = CheckClient {
            inner,
            revoked: self.revoked.clone(),
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(certs));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// This process's certificate, swapped in place when renewed. Empty until
/// a host has joined.
#[derive(Debug, Default)]
pub struct CertSlot(RwLock<Option<Arc<CertifiedKey>>>);

impl CertSlot {
    /// A slot holding `key`.
    pub fn with(key: Arc<CertifiedKey>) -> Arc<CertSlot> {
        Arc::new(CertSlot(RwLock::new(Some(key))))
    }

    /// Present `key` from now on.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }

    /// The certificate presented now.
    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl rustls::client::ResolvesClientCert for CertSlot {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

/// What a listener presents: the cluster certificate to cluster peers
/// (whose SNI is a `.roam` name) and, when the operator gave one, the
/// operator's certificate to everyone else (browsers, the CLI, clients of
/// the ingress).
#[derive(Debug)]
pub struct ServerCerts {
    /// The cluster certificate.
    pub cluster: Arc<CertSlot>,
    /// The operator's certificate (`--tls-cert`, `--tls-key`).
    pub public: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ServerCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cluster_peer = hello.server_name().is_some_and(|n| n.ends_with(".roam"));
        match &self.public {
            Some(public) if !cluster_peer => Some(public.clone()),
            _ => self.cluster.get(),
        }
    }
}

/// How a process reaches its peers.
#[derive(Clone)]
pub enum Transport {
    /// Cleartext HTTP (`--insecure-plaintext`).
    Plain,
    /// TLS with the cluster CA.
    Tls {
        /// The cluster CA.
        trust: Trust,
        /// The certificate this process presents.
        mine: Arc<CertSlot>,
        /// Identity names → the addresses peers registered.
        names: Names,
    },
}

impl Transport {
    /// TLS with `trust`, presenting what `mine` holds.
    pub fn tls(trust: Trust, mine: Arc<CertSlot>) -> Transport {
        Transport::Tls {
            trust,
            mine,
            names: Names::default(),
        }
    }

    /// Whether connections are encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls { .. })
    }

    /// An HTTP client for this transport, from `builder` (timeouts and the
    /// like already set).
    pub fn client(&self, builder: reqwest::ClientBuilder) -> Result<reqwest::Client, TlsError> {
        let builder = builder.pool_idle_timeout(crate::CLIENT_POOL_IDLE);
        let builder = match self {
            Transport::Plain => builder,
            Transport::Tls { trust, mine, names } => builder
                .use_preconfigured_tls(trust.client_config(mine.clone())?)
                .dns_resolver(Arc::new(names.clone()))
                .https_only(true),
        };
        builder
            .build()
            .map_err(|e| TlsError::Config(format!("cannot build an HTTP client: {e}")))
    }

    /// The base URL to reach `identity`, which registered `url`. Over TLS:
    /// `https://IDENTITY-NAME:PORT` (with the name mapped to `url`'s host);
    /// in plaintext: `url` itself.
    pub fn base(&self, identity: &Identity, url: &str) -> Result<String, TlsError> {
        match self {
            Transport::Plain => Ok(url.trim_end_matches('/').to_string()),
            Transport::Tls { names, .. } => names.base(identity, url),
        }
    }
}

/// A client configuration for a host's first call to a scheduler it knows
/// only by the hash of its CA: the server must send that CA certificate in
/// its chain, and its certificate must name the scheduler and chain to it.
pub fn pinned_client_config(pin: CaHash) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { pin }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// See [`pinned_client_config`].
#[derive(Debug)]
struct Pinned {
    pin: CaHash,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| CaHash::of(c) == self.pin)
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let scheduler = ServerName::try_from(crate::identity::SCHEDULER)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], &scheduler, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An HTTP client for a host's first call to the scheduler at `url`: pinned
/// to the CA hash, addressing the scheduler as `scheduler.roam`. Returns the
/// client and the base URL to use with it.
pub fn pinned_client(
    pin: CaHash,
    url: &str,
    builder: reqwest::ClientBuilder,
) -> Result<(reqwest::Client, String), TlsError> {
    let names = Names::default();
    let base = names.base(&Identity::Scheduler, url)?;
    let client = builder
        .use_preconfigured_tls(pinned_client_config(pin)?)
        .dns_resolver(Arc::new(names))
        .https_only(true)
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(crate::CLIENT_POOL_IDLE)
        .build()
        .map_err(|e| TlsError::Config(format!("cannot build an HTTP client: {e}")))?;
    Ok((client, base))
}
