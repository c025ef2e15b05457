//! Content digests: validated once, before they are ever used in a path or compared.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// A `sha256:<64 lowercase hex>` digest. Other algorithms are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

#[derive(Debug, thiserror::Error)]
#[error("invalid digest {0:?}: expected sha256: and 64 lowercase hex digits")]
pub struct BadDigest(pub String);

impl Digest {
    pub fn parse(s: &str) -> Result<Self, BadDigest> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| BadDigest(s.to_string()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(BadDigest(s.to_string()));
        }
        Ok(Self(s.to_string()))
    }

    pub fn from_sha256(h: Sha256) -> Self {
        Self(format!("sha256:{}", hex::encode(h.finalize())))
    }

    pub fn of(bytes: &[u8]) -> Self {
        Self::from_sha256(Sha256::new_with_prefix(bytes))
    }

    /// The 64 hex digits: safe as a file name, having been validated.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// `sha256:0123456789ab` for messages.
    pub fn short(&self) -> &str {
        &self.0[..19]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_validation_table() {
        let good = format!("sha256:{}", "a".repeat(64));
        let cases: &[(&str, bool)] = &[
            (&good, true),
            ("sha256:../../etc/passwd", false),
            ("sha512:abcd", false),
            ("sha256:", false),
            (&format!("sha256:{}", "A".repeat(64)), false),
            (&format!("sha256:{}/", "a".repeat(63)), false),
            (&format!("sha256:{}", "a".repeat(65)), false),
            ("", false),
        ];
        for (s, ok) in cases {
            assert_eq!(Digest::parse(s).is_ok(), *ok, "Digest::parse({s:?})");
        }
        assert_eq!(Digest::parse(&good).unwrap().hex(), "a".repeat(64));
    }

    #[test]
    fn digest_of_bytes() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
