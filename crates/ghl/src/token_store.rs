//! Where OAuth token pairs live between refreshes.
//!
//! GHL refresh tokens are single-use: each refresh returns a new pair and kills the old
//! refresh token. A pair that was received but not saved is a lost connection, so the
//! client saves every new pair through [`TokenStore::save`] before using it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::redact::Secret;

/// One OAuth grant's current tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenSet {
    pub access_token: Secret,
    /// Absent for tokens that cannot be refreshed (a location token obtained from an agency
    /// token is renewed by exchanging again).
    pub refresh_token: Option<Secret>,
    pub expires_at: DateTime<Utc>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub user_type: Option<String>,
    #[serde(default)]
    pub location_id: Option<String>,
    #[serde(default)]
    pub company_id: Option<String>,
}

/// Durable storage of token sets, keyed by account id.
///
/// Synchronous on purpose: the calls are rare (first use, refresh, invalid grant), the
/// planned sled store is synchronous, and a sync trait stays object-safe without extra
/// crates. The client calls it from `spawn_blocking`.
pub trait TokenStore: Send + Sync + 'static {
    fn load(&self, account: &str) -> Result<Option<TokenSet>, TokenStoreError>;

    /// Must not return before the set is durable (flushed); the client uses the new tokens
    /// only after this returns `Ok`.
    fn save(&self, account: &str, tokens: &TokenSet) -> Result<(), TokenStoreError>;

    /// A lock on `account` shared with every other process using this store, held while the
    /// guard lives: the client refreshes under it (re-reading the store first), so that of
    /// several processes one refreshes and the others use the pair it saved. `None`: no
    /// other process shares the store (the in-process single flight is enough).
    fn lock(&self, _account: &str) -> Result<Option<Box<dyn Send>>, TokenStoreError> {
        Ok(None)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TokenStoreError(pub String);

/// A process-local store, for tests and for PIT-only deployments.
#[derive(Debug, Default)]
pub struct MemoryTokenStore {
    map: Mutex<HashMap<String, TokenSet>>,
    saves: AtomicU64,
}

impl MemoryTokenStore {
    pub fn new() -> Self {
        MemoryTokenStore::default()
    }

    /// How many times `save` succeeded (tests count refreshes with it).
    pub fn saves(&self) -> u64 {
        self.saves.load(Ordering::SeqCst)
    }
}

impl TokenStore for MemoryTokenStore {
    fn load(&self, account: &str) -> Result<Option<TokenSet>, TokenStoreError> {
        let map = self.map.lock().map_err(|_| TokenStoreError("memory token store poisoned".into()))?;
        Ok(map.get(account).cloned())
    }

    fn save(&self, account: &str, tokens: &TokenSet) -> Result<(), TokenStoreError> {
        let mut map = self.map.lock().map_err(|_| TokenStoreError("memory token store poisoned".into()))?;
        map.insert(account.to_owned(), tokens.clone());
        self.saves.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_round_trip_and_debug_is_redacted() {
        let s = MemoryTokenStore::new();
        assert!(s.load("a").unwrap().is_none());
        let t = TokenSet {
            access_token: Secret::new("canary-access"),
            refresh_token: Some(Secret::new("canary-refresh")),
            expires_at: Utc::now(),
            scope: None,
            user_type: Some("Location".into()),
            location_id: Some("loc".into()),
            company_id: None,
        };
        s.save("a", &t).unwrap();
        assert_eq!(s.load("a").unwrap(), Some(t.clone()));
        assert_eq!(s.saves(), 1);
        let dbg = format!("{t:?} {s:?}");
        assert!(!dbg.contains("canary"), "{dbg}");
    }
}
