//! Public keys as operators hold them: PEM files, or base64 (raw Ed25519 keys are 32
//! bytes; DER `SubjectPublicKeyInfo` is accepted for both kinds).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use ed25519_dalek::VerifyingKey;
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::RsaPublicKey;

/// The RSA key GHL publishes for the legacy `x-wh-signature` header
/// (docs/oauth/WebhookAuthentication.md); used when no RSA key is configured.
pub const GHL_RSA_PUBLIC_KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAokvo/r9tVgcfZ5DysOSC
Frm602qYV0MaAiNnX9O8KxMbiyRKWeL9JpCpVpt4XHIcBOK4u3cLSqJGOLaPuXw6
dO0t6Q/ZVdAV5Phz+ZtzPL16iCGeK9po6D6JHBpbi989mmzMryUnQJezlYJ3DVfB
csedpinheNnyYeFXolrJvcsjDtfAeRx5ByHQmTnSdFUzuAnC9/GepgLT9SM4nCpv
uxmZMxrJt5Rw+VUaQ9B8JSvbMPpez4peKaJPZHBbU3OdeCVx5klVXXZQGNHOs8gF
3kvoV5rTnXV0IknLBXlcKKAQLZcY/Q9rG6Ifi9c+5vqlvHPCUJFT5XUGG5RKgOKU
J062fRtN+rLYZUV+BjafxQauvC8wSWeYja63VSUruvmNj8xkx2zE/Juc+yjLjTXp
IocmaiFeAO6fUtNjDeFVkhf5LNb59vECyrHD2SQIrhgXpO4Q3dVNA5rw576PwTzN
h/AMfHKIjE4xQA1SZuYJmNnmVZLIZBlQAF9Ntd03rfadZ+yDiOXCCs9FkHibELhC
HULgCsnuDJHcrGNd5/Ddm5hxGQ0ASitgHeMZ0kcIOwKDOzOU53lDza6/Y09T7sYJ
PQe7z0cvj7aE4B+Ax1ZoZGPzpJlZtGXCsu9aTEGEnKzmsFqwcSsnw3JB31IGKAyk
T1hhTiaCeIY/OwwwNUY2yvcCAwEAAQ==
-----END PUBLIC KEY-----
";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM public key: {0}")]
    Pem(String),
    #[error("not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("not an Ed25519 public key: {0}")]
    Ed25519(String),
    #[error("not an RSA public key: {0}")]
    Rsa(String),
}

/// An Ed25519 public key: PEM (`BEGIN PUBLIC KEY`), base64 of the 32 raw bytes, or
/// base64 of the DER `SubjectPublicKeyInfo`.
pub fn parse_ed25519(text: &str) -> Result<VerifyingKey, KeyError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text).map_err(|e| KeyError::Pem(e.to_string()));
    }
    let bytes = STANDARD.decode(strip_space(text))?;
    match <[u8; 32]>::try_from(bytes.as_slice()) {
        Ok(raw) => VerifyingKey::from_bytes(&raw).map_err(|e| KeyError::Ed25519(e.to_string())),
        Err(_) => VerifyingKey::from_public_key_der(&bytes).map_err(|e| KeyError::Ed25519(e.to_string())),
    }
}

/// An RSA public key: PEM (`BEGIN PUBLIC KEY` or `BEGIN RSA PUBLIC KEY`) or base64 DER
/// (`SubjectPublicKeyInfo`).
pub fn parse_rsa(text: &str) -> Result<RsaPublicKey, KeyError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN RSA PUBLIC KEY") {
        return RsaPublicKey::from_pkcs1_pem(text).map_err(|e| KeyError::Pem(e.to_string()));
    }
    if text.starts_with("-----BEGIN") {
        return RsaPublicKey::from_public_key_pem(text).map_err(|e| KeyError::Pem(e.to_string()));
    }
    let bytes = STANDARD.decode(strip_space(text))?;
    RsaPublicKey::from_public_key_der(&bytes).map_err(|e| KeyError::Rsa(e.to_string()))
}

fn strip_space(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ghl_published_key_parses() {
        let key = parse_rsa(GHL_RSA_PUBLIC_KEY_PEM).expect("GHL's key");
        assert_eq!(rsa::traits::PublicKeyParts::size(&key) * 8, 4096);
    }

    #[test]
    fn bad_keys_are_errors_not_panics() {
        assert!(parse_ed25519("not base64!").is_err());
        assert!(parse_ed25519("AAAA").is_err());
        assert!(parse_ed25519("-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----").is_err());
        assert!(parse_rsa("AAAA").is_err());
        assert!(parse_rsa(GHL_RSA_PUBLIC_KEY_PEM.replace("MIIC", "MIID").as_str()).is_err());
    }
}
