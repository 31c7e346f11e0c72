//! A site pair's own certificate authority: `ferry tls init` makes it, `ferry tls issue`
//! signs end-entity certificates with it.
//!
//! Files (PEM) in the CA directory:
//!
//! | file | what | mode |
//! |---|---|---|
//! | `ca.pem` | the CA certificate (ECDSA P-256, 10 years, basicConstraints cA, pathLen 0; subject `CN=ferry site-pair CA <16 hex digits>`) | 0644 |
//! | `ca.key` | its private key (PKCS#8) | 0600 |
//! | `NAME.pem` | an end-entity certificate for NAME (825 days by default) | 0644 |
//! | `NAME.key` | its private key (PKCS#8) | 0600 |
//!
//! Invariants:
//! - The directory is created 0700 when it is missing. Every file is written to a
//!   temporary file created with its final mode (set explicitly, so the umask does not
//!   matter; a key file is never readable by others, not even for a moment), fsynced,
//!   then moved into place; the directory is fsynced after.
//! - An existing CA, certificate or key is never replaced unless forced.
//! - NAME is a ferry name ([`ferry_wire::ids::validate_name`]) that is also a DNS name
//!   rustls accepts: it is the certificate's CN and first DNS SAN, and peers check it
//!   with [`crate::names`]. Each extra SAN is an IP SAN when it parses as an IP address,
//!   else a DNS SAN (it must be a valid DNS name).
//! - Every end-entity certificate has extended key usage serverAuth and clientAuth (a
//!   standby is a server to its agents and a client of its peer sites), and is checked to
//!   chain to the CA before it is written.

use crate::config::{self, ConfigError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, DnsName, PrivatePkcs8KeyDer, UnixTime};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// The CA certificate's file name in the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name in the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Validity of a CA made by [`init_ca`].
pub const CA_DAYS: u32 = 3650;
/// Default validity of an end-entity certificate (the CA/Browser Forum's old maximum).
pub const DEFAULT_DAYS: u32 = 825;
/// Longest validity [`issue`] grants.
pub const MAX_DAYS: u32 = CA_DAYS;
/// The start of a ferry CA's subject (its only attribute, a CN), followed by 16 hex
/// digits of its key's identifier: two CAs never share a subject, so a certificate of
/// another pair's CA is refused as "unknown issuer", not as a bad signature. [`issue`]
/// rebuilds rcgen's issuer from the CN it reads in `ca.pem`, and checks the result
/// chains to `ca.pem`.
const CA_COMMON_NAME: &str = "ferry site-pair CA";
/// How far back `notBefore` is set, for clocks a little behind ours.
const BACKDATE: Duration = Duration::minutes(10);

/// Why a CA or a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot create the CA directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} already exists: this directory holds a CA; pass --force to replace it \
         (every certificate it issued stops being trusted)"
    )]
    CaExists { path: PathBuf },
    #[error("{path} already exists; pass --force to replace it")]
    FileExists { path: PathBuf },
    #[error("{name:?} cannot name a certificate: {source}")]
    BadName {
        name: String,
        #[source]
        source: ferry_wire::ids::NameError,
    },
    #[error(
        "{name:?} cannot name a certificate: it is a valid ferry name but not a DNS name \
         (no empty labels: no leading, trailing or doubled '.'; labels of at most 63 \
         characters, not all digits at the end)"
    )]
    NotDnsName { name: String },
    #[error("--san {san:?} is neither an IP address nor a valid DNS name")]
    BadSan { san: String },
    #[error("a validity of {days} days is out of bounds: 1 to {MAX_DAYS}")]
    BadDays { days: u32 },
    #[error("the CA in {dir} cannot be used (make one with `ferry tls init --dir {dir}`)")]
    Ca {
        dir: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error("CA key {key} does not belong to the CA certificate {cert}")]
    CaKeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("CA key {path} is not a key ferry can sign with")]
    CaKey {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error(
        "{cert} was not made by `ferry tls init` ({reason}); issue certificates with the \
         tool that made that CA"
    )]
    ForeignCa { cert: PathBuf, reason: String },
    #[error("cannot make the {what}")]
    Generate {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The files [`init_ca`] or [`issue`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate (PEM, 0644).
    pub cert: PathBuf,
    /// Its private key (PEM, 0600).
    pub key: PathBuf,
}

/// What [`issue`] makes.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// The server or site the certificate names (CN and first DNS SAN).
    pub name: String,
    /// More names: IP addresses become IP SANs, anything else DNS SANs.
    pub sans: Vec<String>,
    /// Validity in days, 1 to [`MAX_DAYS`].
    pub days: u32,
    /// Replace an existing `NAME.pem`/`NAME.key`.
    pub force: bool,
}

