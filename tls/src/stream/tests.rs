//! The stream over real loopback TCP, with certificates made by `pki` in a tempdir.

use super::*;
use crate::config::{TlsFiles, client_config_ca_only};
use crate::pki::{CA_CERT_FILE, IssueRequest, init_ca, issue};
use std::net::TcpListener;
use std::thread;

/// A CA with a standby certificate (`site-b`, also for 127.0.0.1) and an agent's
/// (`web-1`).
struct Pki {
    dir: tempfile::TempDir,
    server: TlsFiles,
    client: TlsFiles,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), false).expect("init");
        let mut request = IssueRequest::new("site-b");
        request.sans = vec!["127.0.0.1".into()];
        let server = issue(dir.path(), &request).expect("issue site-b");
        let client = issue(dir.path(), &IssueRequest::new("web-1")).expect("issue web-1");
        let ca = dir.path().join(CA_CERT_FILE);
        Pki {
            server: TlsFiles {
                ca: ca.clone(),
                cert: server.cert,
                key: server.key,
            },
            client: TlsFiles {
                ca,
                cert: client.cert,
                key: client.key,
            },
            dir,
        }
    }

    fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join(CA_CERT_FILE)
    }
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("127.0.0.1").expect("an IP server name")
}

fn soon(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// Connects `client` to a server accepting with `server`; both handshakes' results.
fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (
    Result<TlsStream, StreamError>,
    Result<TlsStream, StreamError>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepting = thread::spawn(move || {
        let (tcp, _) = listener.accept().expect("accept");
        TlsStream::accept(tcp, server, soon(10))
    });
    let tcp = TcpStream::connect(addr).expect("connect");
    let client = TlsStream::connect(tcp, client, localhost(), soon(10));
    let server = accepting.join().expect("server thread");
    (server, client)
}

fn connected(pki: &Pki) -> (TlsStream, TlsStream) {
    let (server, client) = handshake(
        pki.server
            .server_config_client_required()
            .expect("server config"),
        pki.client.client_config().expect("client config"),
    );
    (
        server.expect("server handshake"),
        client.expect("client handshake"),
    )
}

/// The byte at `offset` of a stream seeded with `seed` (order matters: a misplaced or
/// repeated record shows).
fn pattern(seed: u64, offset: u64) -> u8 {
    let x = (offset ^ seed.rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x.to_be_bytes()[0]
}

fn write_pattern(stream: &TlsStream, seed: u64, total: u64) {
    let mut offset = 0u64;
    let mut size = 1usize;
    while offset < total {
        let n = usize::try_from(total - offset).map_or(size, |left| left.min(size));
        let chunk: Vec<u8> = (0..n as u64).map(|i| pattern(seed, offset + i)).collect();
        (&*stream).write_all(&chunk).expect("write");
        offset += n as u64;
        // 1 byte to ~200 KiB: small writes, and writes of many records.
        size = (size * 7 + 13) % (200 << 10) + 1;
    }
    stream.close().expect("close_notify");
}

fn read_pattern(stream: &TlsStream, seed: u64, total: u64) {
    let mut offset = 0u64;
    let mut buf = vec![0u8; 300 << 10];
    let mut size = 1usize;
    while offset < total {
        let n = (&*stream).read(&mut buf[..size]).expect("read");
        assert!(n > 0, "end of stream at {offset} of {total}");
        for (i, &b) in buf[..n].iter().enumerate() {
            let at = offset + i as u64;
            assert_eq!(b, pattern(seed, at), "byte {at} of stream {seed} is wrong");
        }
        offset += n as u64;
        size = (size * 5 + 7) % buf.len() + 1;
    }
    let n = (&*stream)
        .read(&mut buf)
        .expect("the end after close_notify");
    assert_eq!(n, 0, "bytes after the end");
}

#[test]
fn many_mib_cross_both_ways_at_once_intact() {
    const TOTAL: u64 = 24 << 20;
    let pki = Pki::new();
    let (server, client) = connected(&pki);
    let threads = [
        (server.clone(), 1, true),
        (server, 2, false),
        (client.clone(), 2, true),
        (client, 1, false),
    ]
    .map(|(stream, seed, write)| {
        thread::spawn(move || {
            if write {
                write_pattern(&stream, seed, TOTAL);
            } else {
                read_pattern(&stream, seed, TOTAL);
            }
        })
    });
    for t in threads {
        t.join().expect("a reader or writer failed");
    }
}

#[test]
fn shutdown_from_a_third_thread_unblocks_a_blocked_reader() {
    let pki = Pki::new();
    let (server, client) = connected(&pki);
    let reader = {
        let server = server.try_clone().expect("clone");
        thread::spawn(move || {
            let started = Instant::now();
            let mut buf = [0u8; 16];
            let result = (&server).read(&mut buf);
            (result.map_err(|e| e.kind()), started.elapsed())
        })
    };
    thread::sleep(Duration::from_millis(300));
    server.shutdown(Shutdown::Both).expect("shutdown");
    let (result, waited) = reader.join().expect("reader thread");
    assert_eq!(
        result,
        Err(io::ErrorKind::UnexpectedEof),
        "a shut-down socket must read as a truncation, not as data or a clean end"
    );
    assert!(waited < Duration::from_secs(3), "reader blocked {waited:?}");
    // The peer sees no close_notify either: a truncation.
    let mut buf = [0u8; 16];
    let err = (&client).read(&mut buf).expect_err("no clean end was sent");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert!(err.to_string().contains("without a close_notify"), "{err}");
}

#[test]
fn a_read_timeout_loses_nothing_and_a_deadline_ends_reads() {
    let pki = Pki::new();
    let (server, client) = connected(&pki);
    server
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut buf = [0u8; 8];
    let err = (&server).read(&mut buf).expect_err("nothing was sent");
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    (&client).write_all(b"after it").expect("write");
    (&server)
        .read_exact(&mut buf)
        .expect("read after a timeout");
    assert_eq!(&buf, b"after it");

    server.set_read_timeout(None).expect("no timeout");
    server
        .set_deadline(Some(Instant::now() + Duration::from_millis(300)))
        .expect("deadline");
    let started = Instant::now();
    let err = (&server).read(&mut buf).expect_err("the deadline passed");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(250)..Duration::from_secs(2)).contains(&waited),
        "deadline of 300 ms ended the read after {waited:?}"
    );
}

