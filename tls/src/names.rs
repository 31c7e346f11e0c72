//! Whose certificate is on the other end: the check that a peer's end-entity
//! certificate (already verified to chain to the CA by the handshake) names the ferry
//! server or site it claims to be.
//!
//! A ferry name (an agent's server id, a peer's site name) is checked as a DNS name
//! against the certificate's subjectAltName entries, as webpki checks a server's name
//! (`EndEntityCert::verify_is_valid_for_subject_name`); the certificate's CN is not
//! consulted. `ferry tls issue --name NAME` puts NAME in the first DNS SAN.

use rustls::pki_types::{CertificateDer, DnsName, ServerName};

/// Why a peer's certificate does not speak for a name.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("the peer presented no certificate; {expected} must present one that names it")]
    NoCertificate { expected: String },
    #[error("{expected:?} is not a name a certificate can hold (not a DNS name)")]
    NotADnsName { expected: String },
    #[error("the peer's certificate cannot be parsed: {reason}")]
    Unparsable { expected: String, reason: String },
    #[error("the peer's certificate names {}, not {expected}", names_list(.names))]
    WrongName {
        expected: String,
        /// The certificate's DNS SANs.
        names: Vec<String>,
    },
}

fn names_list(names: &[String]) -> String {
    if names.is_empty() {
        "no DNS name".to_owned()
    } else {
        names.join(", ")
    }
}

/// Checks that `certs[0]` (the peer's end-entity certificate, as
/// [`rustls::CommonState::peer_certificates`] gives it) is valid for `expected`.
pub fn check_peer_name(
    certs: Option<&[CertificateDer<'_>]>,
    expected: &str,
) -> Result<(), NameError> {
    let Some(leaf) = certs.and_then(|c| c.first()) else {
        return Err(NameError::NoCertificate {
            expected: expected.to_owned(),
        });
    };
    let dns = DnsName::try_from(expected).map_err(|_| NameError::NotADnsName {
        expected: expected.to_owned(),
    })?;
    let cert = webpki::EndEntityCert::try_from(leaf).map_err(|e| NameError::Unparsable {
        expected: expected.to_owned(),
        reason: e.to_string(),
    })?;
    cert.verify_is_valid_for_subject_name(&ServerName::DnsName(dns))
        .map_err(|_| NameError::WrongName {
            expected: expected.to_owned(),
            names: cert.valid_dns_names().map(str::to_owned).collect(),
        })
}

/// The DNS names (SANs) of a certificate, for messages and logs; empty when it cannot be
/// parsed.
#[must_use]
pub fn peer_dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    webpki::EndEntityCert::try_from(cert)
        .map(|c| c.valid_dns_names().map(str::to_owned).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{IssueRequest, init_ca, issue};

    fn cert_for(name: &str) -> (tempfile::TempDir, CertificateDer<'static>) {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(dir.path(), false).expect("init");
        let issued = issue(dir.path(), &IssueRequest::new(name)).expect("issue");
        let chain = crate::config::load_certs(&issued.cert).expect("load");
        (dir, chain[0].clone())
    }

    #[test]
    fn the_right_name_passes_and_another_is_refused_naming_both() {
        let (_dir, cert) = cert_for("web-1");
        let certs = [cert];
        check_peer_name(Some(&certs), "web-1").expect("its own name");
        let err = check_peer_name(Some(&certs), "web-2").expect_err("another server's name");
        assert_eq!(
            err.to_string(),
            "the peer's certificate names web-1, not web-2"
        );
        let err = check_peer_name(Some(&certs), "web").expect_err("a prefix");
        assert!(matches!(err, NameError::WrongName { .. }), "{err}");
        assert_eq!(peer_dns_names(&certs[0]), ["web-1"]);
    }

    #[test]
    fn no_certificate_is_refused() {
        let err = check_peer_name(None, "web-1").expect_err("no certificate accepted");
        assert!(
            err.to_string().contains("presented no certificate"),
            "{err}"
        );
        let err = check_peer_name(Some(&[]), "web-1").expect_err("empty chain accepted");
        assert!(matches!(err, NameError::NoCertificate { .. }), "{err}");
    }
}
