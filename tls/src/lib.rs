//! ferry's TLS 1.3 layer: the site-pair CA and its certificates ([`pki`]), the `[tls]`
//! table of ferry's configs and the rustls configs built from it ([`config`]), the check
//! that a peer's certificate names the server or site it claims to be ([`names`]), and
//! the blocking TLS stream the data link runs on ([`stream`]), and the link's connection,
//! TLS or explicit loopback plaintext ([`link`]).
//!
//! Invariants every module keeps:
//! - TLS 1.3 only, on an explicit *ring* [`rustls::crypto::CryptoProvider`] built here
//!   ([`provider`]); no process-wide default provider is ever installed.
//! - Private keys are read only from regular files of mode 0600 (or stricter) and written
//!   only with mode 0600 from the moment the file exists.
//! - Every refusal names the file, the peer or the name it is about.

pub mod config;
mod describe;
pub mod link;
pub mod names;
pub mod pki;
pub mod stream;
mod x509;

pub use config::{ConfigError, TlsFiles};
pub use link::{Conn, LinkConnError, LinkListen, LinkTls, is_loopback};
pub use names::{NameError, check_peer_name, peer_dns_names};
pub use pki::{IssueRequest, Issued, PkiError};
pub use stream::{StreamError, TlsStream};

use std::sync::Arc;

/// The only crypto provider ferry's TLS uses: *ring*, with its TLS 1.3 cipher suites
/// (AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305) and key exchange groups (X25519,
/// P-256, P-384). Its TLS 1.2 suites are removed, so even a config built elsewhere with
/// every protocol version enabled (ureq's) can only negotiate TLS 1.3.
#[must_use]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| matches!(s, rustls::SupportedCipherSuite::Tls13(_)));
    Arc::new(provider)
}

/// What a rustls error means for an operator (a sentence naming the likely cause: an
/// unknown issuer, an expired certificate, a peer that does not speak TLS, …).
#[must_use]
pub fn describe_tls_error(e: &rustls::Error) -> String {
    describe::describe(e)
}

/// The protocol versions ferry speaks: TLS 1.3 and nothing else.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
