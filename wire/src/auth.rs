//! Challenge–response authentication between an agent and a standby, with the site
//! pair's auth key. Both sides prove they hold the key; neither ever sends it.
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
//! ‖ client_nonce ‖ server_nonce), with distinct labels for the two roles so that one
//! side's proof can never be replayed as the other's. Nonces are 32 random bytes, fresh
//! per connection.

use crate::ids::ServerId;
use crate::keys::AuthKey;
use hmac::{Hmac, Mac};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// A random per-connection challenge value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nonce(pub [u8; 32]);

impl Nonce {
    pub fn random(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut n = [0u8; 32];
        rng.fill_bytes(&mut n);
        Self(n)
    }
}

/// An HMAC proving possession of the auth key for one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
            Role::Agent => b"ferry agent proof v1",
            Role::Standby => b"ferry standby proof v1",
        }
    }
}

/// The proof-relevant facts of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    pub server: &'a ServerId,
    pub client_nonce: &'a Nonce,
    pub server_nonce: &'a Nonce,
}

fn keyed(key: &AuthKey, role: Role, ex: &Exchange<'_>) -> Hmac<Sha256> {
    let name = ex.server.as_str().as_bytes();
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key.expose()).expect("HMAC takes any key length");
    mac.update(role.label());
    mac.update(&[u8::try_from(name.len()).expect("server names are at most 60 bytes")]);
    mac.update(name);
    mac.update(&ex.client_nonce.0);
    mac.update(&ex.server_nonce.0);
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
    fn proofs_check_only_for_the_same_key_role_server_and_nonces() {
        let key = MasterKey::from_bytes([1; 32]).derive().auth;
        let other = MasterKey::from_bytes([2; 32]).derive().auth;
        let (a, b) = (
            ServerId::new("web-1").unwrap(),
            ServerId::new("web-2").unwrap(),
        );
        let (n1, n2, n3) = (Nonce([1; 32]), Nonce([2; 32]), Nonce([3; 32]));
        let ex = Exchange {
            server: &a,
            client_nonce: &n1,
            server_nonce: &n2,
        };
        let proof = prove(&key, Role::Agent, &ex);
        assert!(check(&key, Role::Agent, &ex, &proof));
        assert!(
            !check(&other, Role::Agent, &ex, &proof),
            "wrong key accepted"
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
        ];
        for c in changed {
            assert!(
                !check(&key, Role::Agent, &c, &proof),
                "proof replayed into {c:?}"
            );
        }
    }
}
