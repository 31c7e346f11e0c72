//! Sentences for TLS failures: what a rustls or webpki error means for the operator
//! reading a log line or a command's error (the likely cause and the fix), so that
//! "UnknownIssuer" reads as "not signed by the CA this side trusts".

/// What a rustls error means, for an operator reading a log line.
pub(crate) fn describe(e: &rustls::Error) -> String {
    use rustls::AlertDescription as A;
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "the peer's certificate is not signed by the CA this side \
                                 trusts (unknown issuer: another site pair's CA?)"
                .into(),
            C::Expired | C::ExpiredContext { .. } => {
                "the peer's certificate has expired (issue a new one with `ferry tls issue`)".into()
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the peer's certificate is not valid yet (check both clocks)".into()
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "the peer's certificate is not for the name this side connected to ({c:?}); \
                 issue it with `--san` for that name or address"
            ),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "the peer's certificate is not for this use (extended key usage)".into()
            }
            C::BadSignature => "the peer's certificate has a bad signature".into(),
            C::Revoked => "the peer's certificate is revoked".into(),
            other => format!("the peer's certificate is not acceptable: {other:?}"),
        },
        rustls::Error::NoCertificatesPresented => "the peer presented no client certificate; \
                                                   this side requires one issued by the site \
                                                   pair's CA"
            .into(),
        rustls::Error::AlertReceived(alert) => match alert {
            A::UnknownCA | A::BadCertificate | A::UnsupportedCertificate => format!(
                "the peer refused this side's certificate ({alert:?}): it does not trust the \
                 CA that issued it"
            ),
            A::CertificateExpired => {
                "the peer refused this side's certificate: it has expired".into()
            }
            A::CertificateRequired => "the peer requires a client certificate and this side \
                                       presented none (set [tls] cert and key)"
                .into(),
            A::ProtocolVersion | A::HandshakeFailure => format!(
                "the peer found no protocol in common ({alert:?}): ferry speaks TLS 1.3 only"
            ),
            other => format!("the peer ended the session with alert {other:?}"),
        },
        rustls::Error::InvalidMessage(m) => format!(
            "the peer sent bytes that are not TLS ({m:?}): is it speaking plaintext, or not \
             ferry?"
        ),
        rustls::Error::PeerIncompatible(p) => {
            format!("the peer cannot speak TLS 1.3 as ferry does: {p:?}")
        }
        rustls::Error::PeerMisbehaved(p) => format!("the peer broke the TLS protocol: {p:?}"),
        rustls::Error::DecryptError => {
            "a record did not decrypt: it was damaged or forged on the path".into()
        }
        other => other.to_string(),
    }
}

/// What a webpki error about one of this side's own certificates means.
pub(crate) fn describe_webpki(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => "it is not signed by that CA (unknown issuer)".into(),
        webpki::Error::CertExpired { .. } => {
            "it has expired (issue a new one with `ferry tls issue`)".into()
        }
        webpki::Error::CertNotValidYet { .. } => "it is not valid yet (check the clock)".into(),
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            "its extended key usage does not allow both serverAuth and clientAuth".into()
        }
        other => other.to_string(),
    }
}