#[test]
fn a_server_from_another_ca_is_refused_by_the_client_naming_the_issuer() {
    let pki = Pki::new();
    let other = Pki::new();
    let (server, client) = handshake(
        other
            .server
            .server_config_client_required()
            .expect("server config"),
        pki.client.client_config().expect("client config"),
    );
    let err = client.expect_err("a server of another CA was accepted");
    assert!(
        !err.is_retryable(),
        "a certificate refusal is permanent: {err}"
    );
    assert!(err.to_string().contains("unknown issuer"), "{err}");
    let err = server.expect_err("the client said nothing about it?");
    assert!(
        err.to_string().contains("refused this side's certificate"),
        "{err}"
    );
}

#[test]
fn a_client_from_another_ca_is_refused_by_the_server() {
    let pki = Pki::new();
    let other = Pki::new();
    let mut client = other.client.clone();
    client.ca = pki.ca(); // it trusts the server, but its own certificate is foreign
    let client_config = {
        let identity = other.client.load_identity().expect("identity");
        ClientConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(crate::PROTOCOL_VERSIONS)
            .expect("tls13")
            .with_root_certificates(client.load_roots().expect("roots"))
            .with_client_auth_cert(identity.chain, identity.key)
            .expect("client config")
    };
    let (server, _client) = handshake(
        pki.server
            .server_config_client_required()
            .expect("server config"),
        Arc::new(client_config),
    );
    let err = server.expect_err("a client of another CA was accepted");
    assert!(err.to_string().contains("unknown issuer"), "{err}");
}