impl IssueRequest {
    /// A request for `name` with no extra SANs and the default validity.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            sans: Vec::new(),
            days: DEFAULT_DAYS,
            force: false,
        }
    }
}

/// Checks that `name` can name a certificate: a ferry name that is also a DNS name.
pub fn check_cert_name(name: &str) -> Result<(), PkiError> {
    ferry_wire::ids::validate_name(name).map_err(|source| PkiError::BadName {
        name: name.to_owned(),
        source,
    })?;
    // A ferry name may hold "..", end in '.', or have a last label of digits only;
    // none of these is a DNS name rustls matches.
    if DnsName::try_from(name).is_err() || name.ends_with('.') {
        return Err(PkiError::NotDnsName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Makes a CA in `dir` (created 0700 if missing): `ca.pem` (0644) and `ca.key` (0600).
/// Refuses when either exists, unless `force`.
pub fn init_ca(dir: &Path, force: bool) -> Result<Issued, PkiError> {
    create_dir(dir)?;
    let files = Issued {
        cert: dir.join(CA_CERT_FILE),
        key: dir.join(CA_KEY_FILE),
    };
    if !force {
        for path in [&files.cert, &files.key] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(PkiError::CaExists { path: path.clone() });
            }
        }
    }
    let key = KeyPair::generate().map_err(|source| PkiError::Generate {
        what: "CA key",
        source,
    })?;
    let id: String = CertificateParams::default()
        .key_identifier(&key)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut params = ca_params(&format!("{CA_COMMON_NAME} {id}"));
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(CA_DAYS));
    let cert = params
        .self_signed(&key)
        .map_err(|source| PkiError::Generate {
            what: "CA certificate",
            source,
        })?;
    // The key first: a crash in between leaves a key without a certificate, never a
    // certificate whose key is lost.
    write_file(&files.key, key.serialize_pem().as_bytes(), 0o600, force)?;
    write_file(&files.cert, cert.pem().as_bytes(), 0o644, force)?;
    Ok(files)
}

/// Issues a certificate for `request.name`, signed by the CA in `dir`: writes
/// `dir/NAME.pem` (0644) and `dir/NAME.key` (0600).
pub fn issue(dir: &Path, request: &IssueRequest) -> Result<Issued, PkiError> {
    check_cert_name(&request.name)?;
    if !(1..=MAX_DAYS).contains(&request.days) {
        return Err(PkiError::BadDays { days: request.days });
    }
    let mut sans = vec![SanType::DnsName(dns_san(&request.name)?)];
    for san in &request.sans {
        let san_type = match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if DnsName::try_from(san.as_str()).is_ok() => SanType::DnsName(dns_san(san)?),
            Err(_) => return Err(PkiError::BadSan { san: san.clone() }),
        };
        if !sans.contains(&san_type) {
            sans.push(san_type);
        }
    }
    let files = Issued {
        cert: dir.join(format!("{}.pem", request.name)),
        key: dir.join(format!("{}.key", request.name)),
    };
    if !request.force {
        for path in [&files.cert, &files.key] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(PkiError::FileExists { path: path.clone() });
            }
        }
    }
    let (ca_der, issuer) = load_issuer(dir)?;

    let key = KeyPair::generate().map_err(|source| PkiError::Generate {
        what: "certificate key",
        source,
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, request.name.as_str());
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(request.days));
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| PkiError::Generate {
            what: "certificate",
            source,
        })?;
    check_issued(dir, cert.der(), &ca_der)?;
    write_file(
        &files.key,
        key.serialize_pem().as_bytes(),
        0o600,
        request.force,
    )?;
    write_file(&files.cert, cert.pem().as_bytes(), 0o644, request.force)?;
    Ok(files)
}

/// The parameters of the ferry CA named `common_name`; [`issue`] rebuilds its issuer
/// from them.
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn dns_san(name: &str) -> Result<rcgen::string::Ia5String, PkiError> {
    rcgen::string::Ia5String::try_from(name).map_err(|_| PkiError::BadSan {
        san: name.to_owned(),
    })
}

