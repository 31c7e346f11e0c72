//! Who may speak for a server on the data link, against the real `ferry standby` over
//! TLS 1.3 (DESIGN.md I8: a host's credentials speak only for its own server):
//!
//! - impersonation: host A (web-1) with its own certificate cannot connect as server B
//!   (db-1), whatever auth key it holds; it cannot take over B's live session; records
//!   for B sent on A's session are refused and B's store holds none of them;
//! - TLS refusals, each naming the problem: a client certificate of another CA, one for
//!   another server, an expired one, a plaintext client; and configs refused at start: a
//!   plaintext standby on a non-loopback listen, an agent with neither `[tls]` nor
//!   `insecure_plaintext`;
//! - abuse: 200 slow handshakes (a byte a second, reconnecting when closed) keep the
//!   standby's threads and memory bounded and do not lock a real agent out.

mod support;

use ferry_replicator::link::{Link, LinkConfig, LinkError};
use ferry_replicator::sim::{SimServer, noise};
use ferry_standby::receiver::MAX_HANDSHAKES;
use ferry_tls::{LinkTls, TlsFiles};
use ferry_wire::message::ErrorCode;
use ferry_wire::{HostKeys, Message, Seq, ServerId};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// A TLS standby for web-1 (host A) and db-1 (host B), with the pair key beside it.
struct Site {
    dir: tempfile::TempDir,
    key: PathBuf,
    standby: StandbyProcess,
}

impl Site {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("pair.key");
        new_key(&key);
        let conf = dir.path().join("standby.toml");
        standby_config(
            &conf,
            &dir.path().join("standby"),
            &key,
            &["web-1", "db-1"],
            16,
        );
        let standby = StandbyProcess::start(&conf);
        Self { dir, key, standby }
    }

    fn keys(&self, server: &str) -> HostKeys {
        host_keys(&self.key, server)
    }

    /// Connects as `server` with the certificate `cert` and the auth key of `keys`.
    fn connect_as(&self, server: &str, cert: &str, keys: &HostKeys) -> Result<Link, LinkError> {
        self.connect_with(server, self.standby.tls_as(cert), keys)
    }

    fn connect_with(&self, server: &str, tls: LinkTls, keys: &HostKeys) -> Result<Link, LinkError> {
        let config = LinkConfig {
            tls,
            ..LinkConfig::default()
        };
        let server = ServerId::new(server).expect("a valid server name");
        Link::connect(
            self.standby.addr.as_str(),
            &server,
            &keys.ingest.auth,
            &config,
        )
    }

    /// TLS trusting the site's CA (so the standby is trusted) and presenting `cert`,
    /// built by hand: [`TlsFiles::client_config`] refuses a certificate that is not of
    /// that CA or not valid now, as a client's config should.
    fn tls_files(&self, cert: &Path, key: &Path) -> LinkTls {
        let roots = TlsFiles {
            ca: pki_of(&self.key).join("ca.pem"),
            cert: cert.to_owned(),
            key: key.to_owned(),
        }
        .load_roots()
        .expect("the site's CA loads");
        let chain = ferry_tls::config::load_certs(cert).expect("the certificate loads");
        let key = ferry_tls::config::load_private_key(key).expect("the key loads");
        let mut config = rustls::ClientConfig::builder_with_provider(ferry_tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("a client certificate");
        config.resumption = rustls::client::Resumption::disabled();
        LinkTls::Tls {
            config: std::sync::Arc::new(config),
            server_name: "127.0.0.1".try_into().expect("an IP server name"),
        }
    }
}

/// Panics unless `result` is the standby's refusal with `code`, returning its message.
fn refusal(result: Result<Link, LinkError>, code: ErrorCode, what: &str) -> String {
    match result {
        Err(LinkError::Refused { code: c, message }) if c == code => message,
        Err(other) => panic!("{what}: expected a refusal {code:?}, got: {other}"),
        Ok(_) => panic!("{what}: the standby accepted it"),
    }
}

