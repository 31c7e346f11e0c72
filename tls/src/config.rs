//! The `[tls]` table of ferry's configs and the rustls configs built from it.
//!
//! ```toml
//! [tls]
//! ca = "/etc/ferry/tls/ca.pem"      # the site pair's CA (PEM); peers must chain to it
//! cert = "/etc/ferry/tls/web-1.pem" # this side's certificate (PEM, end-entity first)
//! key = "/etc/ferry/tls/web-1.key"  # its private key (PEM, PKCS#8/SEC1/PKCS#1), mode 0600
//! ```
//!
//! All three are required and must be distinct files. Loading refuses, naming the file:
//! a private key that is not a regular file or that group or others may access (say
//! `chmod 600 …`), a file that is not PEM, a certificate file with no certificate, a key
//! that does not belong to the certificate, a CA file with no CA certificate (one whose
//! basicConstraints say `cA`), and a certificate that does not chain to the CA or is
//! outside its validity period (caught at start rather than at the first peer).
//!
//! The builders return TLS 1.3-only configs on ferry's *ring* provider, with session
//! resumption off (every session runs a full handshake, so exported keying material is
//! fresh per connection):
//! - [`TlsFiles::server_config_client_required`]: the data link and peer sites; a client
//!   without a certificate chaining to the CA is refused during the handshake.
//! - [`TlsFiles::server_config_client_optional`]: the control API; the CLI authenticates
//!   by token, peer sites present their certificate (it is verified if presented).
//! - [`TlsFiles::client_config`]: agents and peer sites, presenting this side's certificate.
//! - [`client_config_ca_only`]: the `ferry` CLI, trusting only the CA (`--ca`/`FERRY_CA`).

use crate::{PROTOCOL_VERSIONS, provider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest PEM file read (certificates, keys, CA bundles).
pub const MAX_PEM_FILE: u64 = 1 << 20;

/// The `[tls]` table: the CA, this side's certificate and its private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The site pair's CA certificate(s), PEM. Required.
    pub ca: PathBuf,
    /// This side's certificate chain, PEM, end-entity first. Required.
    pub cert: PathBuf,
    /// The certificate's private key, PEM, mode 0600 or stricter. Required.
    pub key: PathBuf,
}

