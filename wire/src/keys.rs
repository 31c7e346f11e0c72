//! Keys. One 256-bit master key per site pair; HKDF-SHA256 derives from it four
//! independent keys:
//!
//! | key        | used for                                              | who holds it              |
//! |------------|-------------------------------------------------------|---------------------------|
//! | [`DataKey`] | AES-256-CTR encryption of extent payloads            | agents; rebuild only      |
//! | [`MacKey`]  | HMAC-SHA256 over record header and ciphertext        | agents and standby        |
//! | [`AuthKey`] | challenge–response authentication of the link        | agents and standby        |
//! | [`DigestKey`] | per-grain digests for digest catch-up              | agents; rebuild only      |
//!
//! The standby stores and verifies with the MAC key alone (DESIGN.md I6).
//!
//! Key file text format (written by `ferry keygen`): 64 lowercase or uppercase hex digits
//! (the 32 master key bytes), optionally followed by one newline. Nothing else.
//!
//! No key type prints its bytes (`Debug` shows `<redacted>`), and every key is zeroized
//! when dropped. Not covered: the internal state of the HKDF and HMAC instances that use a
//! key (the `hkdf`/`hmac` crates do not zeroize it), which lives only for one call.

use hkdf::Hkdf;
use rand_core::{CryptoRng, RngCore};
use sha2::Sha256;
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of every key, in bytes.
pub const KEY_LEN: usize = 32;

/// HKDF salt; changing it changes every derived key (a new key format version).
const HKDF_SALT: &[u8] = b"ferry key derivation v1";

/// Why key text was refused. Messages never include key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key has {found} hex digits; a ferry key has exactly {} (32 bytes)", KEY_LEN * 2)]
    WrongLength { found: usize },
    #[error("key contains a character that is not a hex digit at position {position}")]
    NotHex { position: usize },
}

macro_rules! secret_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; KEY_LEN]);

        impl $name {
            /// Takes the key bytes; the caller zeroizes its own copy if it keeps one.
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(bytes)
            }

            /// The key bytes, for handing to a cipher or MAC. Never log them.
            pub fn expose(&self) -> &[u8; KEY_LEN] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

secret_key!(
    /// The site pair's master key. Only used to derive the other keys.
    MasterKey
);
secret_key!(
    /// Encrypts extent payloads (AES-256-CTR). Needed to seal and to rebuild, nowhere else.
    DataKey
);
secret_key!(
    /// Authenticates record headers and ciphertext (HMAC-SHA256).
    MacKey
);
secret_key!(
    /// Proves an agent and a standby to each other (HMAC-SHA256 challenge–response).
    AuthKey
);
secret_key!(
    /// Keys the per-grain digests that records carry and digest catch-up compares
    /// ([`crate::digest`]). Only the agent (and rebuild) hold it: a standby that had it could
    /// confirm guesses about the data.
    DigestKey
);

impl MasterKey {
    /// A new random master key.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Parses key file text (see the module doc).
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let digits = text.strip_suffix('\n').unwrap_or(text);
        if digits.len() != KEY_LEN * 2 {
            return Err(KeyError::WrongLength {
                found: digits.len(),
            });
        }
        // Filled in place: on an error the partial key is zeroized when `key` drops.
        let mut key = Self([0u8; KEY_LEN]);
        for (i, pair) in digits.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or(KeyError::NotHex { position: 2 * i })?;
            let lo = hex_value(pair[1]).ok_or(KeyError::NotHex {
                position: 2 * i + 1,
            })?;
            key.0[i] = hi << 4 | lo;
        }
        Ok(key)
    }

    /// Key file text for this key: 64 hex digits and a newline.
    pub fn to_text(&self) -> Zeroizing<String> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = Zeroizing::new(String::with_capacity(KEY_LEN * 2 + 1));
        for b in self.0 {
            text.push(char::from(HEX[usize::from(b >> 4)]));
            text.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        text.push('\n');
        text
    }

    /// Derives the site pair's data, MAC, auth and digest keys.
    pub fn derive(&self) -> SiteKeys {
        let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), &self.0);
        // Each key is expanded straight into its zeroize-on-drop home, never a loose copy.
        let expand = |info: &[u8], out: &mut [u8; KEY_LEN]| {
            hk.expand(info, out)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
        };
        let mut keys = SiteKeys {
            data: DataKey([0; KEY_LEN]),
            mac: MacKey([0; KEY_LEN]),
            auth: AuthKey([0; KEY_LEN]),
            digest: DigestKey([0; KEY_LEN]),
        };
        expand(b"ferry data key", &mut keys.data.0);
        expand(b"ferry mac key", &mut keys.mac.0);
        expand(b"ferry auth key", &mut keys.auth.0);
        expand(b"ferry digest key", &mut keys.digest.0);
        keys
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The keys derived from one master key.
#[derive(Debug, Clone)]
pub struct SiteKeys {
    pub data: DataKey,
    pub mac: MacKey,
    pub auth: AuthKey,
    pub digest: DigestKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(byte: u8) -> MasterKey {
        MasterKey::from_bytes([byte; KEY_LEN])
    }

    #[test]
    fn derived_keys_differ_from_each_other_and_from_the_master() {
        let m = master(7);
        let k = m.derive();
        let all = [
            m.expose(),
            k.data.expose(),
            k.mac.expose(),
            k.auth.expose(),
            k.digest.expose(),
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b, "two keys derived from one master are equal");
            }
        }
        assert_ne!(master(8).derive().data.expose(), k.data.expose());
        assert_eq!(
            m.derive().mac.expose(),
            k.mac.expose(),
            "derivation must be stable"
        );
    }

    #[test]
    fn text_round_trips_and_bad_text_is_refused() {
        let m = MasterKey::generate(&mut rand_core::OsRng);
        let text = m.to_text();
        assert_eq!(text.len(), 65);
        assert_eq!(MasterKey::from_text(&text).unwrap().expose(), m.expose());
        assert_eq!(
            MasterKey::from_text(&text[..64]).unwrap().expose(),
            m.expose()
        );
        assert_eq!(
            MasterKey::from_text(&text.to_uppercase()).unwrap().expose(),
            m.expose()
        );
        assert_eq!(
            MasterKey::from_text(&text[..62]).unwrap_err(),
            KeyError::WrongLength { found: 62 }
        );
        assert_eq!(
            MasterKey::from_text(&format!("{}\n\n", &text[..64])).unwrap_err(),
            KeyError::WrongLength { found: 65 }
        );
        let mut bad = text[..64].to_owned();
        bad.replace_range(9..10, "g");
        assert_eq!(
            MasterKey::from_text(&bad).unwrap_err(),
            KeyError::NotHex { position: 9 }
        );
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let m = master(0xab);
        let keys = m.derive();
        let shown = format!("{m:?} {keys:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(
            !shown.chars().any(|c| c.is_ascii_digit()),
            "key bytes leaked: {shown}"
        );
        for key in [
            m.expose(),
            keys.data.expose(),
            keys.mac.expose(),
            keys.auth.expose(),
        ] {
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            assert!(
                !shown.contains(&hex[..8]),
                "key bytes leaked into Debug: {shown}"
            );
        }
    }

    #[test]
    fn every_key_type_zeroizes_on_drop() {
        fn zeroized_on_drop<T: ZeroizeOnDrop>() {}
        zeroized_on_drop::<MasterKey>();
        zeroized_on_drop::<DataKey>();
        zeroized_on_drop::<MacKey>();
        zeroized_on_drop::<AuthKey>();
        let mut k = master(0x5a);
        k.zeroize();
        assert_eq!(k.expose(), &[0u8; KEY_LEN]);
    }
}
