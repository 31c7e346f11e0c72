//! The control API as an attacker and an operator meet it: HTTPS only (plain HTTP on
//! loopback only when asked), bounded against a huge header and a flood of idle
//! connections, the token never on the wire in clear, clear refusals for a wrong CA and
//! a plaintext client.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::connect_from;

fn ferry_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

fn ok(args: &[&str]) {
    let out = ferry_cmd().args(args).output().expect("running ferry");
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A site: a pair key, a token, a CA with a certificate for `site-b` at 127.0.0.1.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let site = Site { dir };
        ok(&["keygen", "--out", s(&site.path("pair.key"))]);
        ok(&[
            "keygen",
            "--from",
            s(&site.path("pair.key")),
            "--standby",
            "--out",
            s(&site.path("standby.key")),
        ]);
        ok(&["keygen", "--out", s(&site.path("control.token"))]);
        let pki = site.path("pki");
        ok(&["tls", "init", "--dir", s(&pki)]);
        ok(&[
            "tls",
            "issue",
            "--dir",
            s(&pki),
            "--name",
            "site-b",
            "--san",
            "127.0.0.1",
        ]);
        site
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca(&self) -> PathBuf {
        self.path("pki/ca.pem")
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.path("control.token"))
            .expect("token")
            .trim()
            .to_owned()
    }

    /// A standby config with `control` as the body of its `[control]` section (after
    /// listen and token_file), and the `[tls]` section when `tls` (without it, the data
    /// link is plain TCP on loopback).
    fn config(&self, name: &str, listen: &str, control: &str, tls: bool) -> PathBuf {
        let mut text = format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\nkey_file = {:?}\n{}\n[control]\n\
             listen = {listen:?}\ntoken_file = {:?}\n{control}\n",
            s(&self.path(&format!("data-{name}"))),
            s(&self.path("standby.key")),
            if tls {
                ""
            } else {
                "insecure_plaintext = true\n"
            },
            s(&self.path("control.token")),
        );
        if tls {
            text += &format!(
                "\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                s(&self.ca()),
                s(&self.path("pki/site-b.pem")),
                s(&self.path("pki/site-b.key")),
            );
        }
        let path = self.path(&format!("{name}.toml"));
        std::fs::write(&path, text).expect("write config");
        path
    }
}

/// A running `ferry standby`; killed on drop.
struct Standby {
    child: Child,
    control: String,
}