/// Loads the CA of `dir`: its certificate and an issuer signing with its key.
pub(crate) fn load_issuer(
    dir: &Path,
) -> Result<(CertificateDer<'static>, Issuer<'static, KeyPair>), PkiError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let ca = |source| PkiError::Ca {
        dir: dir.to_owned(),
        source,
    };
    let ca_der = config::load_ca_certs(&cert_path)
        .map_err(ca)?
        .into_iter()
        .next()
        .ok_or_else(|| {
            ca(ConfigError::NotACa {
                path: cert_path.clone(),
            })
        })?;
    let key_der = config::load_private_key(&key_path).map_err(ca)?;
    let rustls::pki_types::PrivateKeyDer::Pkcs8(pkcs8) = key_der else {
        return Err(PkiError::CaKey {
            path: key_path,
            source: rcgen::Error::CouldNotParseKeyPair,
        });
    };
    let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8.secret_pkcs8_der().to_vec());
    let key = KeyPair::try_from(&pkcs8).map_err(|source| PkiError::CaKey {
        path: key_path.clone(),
        source,
    })?;
    let spki = webpki::EndEntityCert::try_from(&ca_der)
        .map(|c| c.subject_public_key_info())
        .map_err(|e| PkiError::ForeignCa {
            cert: cert_path.clone(),
            reason: format!("it cannot be parsed: {e}"),
        })?;
    if spki.as_ref() != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
        return Err(PkiError::CaKeyMismatch {
            key: key_path,
            cert: cert_path,
        });
    }
    let common_name = crate::x509::subject_common_name(&ca_der)
        .filter(|cn| cn.starts_with(CA_COMMON_NAME))
        .ok_or_else(|| PkiError::ForeignCa {
            cert: cert_path.clone(),
            reason: format!("its subject is not one CN starting {CA_COMMON_NAME:?}"),
        })?;
    Ok((ca_der, Issuer::new(ca_params(&common_name), key)))
}

/// Checks that the certificate just made chains to the CA certificate, for both usages.
fn check_issued(
    dir: &Path,
    cert: &CertificateDer<'static>,
    ca: &CertificateDer<'static>,
) -> Result<(), PkiError> {
    let foreign = |reason: String| PkiError::ForeignCa {
        cert: dir.join(CA_CERT_FILE),
        reason,
    };
    let anchor = webpki::anchor_from_trusted_cert(ca)
        .map_err(|e| foreign(format!("it cannot be a trust anchor: {e}")))?;
    let leaf = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| foreign(format!("a certificate it signs cannot be parsed: {e}")))?;
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(&anchor),
            &[],
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .map_err(|e| foreign(format!("a certificate it signs does not verify: {e}")))?;
    }
    Ok(())
}

