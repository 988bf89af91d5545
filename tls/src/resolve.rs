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

/// The address peers reach a listener at: `local` itself, unless it
/// listens on every interface (`0.0.0.0`, `::`); then the address of the
/// interface this machine would use towards `toward` (a URL: the
/// scheduler a host joins), or towards the rest of the network without
/// one — what Nomad and Consul advertise by default. No packet is sent
/// (a UDP socket's `connect` only picks the route); without a route,
/// loopback.
pub fn reachable(local: SocketAddr, toward: Option<&str>) -> SocketAddr {
    if !local.ip().is_unspecified() {
        return local;
    }
    let v6 = local.is_ipv6();
    let target: Option<SocketAddr> = toward
        .and_then(|u| reqwest::Url::parse(u).ok())
        .and_then(|u| {
            let port = u.port_or_known_default().unwrap_or(443);
            let host = u
                .host_str()?
                .trim_matches(|c| c == '[' || c == ']')
                .to_string();
            std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
                .ok()?
                .find(|a| a.is_ipv6() == v6)
        })
        .or_else(|| {
            // TEST-NET addresses: never routed anywhere, only looked up.
            let probe = if v6 { "[2001:db8::1]:9" } else { "192.0.2.1:9" };
            probe.parse().ok()
        });
    let unspecified: SocketAddr = if v6 {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let picked = target.and_then(|t| {
        let socket = std::net::UdpSocket::bind(unspecified).ok()?;
        socket.connect(t).ok()?;
        socket.local_addr().ok().map(|a| a.ip())
    });
    let ip = picked.filter(|ip| !ip.is_unspecified()).unwrap_or(if v6 {
        IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
    });
    SocketAddr::new(ip, local.port())
}

#[cfg(test)]
mod reachable_tests {
    use super::*;

    #[test]
    fn a_listener_on_every_interface_is_reached_at_the_route_towards_its_peer() {
        let fixed: SocketAddr = "127.0.0.5:7700".parse().unwrap();
        assert_eq!(reachable(fixed, None), fixed);
        let any: SocketAddr = "0.0.0.0:7701".parse().unwrap();
        let towards_loopback = reachable(any, Some("https://127.0.0.1:7700"));
        assert_eq!(towards_loopback, "127.0.0.1:7701".parse().unwrap());
        let anywhere = reachable(any, None);
        assert!(!anywhere.ip().is_unspecified());
        assert_eq!(anywhere.port(), 7701);
    }
}
