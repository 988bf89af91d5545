//! Identity names → the addresses peers registered.
//!
//! A cluster peer is dialled as `https://NAME.host.roam:PORT`; this
//! resolver maps the identity name to the host of the URL the peer
//! registered (an IP address, or a DNS name resolved by the system). Any
//! other name resolves as usual.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::TlsError;
use crate::identity::Identity;

/// Identity names and where they are.
#[derive(Clone, Debug, Default)]
pub struct Names(Arc<RwLock<HashMap<String, String>>>);

impl Names {
    /// Map `identity` to the host of `url` and return the URL to dial it
    /// by: `https://IDENTITY-NAME:PORT`, `url`'s port (443 when it has
    /// none) and no path.
    pub(crate) fn base(&self, identity: &Identity, url: &str) -> Result<String, TlsError> {
        let bad = |why: &str| TlsError::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let host = match parsed.host_str() {
            Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            _ => return Err(bad("it has no host")),
        };
        let port = parsed.port_or_known_default().unwrap_or(443);
        let name = identity.dns_name();
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), host);
        Ok(format!("https://{name}:{port}"))
    }

    fn lookup(&self, name: &str) -> String {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_string())
    }
}

impl Resolve for Names {
    fn resolve(&self, name: Name) -> Resolving {
        let host = self.lookup(name.as_str());
        Box::pin(async move {
            if let Ok(ip) = host.parse::<IpAddr>() {
                let addrs: Addrs = Box::new(std::iter::once(SocketAddr::new(ip, 0)));
                return Ok(addrs);
            }
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs: Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}
