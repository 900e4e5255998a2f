//! Is this delivery from GHL, fresh, and new? Fails closed: a signature header that
//! is present must verify with a configured key, a missing one is a rejection, and a
//! body that is not a JSON object with a `webhookId` and a `timestamp` is refused.

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, VerifyingKey};
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::Duration;

use crate::metrics::Outcome;

/// GHL's current header: base64 Ed25519 signature of the raw body.
pub const ED25519_HEADER: &str = "x-ghl-signature";
/// GHL's legacy header: base64 RSA PKCS#1 v1.5 SHA-256 signature of the raw body.
pub const RSA_HEADER: &str = "x-wh-signature";

/// How long after its timestamp a delivery may still come as one of GHL's retries. GHL
/// re-sends a delivery answered 429 up to six times, about ten minutes apart, and nothing in
/// its reference says a retry is re-stamped: the timestamp is inside the signed body, and a
/// retry keeps the `webhookId` (so it keeps the body). The last retry comes about an hour
/// after the first attempt; ten minutes more absorb "about".
pub const GHL_RETRY_SPAN: Duration = Duration::from_secs(70 * 60);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no {ED25519_HEADER} or {RSA_HEADER} header")]
    Unsigned,
    #[error("the signature does not verify with any configured key")]
    BadSignature,
    #[error("malformed delivery: {0}")]
    Malformed(String),
    #[error("timestamp {0} is outside the accepted window")]
    Stale(String),
    #[error("webhookId {0} was already received")]
    Replayed(String),
}

impl Rejection {
    pub fn outcome(&self) -> Outcome {
        match self {
            Rejection::Unsigned => Outcome::Unsigned,
            Rejection::BadSignature => Outcome::BadSignature,
            Rejection::Malformed(_) => Outcome::Malformed,
            Rejection::Stale(_) => Outcome::Stale,
            Rejection::Replayed(_) => Outcome::Replayed,
        }
    }
}

/// A delivery whose signature and timestamp checked out.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub id: String,
    pub payload: Value,
}

#[derive(Debug, Clone)]
pub struct Verifier {
    ed25519: Vec<VerifyingKey>,
    rsa: Vec<RsaPublicKey>,
    tolerance: Duration,
}

impl Verifier {
    /// Several keys of a kind are allowed so a key rotation needs no downtime.
    pub fn new(ed25519: Vec<VerifyingKey>, rsa: Vec<RsaPublicKey>, tolerance: Duration) -> Verifier {
        Verifier { ed25519, rsa, tolerance }
    }

    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// The oldest timestamp accepted: `tolerance` of clock skew plus [`GHL_RETRY_SPAN`], so
    /// GHL's retries of a delivery answered 429 are not refused as stale. A replay inside
    /// this window is refused by its `webhookId`, which the store keeps for longer (7 days).
    pub fn max_age(&self) -> Duration {
        self.tolerance.saturating_add(GHL_RETRY_SPAN)
    }

    /// Signature, then shape, then timestamp. The replay check needs the store and is
    /// the receiver's.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: DateTime<Utc>) -> Result<Verified, Rejection> {
        self.check_signature(headers, body)?;
        let payload: Value =
            serde_json::from_slice(body).map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}")))?;
        if !payload.is_object() {
            return Err(Rejection::Malformed("body is not a JSON object".into()));
        }
        let id = match payload.get("webhookId") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 200 => s.clone(),
            _ => return Err(Rejection::Malformed("no `webhookId`".into())),
        };
        let stamp = payload.get("timestamp").and_then(Value::as_str).unwrap_or_default();
        let at = DateTime::parse_from_rfc3339(stamp)
            .map_err(|_| Rejection::Stale(format!("{stamp:?} (not an RFC 3339 time)")))?
            .with_timezone(&Utc);
        // Ahead of now only by clock skew; behind it by skew and GHL's retries.
        let (ahead, limit) = if at > now { (at - now, self.tolerance) } else { (now - at, self.max_age()) };
        if ahead.to_std().unwrap_or(Duration::MAX) > limit {
            return Err(Rejection::Stale(stamp.to_string()));
        }
        Ok(Verified { id, payload })
    }

    fn check_signature(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Rejection> {
        let header = |name: &str| -> Result<Option<Vec<u8>>, Rejection> {
            let Some(v) = headers.get(name) else { return Ok(None) };
            let text = v.to_str().map_err(|_| Rejection::BadSignature)?;
            STANDARD.decode(text.trim()).map(Some).map_err(|_| Rejection::BadSignature)
        };
        // The newer header wins when both are sent: a delivery is never accepted on
        // the weaker check when the stronger one failed.
        if let Some(sig) = header(ED25519_HEADER)? {
            let sig = Signature::from_slice(&sig).map_err(|_| Rejection::BadSignature)?;
            return match self.ed25519.iter().any(|k| k.verify_strict(body, &sig).is_ok()) {
                true => Ok(()),
                false => Err(Rejection::BadSignature),
            };
        }
        if let Some(sig) = header(RSA_HEADER)? {
            let digest = Sha256::digest(body);
            return match self.rsa.iter().any(|k| k.verify(Pkcs1v15Sign::new::<Sha256>(), &digest, &sig).is_ok()) {
                true => Ok(()),
                false => Err(Rejection::BadSignature),
            };
        }
        Err(Rejection::Unsigned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use serde_json::json;

    fn signed(key: &SigningKey, body: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        let sig = STANDARD.encode(key.sign(body).to_bytes());
        h.insert(ED25519_HEADER, sig.parse().expect("header"));
        h
    }

    #[test]
    fn checks_signature_shape_and_time() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let v = Verifier::new(vec![key.verifying_key()], vec![], Duration::from_secs(300));
        let now = Utc::now();
        let body = json!({"type": "ContactCreate", "webhookId": "w1", "timestamp": now.to_rfc3339(), "id": "c1"});
        let body = serde_json::to_vec(&body).expect("json");
        let ok = v.verify(&signed(&key, &body), &body, now).expect("valid");
        assert_eq!(ok.id, "w1");

        assert_eq!(v.verify(&HeaderMap::new(), &body, now), Err(Rejection::Unsigned));
        let other = SigningKey::from_bytes(&[8; 32]);
        assert_eq!(v.verify(&signed(&other, &body), &body, now), Err(Rejection::BadSignature));
        let mut tampered = body.clone();
        tampered.push(b' ');
        assert_eq!(v.verify(&signed(&key, &body), &tampered, now), Err(Rejection::BadSignature));
        let mut garbage = HeaderMap::new();
        garbage.insert(ED25519_HEADER, "%%%".parse().expect("header"));
        assert_eq!(v.verify(&garbage, &body, now), Err(Rejection::BadSignature));
        let later = now + chrono::Duration::minutes(5 + 70) + chrono::Duration::seconds(1);
        assert!(matches!(v.verify(&signed(&key, &body), &body, later), Err(Rejection::Stale(_))));
        let earlier = now - chrono::Duration::minutes(6);
        assert!(matches!(v.verify(&signed(&key, &body), &body, earlier), Err(Rejection::Stale(_))));

        for bad in [&b"[1]"[..], b"not json", br#"{"timestamp":"x"}"#] {
            assert!(matches!(
                v.verify(&signed(&key, bad), bad, now),
                Err(Rejection::Malformed(_) | Rejection::Stale(_))
            ));
        }
    }
}