#[test]
fn a_host_certificate_cannot_connect_as_another_server_whatever_key_it_holds() {
    let site = Site::new();
    let (a, b) = (site.keys("web-1"), site.keys("db-1"));
    // A's certificate, B's id, A's auth key; and B's auth key (leaked) with A's certificate.
    for (keys, which) in [(&a, "A's auth key"), (&b, "B's (leaked) auth key")] {
        let message = refusal(
            site.connect_as("db-1", "web-1", keys),
            ErrorCode::AuthenticationFailed,
            &format!("host A's certificate claiming db-1 with {which}"),
        );
        assert!(
            message.contains("names web-1") && message.contains("db-1"),
            "the refusal names the certificate's server and the claimed one: {message}"
        );
    }
    site.standby.wait_for_log("not server db-1", WAIT);
    // Each host still connects as itself.
    site.connect_as("web-1", "web-1", &a)
        .unwrap_or_else(|e| panic!("A as itself: {e}"));
    site.connect_as("db-1", "db-1", &b)
        .unwrap_or_else(|e| panic!("B as itself: {e}"));
}

#[test]
fn a_live_session_cannot_be_taken_over_by_another_host() {
    let site = Site::new();
    let (a, b) = (site.keys("web-1"), site.keys("db-1"));
    let mut sim = SimServer::new(&b, &[1 << 20]).expect("sim");
    let mut live = site
        .connect_as("db-1", "db-1", &b)
        .unwrap_or_else(|e| panic!("B connects: {e}"));
    live.register(sim.registration()).expect("register");
    for i in 0..4u64 {
        live.send(&sim.write(0, i * 4096, &noise(4096, i)).expect("seal"))
            .expect("send");
    }
    live.wait_durable(Seq::new(4), WAIT)
        .expect("B's records acked");

    // A tries to take the session over, with its own key and with B's leaked auth key.
    for keys in [&a, &b] {
        refusal(
            site.connect_as("db-1", "web-1", keys),
            ErrorCode::AuthenticationFailed,
            "host A taking over db-1's session",
        );
    }
    // B's session lives on: more records are acked on it.
    for i in 4..8u64 {
        live.send(&sim.write(0, i * 4096, &noise(4096, i)).expect("seal"))
            .unwrap_or_else(|e| panic!("B's session was cut by A's attempt: {e}"));
    }
    live.wait_durable(Seq::new(8), WAIT)
        .unwrap_or_else(|e| panic!("B's session was taken over by A's attempt: {e}"));
    assert!(
        live.closed().is_none(),
        "B's session is still open: {:?}",
        live.closed()
    );
    assert!(
        !site.standby.log().contains("replaces the previous one"),
        "a refused connection never replaces a live one:\n{}",
        site.standby.log()
    );
}

#[test]
fn records_for_another_server_on_a_hosts_own_session_are_refused() {
    let site = Site::new();
    let (a, b) = (site.keys("web-1"), site.keys("db-1"));
    let mut sim_a = SimServer::new(&a, &[1 << 20]).expect("sim A");
    let mut sim_b = SimServer::new(&b, &[1 << 20]).expect("sim B");

    // B's genuine record (captured on the path) replayed on A's session; then one of A's
    // records relabelled for B.
    let Message::Record(genuine_b) = sim_b.write(0, 0, &noise(4096, 1)).expect("seal") else {
        unreachable!("write makes a record")
    };
    let Message::Record(mut relabelled) = sim_a.write(0, 0, &noise(4096, 2)).expect("seal") else {
        unreachable!("write makes a record")
    };
    relabelled.header.server = ServerId::new("db-1").expect("name");
    for (record, what) in [
        (genuine_b, "B's record replayed on A's session"),
        (relabelled, "A's record relabelled for B"),
    ] {
        let mut link = site
            .connect_as("web-1", "web-1", &a)
            .unwrap_or_else(|e| panic!("A connects: {e}"));
        link.register(sim_a.registration()).expect("register");
        link.send(&Message::Record(record)).expect("sent");
        let err = match link.flush() {
            Err(e) => e,
            Ok(()) => link
                .wait_durable(Seq::new(1), WAIT)
                .expect_err(&format!("{what}: acked")),
        };
        match &err {
            LinkError::Refused {
                code: ErrorCode::Malformed,
                message,
            } => assert!(
                message.contains("is for server db-1") && message.contains("web-1"),
                "{what}: the refusal names both servers: {message}"
            ),
            other => panic!("{what}: expected a refusal, got {other}"),
        }
    }
    // B's store holds nothing: B connects and the standby has no seq of it.
    let link = site
        .connect_as("db-1", "db-1", &b)
        .unwrap_or_else(|e| panic!("B connects: {e}"));
    assert_eq!(
        link.welcome_durable(),
        Seq::new(0),
        "nothing was stored for db-1 from A's session"
    );
}

