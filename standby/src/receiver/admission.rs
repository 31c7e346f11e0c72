//! Who may be in the data port's handshake: at most [`MAX_HANDSHAKES`] unauthenticated
//! connections at once, at most [`MAX_PER_ADDRESS`] of them from one address; when all
//! slots are taken, the oldest unfinished handshake is cut to admit the new connection.
//!
//! Why the oldest is cut rather than the newcomer refused: an honest agent finishes its
//! handshake in milliseconds, so it is never the oldest for long. To push it out, peers
//! holding handshakes open must open [`MAX_HANDSHAKES`] connections within one honest
//! handshake, from at least `MAX_HANDSHAKES / MAX_PER_ADDRESS` addresses. Refusing the
//! newcomer (the earlier rule) let 64 slow peers lock every agent out until the
//! handshake deadline freed a slot, and then race it for the slot.
//!
//! Invariant: a connection counts against the limits from [`Admission::admit`] until
//! its [`Ticket`] is done or dropped, or it is cut; a cut connection's socket is shut
//! down, so its session thread ends at its next read or write.

use std::collections::BTreeMap;
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};

/// Connections allowed to be in the handshake at once, so that unauthenticated peers
/// cannot make the standby hold unbounded threads and buffers.
pub const MAX_HANDSHAKES: usize = 64;

/// Connections from one address allowed to be in the handshake at once (agents behind
/// one NAT reconnecting together stay well under it: a handshake takes milliseconds).
pub const MAX_PER_ADDRESS: usize = 8;

/// Why a connection was not admitted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("{MAX_PER_ADDRESS} connections from {0} are already in the handshake")]
    AddressFull(IpAddr),
    #[error("cannot watch the connection: {0}")]
    Io(#[from] std::io::Error),
}

/// The handshakes under way, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    inner: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    next: u64,
    /// By admission order: the first entry is the oldest.
    open: BTreeMap<u64, (IpAddr, TcpStream)>,
}

/// One admitted connection's place; released when done or dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: Option<u64>,
}

/// What admitting a connection did to the others.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Admitted {
    /// The address of the handshake cut to make room, if one was.
    pub(crate) cut: Option<IpAddr>,
}

impl Admission {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits `tcp` (from `peer`) to the handshake, cutting the oldest unfinished one if
    /// every slot is taken; refuses it if its address holds [`MAX_PER_ADDRESS`] already.
    pub(crate) fn admit(
        self: &Arc<Self>,
        tcp: &TcpStream,
        peer: IpAddr,
    ) -> Result<(Ticket, Admitted), Refused> {
        let peer = peer.to_canonical();
        let watch = tcp.try_clone()?;
        let mut pending = self.lock();
        if pending.open.values().filter(|(ip, _)| *ip == peer).count() >= MAX_PER_ADDRESS {
            return Err(Refused::AddressFull(peer));
        }
        let mut cut = None;
        if pending.open.len() >= MAX_HANDSHAKES
            && let Some((_, (ip, oldest))) = pending.open.pop_first()
        {
            let _ = oldest.shutdown(Shutdown::Both);
            cut = Some(ip);
        }
        let id = pending.next;
        pending.next += 1;
        pending.open.insert(id, (peer, watch));
        let ticket = Ticket {
            admission: self.clone(),
            id: Some(id),
        };
        Ok((ticket, Admitted { cut }))
    }
}

impl Ticket {
    /// Whether this connection was cut to admit a newer one.
    pub(crate) fn is_cut(&self) -> bool {
        self.id
            .is_some_and(|id| !self.admission.lock().open.contains_key(&id))
    }

    /// The handshake is over (authenticated or refused): the slot is free.
    pub(crate) fn done(&mut self) {
        if let Some(id) = self.id.take() {
            self.admission.lock().open.remove(&id);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{Ipv4Addr, TcpListener};

    /// A connected pair on loopback: (the standby's side, the peer's side).
    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn when_full_the_oldest_handshake_is_cut_and_the_newcomer_admitted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let admission = Arc::new(Admission::default());
        let mut held = Vec::new();
        for i in 0..MAX_HANDSHAKES {
            let (server, client) = pair(&listener);
            let source = ip(u8::try_from(i / MAX_PER_ADDRESS).unwrap());
            let (ticket, admitted) = admission.admit(&server, source).unwrap();
            assert_eq!(admitted.cut, None, "slot {i} was free");
            held.push((ticket, server, client));
        }
        let (server, _client) = pair(&listener);
        let (_ticket, admitted) = admission.admit(&server, ip(200)).unwrap();
        assert_eq!(admitted.cut, Some(ip(0)), "the oldest is cut");
        assert!(
            held[0].0.is_cut() && !held[1].0.is_cut(),
            "only the oldest knows it was cut"
        );
        assert_eq!(admission.lock().open.len(), MAX_HANDSHAKES);
        // The cut connection's peer sees the end; the next oldest's does not.
        let mut b = [0u8; 1];
        held[0]
            .2
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(held[0].2.read(&mut b).unwrap(), 0, "the cut peer is closed");
        held[1].2.set_nonblocking(true).unwrap();
        assert!(
            held[1].2.read(&mut b).is_err(),
            "the next oldest is still open"
        );
    }

    #[test]
    fn one_address_holds_at_most_its_share_and_a_finished_handshake_frees_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let admission = Arc::new(Admission::default());
        let mut held = Vec::new();
        for _ in 0..MAX_PER_ADDRESS {
            let (server, client) = pair(&listener);
            held.push((admission.admit(&server, ip(7)).unwrap().0, server, client));
        }
        let (server, _client) = pair(&listener);
        let refused = admission.admit(&server, ip(7)).unwrap_err();
        assert!(
            refused.to_string().contains("10.0.0.7"),
            "the refusal names the address: {refused}"
        );
        // The v4-mapped form of the same address is the same address.
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped());
        assert!(admission.admit(&server, mapped).is_err());
        // Another address is admitted; and once one handshake is done, 10.0.0.7 is too.
        let other = admission.admit(&server, ip(8)).unwrap();
        held[0].0.done();
        let again = admission.admit(&server, ip(7)).unwrap();
        assert_eq!(admission.lock().open.len(), MAX_PER_ADDRESS + 1);
        drop((other, again, held));
        assert!(
            admission.lock().open.is_empty(),
            "dropped tickets free their slots"
        );
    }
}
