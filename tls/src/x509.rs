//! The two facts ferry reads from a certificate that rustls and webpki do not expose: is
//! it a CA (basicConstraints `cA = TRUE`), and its subject's common name (a ferry CA's
//! subject is one CN, which `ferry tls issue` needs to name the issuer). A bounded DER
//! walk over the certificate:
//!
//! ```text
//! Certificate ::= SEQUENCE { tbsCertificate SEQUENCE {
//!     version [0] EXPLICIT OPTIONAL, serialNumber INTEGER, signature SEQUENCE,
//!     issuer Name, validity SEQUENCE, subject Name, …, [3] EXPLICIT SEQUENCE OF
//!     Extension ::= SEQUENCE { extnID OID, critical BOOLEAN DEFAULT FALSE,
//!                              extnValue OCTET STRING } }, … }
//! BasicConstraints ::= SEQUENCE { cA BOOLEAN DEFAULT FALSE, pathLen INTEGER OPTIONAL }
//! Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value UTF8String | PrintableString }
//! ```
//!
//! Every length is checked against the bytes that remain before it is used; anything
//! malformed reads as "not a CA" (the caller then refuses the file, naming it).

/// The DER of OID 2.5.29.19 (id-ce-basicConstraints), without tag and length.
const BASIC_CONSTRAINTS: [u8; 3] = [0x55, 0x1d, 0x13];

const SEQUENCE: u8 = 0x30;
const BOOLEAN: u8 = 0x01;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const EXTENSIONS: u8 = 0xa3;
const VERSION: u8 = 0xa0;
const INTEGER: u8 = 0x02;
const SET: u8 = 0x31;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
/// The DER of OID 2.5.4.3 (id-at-commonName).
const COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];

/// The subject of `der` when it is exactly one common name; `None` otherwise.
pub(crate) fn subject_common_name(der: &[u8]) -> Option<String> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let (tag, _, mut rest) = tlv(tbs)?;
    if tag == VERSION {
        rest = expect(rest, INTEGER)?.1;
    } else if tag != INTEGER {
        return None;
    }
    // signature, issuer, validity
    for _ in 0..3 {
        rest = expect(rest, SEQUENCE)?.1;
    }
    let (subject, _) = expect(rest, SEQUENCE)?;
    let (rdn, after) = expect(subject, SET)?;
    let (attribute, others) = expect(rdn, SEQUENCE)?;
    if !after.is_empty() || !others.is_empty() {
        return None;
    }
    let (oid, value) = expect(attribute, OID)?;
    if oid != COMMON_NAME {
        return None;
    }
    let (tag, text, _) = tlv(value)?;
    if tag != UTF8_STRING && tag != PRINTABLE_STRING {
        return None;
    }
    String::from_utf8(text.to_vec()).ok()
}

/// True when `der` is a certificate whose basicConstraints say it is a CA.
pub(crate) fn is_ca_certificate(der: &[u8]) -> bool {
    basic_constraints_ca(der).unwrap_or(false)
}

fn basic_constraints_ca(der: &[u8]) -> Option<bool> {
    let (cert, _) = expect(der, SEQUENCE)?;
    let (mut tbs, _) = expect(cert, SEQUENCE)?;
    while !tbs.is_empty() {
        let (tag, body, rest) = tlv(tbs)?;
        tbs = rest;
        if tag != EXTENSIONS {
            continue;
        }
        let (mut extensions, _) = expect(body, SEQUENCE)?;
        while !extensions.is_empty() {
            let (extension, rest) = expect(extensions, SEQUENCE)?;
            extensions = rest;
            let (oid, rest) = expect(extension, OID)?;
            if oid != BASIC_CONSTRAINTS {
                continue;
            }
            let (tag, value, rest) = tlv(rest)?;
            let value = match tag {
                BOOLEAN => expect(rest, OCTET_STRING)?.0,
                OCTET_STRING => value,
                _ => return None,
            };
            let (constraints, _) = expect(value, SEQUENCE)?;
            if constraints.is_empty() {
                return Some(false);
            }
            let (ca, _) = expect(constraints, BOOLEAN)?;
            return Some(ca == [0xff]);
        }
        return Some(false);
    }
    Some(false)
}

/// The contents of a TLV of tag `tag` at the start of `input`, and what follows it.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, body, rest) = tlv(input)?;
    (t == tag).then_some((body, rest))
}

/// Splits one DER TLV (single-byte tag, definite length of at most 4 bytes) off `input`.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (body, rest) = rest.split_at(len);
    Some((tag, body, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_garbage_input_is_not_a_ca() {
        assert!(!is_ca_certificate(&[]));
        assert!(!is_ca_certificate(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]));
        assert!(!is_ca_certificate(&[0x30, 0x02, 0x30]));
        assert!(!is_ca_certificate(b"not der at all"));
    }

    #[test]
    fn long_form_lengths_are_read() {
        let mut der = vec![0x04, 0x82, 0x01, 0x00];
        der.extend([7u8; 256]);
        der.push(0xaa);
        let (tag, body, rest) = tlv(&der).expect("a valid tlv");
        assert_eq!((tag, body.len(), rest), (0x04, 256, &[0xaa][..]));
    }
}