/// The error of a connection the standby must refuse during or right after TLS, and the
/// standby's log line about it (waiting for it to contain `logged`).
fn tls_refused(site: &Site, tls: LinkTls, what: &str, logged: &str) -> String {
    let err = match site.connect_with("web-1", tls, &site.keys("web-1")) {
        Ok(_) => panic!("{what}: the standby accepted it"),
        Err(e) => e,
    };
    site.standby.wait_for_log(logged, WAIT);
    ferry_wire::error_chain(&err)
}

#[test]
fn tls_refuses_another_ca_another_server_an_expired_certificate_and_plaintext() {
    let site = Site::new();
    // A certificate for web-1 from another site pair's CA.
    let other = site.dir.path().join("other-pki");
    new_pki(&other, &["web-1"]);
    let err = tls_refused(
        &site,
        site.tls_files(&other.join("web-1.pem"), &other.join("web-1.key")),
        "a client certificate of another CA",
        "not signed by the CA this side trusts",
    );
    assert!(
        err.contains("certificate"),
        "the agent's error names its certificate: {err}"
    );

    // A certificate of this CA for another server.
    let message = refusal(
        site.connect_as("web-1", "db-1", &site.keys("web-1")),
        ErrorCode::AuthenticationFailed,
        "a client certificate for db-1 claiming web-1",
    );
    assert!(
        message.contains("names db-1") && message.contains("not server web-1"),
        "{message}"
    );

    // An expired certificate of this CA for web-1.
    let pki = pki_of(&site.key);
    let (cert, key) = expired_cert(&pki, "web-1");
    let err = tls_refused(
        &site,
        site.tls_files(&cert, &key),
        "an expired client certificate",
        "has expired",
    );
    assert!(
        err.contains("expired"),
        "the agent's error says the certificate expired: {err}"
    );

    // A plaintext client.
    let err = tls_refused(
        &site,
        LinkTls::PlaintextLoopback,
        "a plaintext client",
        "not TLS",
    );
    assert!(!err.is_empty());
    // Still serving the right agent.
    site.connect_as("web-1", "web-1", &site.keys("web-1"))
        .unwrap_or_else(|e| panic!("web-1 after the refusals: {e}"));
}