#[test]
fn an_expired_certificate_is_refused() {
    let pki = Pki::new();
    let (_, issuer) = crate::pki::load_issuer(pki.dir.path()).expect("the CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let server_config = ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(crate::PROTOCOL_VERSIONS)
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .expect("server config");
    let (_, client) = handshake(
        Arc::new(server_config),
        client_config_ca_only(&pki.ca()).expect("client config"),
    );
    let err = client.expect_err("an expired certificate was accepted");
    assert!(err.to_string().contains("has expired"), "{err}");
}

#[test]
fn a_client_without_a_certificate_is_refused_where_one_is_required() {
    let pki = Pki::new();
    let (server, client) = handshake(
        pki.server
            .server_config_client_required()
            .expect("server config"),
        client_config_ca_only(&pki.ca()).expect("client config"),
    );
    let err = server.expect_err("a client without a certificate was accepted");
    assert!(err.to_string().contains("no client certificate"), "{err}");
    // TLS 1.3: the client learns it at its first read.
    if let Ok(client) = client {
        let err = (&client).read(&mut [0u8; 1]).expect_err("the refusal");
        assert!(err.to_string().contains("client certificate"), "{err}");
    }

    // Where it is optional, the same client gets in and shows no certificate.
    let (server, _client) = handshake(
        pki.server
            .server_config_client_optional()
            .expect("server config"),
        client_config_ca_only(&pki.ca()).expect("client config"),
    );
    let server = server.expect("optional client auth");
    assert!(server.peer_certificates().is_none());
    let err = server
        .check_peer_name("web-1")
        .expect_err("no certificate, no name");
    assert!(matches!(err, NameError::NoCertificate { .. }), "{err}");
}

#[test]
fn a_plaintext_client_is_refused_as_not_tls() {
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = pki.server.server_config_client_optional().expect("config");
    let accepting = thread::spawn(move || {
        let (tcp, _) = listener.accept().expect("accept");
        TlsStream::accept(tcp, config, soon(10))
    });
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.write_all(b"GET /v1/pairs HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let err = accepting
        .join()
        .expect("server thread")
        .expect_err("plaintext accepted");
    assert!(err.to_string().contains("not TLS"), "{err}");
}

#[test]
fn a_slowloris_handshake_is_cut_off_at_the_absolute_deadline() {
    let pki = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = pki.server.server_config_client_required().expect("config");
    let limit = Duration::from_millis(2500);
    let accepting = thread::spawn(move || {
        let (tcp, _) = listener.accept().expect("accept");
        let started = Instant::now();
        let result = TlsStream::accept(tcp, config, started + limit);
        (result, started.elapsed())
    });
    let mut tcp = TcpStream::connect(addr).expect("connect");
    // The start of a plausible ClientHello record, one byte a second: each byte would
    // renew a per-read timeout of 2.5 s forever.
    let slow = thread::spawn(move || {
        for byte in [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc] {
            if tcp.write_all(&[byte]).is_err() {
                break;
            }
            thread::sleep(Duration::from_secs(1));
        }
    });
    let (result, took) = accepting.join().expect("server thread");
    let err = result.expect_err("a slowloris finished its handshake");
    assert!(matches!(err, StreamError::Deadline { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(
        took < limit + Duration::from_millis(700),
        "cut off after {took:?}, deadline {limit:?}"
    );
    slow.join().expect("slow client");
}

#[test]
fn exported_keying_material_matches_across_one_session_only() {
    let pki = Pki::new();
    let (server, client) = connected(&pki);
    let label = b"EXPORTER-ferry-test";
    let a = server
        .export_keying_material(label, Some(b"ctx"))
        .expect("export");
    let b = client
        .export_keying_material(label, Some(b"ctx"))
        .expect("export");
    assert_eq!(a, b, "both ends of one session export the same bytes");
    let other_context = client
        .export_keying_material(label, Some(b"ctx2"))
        .expect("export");
    assert_ne!(a, other_context, "the context is bound");
    let (server2, _client2) = connected(&pki);
    let c = server2
        .export_keying_material(label, Some(b"ctx"))
        .expect("export");
    assert_ne!(a, c, "two sessions exported the same bytes");
}

#[test]
fn the_peer_name_check_accepts_the_right_name_and_refuses_another() {
    let pki = Pki::new();
    let (server, client) = connected(&pki);
    server
        .check_peer_name("web-1")
        .expect("the client is web-1");
    let err = server
        .check_peer_name("db-1")
        .expect_err("web-1 passed as db-1");
    assert_eq!(
        err.to_string(),
        "the peer's certificate names web-1, not db-1"
    );
    client
        .check_peer_name("site-b")
        .expect("the server is site-b");
}
