//! Revoked certificates: a set of leaf fingerprints (sha256 of the DER,
//! hex) that every TLS configuration of a process consults, on both ends of
//! a connection, on top of the WebPKI checks. The scheduler records the
//! fingerprint of every certificate it issues to a host; `roam node revoke`
//! moves all of that host's unexpired ones into this set and pushes the set
//! to every host. A connection made before the revocation is cut off too:
//! [`crate::serve`] checks each request's client certificate against the
//! set.
//!
//! This is a denylist, the same idea as an X.509 CRL, kept as fingerprints
//! rather than serial numbers because the issuer that fills it is the same
//! process that knows every certificate it issued.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::sha256_hex;

/// Most fingerprints a revocation list may hold (a list from the wire
/// longer than this is refused whole).
pub const MAX_REVOKED: usize = 100_000;

/// A certificate's fingerprint as revocation lists name it: sha256 of its
/// DER, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    sha256_hex(der)
}

/// The revoked certificates' fingerprints, shared by every configuration
/// of one process and replaced in place.
#[derive(Debug, Default)]
pub struct Revoked(RwLock<BTreeSet<String>>);

impl Revoked {
    /// An empty set.
    pub fn new() -> Arc<Revoked> {
        Arc::new(Revoked::default())
    }

    /// Whether the certificate with this fingerprint is revoked.
    pub fn contains(&self, fingerprint: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(fingerprint)
    }

    /// Whether this certificate (DER) is revoked.
    pub fn covers(&self, der: &[u8]) -> bool {
        self.contains(&sha256_hex(der))
    }

    /// Replace the set with `fingerprints`, each 64 lowercase hex digits;
    /// anything else refuses the whole list and changes nothing.
    pub fn replace(&self, fingerprints: &[String]) -> Result<(), String> {
        check(fingerprints)?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = fingerprints.iter().cloned().collect();
        Ok(())
    }

    /// Add `fingerprints` (checked as in [`Revoked::replace`]).
    pub fn extend(&self, fingerprints: &[String]) -> Result<(), String> {
        check(fingerprints)?;
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(fingerprints.iter().cloned());
        Ok(())
    }

    /// The fingerprints, sorted.
    pub fn list(&self) -> Vec<String> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// A revocation list from elsewhere: bounded, and every entry a sha256 in
/// lowercase hex.
fn check(fingerprints: &[String]) -> Result<(), String> {
    if fingerprints.len() > MAX_REVOKED {
        return Err(format!(
            "a revocation list holds at most {MAX_REVOKED} fingerprints"
        ));
    }
    let hex =
        |f: &String| f.len() == 64 && f.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match fingerprints.iter().find(|f| !hex(f)) {
        Some(bad) => Err(format!(
            "`{}` is not a certificate fingerprint (64 lowercase hex digits)",
            bad.chars().take(80).collect::<String>()
        )),
        None => Ok(()),
    }
}

/// The WebPKI server check, then the revocation list.
#[derive(Debug)]
pub(crate) struct CheckServer {
    pub(crate) inner: Arc<WebPkiServerVerifier>,
    pub(crate) revoked: Arc<Revoked>,
}

impl ServerCertVerifier for CheckServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.revoked.covers(end_entity) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The WebPKI client check, then the revocation list.
#[derive(Debug)]
pub(crate) struct CheckClient {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) revoked: Arc<Revoked>,
}

impl ClientCertVerifier for CheckClient {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.revoked.covers(end_entity) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_list_changes_nothing() {
        let r = Revoked::default();
        let good = "a".repeat(64);
        r.replace(std::slice::from_ref(&good)).unwrap();
        assert!(r.contains(&good));
        for bad in [
            vec![good.clone(), "A".repeat(64)],
            vec!["ab".into()],
            vec![format!("{}/", "a".repeat(63))],
        ] {
            assert!(r.replace(&bad).is_err());
            assert!(r.extend(&bad).is_err());
            assert_eq!(r.list(), vec![good.clone()]);
        }
        let too_many = vec![good.clone(); MAX_REVOKED + 1];
        assert!(r.replace(&too_many).is_err());
    }
}