/// A certificate for `name` from the CA in `pki` that expired yesterday (rcgen: `ferry
/// tls issue` refuses a validity under one day).
fn expired_cert(pki: &Path, name: &str) -> (PathBuf, PathBuf) {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::from_pem(
        &std::fs::read_to_string(pki.join("ca.key")).expect("reading the CA key"),
    )
    .expect("the CA key parses");
    // The issuer as `ferry tls issue` rebuilds it: the CA's common name and key.
    let ca = pki.join("ca.pem");
    let subject = run(
        "openssl",
        &[
            "x509",
            "-in",
            ca.to_str().expect("utf-8"),
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
        ],
    );
    let common_name = subject
        .trim()
        .strip_prefix("subject=CN=")
        .unwrap_or_else(|| panic!("the CA's subject is one CN: {subject:?}"));
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    ca_params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![
        SanType::DnsName(name.try_into().expect("a DNS name")),
        SanType::IpAddress("127.0.0.1".parse().expect("an address")),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    let cert = params.signed_by(&key, &issuer).expect("signing");
    let (cert_path, key_path) = (
        pki.join(format!("{name}-expired.pem")),
        pki.join(format!("{name}-expired.key")),
    );
    std::fs::write(&cert_path, cert.pem()).expect("writing the certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("writing the key");
    std::fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod the key");
    (cert_path, key_path)
}

/// Runs `ferry ARGS` expecting it to exit with an error within 20 s; returns stderr.
fn ferry_fails(args: &[&str], what: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting ferry {args:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for ferry") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: ferry {args:?} started and kept running instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("reading stderr");
    assert!(!status.success(), "{what}: ferry {args:?} succeeded");
    stderr
}

#[test]
fn configs_without_tls_off_loopback_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("pair.key");
    new_key(&key);
    // A plaintext standby listening on every address.
    let conf = dir.path().join("standby.toml");
    standby_config(&conf, &dir.path().join("standby"), &key, &["web-1"], 16);
    let text = std::fs::read_to_string(&conf).expect("read config");
    let (top, rest) = text.split_once("\n[tls]").expect("a [tls] table");
    let servers = rest.find("\n[[servers]]").expect("a server");
    std::fs::write(
        &conf,
        format!(
            "{}\ninsecure_plaintext = true\n{}",
            top.replace("127.0.0.1:0", "0.0.0.0:0"),
            &rest[servers..]
        ),
    )
    .expect("write config");
    let stderr = ferry_fails(
        &["standby", "--config", conf.to_str().expect("utf-8")],
        "a plaintext standby on 0.0.0.0",
    );
    assert!(
        stderr.contains("refusing plain TCP") && stderr.contains("ferry tls init"),
        "the refusal says why and how to set TLS up: {stderr}"
    );

    // An agent with neither [tls] nor insecure_plaintext.
    let agent_conf = dir.path().join("agent.toml");
    let mut file = agent_file(
        &key,
        "127.0.0.1:7420",
        &["/dev/null"],
        &dir.path().join("agent"),
        dir.path().join("pins").to_str().expect("utf-8"),
    );
    file.tls = None;
    write_agent_config(&agent_conf, &file);
    let stderr = ferry_fails(
        &["agent", "--config", agent_conf.to_str().expect("utf-8")],
        "an agent config without [tls]",
    );
    assert!(
        stderr.contains("TLS only") && stderr.contains("no [tls]"),
        "the refusal says the link needs [tls]: {stderr}"
    );
}

/// Threads and resident memory (KiB) of process `pid`, from /proc/PID/status.
fn threads_and_rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("Threads:"), field("VmRSS:"))
}

