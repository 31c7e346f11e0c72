//! The data link's connection: a TLS 1.3 session with mutual certificates, or — only
//! to and from loopback addresses, and only when a config asks for it explicitly —
//! plain TCP. [`Conn`] has the shape of a [`TcpStream`] (cloned for a reader and a
//! writer thread, shut down from a third, read timeouts during the handshake), so the
//! agent's link and the standby's receiver are written once for both.
//!
//! Invariants:
//! - A plaintext connection to or from a non-loopback address is never made
//!   ([`LinkTls::connect`] refuses to connect, [`LinkListen::check`] refuses to listen).
//! - [`Conn::channel`] is the TLS exporter (`ferry_wire::auth::EXPORTER_LABEL`) for TLS
//!   sessions and all
//!   zero for plaintext ones: the challenge–response covers it, so a relay that
//!   terminates TLS towards each side cannot splice two sessions.

use crate::stream::{StreamError, TlsStream};
use ferry_wire::auth::EXPORTER_LABEL;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How an agent connects.
#[derive(Clone)]
pub enum LinkTls {
    /// TLS, verifying the standby's certificate for `server_name` and presenting this
    /// side's (the config holds both).
    Tls {
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
    },
    /// Plain TCP, to a loopback address only.
    PlaintextLoopback,
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkTls::Tls { server_name, .. } => write!(f, "Tls({server_name:?})"),
            LinkTls::PlaintextLoopback => f.write_str("PlaintextLoopback"),
        }
    }
}

/// How a standby accepts.
#[derive(Clone)]
pub enum LinkListen {
    /// TLS, requiring a client certificate that chains to the CA.
    Tls(Arc<ServerConfig>),
    /// Plain TCP, on a loopback address only.
    PlaintextLoopback,
}

impl std::fmt::Debug for LinkListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkListen::Tls(_) => "Tls",
            LinkListen::PlaintextLoopback => "PlaintextLoopback",
        })
    }
}

/// Why a link connection could not be made or accepted.
#[derive(Debug, thiserror::Error)]
pub enum LinkConnError {
    #[error(
        "refusing plain TCP to or from {addr}: only loopback addresses may go without TLS. \
         Make a CA and certificates (`ferry tls init --dir pki`, `ferry tls issue --dir \
         pki --name NAME --san HOST`) and set `[tls] ca = …, cert = …, key = …`"
    )]
    PlaintextOffLoopback { addr: SocketAddr },
    #[error(transparent)]
    Tls(#[from] StreamError),
}

impl LinkConnError {
    /// Whether trying again may help (a slow or dropped handshake).
    pub fn is_retryable(&self) -> bool {
        match self {
            LinkConnError::PlaintextOffLoopback { .. } => false,
            LinkConnError::Tls(e) => e.is_retryable(),
        }
    }
}

/// Whether `ip` is a loopback address (an IPv4-mapped 127.x too): the one rule for
/// where plaintext may go, on the data link and the control API alike.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

impl LinkTls {
    /// Runs the client side on `tcp` (already connected) under the absolute `deadline`.
    pub fn connect(&self, tcp: TcpStream, deadline: Instant) -> Result<Conn, LinkConnError> {
        match self {
            LinkTls::Tls {
                config,
                server_name,
            } => Ok(Conn::Tls(TlsStream::connect(
                tcp,
                config.clone(),
                server_name.clone(),
                deadline,
            )?)),
            LinkTls::PlaintextLoopback => plaintext(tcp),
        }
    }
}

fn plaintext(tcp: TcpStream) -> Result<Conn, LinkConnError> {
    let addr = tcp.peer_addr().map_err(|source| {
        LinkConnError::Tls(StreamError::Io {
            peer: "(unknown peer)".into(),
            source,
        })
    })?;
    if !is_loopback(addr.ip()) {
        return Err(LinkConnError::PlaintextOffLoopback { addr });
    }
    Ok(Conn::Plain(tcp))
}

impl LinkListen {
    /// Refuses to listen in plaintext on anything but loopback.
    pub fn check(&self, listen: SocketAddr) -> Result<(), LinkConnError> {
        match self {
            LinkListen::PlaintextLoopback if !is_loopback(listen.ip()) => {
                Err(LinkConnError::PlaintextOffLoopback { addr: listen })
            }
            _ => Ok(()),
        }
    }

