//! `Secret`: a string that never prints. Upstream keys, client tokens and the admin token live in
//! this type so that `Debug`, `Display` and `Serialize` cannot leak them into logs or answers.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The clear text. Call sites are the few places that must send or hash it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// SHA-256 of the clear text: what lookups and stores key on instead of the secret itself.
    pub fn sha256(&self) -> [u8; 32] {
        sha256(self.0.as_bytes())
    }

    /// The public id of a key: the first 12 hex digits of its SHA-256.
    pub fn id(&self) -> String {
        hex::encode(&self.sha256()[..6])
    }

    /// `abcd…wxyz` for long secrets, `****` for short ones (too little left to hide).
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// A secret as reports show it: its first and last four characters (`sk-v…e123`), or `****`
/// when it is too short to show any.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return "****".to_string();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("****")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_secret() {
        let s = Secret::new("sk-verysecretvalue123");
        assert_eq!(format!("{s} {s:?}"), "**** ****");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"****\"");
        assert_eq!(s.masked(), "sk-v…e123");
        assert_eq!(Secret::new("short").masked(), "****");
    }

    #[test]
    fn id_is_twelve_hex_of_sha256() {
        // sha256("abc") = ba7816bf8f01cfea...
        assert_eq!(Secret::new("abc").id(), "ba7816bf8f01");
    }
}
