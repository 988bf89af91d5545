//! The cluster's certificate authority.
//!
//! The scheduler creates it on first start in its data directory
//! (`ca.crt`, and `ca.key` readable only by its owner) and keeps it from
//! then on: every scheduler and host certificate chains to it, and a join
//! token carries its hash ([`CaHash`]) so a host can check that it talks to
//! the right scheduler before it sends anything.
//!
//! Host certificates are issued from a certificate signing request (the
//! host keeps its private key); the CA takes only the public key from the
//! request and writes every other field itself: the one identity name, the
//! validity, the key usages. Nothing the host asked for beyond its key
//! reaches the certificate.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::identity::Identity;
use crate::transport::Trust;
use crate::{TlsError, sha256_hex, write_private};

/// How long the CA is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this long before they are issued, so a peer whose
/// clock is a little behind accepts them.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// Largest certificate signing request read.
pub const MAX_CSR: usize = 16 << 10;

/// sha256 of the CA certificate's DER, hex: what a join token pins.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CaHash(String);

impl CaHash {
    /// The hash of a certificate's DER.
    pub fn of(der: &[u8]) -> CaHash {
        CaHash(sha256_hex(der))
    }

    /// Parse 64 hex digits.
    pub fn parse(s: &str) -> Option<CaHash> {
        (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| CaHash(s.to_ascii_lowercase()))
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CaHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A certificate the CA issued: its chain (leaf, then the CA) as PEM, when
/// it expires, and its fingerprint (sha256 of the leaf's DER, hex), by which
/// it can be revoked.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Leaf then CA certificate, PEM.
    pub chain_pem: String,
    /// End of validity.
    pub not_after: SystemTime,
    /// sha256 of the leaf certificate's DER, hex.
    pub fingerprint: String,
}

/// A certificate with its private key, ready to present.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Leaf then CA certificate, PEM.
    pub chain_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Credentials {
    /// Parse for rustls.
    pub fn certified_key(&self) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        certified_key(&self.chain_pem, &self.key_pem)
    }
}

/// A certificate chain and key (PEM) as rustls presents them.
pub fn certified_key(
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(format!("bad certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate("no certificate in the PEM".into()));
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Certificate(format!("bad private key PEM: {e}")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(chain, signer)))
}

/// The cluster CA.
pub struct Ca {
    cert_pem: String,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// The CA kept in `dir` (`ca.crt`, `ca.key`), created there if absent.
    pub fn load_or_create(dir: &Path) -> Result<Ca, TlsError> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let io = |what, path: &Path| {
            let path = path.display().to_string();
            move |source| TlsError::Io { what, path, source }
        };
        if cert_path.exists() {
            let cert_pem = std::fs::read_to_string(&cert_path)
                .map_err(io("cannot read the CA certificate", &cert_path))?;
            let key_pem = std::fs::read_to_string(&key_path)
                .map_err(io("cannot read the CA key", &key_path))?;
            return Ca::from_pem(&cert_pem, &key_pem);
        }
        let (cert_pem, key_pem) = Ca::generate()?;
        // Key first: a crash between the two writes leaves no certificate
        // without its key.
        write_private(&key_path, &key_pem).map_err(io("cannot write the CA key", &key_path))?;
        std::fs::write(&cert_path, &cert_pem)
            .map_err(io("cannot write the CA certificate", &cert_path))?;
        Ca::from_pem(&cert_pem, &key_pem)
    }

    /// A new CA: its certificate and key, PEM (kept by the caller: the
    /// data directory, or a store several schedulers share).
    pub fn generate() -> Result<(String, String), TlsError> {
        Ca::generate_named("Roam cluster CA")
    }

    /// A new CA called `name` (another trust domain than the cluster's,
    /// such as the one `roam up --ha` makes for its etcd).
    pub fn generate_named(name: &str) -> Result<(String, String), TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + CA_LIFETIME).into();
        params.serial_number = Some(serial()?);
        let cert = params.self_signed(&key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A CA from its certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, TlsError> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| TlsError::Certificate(format!("bad CA certificate: {e}")))?;
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            der,
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.cert_pem
    }

    /// What a join token pins.
    pub fn hash(&self) -> CaHash {
        CaHash::of(&self.der)
    }

    /// The CA as the only root of trust.
    pub fn trust(&self) -> Result<Trust, TlsError> {
        Trust::from_pem(&self.cert_pem)
    }

    /// A certificate and fresh key for `identity`, valid for `lifetime`,
    /// naming also `extra` (DNS names or IP addresses the scheduler's API is
    /// reached at).
    pub fn issue(
        &self,
        identity: &Identity,
        extra: &[String],
        lifetime: Duration,
    ) -> Result<Credentials, TlsError> {
        let mut names = vec![identity.dns_name()];
        names.extend(extra.iter().cloned());
        self.issue_named(&identity.dns_name(), &names, lifetime)
    }

    /// A certificate and fresh key whose common name is `common_name` (what
    /// etcd takes as the user of a client certificate), for `names` (DNS
    /// names or IP addresses), valid for `lifetime`: for servers and
    /// clients alike.
    pub fn issue_named(
        &self,
        common_name: &str,
        names: &[String],
        lifetime: Duration,
    ) -> Result<Credentials, TlsError> {
        let key = KeyPair::generate()?;
        let cert = self
            .leaf(common_name, names, lifetime)?
            .signed_by(&key, &self.issuer)?;
        let not_after = SystemTime::now() + lifetime;
        Ok(Credentials {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }

    /// Sign a host's certificate signing request (PEM) for `identity`,
    /// valid for `lifetime`. Only the request's public key is used.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<Issued, TlsError> {
        if csr_pem.len() > MAX_CSR {
            return Err(TlsError::Certificate(format!(
                "certificate signing request over {MAX_CSR} bytes"
            )));
        }
        let mut request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Certificate(format!("bad certificate signing request: {e}")))?;
        request.params = self.leaf(&identity.dns_name(), &[identity.dns_name()], lifetime)?;
        let cert = request.signed_by(&self.issuer)?;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            not_after: SystemTime::now() + lifetime,
            fingerprint: sha256_hex(cert.der()),
        })
    }

    fn leaf(
        &self,
        common_name: &str,
        names: &[String],
        lifetime: Duration,
    ) -> Result<CertificateParams, TlsError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + lifetime).into();
        params.serial_number = Some(serial()?);
        Ok(params)
    }
}

/// A key pair and a certificate signing request for it (both PEM): what a
/// host sends at join; the key never leaves it.
pub fn new_request(identity: &Identity) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![identity.dns_name()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, identity.dns_name());
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// The end of validity of the first certificate in a PEM chain.
pub fn not_after(chain_pem: &str) -> Option<SystemTime> {
    let der = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()?
        .ok()?;
    validity(&der).map(|(_, to)| to)
}

/// A certificate's validity: from, to.
pub fn validity(der: &CertificateDer<'_>) -> Option<(SystemTime, SystemTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(t.timestamp()).ok()?))
    };
    Some((
        at(cert.validity().not_before)?,
        at(cert.validity().not_after)?,
    ))
}

/// A random positive 16-byte serial number.
fn serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| TlsError::Certificate(format!("cannot read the OS random source: {e}")))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}
