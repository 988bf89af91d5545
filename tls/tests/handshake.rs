//! The cluster CA, host certificates from requests, and the identity checks
//! on both ends of a connection, over real sockets.
#![allow(clippy::unwrap_used, reason = "a test reports failure by panicking")]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use roam_tls::ca::{self, Ca};
use roam_tls::revoked::fingerprint;
use roam_tls::transport::pinned_client;
use roam_tls::{CertSlot, Identity, Peer, Revoked, ServeOptions, ServerCerts, Transport};

/// Serve, on 127.0.0.1:0, a route that answers with the caller's identity.
async fn server(ca: &Ca, identity: &Identity) -> (String, tokio::sync::oneshot::Sender<()>) {
    let (url, stop, _) = server_revoking(ca, identity, Revoked::new()).await;
    (url, stop)
}

/// [`server`], refusing the certificates `revoked` names; also the
/// fingerprint of its own certificate.
async fn server_revoking(
    ca: &Ca,
    identity: &Identity,
    revoked: Arc<Revoked>,
) -> (String, tokio::sync::oneshot::Sender<()>, String) {
    let creds = ca
        .issue(identity, &["127.0.0.1".into()], Duration::from_secs(3600))
        .unwrap();
    let key = creds.certified_key().unwrap();
    let own = fingerprint(&key.cert[0]);
    let certs = ServerCerts {
        cluster: CertSlot::with(key),
        public: None,
    };
    let trust = ca.trust().unwrap().with_revoked(revoked.clone());
    let config = trust.server_config(certs).unwrap();
    let mut options = ServeOptions::new(Some(Arc::new(config)));
    options.revoked = revoked;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let app =
        Router::new().route(
            "/who",
            get(|peer: Peer| async move {
                peer.identity.map_or("nobody".to_string(), |i| i.dns_name())
            }),
        );
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(roam_tls::serve(listener, app, options, async {
        let _ = rx.await;
    }));
    (url, tx, own)
}

fn host_transport(ca: &Ca, name: &str) -> Transport {
    host_transport_revoking(ca, name, Revoked::new()).0
}

/// A host's transport refusing what `revoked` names, and its own
/// certificate's fingerprint.
fn host_transport_revoking(ca: &Ca, name: &str, revoked: Arc<Revoked>) -> (Transport, String) {
    let (key, csr) = ca::new_request(&Identity::host(name).unwrap()).unwrap();
    let issued = ca
        .sign_request(
            &csr,
            &Identity::host(name).unwrap(),
            Duration::from_secs(60),
        )
        .unwrap();
    let key = ca::certified_key(&issued.chain_pem, &key).unwrap();
    let trust = ca.trust().unwrap().with_revoked(revoked);
    (
        Transport::tls(trust, CertSlot::with(key)),
        issued.fingerprint,
    )
}

#[tokio::test]
async fn revoked_certificates_are_refused_both_ways_and_on_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let target = Identity::host("target").unwrap();
    let revoked_here = Revoked::new();
    let (url, _stop, target_fp) = server_revoking(&ca, &target, revoked_here.clone()).await;
    let (source, source_fp) = host_transport_revoking(&ca, "source", Revoked::new());
    let client = source.client(reqwest::Client::builder()).unwrap();
    let base = source.base(&target, &url).unwrap();
    let who = client.get(format!("{base}/who")).send().await.unwrap();
    assert_eq!(who.text().await.unwrap(), "source.host.roam");

    // Revoked while its connection is open (pooled): the next request on
    // it is refused, and a new connection fails at the handshake.
    revoked_here
        .extend(std::slice::from_ref(&source_fp))
        .unwrap();
    let r = client.get(format!("{base}/who")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("revoked"));
    let fresh = source.client(reqwest::Client::builder()).unwrap();
    assert!(fresh.get(format!("{base}/who")).send().await.is_err());

    // A client that holds the server's certificate revoked does not talk
    // to it.
    let (checker, _) = host_transport_revoking(&ca, "checker", Revoked::new());
    let client = checker.client(reqwest::Client::builder()).unwrap();
    let base = checker.base(&target, &url).unwrap();
    assert!(client.get(format!("{base}/who")).send().await.is_ok());
    if let Transport::Tls { trust, .. } = &checker {
        trust.revoked().extend(&[target_fp]).unwrap();
    }
    let client = checker.client(reqwest::Client::builder()).unwrap();
    let err = client.get(format!("{base}/who")).send().await.unwrap_err();
    assert!(format!("{err:?}").contains("Revoked"), "{err:?}");
}