/// What is wrong with a `[tls]` table or the files it names. All of these are permanent:
/// the operator must fix a file or the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("[tls] {field} is empty; it must name a PEM file")]
    EmptyPath { field: &'static str },
    #[error("[tls] {first} and {second} both name {path}; they must be different files")]
    SamePath {
        first: &'static str,
        second: &'static str,
        path: PathBuf,
    },
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path} is not a regular file")]
    NotRegular { what: &'static str, path: PathBuf },
    #[error(
        "private key {path} has mode {mode:04o}: group or others can access it; run \
         `chmod 600 {path}` (and consider the key exposed)"
    )]
    KeyMode { path: PathBuf, mode: u32 },
    #[error("{what} {path} is {len} bytes long; a PEM file of ferry's is at most {MAX_PEM_FILE}")]
    TooLarge {
        what: &'static str,
        path: PathBuf,
        len: u64,
    },
    #[error("{what} {path} is not valid PEM")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("certificate file {path} holds no certificate (no `BEGIN CERTIFICATE` block)")]
    NoCertificate { path: PathBuf },
    #[error("private key file {path} holds no private key (no `BEGIN … PRIVATE KEY` block)")]
    NoKey { path: PathBuf },
    #[error(
        "CA file {path} holds no CA certificate (none says basicConstraints cA); point `ca` \
         at the ca.pem made by `ferry tls init`, not at an end-entity certificate"
    )]
    NotACa { path: PathBuf },
    #[error("private key {key} cannot be used")]
    BadKey {
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("private key {key} does not belong to the certificate in {cert}")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("certificate {cert} is not valid under the CA in {ca}: {reason}")]
    NotIssuedByCa {
        cert: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error("cannot build the tls {what} config")]
    Rustls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the verifier of client certificates for the CA in {ca}")]
    Verifier {
        ca: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// This side's certificate chain and private key, checked to belong together.
pub struct Identity {
    /// End-entity first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of `chain[0]`.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is never shown.
        f.debug_struct("Identity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl TlsFiles {
    /// Checks the table itself (no file is read): three non-empty, distinct paths.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fields = [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)];
        for (field, path) in fields {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::EmptyPath { field });
            }
        }
        for (i, (first, a)) in fields.iter().enumerate() {
            for (second, b) in &fields[i + 1..] {
                if a == b {
                    return Err(ConfigError::SamePath {
                        first,
                        second,
                        path: (*a).clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Loads the CA into a root store (refusing a file with no CA certificate).
    pub fn load_roots(&self) -> Result<RootCertStore, ConfigError> {
        load_ca(&self.ca)
    }

    /// Loads this side's certificate and key, checks they belong together, that the
    /// certificate chains to the CA and that it is valid now.
    pub fn load_identity(&self) -> Result<Identity, ConfigError> {
        let chain = load_certs(&self.cert)?;
        let key = load_private_key(&self.key)?;
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).map_err(
            |source| match source {
                rustls::Error::InconsistentKeys(_) => ConfigError::KeyMismatch {
                    key: self.key.clone(),
                    cert: self.cert.clone(),
                },
                source => ConfigError::BadKey {
                    key: self.key.clone(),
                    source,
                },
            },
        )?;
        let cas = load_ca_certs(&self.ca)?;
        check_chain(&chain, &cas).map_err(|reason| ConfigError::NotIssuedByCa {
            cert: self.cert.clone(),
            ca: self.ca.clone(),
            reason,
        })?;
        Ok(Identity { chain, key })
    }

    /// A server config that requires a client certificate chaining to the CA (the data
    /// link, peer sites).
    pub fn server_config_client_required(&self) -> Result<Arc<ServerConfig>, ConfigError> {
        self.server_config(false)
    }

    /// A server config where a client certificate is optional but verified when presented
    /// (the control API: the CLI authenticates by token, peer sites present theirs).
    pub fn server_config_client_optional(&self) -> Result<Arc<ServerConfig>, ConfigError> {
        self.server_config(true)
    }

    fn server_config(&self, optional: bool) -> Result<Arc<ServerConfig>, ConfigError> {
        let identity = self.load_identity()?;
        let roots = Arc::new(self.load_roots()?);
        let provider = provider();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
        let verifier = if optional {
            verifier.allow_unauthenticated()
        } else {
            verifier
        };
        let verifier = verifier.build().map_err(|source| ConfigError::Verifier {
            ca: self.ca.clone(),
            source,
        })?;
        let rustls = |source| ConfigError::Rustls {
            what: "server",
            source,
        };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(rustls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain, identity.key)
            .map_err(rustls)?;
        // No resumption: every session is a full handshake with fresh keying material.
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(Arc::new(config))
    }

    /// A client config presenting this side's certificate (agents, peer sites).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, ConfigError> {
        let identity = self.load_identity()?;
        let roots = self.load_roots()?;
        let rustls = |source| ConfigError::Rustls {
            what: "client",
            source,
        };
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(rustls)?
            .with_root_certificates(roots)
            .with_client_auth_cert(identity.chain, identity.key)
            .map_err(rustls)?;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// A client config that trusts only the CA in `ca` and presents no certificate (the
/// `ferry` CLI: it authenticates by token).
pub fn client_config_ca_only(ca: &Path) -> Result<Arc<ClientConfig>, ConfigError> {
    let roots = load_ca(ca)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|source| ConfigError::Rustls {
            what: "client",
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Loads the CA file `path` as a root store: every certificate in it that is a CA
/// (basicConstraints cA); refuses a file with none.
pub fn load_ca(path: &Path) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in load_ca_certs(path)? {
        roots
            .add(cert)
            .map_err(|source| ConfigError::NotIssuedByCa {
                cert: path.to_owned(),
                ca: path.to_owned(),
                reason: format!("it cannot be a trust anchor: {source}"),
            })?;
    }
    Ok(roots)
}

/// The CA certificates of the CA file `path` (at least one).
pub fn load_ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let cas: Vec<_> = load_certs_as(path, "CA file")?
        .into_iter()
        .filter(|c| crate::x509::is_ca_certificate(c))
        .collect();
    if cas.is_empty() {
        return Err(ConfigError::NotACa {
            path: path.to_owned(),
        });
    }
    Ok(cas)
}

/// The certificates of the PEM file `path` (at least one), in file order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    load_certs_as(path, "certificate file")
}

fn load_certs_as(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let text = read_bounded(path, what, false)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ConfigError::Pem {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(ConfigError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Loads the private key of `path`: a regular file of mode 0600 or stricter, PEM.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let text = zeroize::Zeroizing::new(read_bounded(path, "private key file", true)?);
    load_key_from(path, &text)
}

/// The PEM text of the private key `path` (same checks as [`load_private_key`]), for
/// libraries that take a key only as PEM (ureq). Zeroized when dropped.
pub fn load_private_key_pem(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, ConfigError> {
    let text = zeroize::Zeroizing::new(read_bounded(path, "private key file", true)?);
    drop(load_key_from(path, &text)?);
    Ok(text)
}

fn load_key_from(path: &Path, text: &[u8]) -> Result<PrivateKeyDer<'static>, ConfigError> {
    match PrivateKeyDer::from_pem_slice(text) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(ConfigError::NoKey {
            path: path.to_owned(),
        }),
        Err(source) => Err(ConfigError::Pem {
            what: "private key file",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads at most [`MAX_PEM_FILE`] bytes of `path`; a `private` file must be a regular
/// file that neither group nor others may access (checked on the opened file).
fn read_bounded(path: &Path, what: &'static str, private: bool) -> Result<Vec<u8>, ConfigError> {
    let read = |source| ConfigError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(ConfigError::NotRegular {
            what,
            path: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o777;
    if private && mode & 0o077 != 0 {
        return Err(ConfigError::KeyMode {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > MAX_PEM_FILE {
        return Err(ConfigError::TooLarge {
            what,
            path: path.to_owned(),
            len: meta.len(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    Ok(bytes)
}

/// Checks that `chain[0]` chains (through `chain[1..]`) to one of `cas`, is valid now,
/// and may be used for both serverAuth and clientAuth if it says anything about usage;
/// the reason when not.
fn check_chain(
    chain: &[CertificateDer<'static>],
    cas: &[CertificateDer<'static>],
) -> Result<(), String> {
    let [leaf, intermediates @ ..] = chain else {
        return Err("the chain is empty".into());
    };
    let anchors = cas
        .iter()
        .map(|ca| webpki::anchor_from_trusted_cert(ca).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a CA certificate cannot be a trust anchor: {e}"))?;
    let leaf = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let now = UnixTime::now();
    // A certificate of ours is used on both ends of a link (agents and peer sites are
    // clients; standbys are servers), so both usages are checked.
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| crate::describe::describe_webpki(&e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> TlsFiles {
        TlsFiles {
            ca: "/etc/ferry/tls/ca.pem".into(),
            cert: "/etc/ferry/tls/web-1.pem".into(),
            key: "/etc/ferry/tls/web-1.key".into(),
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        tls: TlsFiles,
    }

    #[test]
    fn the_tls_table_round_trips_through_toml() {
        let outer = Outer { tls: files() };
        let text = toml::to_string(&outer).expect("serializes");
        assert!(text.contains("[tls]"), "{text}");
        let back: Outer = toml::from_str(&text).expect("parses");
        assert_eq!(back, outer, "round trip changed the table:\n{text}");
        back.tls.validate().expect("a valid table");
    }

    #[test]
    fn unknown_and_missing_fields_are_refused() {
        let extra = "[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\nkeys = \"d\"\n";
        let err = toml::from_str::<Outer>(extra).expect_err("unknown field accepted");
        assert!(err.to_string().contains("keys"), "{err}");
        let missing = "[tls]\nca = \"a\"\ncert = \"b\"\n";
        let err = toml::from_str::<Outer>(missing).expect_err("missing key accepted");
        assert!(err.to_string().contains("key"), "{err}");
    }

    #[test]
    fn validate_refuses_empty_and_shared_paths() {
        let mut f = files();
        f.cert = PathBuf::new();
        let err = f.validate().expect_err("empty cert accepted");
        assert!(err.to_string().contains("[tls] cert is empty"), "{err}");
        let mut f = files();
        f.key = f.cert.clone();
        let err = f.validate().expect_err("key = cert accepted");
        assert!(err.to_string().contains("cert and key both name"), "{err}");
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;
    use crate::pki::{CA_CERT_FILE, IssueRequest, init_ca, issue};
    use std::os::unix::fs::PermissionsExt;

    fn issued() -> (tempfile::TempDir, TlsFiles) {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), false).expect("init");
        let web = issue(dir.path(), &IssueRequest::new("web-1")).expect("issue");
        let files = TlsFiles {
            ca: dir.path().join(CA_CERT_FILE),
            cert: web.cert,
            key: web.key,
        };
        (dir, files)
    }

    #[test]
    fn a_readable_key_is_refused_saying_chmod() {
        let (_dir, files) = issued();
        files.client_config().expect("a good table loads");
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let err = files.client_config().expect_err("a 0644 key was used");
        assert!(
            err.to_string()
                .contains(&format!("chmod 600 {}", files.key.display())),
            "{err}"
        );
    }

    #[test]
    fn wrong_files_are_refused_naming_them() {
        let (dir, files) = issued();
        let other = issue(dir.path(), &IssueRequest::new("web-2")).expect("issue");

        let mut swapped = files.clone();
        swapped.key = other.key.clone();
        let err = swapped.load_identity().expect_err("a foreign key was used");
        assert!(matches!(err, ConfigError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("web-2.key"), "{err}");

        let mut leaf_as_ca = files.clone();
        leaf_as_ca.ca = other.cert.clone();
        let err = leaf_as_ca.load_roots().expect_err("a leaf was taken as CA");
        assert!(matches!(err, ConfigError::NotACa { .. }), "{err}");
        assert!(err.to_string().contains("web-2.pem"), "{err}");

        let mut key_as_cert = files.clone();
        key_as_cert.cert = dir.path().join("empty.pem");
        std::fs::write(&key_as_cert.cert, "no pem here\n").expect("write");
        let err = key_as_cert
            .load_identity()
            .expect_err("no certificate accepted");
        assert!(matches!(err, ConfigError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("empty.pem"), "{err}");

        let stranger = tempfile::tempdir().expect("tempdir");
        init_ca(stranger.path(), false).expect("init");
        let mut foreign_ca = files;
        foreign_ca.ca = stranger.path().join(CA_CERT_FILE);
        let err = foreign_ca
            .load_identity()
            .expect_err("a cert of another CA");
        assert!(err.to_string().contains("unknown issuer"), "{err}");
    }
}
