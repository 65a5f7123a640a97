//! Secrets stored encrypted in the config file: `enc:` values.
//!
//! A value `enc:<base64(nonce || ciphertext || tag)>` is AES-256-GCM encrypted with the key in
//! `CALLSYNC_SECRET_KEY` (base64 of 32 random bytes; `callsync secrets encrypt` prints one when
//! asked). Each encryption draws a fresh 96-bit nonce, so encrypting one value twice gives two
//! different strings. The associated data `callsync-secret-v1` binds a value to this format.
//!
//! Errors never carry the key, the plaintext or the ciphertext.

use std::fmt;

use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use callsync_runtime::Secret;

/// The prefix that marks an encrypted value.
pub const ENCRYPTED_PREFIX: &str = "enc:";
/// The environment variable that holds the key (base64 of 32 bytes).
pub const SECRET_KEY_ENV: &str = "CALLSYNC_SECRET_KEY";

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const ASSOCIATED_DATA: &[u8] = b"callsync-secret-v1";

/// Encrypting or decrypting a secret failed. No variant carries secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error("{SECRET_KEY_ENV} is not set; it must hold the base64 of 32 random bytes")]
    KeyMissing,
    #[error("{SECRET_KEY_ENV} is not a valid key: {reason}")]
    KeyInvalid { reason: &'static str },
    #[error("the value is not encrypted (it does not start with `enc:`)")]
    NotEncrypted,
    #[error("the encrypted value is malformed: {reason}")]
    Malformed { reason: &'static str },
    #[error("the encrypted value cannot be decrypted: wrong {SECRET_KEY_ENV} or a damaged value")]
    DecryptionFailed,
    #[error("encryption failed")]
    EncryptionFailed,
}

/// The AES-256-GCM key. `Debug` prints nothing of it.
#[derive(Clone)]
pub struct SecretKey {
    cipher: Aes256Gcm,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

impl SecretKey {
    /// A key from the base64 of 32 bytes (standard alphabet, padding optional).
    pub fn from_base64(encoded: &str) -> Result<Self, SecretsError> {
        let trimmed = encoded.trim();
        let bytes = STANDARD
            .decode(trimmed)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
            .map_err(|_| SecretsError::KeyInvalid {
                reason: "not base64",
            })?;
        if bytes.len() != 32 {
            return Err(SecretsError::KeyInvalid {
                reason: "it must decode to exactly 32 bytes",
            });
        }
        let key = Key::<Aes256Gcm>::from_slice(&bytes);
        Ok(SecretKey {
            cipher: Aes256Gcm::new(key),
        })
    }

    /// The key from `CALLSYNC_SECRET_KEY`.
    pub fn from_env() -> Result<Self, SecretsError> {
        match std::env::var(SECRET_KEY_ENV) {
            Ok(value) if !value.trim().is_empty() => Self::from_base64(&value),
            _ => Err(SecretsError::KeyMissing),
        }
    }

    /// A fresh random key and its base64 form (to put in `CALLSYNC_SECRET_KEY`).
    pub fn generate() -> (Self, Secret) {
        let key = Aes256Gcm::generate_key(OsRng);
        let encoded = STANDARD.encode(key.as_slice());
        (
            SecretKey {
                cipher: Aes256Gcm::new(&key),
            },
            Secret::new(encoded),
        )
    }

    /// Encrypts `plaintext` into an `enc:` value.
    pub fn encrypt(&self, plaintext: &str) -> Result<String, SecretsError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: ASSOCIATED_DATA,
                },
            )
            .map_err(|_| SecretsError::EncryptionFailed)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(nonce.as_slice());
        sealed.extend_from_slice(&ciphertext);
        Ok(format!("{ENCRYPTED_PREFIX}{}", STANDARD.encode(sealed)))
    }

    /// Decrypts an `enc:` value.
    pub fn decrypt(&self, value: &str) -> Result<Secret, SecretsError> {
        let encoded = value
            .trim()
            .strip_prefix(ENCRYPTED_PREFIX)
            .ok_or(SecretsError::NotEncrypted)?;
        let sealed = STANDARD
            .decode(encoded)
            .map_err(|_| SecretsError::Malformed {
                reason: "not base64",
            })?;
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(SecretsError::Malformed {
                reason: "too short",
            });
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let plaintext = self
            .cipher
            .decrypt(
                GenericArray::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: ASSOCIATED_DATA,
                },
            )
            .map_err(|_| SecretsError::DecryptionFailed)?;
        String::from_utf8(plaintext)
            .map(Secret::new)
            .map_err(|_| SecretsError::Malformed {
                reason: "the plaintext is not UTF-8",
            })
    }

    /// The plain value of a config entry: `enc:` values decrypted, others as they are.
    pub fn resolve(&self, value: &str) -> Result<Secret, SecretsError> {
        if is_encrypted(value) {
            self.decrypt(value)
        } else {
            Ok(Secret::new(value))
        }
    }
}

