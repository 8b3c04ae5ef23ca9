//! Keys at rest: envelope encryption of the CA key and the token-signing keys.
//!
//! Each stored key is encrypted with its own data-encryption key (AES-256-GCM, a fresh random
//! key and nonce per seal), and that data key is wrapped by the key-encryption key (KEK). The
//! database holds only sealed blobs: a copy of the file alone yields no private key. The KEK
//! comes from a file or the environment ([`LocalKek`]); a KMS or HSM would implement
//! [`KeyWrapper`] instead, so that the KEK never enters the process at all.
//!
//! Every blob records which KEK wrapped it, and is bound to its place in the database (the
//! label, e.g. `signing-key:<kid>`, is the AEAD's associated data): a wrong KEK is a clear
//! start-up error, never a silently generated new key, and a blob moved to another row does not
//! open.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

/// The bytes of a key-encryption key or a data-encryption key.
const KEY_LEN: usize = 32;

/// Marks the layout of a sealed blob, so a later layout can be told apart.
const FORMAT: &[u8; 4] = b"ZTM1";

/// Why a key could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The blob was wrapped by another key-encryption key than the one configured.
    #[error(
        "the stored keys are sealed with key-encryption key {sealed_with}, but the configured \
         one is {configured}: start with the key-encryption key this database was created with"
    )]
    WrongKek {
        /// The id recorded in the blob.
        sealed_with: String,
        /// The id of the configured KEK.
        configured: String,
    },
    /// The blob does not open: damaged, truncated, or moved from another row.
    #[error("sealed key {label} does not open: {detail}")]
    Damaged {
        /// Which key.
        label: String,
        /// What failed.
        detail: &'static str,
    },
    /// The key-encryption key could not be read.
    #[error("{0}")]
    Kek(String),
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// What a KMS or HSM does for envelope encryption: wrap and unwrap data keys with a key it
/// keeps. [`LocalKek`] is the implementation for a KEK held in the process.
pub trait KeyWrapper: fmt::Debug + Send + Sync {
    /// A stable, non-secret id of the wrapping key, recorded in every blob.
    fn kek_id(&self) -> &str;
    /// Wraps `dek` for the key labelled `label`.
    fn wrap(&self, dek: &[u8], label: &str) -> Result<Vec<u8>, SealError>;
    /// Unwraps what [`KeyWrapper::wrap`] returned for the same label.
    fn unwrap(&self, wrapped: &[u8], label: &str) -> Result<Vec<u8>, SealError>;
}

/// A 256-bit KEK read from a file or an environment variable (64 hex digits, as
/// `meshctl audit keygen` writes).
pub struct LocalKek {
    id: String,
    key: LessSafeKey,
}

impl fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl LocalKek {
    /// Reads the KEK from `path`.
    pub fn from_file(path: &Path) -> Result<Self, SealError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SealError::Kek(format!("{}: {e}", path.display())))?;
        Self::from_hex(&text).map_err(|e| SealError::Kek(format!("{}: {e}", path.display())))
    }

    /// Reads the KEK from hex text (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, SealError> {
        let text = text.trim();
        let bytes = (text.len() == 2 * KEY_LEN)
            .then(|| {
                (0..KEY_LEN)
                    .map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
                    .collect::<Option<Vec<u8>>>()
            })
            .flatten()
            .ok_or_else(|| {
                SealError::Kek(format!(
                    "a key-encryption key is {} hex digits (meshctl audit keygen writes one)",
                    2 * KEY_LEN
                ))
            })?;
        let mut digest = Sha256::new();
        digest.update(b"zero-trust-mesh kek id\0");
        digest.update(&bytes);
        let id = digest.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| SealError::Kek("not an AES-256 key".into()))?;
        Ok(Self {
            id,
            key: LessSafeKey::new(key),
        })
    }
}

impl KeyWrapper for LocalKek {
    fn kek_id(&self) -> &str {
        &self.id
    }

    fn wrap(&self, dek: &[u8], label: &str) -> Result<Vec<u8>, SealError> {
        encrypt(&self.key, dek, label)
    }

    fn unwrap(&self, wrapped: &[u8], label: &str) -> Result<Vec<u8>, SealError> {
        decrypt(&self.key, wrapped, label)
    }
}

/// Seals and opens stored keys with a fresh data key each, wrapped by a [`KeyWrapper`].
#[derive(Debug, Clone)]
pub struct Sealer {
    wrapper: Arc<dyn KeyWrapper>,
}

impl Sealer {
    /// Seals with data keys wrapped by `wrapper`.
    pub fn new(wrapper: Arc<dyn KeyWrapper>) -> Self {
        Self { wrapper }
    }

    /// The id of the KEK.
    pub fn kek_id(&self) -> &str {
        self.wrapper.kek_id()
    }