#[tokio::test]
async fn peers_are_reached_by_identity_and_know_who_called() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    // Loading again gives the same CA.
    assert_eq!(Ca::load_or_create(dir.path()).unwrap().hash(), ca.hash());
    let (url, _stop) = server(&ca, &Identity::host("target").unwrap()).await;

    let source = host_transport(&ca, "source");
    let client = source.client(reqwest::Client::builder()).unwrap();
    let base = source
        .base(&Identity::host("target").unwrap(), &url)
        .unwrap();
    assert!(base.starts_with("https://target.host.roam:"), "{base}");
    let who = client.get(format!("{base}/who")).send().await.unwrap();
    assert_eq!(who.text().await.unwrap(), "source.host.roam");

    // The same server dialled as another host is refused: its certificate
    // names `target`, not `other`.
    let wrong = source
        .base(&Identity::host("other").unwrap(), &url)
        .unwrap();
    let err = client.get(format!("{wrong}/who")).send().await.unwrap_err();
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");

    // A client with a certificate from another CA: the handshake fails.
    let dir2 = tempfile::tempdir().unwrap();
    let other_ca = Ca::load_or_create(dir2.path()).unwrap();
    let stranger = host_transport(&other_ca, "source");
    let client = stranger.client(reqwest::Client::builder()).unwrap();
    let base = stranger
        .base(&Identity::host("target").unwrap(), &url)
        .unwrap();
    assert!(client.get(format!("{base}/who")).send().await.is_err());
}

#[tokio::test]
async fn a_pinned_client_reaches_only_the_scheduler_of_that_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let (url, _stop) = server(&ca, &Identity::Scheduler).await;
    let (client, base) = pinned_client(ca.hash(), &url, reqwest::Client::builder()).unwrap();
    let who = client.get(format!("{base}/who")).send().await.unwrap();
    assert_eq!(who.text().await.unwrap(), "nobody");

    let dir2 = tempfile::tempdir().unwrap();
    let other = Ca::load_or_create(dir2.path()).unwrap();
    let (client, base) = pinned_client(other.hash(), &url, reqwest::Client::builder()).unwrap();
    assert!(client.get(format!("{base}/who")).send().await.is_err());

    // A host of the right CA is not the scheduler.
    let (url, _stop2) = server(&ca, &Identity::host("eu-1").unwrap()).await;
    let (client, base) = pinned_client(ca.hash(), &url, reqwest::Client::builder()).unwrap();
    assert!(client.get(format!("{base}/who")).send().await.is_err());
}

#[test]
fn a_request_gets_only_its_key_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    // The request asks for the scheduler's name; the certificate names
    // the host the CA was told.
    let (_, csr) = ca::new_request(&Identity::Scheduler).unwrap();
    let issued = ca
        .sign_request(
            &csr,
            &Identity::host("eu-1").unwrap(),
            Duration::from_secs(60),
        )
        .unwrap();
    let der = rustls::pki_types::CertificateDer::from(
        rustls::pki_types::pem::PemObject::pem_slice_iter(issued.chain_pem.as_bytes())
            .next()
            .unwrap()
            .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
            .unwrap(),
    );
    assert_eq!(
        Identity::of_certificate(&der),
        Some(Identity::Host("eu-1".into()))
    );
    let left = ca::not_after(&issued.chain_pem)
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left <= Duration::from_secs(60), "{left:?}");
    assert!(
        ca.sign_request("garbage", &Identity::Scheduler, Duration::from_secs(1))
            .is_err()
    );
}
