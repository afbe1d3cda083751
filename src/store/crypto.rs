//! At-rest encryption of upstream keys (`store.encryption_key`): AES-256-GCM with a fresh random
//! nonce per value; the 256-bit key is the SHA-256 of the configured passphrase. Stored form:
//! nonce (12 bytes) || ciphertext+tag.

use super::{Result, StoreError};
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};

pub struct Cipher(Aes256Gcm);

impl Cipher {
    pub fn new(passphrase: &str) -> Cipher {
        let key = crate::secret::sha256(passphrase.as_bytes());
        Cipher(Aes256Gcm::new_from_slice(&key).expect("32-byte key"))
    }

    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| StoreError::Crypto(format!("no randomness: {e}")))?;
        let mut out = nonce.to_vec();
        let ct =
            self.0.encrypt(&Nonce::from(nonce), plain).map_err(|_| StoreError::Crypto("encryption failed".into()))?;
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < 12 + 16 {
            return Err(StoreError::Crypto("encrypted key is truncated".into()));
        }
        let (nonce, ct) = sealed.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().expect("split at 12");
        self.0
            .decrypt(&Nonce::from(nonce), ct)
            .map_err(|_| StoreError::Crypto("cannot decrypt a stored key: wrong store.encryption_key?".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key() {
        let c = Cipher::new("correct horse battery staple");
        let sealed = c.seal(b"upstream-key-123").unwrap();
        assert!(!sealed.windows(16).any(|w| w == b"upstream-key-123"));
        assert_eq!(c.open(&sealed).unwrap(), b"upstream-key-123");
        assert!(Cipher::new("wrong").open(&sealed).is_err());
        assert_ne!(c.seal(b"x").unwrap(), c.seal(b"x").unwrap(), "fresh nonce each time");
    }
}
