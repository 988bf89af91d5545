//! What a cluster certificate names.
//!
//! Every certificate the cluster CA issues carries exactly one DNS name
//! under `.roam`: `scheduler.roam` for the scheduler, `NAME.host.roam` for
//! host `NAME` (a DNS label, [`roam_proto::names`]). Clients check a peer's
//! certificate against the name of the identity they mean to reach; servers
//! read the client's identity from its verified certificate.

use rustls::pki_types::CertificateDer;

use crate::TlsError;

/// The scheduler's name in certificates.
pub const SCHEDULER: &str = "scheduler.roam";
/// Suffix of a host's name in certificates.
pub const HOST_SUFFIX: &str = ".host.roam";

/// Who a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The scheduler (any replica).
    Scheduler,
    /// The host with this name.
    Host(String),
}

impl Identity {
    /// Host `name`, if it is a valid host name.
    pub fn host(name: &str) -> Result<Identity, TlsError> {
        roam_proto::names::host(name).map_err(|e| TlsError::Name(e.to_string()))?;
        Ok(Identity::Host(name.to_string()))
    }

    /// The DNS name the certificate carries.
    pub fn dns_name(&self) -> String {
        match self {
            Identity::Scheduler => SCHEDULER.to_string(),
            Identity::Host(name) => format!("{name}{HOST_SUFFIX}"),
        }
    }

    /// The identity a DNS name stands for, if it is one.
    pub fn from_dns_name(name: &str) -> Option<Identity> {
        if name == SCHEDULER {
            return Some(Identity::Scheduler);
        }
        let host = name.strip_suffix(HOST_SUFFIX)?;
        roam_proto::names::host(host).ok()?;
        Some(Identity::Host(host.to_string()))
    }

    /// The identity a certificate names: its one `.roam` DNS name. `None`
    /// when it names none or several. Only meaningful for a certificate
    /// already verified against the cluster CA.
    pub fn of_certificate(der: &CertificateDer<'_>) -> Option<Identity> {
        let cert = webpki::EndEntityCert::try_from(der).ok()?;
        let mut found = cert.valid_dns_names().filter_map(Identity::from_dns_name);
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }

    /// The host's name, if this is a host.
    pub fn host_name(&self) -> Option<&str> {
        match self {
            Identity::Host(n) => Some(n),
            Identity::Scheduler => None,
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Scheduler => f.write_str("the scheduler"),
            Identity::Host(n) => write!(f, "host `{n}`"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_host_names_cannot_pose_as_the_scheduler() {
        let h = Identity::host("eu-1").unwrap();
        assert_eq!(h.dns_name(), "eu-1.host.roam");
        assert_eq!(Identity::from_dns_name("eu-1.host.roam"), Some(h));
        assert_eq!(
            Identity::from_dns_name("scheduler.roam"),
            Some(Identity::Scheduler)
        );
        for bad in ["a.b.host.roam", ".host.roam", "x.roam", "scheduler"] {
            assert_eq!(Identity::from_dns_name(bad), None, "{bad}");
        }
        assert!(Identity::host("scheduler.roam").is_err());
    }
}