    /// Encrypts `plaintext`, the key labelled `label`.
    ///
    /// Layout: `ZTM1`, KEK id length (1 byte) and id, wrapped data key length (2 bytes, big
    /// endian) and wrapped data key, then nonce and ciphertext with its tag.
    pub fn seal(&self, label: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut dek = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut dek).map_err(|_| SealError::Random)?;
        let wrapped = self.wrapper.wrap(&dek, label)?;
        let data_key =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &dek).map_err(|_| SealError::Random)?);
        let body = encrypt(&data_key, plaintext, label)?;
        let id = self.wrapper.kek_id().as_bytes();
        let mut out = Vec::with_capacity(FORMAT.len() + 3 + id.len() + wrapped.len() + body.len());
        out.extend_from_slice(FORMAT);
        out.push(u8::try_from(id.len()).map_err(|_| SealError::Kek("KEK id too long".into()))?);
        out.extend_from_slice(id);
        let wrapped_len = u16::try_from(wrapped.len())
            .map_err(|_| SealError::Kek("wrapped key too long".into()))?;
        out.extend_from_slice(&wrapped_len.to_be_bytes());
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens what [`Sealer::seal`] returned for the same label.
    pub fn open(&self, label: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let damaged = |detail| SealError::Damaged {
            label: label.to_owned(),
            detail,
        };
        let rest = sealed
            .strip_prefix(FORMAT.as_slice())
            .ok_or_else(|| damaged("not a sealed key"))?;
        let (&id_len, rest) = rest.split_first().ok_or_else(|| damaged("truncated"))?;
        let (id, rest) = rest
            .split_at_checked(usize::from(id_len))
            .ok_or_else(|| damaged("truncated"))?;
        let id = std::str::from_utf8(id).map_err(|_| damaged("bad KEK id"))?;
        if id != self.wrapper.kek_id() {
            return Err(SealError::WrongKek {
                sealed_with: id.to_owned(),
                configured: self.wrapper.kek_id().to_owned(),
            });
        }
        let (len, rest) = rest
            .split_at_checked(2)
            .ok_or_else(|| damaged("truncated"))?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let (wrapped, body) = rest
            .split_at_checked(len)
            .ok_or_else(|| damaged("truncated"))?;
        let dek = self.wrapper.unwrap(wrapped, label)?;
        let data_key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &dek).map_err(|_| damaged("bad data key"))?,
        );
        decrypt(&data_key, body, label)
    }
}

/// AES-256-GCM with a random nonce, prepended to the ciphertext; `label` is the associated data.
fn encrypt(key: &LessSafeKey, plaintext: &[u8], label: &str) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Random)?;
    let mut body = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(label.as_bytes()),
        &mut body,
    )
    .map_err(|_| SealError::Random)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

fn decrypt(key: &LessSafeKey, sealed: &[u8], label: &str) -> Result<Vec<u8>, SealError> {
    let damaged = |detail| SealError::Damaged {
        label: label.to_owned(),
        detail,
    };
    let (nonce, body) = sealed
        .split_at_checked(NONCE_LEN)
        .ok_or_else(|| damaged("truncated"))?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| damaged("bad nonce"))?;
    let mut body = body.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(label.as_bytes()), &mut body)
        .map_err(|_| damaged("authentication failed"))?;
    Ok(plain.to_vec())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A sealer whose KEK is `hex_digit` 64 times.
    pub(crate) fn sealer(hex_digit: char) -> Sealer {
        let hex: String = std::iter::repeat_n(hex_digit, 64).collect();
        Sealer::new(Arc::new(LocalKek::from_hex(&hex).expect("kek")))
    }

    #[test]
    fn a_sealed_key_opens_only_with_its_kek_and_its_label() {
        let right = sealer('a');
        let sealed = right.seal("ca-key:01", b"private key").expect("seal");
        assert!(
            !sealed.windows(11).any(|w| w == b"private key"),
            "plaintext in the blob"
        );
        assert_eq!(
            right.open("ca-key:01", &sealed).expect("open"),
            b"private key"
        );

        let wrong = sealer('b')
            .open("ca-key:01", &sealed)
            .expect_err("wrong kek");
        assert!(matches!(wrong, SealError::WrongKek { .. }), "{wrong}");
        let moved = right.open("ca-key:02", &sealed).expect_err("other row");
        assert!(matches!(moved, SealError::Damaged { .. }), "{moved}");
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(right.open("ca-key:01", &flipped).is_err());
        assert!(right.open("ca-key:01", &sealed[..20]).is_err());
        assert!(right.open("ca-key:01", b"").is_err());
    }

    #[test]
    fn a_kek_is_64_hex_digits() {
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(62), &"a".repeat(66)] {
            let error = LocalKek::from_hex(bad).expect_err("refused");
            assert!(error.to_string().contains("64 hex digits"), "{error}");
        }
        assert!(LocalKek::from_hex(&format!("  {}\n", "0f".repeat(32))).is_ok());
    }
}