#[test]
fn slow_handshakes_keep_the_standby_bounded_and_do_not_lock_an_agent_out() {
    const SLOW: usize = 200;
    let site = Site::new();
    let addr = site.standby.addr.clone();
    let pid = site.standby.pid();
    let keys = site.keys("web-1");
    // The baseline is a standby that has served one agent (its runtimes are up).
    drop(
        site.connect_as("web-1", "web-1", &keys)
            .expect("an agent connects"),
    );
    std::thread::sleep(Duration::from_millis(500));
    let (threads_before, rss_before) = threads_and_rss(pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The attacker: 200 connections from 40 addresses (127.0.0.2 to .41, 5 each: under
    // the per-address cap, so that together they fill every handshake slot), each
    // sending one byte of a TLS record a second and reconnecting when closed (checked
    // every 100 ms); bounded to 60 s and 60,000 connections.
    let attacker = {
        let (stop, addr) = (stop.clone(), addr.parse().expect("standby address"));
        std::thread::spawn(move || {
            let open = |i: usize| {
                let from = Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(i % 40).ok()?);
                let s = connect_from(from, addr).ok()?;
                s.set_nonblocking(true).ok()?;
                Some(s)
            };
            let mut conns: Vec<Option<TcpStream>> = (0..SLOW).map(open).collect();
            let (start, mut opened, mut last_byte) = (Instant::now(), SLOW, Instant::now());
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && start.elapsed() < Duration::from_secs(60)
            {
                let tick = last_byte.elapsed() >= Duration::from_secs(1);
                if tick {
                    last_byte = Instant::now();
                }
                for (i, c) in conns.iter_mut().enumerate() {
                    let alive = c.as_mut().is_some_and(|s| {
                        let mut b = [0u8; 64];
                        let open = match s.read(&mut b) {
                            Ok(0) => false,
                            Ok(_) => true,
                            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                        };
                        open && (!tick || s.write(&[0x16]).is_ok())
                    });
                    if !alive && opened < 60_000 {
                        *c = open(i);
                        opened += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            opened
        })
    };
    std::thread::sleep(Duration::from_secs(3));

    // A real agent's link connects while the attack goes on, within 5 s: before the
    // first slow handshake reaches its 10 s deadline (the attack began 3 s ago), so it
    // must be let in while every slot is held, not win a race for a freed one.
    let start = Instant::now();
    let mut tries = 0;
    let (mut peak_threads, mut peak_rss) = (0, 0);
    let connected = loop {
        tries += 1;
        match site.connect_as("web-1", "web-1", &keys) {
            Ok(link) => break Ok(link),
            Err(e) if start.elapsed() < Duration::from_secs(5) && e.is_retryable() => {
                let (t, r) = threads_and_rss(pid);
                (peak_threads, peak_rss) = (peak_threads.max(t), peak_rss.max(r));
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => break Err(e),
        }
    };
    let took = start.elapsed();
    // Keep the attack up a little longer, sampling the standby's threads and memory.
    let (mut threads, mut rss) = (peak_threads, peak_rss);
    for _ in 0..20 {
        let (t, r) = threads_and_rss(pid);
        (threads, rss) = (threads.max(t), rss.max(r));
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let opened = attacker.join().expect("the attacker");
    let link = connected.unwrap_or_else(|e| {
        panic!(
            "an agent was locked out by {SLOW} slow handshakes ({opened} connections): after \
             {took:?} and {tries} tries: {e}\nstandby log (tail):\n{}",
            tail(&site.standby.log(), 20)
        )
    });
    drop(link);
    // At most MAX_HANDSHAKES session threads in the handshake, and as many again cut and
    // on their way out.
    let bound = threads_before + 2 * u64::try_from(MAX_HANDSHAKES).expect("small");
    assert!(
        threads <= bound,
        "the standby's threads grew from {threads_before} to {threads} (more than {bound}) \
         under {SLOW} slow handshakes"
    );
    assert!(
        rss <= rss_before + 128 * 1024,
        "the standby's memory grew from {rss_before} KiB to {rss} KiB under {SLOW} slow \
         handshakes"
    );
    eprintln!(
        "slow handshakes: connected after {took:?} ({tries} tries); threads {threads_before} → \
         {threads}, RSS {rss_before} → {rss} KiB; {opened} attacker connections"
    );
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn an_idle_tls_connection_is_cut_at_the_handshake_deadline() {
    let site = Site::new();
    let mut idle = TcpStream::connect(site.standby.addr.as_str()).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let start = Instant::now();
    let _ = idle.write_all(&[0x16]);
    let mut b = [0u8; 16];
    let n = idle.read(&mut b).unwrap_or(0);
    assert!(
        n == 0 && start.elapsed() < Duration::from_secs(15),
        "an idle handshake is closed by its deadline (10 s): {n} bytes after {:?}",
        start.elapsed()
    );
}
