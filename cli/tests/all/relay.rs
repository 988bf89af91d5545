//! A relay on the wire, as someone on the path between two Roam processes
//! would be: it forwards TCP (keeping a copy of every byte, both ways), and
//! when told to it cuts, corrupts, drops, or terminates TLS itself with a
//! certificate of its choosing.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::cluster::{Cluster, PATIENT};

/// Forward everything.
pub(crate) const PASS: u64 = 0;
/// Cut a connection once its client has sent 256 KiB.
pub(crate) const CUT: u64 = 1;
/// Flip a bit in what a client sends, once past 256 KiB.
pub(crate) const CORRUPT: u64 = 2;
/// Cut or corrupt the raw page stream of round 0 (after its upgrade; only
/// seen in plaintext).
pub(crate) const CUT_PAGES: u64 = 3;
pub(crate) const CORRUPT_PAGES: u64 = 4;
/// Nothing gets through: new connections are closed, open ones cut at
/// their next bytes (either way), as if the host dropped off the network
/// for those who reach it through the relay.
pub(crate) const BLACKHOLE: u64 = 5;
/// New connections are answered by the relay itself, over TLS with the
/// certificate in [`Relay::impostor`]; open ones go on being forwarded.
pub(crate) const IMPOSTOR: u64 = 6;

/// The most bytes a relay keeps a copy of.
const KEEP: usize = 64 << 20;

/// What an impostor relay got out of the clients that reached it.
#[derive(Default)]
pub(crate) struct Impostor {
    /// Connections it answered.
    pub(crate) connections: AtomicU64,
    /// Of those, TLS handshakes the client completed.
    pub(crate) handshakes: AtomicU64,
    /// Bytes clients sent it after a handshake (a request, a token...).
    pub(crate) decrypted: AtomicU64,
}

/// A TCP relay in front of one address.
pub(crate) struct Relay {
    /// `SCHEME://127.0.0.1:PORT`.
    pub(crate) addr: String,
    pub(crate) mode: Arc<AtomicU64>,
    /// Every byte forwarded, both ways (the first [`KEEP`]).
    pub(crate) seen: Arc<Mutex<Vec<u8>>>,
    /// The TLS configuration an [`IMPOSTOR`] relay answers with.
    pub(crate) impostor: Arc<Mutex<Option<Arc<rustls::ServerConfig>>>>,
    pub(crate) caught: Arc<Impostor>,
    /// The client side of every connection forwarded so far.
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    pub(crate) fn start(to: SocketAddr, scheme: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let relay = Relay {
            addr: format!("{scheme}://{}", listener.local_addr().unwrap()),
            mode: Arc::new(AtomicU64::new(PASS)),
            seen: Arc::new(Mutex::new(Vec::new())),
            impostor: Arc::new(Mutex::new(None)),
            caught: Arc::new(Impostor::default()),
            open: Arc::new(Mutex::new(Vec::new())),
        };
        let (m, seen, impostor, caught, open) = (
            relay.mode.clone(),
            relay.seen.clone(),
            relay.impostor.clone(),
            relay.caught.clone(),
            relay.open.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                match m.load(Ordering::Relaxed) {
                    BLACKHOLE => continue,
                    IMPOSTOR => {
                        let config = impostor.lock().unwrap().clone().unwrap();
                        let caught = caught.clone();
                        std::thread::spawn(move || answer(client, config, &caught));
                        continue;
                    }
                    _ => {}
                }
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                if let Ok(c) = client.try_clone() {
                    open.lock().unwrap().push(c);
                }
                forward(client, server, m.clone(), seen.clone());
            }
        });
        relay
    }

    /// Whether `needle` crossed the relay in clear.
    pub(crate) fn saw(&self, needle: &[u8]) -> bool {
        self.seen
            .lock()
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    }

    /// Close every connection forwarded so far, so the next request of
    /// each client opens a new one.
    pub(crate) fn cut_open(&self) {
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Bytes forwarded so far.
    pub(crate) fn forwarded(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// From now on, answer new connections over TLS with `chain` and `key`
    /// (PEM).
    pub(crate) fn impersonate(&self, chain: &str, key: &str) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        #[allow(deprecated, reason = "ring, as roam-tls uses")]
        let provider = rustls::crypto::ring::default_provider();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        *self.impostor.lock().unwrap() = Some(Arc::new(config));
        self.mode.store(IMPOSTOR, Ordering::Relaxed);
    }
}

