//! Challenge–response authentication between an agent and a standby, with the server's
//! auth key (each server has its own: [`crate::keys`]). Both sides prove they hold the
//! key; neither ever sends it. It is the second factor beside the TLS client
//! certificate, and it is bound to the TLS session: the proofs cover the session's
//! exported keying material (RFC 8446 §7.5, label [`EXPORTER_LABEL`]), so a relay that
//! terminates TLS towards each side cannot splice the two handshakes.
//!
//! ```text
//! agent                                   standby
//!   Hello { server, client_nonce }   ──▶
//!                                    ◀──  Challenge { server_nonce, standby_proof }
//!   Authenticate { agent_proof }     ──▶
//!                                    ◀──  Welcome { last_durable } | Error
//! ```
//!
//! proof = HMAC-SHA256(auth key, role label ‖ server name length (1 byte) ‖ server name
//! ‖ client_nonce ‖ server_nonce ‖ channel), with distinct labels for the two roles so
//! that one side's proof can never be replayed as the other's. Nonces are 32 random
//! bytes, fresh per connection; `channel` is the TLS exporter's 32 bytes.

use crate::ids::ServerId;
use crate::keys::AuthKey;
use hmac::{Hmac, Mac};
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;

/// A random per-connection challenge value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce(pub [u8; 32]);

impl Nonce {
    pub fn random(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut n = [0u8; 32];
        rng.fill_bytes(&mut n);
        Self(n)
    }
}

/// An HMAC proving possession of the auth key for one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proof(pub [u8; 32]);

/// Which side of the link a proof speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    Standby,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Agent => b"ferry agent proof v2",
            Role::Standby => b"ferry standby proof v2",
        }
    }
}

/// The TLS exporter label whose output binds the proofs to the session.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-ferry-link-auth-v2";

/// The TLS session's exported keying material ([`EXPORTER_LABEL`], no context).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel(pub [u8; 32]);

/// The proof-relevant facts of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    pub server: &'a ServerId,
    pub client_nonce: &'a Nonce,
    pub server_nonce: &'a Nonce,
    pub channel: &'a Channel,
}

fn keyed(key: &AuthKey, role: Role, ex: &Exchange<'_>) -> Hmac<Sha256> {
    let name = ex.server.as_str().as_bytes();
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key.expose()).expect("HMAC takes any key length");
    mac.update(role.label());
    // A ServerId is at most 60 bytes, so its length fits one byte.
    mac.update(&[u8::try_from(name.len()).unwrap_or(u8::MAX)]);
    mac.update(name);
    mac.update(&ex.client_nonce.0);
    mac.update(&ex.server_nonce.0);
    mac.update(&ex.channel.0);
    mac
}

/// The proof `role` sends in exchange `ex`.
pub fn prove(key: &AuthKey, role: Role, ex: &Exchange<'_>) -> Proof {
    Proof(keyed(key, role, ex).finalize().into_bytes().into())
}

/// Whether `proof` is what `role` holding `key` would send in `ex` (constant time).
pub fn check(key: &AuthKey, role: Role, ex: &Exchange<'_>, proof: &Proof) -> bool {
    keyed(key, role, ex).verify_slice(&proof.0).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    #[test]
    fn proofs_check_only_for_the_same_key_role_server_nonces_and_channel() {
        let (a, b) = (
            ServerId::new("web-1").unwrap(),
            ServerId::new("web-2").unwrap(),
        );
        let master = MasterKey::from_bytes([1; 32]);
        let key = master.host_key(&a).keys().ingest.auth;
        let other = master.host_key(&b).keys().ingest.auth;
        let (n1, n2, n3) = (Nonce([1; 32]), Nonce([2; 32]), Nonce([3; 32]));
        let (c1, c2) = (Channel([5; 32]), Channel([6; 32]));
        let ex = Exchange {
            server: &a,
            client_nonce: &n1,
            server_nonce: &n2,
            channel: &c1,
        };
        let proof = prove(&key, Role::Agent, &ex);
        assert!(check(&key, Role::Agent, &ex, &proof));
        assert!(
            !check(&other, Role::Agent, &ex, &proof),
            "another server's key accepted"
        );
        assert!(
            !check(&key, Role::Standby, &ex, &proof),
            "agent proof accepted as standby's"
        );
        let changed = [
            Exchange { server: &b, ..ex },
            Exchange {
                client_nonce: &n3,
                ..ex
            },
            Exchange {
                server_nonce: &n3,
                ..ex
            },
            Exchange { channel: &c2, ..ex },
        ];
        for c in changed {
            assert!(
                !check(&key, Role::Agent, &c, &proof),
                "proof replayed into {c:?}"
            );
        }
    }
}
