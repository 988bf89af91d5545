//! What TLS costs a migration's page stream, without sockets: 64 MiB
//! written through a rustls client connection (as a source host's stream
//! is) and read out of a server connection (as the target's), in memory,
//! against a plain copy of the same bytes in the same run.
//!
//! `cargo bench -p roam-tls --bench records`
#![allow(clippy::unwrap_used, reason = "a bench that fails should stop")]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use roam_tls::ca::{self, Ca};
use roam_tls::{CertSlot, Identity, ServerCerts};

const TOTAL: usize = 64 << 20;
/// What a source hands the connection at once (a window of pages).
const CHUNK: usize = 256 << 10;
const RUNS: usize = 7;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let trust = ca.trust().unwrap();
    let target = Identity::host("target").unwrap();
    let creds = ca.issue(&target, &[], Duration::from_secs(3600)).unwrap();
    let server_config = trust
        .server_config(ServerCerts {
            cluster: CertSlot::with(creds.certified_key().unwrap()),
            public: None,
        })
        .unwrap();
    let source = Identity::host("source").unwrap();
    let (key, csr) = ca::new_request(&source).unwrap();
    let issued = ca
        .sign_request(&csr, &source, Duration::from_secs(3600))
        .unwrap();
    let mine = CertSlot::with(ca::certified_key(&issued.chain_pem, &key).unwrap());
    let client_config = trust.client_config(mine).unwrap();

    let data: Vec<u8> = (0..TOTAL).map(|i| (i * 7 + i / 4096) as u8).collect();
    let mut sink = vec![0u8; TOTAL];
    let (mut copy, mut seal, mut open) = (Vec::new(), Vec::new(), Vec::new());
    let mut cipher = Vec::new();
    let mut wire: Vec<u8> = Vec::with_capacity(TOTAL + TOTAL / 64);
    let aead = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &[7u8; 16]).unwrap(),
    );
    let mut suite = String::new();
    for _ in 0..RUNS {
        // Baseline: the bytes copied once, as a plaintext stream's
        // user-space side does at least.
        let t = Instant::now();
        for (src, dst) in data.chunks(CHUNK).zip(sink.chunks_mut(CHUNK)) {
            dst.copy_from_slice(src);
        }
        copy.push(t.elapsed());
        std::hint::black_box(&sink);

        // The cipher alone: AES-128-GCM over 16 KiB records in place (what
        // TLS cannot do without), no buffering.
        let t = Instant::now();
        for (i, record) in sink.chunks_mut(16 << 10).enumerate() {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
            let nonce = ring::aead::Nonce::assume_unique_for_key(nonce);
            let tag = aead
                .seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), record)
                .unwrap();
            let _ = std::hint::black_box(tag);
        }
        cipher.push(t.elapsed());

        let name = rustls::pki_types::ServerName::try_from("target.host.roam").unwrap();
        let mut client =
            rustls::ClientConnection::new(std::sync::Arc::new(client_config.clone()), name)
                .unwrap();
        let mut server =
            rustls::ServerConnection::new(std::sync::Arc::new(server_config.clone())).unwrap();
        handshake(&mut client, &mut server);
        suite = format!("{:?}", client.negotiated_cipher_suite().unwrap().suite());

        // Sealing: plaintext in, records out (the source's side).
        // (The record buffer is reused across runs, as the copy's is: its
        // pages are faulted in once, not timed.)
        wire.clear();
        let t = Instant::now();
        for chunk in data.chunks(CHUNK) {
            let mut off = 0;
            while off < chunk.len() {
                off += client.writer().write(&chunk[off..]).unwrap();
                while client.wants_write() {
                    client.write_tls(&mut wire).unwrap();
                }
            }
        }
        seal.push(t.elapsed());

        // Opening: records in, plaintext out (the target's side).
        let t = Instant::now();
        let mut at = 0;
        let mut got = 0;
        let mut input = &wire[..];
        while got < TOTAL {
            if !input.is_empty() {
                server.read_tls(&mut input).unwrap();
                server.process_new_packets().unwrap();
            }
            let n = match server.reader().read(&mut sink[at..]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                other => other.unwrap(),
            };
            at += n;
            got += n;
        }
        open.push(t.elapsed());
        assert_eq!(sink, data);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (copy, seal, open) = (median(&mut copy), median(&mut seal), median(&mut open));
    let cipher = median(&mut cipher);
    let rate = |d: Duration| TOTAL as f64 / d.as_secs_f64() / 1e6;
    println!("64 MiB through rustls ({suite}, ring), in memory, median of {RUNS}:");
    println!("| step | time | MB/s | ÷ copy |");
    println!("|---|---|---|---|");
    for (what, d) in [
        ("copy (baseline)", copy),
        ("AES-128-GCM alone, 16 KiB records in place", cipher),
        ("rustls seal (source)", seal),
        ("rustls open (target)", open),
    ] {
        println!(
            "| {what} | {:.1} ms | {:.0} | {:.1}× |",
            d.as_secs_f64() * 1e3,
            rate(d),
            d.as_secs_f64() / copy.as_secs_f64()
        );
    }
}

/// Shuttle handshake messages until both ends are done.
fn handshake(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
    while client.is_handshaking() || server.is_handshaking() {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            server.read_tls(&mut &buf[..]).unwrap();
            server.process_new_packets().unwrap();
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            client.read_tls(&mut &buf[..]).unwrap();
            client.process_new_packets().unwrap();
        }
    }
}