/// Whether a config value is an `enc:` value.
pub fn is_encrypted(value: &str) -> bool {
    value.trim_start().starts_with(ENCRYPTED_PREFIX)
}

/// Encrypts `plaintext` with the key from `CALLSYNC_SECRET_KEY`.
pub fn encrypt(plaintext: &str) -> Result<String, SecretsError> {
    SecretKey::from_env()?.encrypt(plaintext)
}

/// Decrypts an `enc:` value with the key from `CALLSYNC_SECRET_KEY`.
pub fn decrypt(value: &str) -> Result<Secret, SecretsError> {
    SecretKey::from_env()?.decrypt(value)
}

/// A config value in plain: `enc:` values are decrypted with the key from the environment
/// (which is then required), other values are returned unchanged without touching it.
pub fn resolve(value: &str) -> Result<Secret, SecretsError> {
    if is_encrypted(value) {
        decrypt(value)
    } else {
        Ok(Secret::new(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // "0123456789abcdef" x2

    #[test]
    fn round_trips_and_uses_a_fresh_nonce_each_time() {
        let key = SecretKey::from_base64(KEY).unwrap();
        let a = key.encrypt("hunter2").unwrap();
        let b = key.encrypt("hunter2").unwrap();
        assert!(a.starts_with("enc:") && b.starts_with("enc:"));
        assert_ne!(a, b);
        assert!(!a.contains("hunter2"));
        assert_eq!(key.decrypt(&a).unwrap().expose(), "hunter2");
        assert_eq!(key.decrypt(&b).unwrap().expose(), "hunter2");
        assert_eq!(key.decrypt(&key.encrypt("").unwrap()).unwrap().expose(), "");
    }

    #[test]
    fn a_wrong_key_or_a_tampered_value_fails_without_printing_anything_secret() {
        let key = SecretKey::from_base64(KEY).unwrap();
        let (other, other_encoded) = SecretKey::generate();
        let sealed = key.encrypt("pg-password").unwrap();
        let err = other.decrypt(&sealed).unwrap_err();
        assert_eq!(err, SecretsError::DecryptionFailed);
        let msg = format!("{err} {err:?} {other:?}");
        assert!(
            !msg.contains("pg-password")
                && !msg.contains(other_encoded.expose())
                && !msg.contains(KEY)
        );

        let mut tampered = sealed.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(matches!(
            key.decrypt(&tampered),
            Err(SecretsError::DecryptionFailed | SecretsError::Malformed { .. })
        ));
        assert_eq!(
            key.decrypt("enc:AAAA").unwrap_err(),
            SecretsError::Malformed {
                reason: "too short"
            }
        );
        assert_eq!(
            key.decrypt("enc:***").unwrap_err(),
            SecretsError::Malformed {
                reason: "not base64"
            }
        );
        assert_eq!(
            key.decrypt("plain").unwrap_err(),
            SecretsError::NotEncrypted
        );
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(matches!(
            SecretKey::from_base64("not base64!"),
            Err(SecretsError::KeyInvalid { .. })
        ));
        assert!(matches!(
            SecretKey::from_base64("c2hvcnQ="),
            Err(SecretsError::KeyInvalid { .. })
        ));
        let (_, encoded) = SecretKey::generate();
        assert!(SecretKey::from_base64(encoded.expose()).is_ok());
        assert!(SecretKey::from_base64(encoded.expose().trim_end_matches('=')).is_ok());
    }

    #[test]
    fn resolve_passes_plain_values_through() {
        let key = SecretKey::from_base64(KEY).unwrap();
        assert_eq!(key.resolve("plain-value").unwrap().expose(), "plain-value");
        let sealed = key.encrypt("s3cret").unwrap();
        assert_eq!(key.resolve(&sealed).unwrap().expose(), "s3cret");
        assert!(is_encrypted(&sealed));
        assert!(!is_encrypted("plain"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail closures return figment::Error
    fn the_environment_key_is_used_by_the_free_functions() {
        // figment's Jail serialises every test of this binary that changes the environment
        // (the config tests set CALLSYNC_SECRET_KEY too) and restores it afterwards.
        figment::Jail::expect_with(|jail| {
            std::env::remove_var(SECRET_KEY_ENV);
            assert_eq!(encrypt("x").unwrap_err(), SecretsError::KeyMissing);
            assert_eq!(resolve("plain").unwrap().expose(), "plain");
            jail.set_env(SECRET_KEY_ENV, KEY);
            let sealed = encrypt("from-env").unwrap();
            assert_eq!(decrypt(&sealed).unwrap().expose(), "from-env");
            assert_eq!(resolve(&sealed).unwrap().expose(), "from-env");
            Ok(())
        });
    }
}
