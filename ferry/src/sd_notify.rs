//! Readiness for systemd (`Type=notify` units, the `sd_notify(3)` protocol): a service
//! started by systemd finds a datagram socket's address in `$NOTIFY_SOCKET` and sends it
//! newline-separated `KEY=VALUE` assignments, e.g. `READY=1` once it really serves.
//!
//! Outside systemd (`$NOTIFY_SOCKET` unset) nothing is sent. The address is a path, or,
//! when it starts with `@`, a name in the abstract namespace (what systemd uses when
//! `/run` is not writable). No crate needed: one `UnixDatagram` from std.

use anyhow::{Context, Result};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Tells systemd the service is ready, as [`ready`]; a failure is logged, not returned:
/// the service runs on, and systemd, never told, names the unit's start timeout.
pub(crate) fn ready_or_warn(status: &str) {
    if let Err(err) = ready(status) {
        tracing::warn!("cannot tell systemd that the service is ready: {err:#}");
    }
}

/// Tells systemd the service is ready, with a one-line status that `systemctl status`
/// shows. Returns whether systemd asked for it (`$NOTIFY_SOCKET` set).
fn ready(status: &str) -> Result<bool> {
    notify(&format!("READY=1\nSTATUS={status}"))
}

fn notify(message: &str) -> Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    }
    .with_context(|| format!("NOTIFY_SOCKET={} is not a socket address", path.display()))?;
    let socket = UnixDatagram::unbound().context("cannot create a socket to notify systemd")?;
    socket
        .send_to_addr(message.as_bytes(), &addr)
        .with_context(|| format!("cannot notify systemd at NOTIFY_SOCKET={}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test for both cases: the environment is process-wide.
    #[test]
    fn sends_ready_to_the_socket_named_by_notify_socket_and_nothing_without_it() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).expect("binding the notify socket");
        // SAFETY: no other test of this binary reads or writes NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        assert!(ready("listening on 127.0.0.1:7420").expect("notifying"));
        let mut buf = [0u8; 128];
        let n = receiver.recv(&mut buf).expect("receiving the notification");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=listening on 127.0.0.1:7420");

        // SAFETY: as above.
        unsafe { std::env::set_var("NOTIFY_SOCKET", "@ferry-test-no-such-socket") };
        let err = ready("x").expect_err("nobody listens on that abstract socket");
        assert!(
            format!("{err:#}").contains("NOTIFY_SOCKET=@ferry-test-no-such-socket"),
            "{err:#}"
        );

        // SAFETY: as above.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        assert!(!ready("x").expect("no socket, nothing to do"));
    }
}