    /// Runs the server side on an accepted `tcp` under the absolute `deadline`.
    pub fn accept(&self, tcp: TcpStream, deadline: Instant) -> Result<Conn, LinkConnError> {
        match self {
            LinkListen::Tls(config) => {
                Ok(Conn::Tls(TlsStream::accept(tcp, config.clone(), deadline)?))
            }
            LinkListen::PlaintextLoopback => plaintext(tcp),
        }
    }
}

/// One link connection; clones share it.
#[derive(Debug)]
pub enum Conn {
    Tls(TlsStream),
    Plain(TcpStream),
}

impl Conn {
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Conn::Tls(s) => Conn::Tls(s.try_clone()?),
            Conn::Plain(s) => Conn::Plain(s.try_clone()?),
        })
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Conn::Tls(s) => s.shutdown(how),
            Conn::Plain(s) => s.shutdown(how),
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tls(s) => s.set_read_timeout(timeout),
            Conn::Plain(s) => s.set_read_timeout(timeout),
        }
    }

    /// Puts later reads under the absolute `deadline` (`None`: none). Over TLS every read
    /// is; over plain TCP (loopback only) each socket read gets the time left now.
    pub fn set_deadline(&self, deadline: Option<Instant>) -> io::Result<()> {
        match self {
            Conn::Tls(s) => s.set_deadline(deadline),
            Conn::Plain(s) => s.set_read_timeout(deadline.map(|d| {
                d.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1))
            })),
        }
    }

    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match self {
            Conn::Tls(s) => s.set_nodelay(nodelay),
            Conn::Plain(s) => s.set_nodelay(nodelay),
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Conn::Tls(s) => s.peer_addr(),
            Conn::Plain(s) => s.peer_addr(),
        }
    }

    /// The channel binding value: the TLS exporter, or zero without TLS.
    pub fn channel(&self) -> Result<[u8; 32], StreamError> {
        match self {
            Conn::Tls(s) => s.export_keying_material(EXPORTER_LABEL, None),
            Conn::Plain(_) => Ok([0; 32]),
        }
    }

    /// The DNS names of the peer's certificate (empty without TLS or certificate).
    pub fn peer_names(&self) -> Vec<String> {
        match self {
            Conn::Tls(s) => s
                .peer_certificates()
                .and_then(|c| c.first().map(crate::names::peer_dns_names))
                .unwrap_or_default(),
            Conn::Plain(_) => Vec::new(),
        }
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }
}

impl Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Conn::Tls(s) => (&*s).read(buf),
            Conn::Plain(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Conn::Tls(s) => (&*s).write(buf),
            Conn::Plain(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match *self {
            Conn::Tls(s) => (&*s).flush(),
            Conn::Plain(s) => (&*s).flush(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self).flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn plaintext_is_refused_off_loopback() {
        let off: SocketAddr = "10.1.2.3:7420".parse().unwrap();
        let err = LinkListen::PlaintextLoopback.check(off).unwrap_err();
        assert!(err.to_string().contains("ferry tls init"), "{err}");
        assert!(!err.is_retryable());
        for on in ["127.0.0.1:7420", "[::1]:7420", "127.3.4.5:1"] {
            LinkListen::PlaintextLoopback
                .check(on.parse().unwrap())
                .unwrap_or_else(|e| panic!("{on}: {e}"));
        }
    }

    #[test]
    fn a_plaintext_loopback_conn_carries_bytes_and_has_no_channel() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = LinkListen::PlaintextLoopback
                .accept(tcp, Instant::now() + Duration::from_secs(5))
                .unwrap();
            let mut buf = [0u8; 5];
            (&conn).read_exact(&mut buf).unwrap();
            buf
        });
        let conn = LinkTls::PlaintextLoopback
            .connect(
                TcpStream::connect(addr).unwrap(),
                Instant::now() + Duration::from_secs(5),
            )
            .unwrap();
        (&conn).write_all(b"hello").unwrap();
        assert_eq!(&t.join().unwrap(), b"hello");
        assert_eq!(conn.channel().unwrap(), [0; 32]);
        assert!(!conn.is_tls() && conn.peer_names().is_empty());
    }
}