impl Standby {
    fn start(config: &Path) -> Self {
        let mut child = ferry_cmd()
            .args(["standby", "--config", s(config)])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting ferry standby");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("readiness line");
        let Some((_, control)) = first.trim().split_once("; control API on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the standby did not serve a control API: {first:?}");
        };
        Standby {
            control: control.to_owned(),
            child,
        }
    }

    fn status(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/PID/status");
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/PID/status"))
    }

    fn rss_kib(&self) -> u64 {
        self.status("VmRSS:")
    }

    fn threads(&self) -> u64 {
        self.status("Threads:")
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ferry pair list --json` at `control`, with `extra` flags.
fn pair_list(site: &Site, control: &str, extra: &[&str]) -> Output {
    ferry_cmd()
        .args([
            "pair",
            "list",
            "--json",
            "--control",
            control,
            "--token-file",
        ])
        .arg(site.path("control.token"))
        .args(extra)
        .env_remove("FERRY_CA")
        .env_remove("FERRY_INSECURE_PLAINTEXT")
        .output()
        .expect("running ferry pair list")
}

fn pair_list_ok(site: &Site, control: &str, extra: &[&str]) {
    let out = pair_list(site, control, extra);
    assert!(
        out.status.success(),
        "pair list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

fn tls_to(site: &Site, control: &str) -> ferry_tls::TlsStream {
    let config = ferry_tls::config::client_config_ca_only(&site.ca()).expect("CA");
    let tcp = TcpStream::connect(control).expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    ferry_tls::TlsStream::connect(tcp, config, name, Instant::now() + Duration::from_secs(10))
        .expect("tls handshake with the control API")
}

/// Sends one raw request over TLS and returns the whole answer (the server closes).
fn raw_https(site: &Site, control: &str, request: &[u8]) -> String {
    let stream = tls_to(site, control);
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    (&stream).write_all(request).expect("send");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match (&stream).read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn a_huge_header_and_a_thousand_idle_connections_leave_the_standby_bounded() {
    let site = Site::new();
    let standby = Standby::start(&site.config("b", "127.0.0.1:0", "", true));
    pair_list_ok(&site, &standby.control, &["--ca", s(&site.ca())]);
    let (rss0, threads0) = (standby.rss_kib(), standby.threads());

    // One connection sends a 200 MiB header line after a valid TLS handshake.
    let stream = tls_to(&site, &standby.control);
    (&stream)
        .write_all(b"GET /v1/pairs HTTP/1.1\r\nHost: x\r\nX-Junk: ")
        .expect("request line");
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    for _ in 0..200 {
        if (&stream).write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    assert!(
        sent < 200 << 20,
        "the standby took a 200 MiB header line without closing the connection"
    );

    // A thousand idle connections from another address (127.0.0.2): no TLS, no bytes.
    let control: SocketAddr = standby.control.parse().expect("address");
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let socket = connect_from(Ipv4Addr::new(127, 0, 0, 2), control).expect("connect");
        idle.push(socket);
    }
    thread::sleep(Duration::from_millis(500));
    let (rss, threads) = (standby.rss_kib(), standby.threads());
    println!("RSS {rss0} -> {rss} KiB, threads {threads0} -> {threads}, header bytes sent {sent}");
    assert!(
        rss < rss0 + 64 * 1024,
        "the standby grew from {rss0} KiB to {rss} KiB"
    );
    assert!(
        threads <= threads0 + 4,
        "the standby went from {threads0} to {threads} threads"
    );
    // An operator's request gets through at once while the flood holds its sockets.
    let started = Instant::now();
    pair_list_ok(&site, &standby.control, &["--ca", s(&site.ca())]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a real request took {took:?}"
    );
    // Past the per-address cap, the flood's connections were closed at once; the rest
    // are closed at the handshake deadline (5 s).
    let open: Vec<&mut TcpStream> = idle
        .iter_mut()
        .filter_map(|socket| {
            socket.set_nonblocking(true).expect("nonblocking");
            let still_open = matches!(
                socket.read(&mut [0u8; 1]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            );
            still_open.then_some(socket)
        })
        .collect();
    assert!(
        open.len() <= 32,
        "{} connections from one address were kept open",
        open.len()
    );
    for socket in open {
        socket.set_nonblocking(false).expect("blocking");
        socket
            .set_read_timeout(Some(Duration::from_secs(8)))
            .expect("timeout");
        let answer = socket.read(&mut [0u8; 1]);
        assert!(
            matches!(&answer, Ok(0))
                || matches!(&answer, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "an idle connection outlived the handshake deadline: {answer:?}"
        );
    }
}

#[test]
fn plaintext_to_a_tls_listener_and_a_wrong_ca_are_refused_clearly() {
    let site = Site::new();
    let standby = Standby::start(&site.config("b", "127.0.0.1:0", "", true));

    let out = pair_list(&site, &standby.control, &["--insecure-plaintext"]);
    assert!(!out.status.success(), "plain HTTP got an answer from HTTPS");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plain HTTP"), "{err}");

    let mut tcp = TcpStream::connect(&standby.control).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tcp.write_all(b"GET /v1/pairs HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "a plaintext request was answered in HTTP: {}",
        String::from_utf8_lossy(&answer)
    );

    let other = Site::new();
    let out = pair_list(&site, &standby.control, &["--ca", s(&other.ca())]);
    assert!(!out.status.success(), "a server of another CA was trusted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown issuer") && err.contains(s(&other.ca())),
        "{err}"
    );

    let out = pair_list(
        &site,
        &standby.control,
        &["--ca", s(&site.path("nothing.pem"))],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ca or FERRY_CA"), "{err}");
}

#[test]
fn json_errors_and_the_body_limit_are_kept() {
    let site = Site::new();
    let standby = Standby::start(&site.config("b", "127.0.0.1:0", "", true));
    let token = site.token();
    let answer = raw_https(
        &site,
        &standby.control,
        format!("GET /v2/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(
        answer.contains(r#""error":"no endpoint /v2/x: the API lives under /v1"#)
            && answer.contains(r#""code":"not_found""#),
        "{answer}"
    );

    let answer = raw_https(
        &site,
        &standby.control,
        b"GET /v1/pairs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-token-0123456789\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("missing or wrong token"), "{answer}");

    let big = "y".repeat(20 << 10);
    let answer = raw_https(
        &site,
        &standby.control,
        format!("GET /v1/pairs HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    );
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "a 20 KiB header was taken: {answer}"
    );

    let body = "x".repeat(100 << 10);
    let answer = raw_https(
        &site,
        &standby.control,
        format!(
            "POST /v1/pairs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request body over 65536 bytes"), "{answer}");

    let answer = raw_https(
        &site,
        &standby.control,
        format!(
            "POST /v1/pairs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 9\r\nConnection: close\r\n\r\nnot json!"
        )
        .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("request body is not valid"), "{answer}");
}

/// A relay between a client and `target` that records every byte both ways.
fn relay(target: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    thread::spawn(move || {
        for client in listener.incoming().map_while(Result::ok) {
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            for (mut from, mut to) in [
                (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                ),
                (server, client),
            ] {
                let record = record.clone();
                thread::spawn(move || {
                    let mut buf = [0u8; 16 << 10];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        record.lock().expect("record").extend_from_slice(&buf[..n]);
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    (addr, seen)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_token_byte_crosses_loopback_in_clear() {
    let site = Site::new();
    let token = site.token();
    let standby = Standby::start(&site.config("b", "127.0.0.1:0", "", true));
    let (via, seen) = relay(standby.control.clone());
    pair_list_ok(&site, &via, &["--ca", s(&site.ca())]);
    let bytes = seen.lock().expect("record").clone();
    assert!(
        bytes.len() > 1000,
        "the relay saw only {} bytes",
        bytes.len()
    );
    assert!(
        !contains(&bytes, token.as_bytes()) && !contains(&bytes, b"Bearer"),
        "the token crossed the relay in clear"
    );

    // The capture is sound: over plain HTTP (loopback, asked for) the token shows.
    let plain =
        Standby::start(&site.config("plain", "127.0.0.1:0", "insecure_plaintext = true", false));
    let (via, seen) = relay(plain.control.clone());
    pair_list_ok(&site, &via, &["--insecure-plaintext"]);
    let bytes = seen.lock().expect("record").clone();
    assert!(
        contains(&bytes, token.as_bytes()),
        "the relay did not capture a plaintext token: the check above proves nothing"
    );
}

#[test]
fn plaintext_is_refused_off_loopback_and_unless_asked() {
    let site = Site::new();
    for (listen, control, tls, want) in [
        (
            "0.0.0.0:0",
            "insecure_plaintext = true",
            false,
            "only on a loopback listen",
        ),
        ("127.0.0.1:0", "", false, "ferry tls init"),
        ("0.0.0.0:0", "", false, "ferry tls issue"),
    ] {
        let config = site.config("refused", listen, control, tls);
        let out = ferry_cmd()
            .args(["standby", "--config", s(&config)])
            .output()
            .expect("running ferry standby");
        assert!(!out.status.success(), "{listen} {control:?} was served");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{listen} {control:?}: {err}");
    }
    let out = pair_list(&site, "10.1.2.3:7421", &["--insecure-plaintext"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only to a loopback address"), "{err}");
}

#[test]
fn a_silent_or_idle_tls_connection_is_closed_at_the_header_timeout() {
    let site = Site::new();
    let standby = Standby::start(&site.config("b", "127.0.0.1:0", "", true));
    let token = site.token();
    // One connection finishes its handshake and sends nothing; another sends one
    // request and then idles with keep-alive.
    let silent = tls_to(&site, &standby.control);
    let idle = tls_to(&site, &standby.control);
    (&idle)
        .write_all(
            format!("GET /v1/pairs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n")
                .as_bytes(),
        )
        .expect("request");
    let started = Instant::now();
    let mut answer = [0u8; 4096];
    let n = (&idle).read(&mut answer).expect("an answer");
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    for (what, stream) in [("silent", &silent), ("idle", &idle)] {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let end = (&*stream).read(&mut buf);
        let waited = started.elapsed();
        assert!(
            matches!(&end, Ok(0))
                || matches!(&end, Err(e) if e.kind() != std::io::ErrorKind::WouldBlock),
            "the {what} connection was not closed: {end:?}"
        );
        assert!(
            waited < Duration::from_secs(15),
            "the {what} connection was closed only after {waited:?}"
        );
    }
}