/// Answer a client as the impostor: finish the handshake if the client
/// will, and count what it then sends.
fn answer(client: TcpStream, config: Arc<rustls::ServerConfig>, caught: &Impostor) {
    caught.connections.fetch_add(1, Ordering::Relaxed);
    let conn = rustls::ServerConnection::new(config).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, client);
    let mut buf = [0u8; 4096];
    let mut counted = false;
    loop {
        let read = tls.read(&mut buf);
        if !counted && !tls.conn.is_handshaking() {
            counted = true;
            caught.handshakes.fetch_add(1, Ordering::Relaxed);
        }
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                caught.decrypted.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

fn keep(seen: &Mutex<Vec<u8>>, bytes: &[u8]) {
    let mut seen = seen.lock().unwrap();
    let room = KEEP.saturating_sub(seen.len()).min(bytes.len());
    seen.extend_from_slice(&bytes[..room]);
}

/// Forward one connection both ways, breaking it as `mode` says.
fn forward(client: TcpStream, server: TcpStream, mode: Arc<AtomicU64>, seen: Arc<Mutex<Vec<u8>>>) {
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (mut s_read, mut c_write) = (server, client);
    let back = mode.clone();
    let seen_back = seen.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let mut sent = 0usize;
        let mut corrupted = false;
        let mut pages = false;
        while let Ok(n) = c_read.read(&mut buf) {
            if n == 0 {
                break;
            }
            // Counted afresh whenever the relay is armed again, also on
            // kept-alive connections.
            if matches!(mode.load(Ordering::Relaxed), PASS | IMPOSTOR) {
                sent = 0;
                corrupted = false;
                pages = false;
            }
            // The page stream's bytes are counted from the chunk after its
            // upgrade request.
            if !pages && buf[..n].windows(19).any(|w| w == b"upgrade: roam-pages") {
                pages = true;
                sent = 0;
            } else {
                sent += n;
            }
            let mode = match mode.load(Ordering::Relaxed) {
                BLACKHOLE => {
                    let _ = c_read.shutdown(Shutdown::Both);
                    let _ = s_write.shutdown(Shutdown::Both);
                    return;
                }
                CUT_PAGES if pages => CUT,
                CORRUPT_PAGES if pages => CORRUPT,
                CUT_PAGES | CORRUPT_PAGES => PASS,
                m => m,
            };
            match mode {
                CUT if sent > 256 << 10 => {
                    let _ = c_read.shutdown(Shutdown::Both);
                    let _ = s_write.shutdown(Shutdown::Both);
                    return;
                }
                CORRUPT if sent > 256 << 10 && !corrupted => {
                    buf[n / 2] ^= 0x40;
                    corrupted = true;
                }
                _ => {}
            }
            keep(&seen, &buf[..n]);
            if s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = s_read.read(&mut buf) {
            if n == 0 {
                break;
            }
            if back.load(Ordering::Relaxed) == BLACKHOLE {
                let _ = s_read.shutdown(Shutdown::Both);
                let _ = c_write.shutdown(Shutdown::Both);
                return;
            }
            keep(&seen_back, &buf[..n]);
            if c_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = c_write.shutdown(Shutdown::Write);
    });
}

/// A free port on loopback.
pub(crate) fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Two EU hosts (with the hooks in `host_env`), in plaintext or over TLS:
/// eu-1, and eu-2 reached (by the scheduler and by eu-1) through a relay
/// (eu-2 reaches the scheduler directly).
pub(crate) fn relayed_cluster(plain: bool, host_env: &[(&str, &str)]) -> (Cluster, Relay) {
    let envs = [("HEARTBEAT_TIMEOUT", PATIENT)];
    let mut c = if plain {
        Cluster::start_plain(&envs)
    } else {
        Cluster::start_with(&envs)
    };
    c.add_host_with("eu-1", "eu-west-1", "EU", &[], host_env);
    let port = free_port();
    let relay = Relay::start(port, if plain { "http" } else { "https" });
    c.add_host_with(
        "eu-2",
        "eu-central-1",
        "EU",
        &["--listen", &port.to_string(), "--advertise", &relay.addr],
        host_env,
    );
    c.wait_ready(2);
    (c, relay)
}