/// Creates `dir` with mode 0700 (whatever the umask) when it is missing.
fn create_dir(dir: &Path) -> Result<(), PkiError> {
    let failed = |source| PkiError::CreateDir {
        path: dir.to_owned(),
        source,
    };
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(failed(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "it exists and is not a directory",
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(e)),
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(failed)
}

/// Writes `bytes` to `path` with `mode`: a temporary file created with that mode (set
/// again explicitly, so the umask does not matter), fsynced, moved into place (replacing
/// an existing file only when `replace`), then the directory fsynced.
fn write_file(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> Result<(), PkiError> {
    let failed = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        failed(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o600)
            .open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        if replace {
            fs::rename(&tmp, path)?;
        } else {
            // hard_link fails if `path` appeared meanwhile: never replace unless asked.
            fs::hard_link(&tmp, path)?;
            fs::remove_file(&tmp)?;
        }
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").mode() & 0o777
    }

    /// Runs `f` with the process umask set to `mask` (tests in this module that need a
    /// umask hold this lock).
    fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: umask only swaps the process's file mode creation mask.
        let old = unsafe { libc::umask(mask) };
        let out = f();
        // SAFETY: as above; restores the previous mask.
        unsafe { libc::umask(old) };
        out
    }

    #[test]
    fn init_makes_a_private_ca_whatever_the_umask() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for (mask, sub) in [(0o000, "open"), (0o077, "strict"), (0o022, "usual")] {
            let dir = tmp.path().join(sub).join("pki");
            let files = with_umask(mask, || init_ca(&dir, false)).expect("init");
            assert_eq!(
                mode(&dir),
                0o700,
                "CA directory mode under umask {mask:03o}"
            );
            assert_eq!(
                mode(&files.key),
                0o600,
                "ca.key mode under umask {mask:03o}"
            );
            assert_eq!(
                mode(&files.cert),
                0o644,
                "ca.pem mode under umask {mask:03o}"
            );
            let ca = config::load_ca_certs(&files.cert).expect("ca.pem is a CA");
            assert_eq!(ca.len(), 1);
        }
    }

    #[test]
    fn init_refuses_to_replace_a_ca_unless_forced() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = init_ca(tmp.path(), false).expect("init");
        let before = fs::read(&files.key).expect("read key");
        let err = init_ca(tmp.path(), false).expect_err("a second init replaced the CA");
        assert!(
            err.to_string().contains("already exists") && err.to_string().contains("--force"),
            "{err}"
        );
        assert_eq!(
            fs::read(&files.key).expect("read key"),
            before,
            "key changed"
        );
        init_ca(tmp.path(), true).expect("forced init");
        assert_ne!(
            fs::read(&files.key).expect("read key"),
            before,
            "force kept the key"
        );
    }

    #[test]
    fn issue_writes_a_private_key_and_a_certificate_that_chains_to_the_ca() {
        let tmp = tempfile::tempdir().expect("tempdir");
        init_ca(tmp.path(), false).expect("init");
        let mut request = IssueRequest::new("site-b");
        request.sans = vec!["127.0.0.1".into(), "standby.example".into(), "::1".into()];
        let issued = with_umask(0o000, || issue(tmp.path(), &request)).expect("issue");
        assert_eq!(issued.cert, tmp.path().join("site-b.pem"));
        assert_eq!(mode(&issued.key), 0o600, "key mode under umask 000");
        assert_eq!(mode(&issued.cert), 0o644, "cert mode");
        let chain = config::load_certs(&issued.cert).expect("cert");
        let leaf = webpki::EndEntityCert::try_from(&chain[0]).expect("parses");
        let names: Vec<&str> = leaf.valid_dns_names().collect();
        assert_eq!(names, ["site-b", "standby.example"]);
        let ip = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("ip");
        leaf.verify_is_valid_for_subject_name(&ip)
            .expect("the IP SAN is in the certificate");
        assert!(
            !crate::x509::is_ca_certificate(&chain[0]),
            "a leaf is no CA"
        );
        let files = config::TlsFiles {
            ca: tmp.path().join(CA_CERT_FILE),
            cert: issued.cert.clone(),
            key: issued.key.clone(),
        };
        files
            .load_identity()
            .expect("the issued pair loads and chains to the CA");
        let err = issue(tmp.path(), &request).expect_err("re-issue replaced a key");
        assert!(err.to_string().contains("--force"), "{err}");
    }

    #[test]
    fn issue_refuses_names_that_are_not_ferry_names_or_dns_names() {
        let tmp = tempfile::tempdir().expect("tempdir");
        init_ca(tmp.path(), false).expect("init");
        for (name, why) in [
            ("1web", "must start with a letter"),
            ("web/1", "contains"),
            ("", "empty"),
            ("web..1", "not a DNS name"),
            ("web.", "not a DNS name"),
        ] {
            let err =
                issue(tmp.path(), &IssueRequest::new(name)).expect_err("a bad name was accepted");
            assert!(err.to_string().contains(why), "{name:?}: {err}");
        }
        let mut request = IssueRequest::new("web-1");
        request.sans = vec!["not a host".into()];
        let err = issue(tmp.path(), &request).expect_err("a bad SAN was accepted");
        assert!(err.to_string().contains("not a host"), "{err}");
        request.sans.clear();
        request.days = 0;
        let err = issue(tmp.path(), &request).expect_err("0 days accepted");
        assert!(err.to_string().contains("1 to 3650"), "{err}");
        let names: Vec<_> = fs::read_dir(tmp.path())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "refusals left files behind: {names:?}");
    }

    #[test]
    fn issue_refuses_a_ca_key_others_can_read_or_a_mismatched_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        init_ca(tmp.path(), false).expect("init");
        let key = tmp.path().join(CA_KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).expect("chmod");
        let err = issue(tmp.path(), &IssueRequest::new("web-1")).expect_err("0640 key used");
        let chain = ferry_wire::error_chain(&err);
        assert!(chain.contains("chmod 600"), "{chain}");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
        let other = tempfile::tempdir().expect("tempdir");
        init_ca(other.path(), false).expect("init");
        fs::copy(other.path().join(CA_KEY_FILE), &key).expect("swap the key");
        let err = issue(tmp.path(), &IssueRequest::new("web-1")).expect_err("wrong key used");
        assert!(err.to_string().contains("does not belong"), "{err}");
    }
}
