//! OAuth token pairs kept in the engine's store, so a rotated refresh token survives a
//! restart (GHL refresh tokens work once; losing the new one disconnects the account).

use std::sync::Arc;
use store::Store;

pub struct StoreTokens(pub Arc<dyn Store>);

impl ghl::TokenStore for StoreTokens {
    fn load(&self, account: &str) -> Result<Option<ghl::TokenSet>, ghl::TokenStoreError> {
        let value = self.0.get_tokens(account).map_err(|e| ghl::TokenStoreError(e.to_string()))?;
        value
            .map(|v| {
                serde_json::from_value(v).map_err(|e| ghl::TokenStoreError(format!("stored tokens unreadable: {e}")))
            })
            .transpose()
    }

    fn save(&self, account: &str, tokens: &ghl::TokenSet) -> Result<(), ghl::TokenStoreError> {
        let value = serde_json::to_value(tokens).map_err(|e| ghl::TokenStoreError(e.to_string()))?;
        self.0.put_tokens(account, &value).map_err(|e| ghl::TokenStoreError(e.to_string()))
    }

    fn lock(&self, account: &str) -> Result<Option<Box<dyn Send>>, ghl::TokenStoreError> {
        match self.0.cluster() {
            Some(c) => c.lock_account(account).map(Some).map_err(|e| ghl::TokenStoreError(e.to_string())),
            None => Ok(None),
        }
    }
}
