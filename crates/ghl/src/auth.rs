//! Credentials and keeping OAuth tokens fresh.
//!
//! The rules come from GHL's refresh-token behaviour: a refresh token works once, then the
//! new pair replaces it. So per account at most one refresh runs at a time (callers that
//! queued behind it reuse its result), the new pair is saved before anyone uses it, and an
//! `invalid_grant` first re-reads the store (another process may have rotated the pair)
//! before the account is declared in need of reconnecting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use url::Url;

use crate::client::Inner;
use crate::error::{ApiError, Error};
use crate::redact::Secret;
use crate::request::DEFAULT_VERSION;
use crate::retry::{decide, Decision, Outcome};
use crate::token_store::{TokenSet, TokenStore};

/// A marketplace app's client credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthApp {
    pub client_id: String,
    pub client_secret: Secret,
}

/// How an account authenticates.
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    /// A Private Integration token: a static bearer.
    PrivateToken(Secret),
    /// An OAuth grant; its tokens live in the token store under the account id.
    OAuth {
        app: OAuthApp,
        /// `user_type` sent on refresh (`Location` or `Company`), when known.
        user_type: Option<String>,
    },
    /// A location token obtained from another (agency) account's token with
    /// `POST /oauth/locationToken`, renewed the same way when it expires.
    FromAgency { agency_account: String, company_id: String, location_id: String },
}

/// One connected GHL account (a location or an agency).
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// Our id for it; also the token store key.
    pub id: String,
    pub base_url: Url,
    pub credentials: Credentials,
    /// Location (or company) id whose rate limit a request spends when it names none.
    pub resource: String,
}

impl Account {
    /// An account on the real GHL host whose rate-limit resource is `id`.
    pub fn new(id: impl Into<String>, credentials: Credentials) -> Result<Self, Error> {
        let id = id.into();
        let base_url = Url::parse(crate::request::DEFAULT_BASE_URL)
            .map_err(|e| Error::InvalidRequest(format!("default base URL: {e}")))?;
        Ok(Account { resource: id.clone(), id, base_url, credentials })
    }

    pub fn with_base_url(mut self, base_url: &str) -> Result<Self, Error> {
        let url = Url::parse(base_url).map_err(|e| Error::InvalidRequest(format!("base URL {base_url:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Error::InvalidRequest(format!("base URL {base_url:?} is not an http(s) URL")));
        }
        self.base_url = url;
        Ok(self)
    }

    pub fn with_resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = resource.into();
        self
    }
}

/// Per-account runtime state.
#[derive(Debug)]
pub(crate) struct AccountState {
    pub(crate) account: Account,
    cached: RwLock<Option<Cached>>,
    generation: AtomicU64,
    refresh_lock: tokio::sync::Mutex<Renewal>,
    /// What the last answered request said about the token (see `Client::account_health`).
    health: std::sync::Mutex<(crate::health::TokenState, Option<chrono::DateTime<Utc>>)>,
}

#[derive(Debug, Clone)]
struct Cached {
    tokens: Arc<TokenSet>,
    generation: u64,
}

/// State only the renewing task touches.
#[derive(Debug, Default)]
struct Renewal {
    /// A pair GHL issued that the store refused; saved before anything else next time.
    unsaved: Option<TokenSet>,
    /// The refresh token GHL called invalid, so we stop sending it.
    dead_refresh: Option<Secret>,
}

/// A bearer token and the generation it came from (to tell, after a 401, whether someone
/// already replaced it).
pub(crate) struct Bearer {
    pub(crate) token: Secret,
    pub(crate) generation: u64,
}

impl AccountState {
    pub(crate) fn new(account: Account) -> Self {
        AccountState {
            account,
            cached: RwLock::new(None),
            generation: AtomicU64::new(0),
            refresh_lock: tokio::sync::Mutex::new(Renewal::default()),
            health: std::sync::Mutex::new((crate::health::TokenState::Unknown, None)),
        }
    }

    /// Records what a request's outcome says about the token: an answer other than 401
    /// means GHL accepted it; a refused refresh or a 401 that renewing did not cure means
    /// someone must reconnect the account. Other failures (timeouts, 5xx) say nothing.
    pub(crate) fn observe(&self, result: &Result<crate::request::Body, Error>) {
        use crate::health::TokenState;
        let state = match result {
            Ok(_) => TokenState::Valid,
            Err(Error::ReconnectNeeded { reason, .. }) => TokenState::NeedsReconnect { reason: reason.clone() },
            Err(Error::Api(e)) if e.status == 401 => TokenState::NeedsReconnect {
                reason: match self.account.credentials {
                    Credentials::PrivateToken(_) => {
                        "GoHighLevel refused its Private Integration token (401); replace the token".into()
                    }
                    _ => "GoHighLevel refused its token (401) even after renewing it; reconnect the account".into(),
                },
            },
            // Answered past authentication (a 404, a 422, a 403 for a missing scope).
            Err(Error::Api(e)) if (400..500).contains(&e.status) && e.status != 429 => TokenState::Valid,
            Err(_) => return,
        };
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = (state, Some(Utc::now()));
    }

    pub(crate) fn health(&self) -> crate::health::AccountHealth {
        let (token, checked_at) = self.health.lock().unwrap_or_else(|p| p.into_inner()).clone();
        crate::health::AccountHealth { account: self.account.id.clone(), token, checked_at }
    }

    pub(crate) fn renewable(&self) -> bool {
        !matches!(self.account.credentials, Credentials::PrivateToken(_))
    }

    fn cached(&self) -> Option<Cached> {
        self.cached.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn install(&self, tokens: TokenSet) -> Bearer {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let token = tokens.access_token.clone();
        *self.cached.write().unwrap_or_else(|p| p.into_inner()) = Some(Cached { tokens: Arc::new(tokens), generation });
        Bearer { token, generation }
    }
}

fn fresh(t: &TokenSet, skew: Duration) -> bool {
    let skew = chrono::Duration::from_std(skew).unwrap_or(chrono::Duration::zero());
    t.expires_at - skew > Utc::now()
}

impl Inner {
    /// The token to send now.
    pub(crate) async fn bearer(&self, acct: &Arc<AccountState>) -> Result<Bearer, Error> {
        if let Credentials::PrivateToken(t) = &acct.account.credentials {
            return Ok(Bearer { token: t.clone(), generation: 0 });
        }
        match acct.cached() {
            Some(c) if fresh(&c.tokens, self.config.refresh_skew) => {
                Ok(Bearer { token: c.tokens.access_token.clone(), generation: c.generation })
            }
            Some(c) => self.renew(acct, c.generation).await,
            None => self.renew(acct, 0).await,
        }
    }

    /// Replaces the token of generation `seen` (expiring, or just refused with a 401).
    /// Single-flight: whoever gets the lock after the first caller finds a newer generation
    /// and returns it without calling GHL.
    pub(crate) async fn renew(&self, acct: &Arc<AccountState>, seen: u64) -> Result<Bearer, Error> {
        let mut renewal = acct.refresh_lock.lock().await;
        if let Some(c) = acct.cached() {
            if c.generation != seen && fresh(&c.tokens, self.config.refresh_skew) {
                return Ok(Bearer { token: c.tokens.access_token.clone(), generation: c.generation });
            }
        }
        match &acct.account.credentials {
            Credentials::PrivateToken(t) => Ok(Bearer { token: t.clone(), generation: 0 }),
            Credentials::OAuth { app, user_type } => {
                self.renew_oauth(acct, &mut renewal, app, user_type.as_deref()).await
            }
            Credentials::FromAgency { agency_account, company_id, location_id } => {
                let agency = self.account(agency_account)?;
                if Arc::ptr_eq(&agency, acct) {
                    return Err(Error::InvalidRequest(format!(
                        "account {} names itself as its agency",
                        acct.account.id
                    )));
                }
                let tokens = Box::pin(self.exchange_location_token(&agency, company_id, location_id)).await?;
                Ok(acct.install(tokens))
            }
        }
    }

    async fn renew_oauth(
        &self,
        acct: &Arc<AccountState>,
        renewal: &mut Renewal,
        app: &OAuthApp,
        user_type: Option<&str>,
    ) -> Result<Bearer, Error> {
        let id = &acct.account.id;
        if let Some(pending) = renewal.unsaved.take() {
            if let Err(e) = self.save_tokens(id, &pending).await {
                renewal.unsaved = Some(pending);
                return Err(e);
            }
            return Ok(acct.install(pending));
        }
        // Other processes sharing the store (cluster nodes) refresh under the same lock, so
        // the store read next holds whatever pair the last of them committed.
        let _shared = self.lock_tokens(id).await?;
        // The store is the truth: another process may have refreshed since we last looked.
        let stored = self.load_tokens(id).await?;
        let current = acct.cached().map(|c| c.tokens);
        let Some(stored) = stored else {
            return Err(Error::ReconnectNeeded {
                account: id.clone(),
                reason: "no OAuth tokens are stored for it (it was never connected)".into(),
            });
        };
        let changed = current.as_deref().is_none_or(|c| c.access_token != stored.access_token);
        if changed && fresh(&stored, self.config.refresh_skew) {
            return Ok(acct.install(stored));
        }
        // Here the store holds the very token that expired or that GHL just refused with a
        // 401: refresh it even when the clock says it is still valid.
        let mut tokens = stored;
        // Two rounds at most: the second only when the store handed us a newer pair after
        // GHL refused ours.
        for _ in 0..2 {
            let Some(refresh) = tokens.refresh_token.clone() else {
                return Err(Error::ReconnectNeeded {
                    account: id.clone(),
                    reason: "the stored grant has no refresh token".into(),
                });
            };
            if renewal.dead_refresh.as_ref() == Some(&refresh) {
                return Err(reconnect(id));
            }
            let mut form = vec![
                ("client_id", app.client_id.clone()),
                ("client_secret", app.client_secret.expose().to_owned()),
                ("grant_type", "refresh_token".to_owned()),
                ("refresh_token", refresh.expose().to_owned()),
            ];
            if let Some(ut) = user_type.or(tokens.user_type.as_deref()) {
                form.push(("user_type", ut.to_owned()));
            }
            match self.token_request(&acct.account, "/oauth/token", &form, None).await {
                Ok(mut new) => {
                    // GHL omits these on refresh at times; keep what we knew.
                    new.location_id = new.location_id.or(tokens.location_id.take());
                    new.company_id = new.company_id.or(tokens.company_id.take());
                    new.user_type = new.user_type.or(tokens.user_type.take());
                    if let Err(e) = self.save_tokens(id, &new).await {
                        tracing::error!(account = %id, "new OAuth tokens could not be saved; holding them until the store works");
                        renewal.unsaved = Some(new);
                        return Err(e);
                    }
                    tracing::info!(account = %id, "OAuth tokens refreshed");
                    return Ok(acct.install(new));
                }
                Err(Error::Api(e)) if is_invalid_grant(&e) => {
                    tracing::warn!(account = %id, "refresh token refused by GHL; re-reading the token store");
                    match self.load_tokens(id).await? {
                        Some(newer) if newer.refresh_token.as_ref() != Some(&refresh) => {
                            if fresh(&newer, self.config.refresh_skew) {
                                return Ok(acct.install(newer));
                            }
                            tokens = newer;
                        }
                        _ => {
                            renewal.dead_refresh = Some(refresh);
                            return Err(reconnect(id));
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(reconnect(id))
    }

    /// `POST /oauth/locationToken` with the agency account's token: a token for one of its
    /// locations.
    pub(crate) async fn exchange_location_token(
        &self,
        agency: &Arc<AccountState>,
        company_id: &str,
        location_id: &str,
    ) -> Result<TokenSet, Error> {
        let mut bearer = self.bearer(agency).await?;
        let form = [("companyId", company_id.to_owned()), ("locationId", location_id.to_owned())];
        let mut reauthed = false;
        loop {
            let res = self.token_request(&agency.account, "/oauth/locationToken", &form, Some(&bearer.token)).await;
            match res {
                Err(Error::Api(e)) if e.status == 401 && !reauthed && agency.renewable() => {
                    reauthed = true;
                    bearer = Box::pin(self.renew(agency, bearer.generation)).await?;
                }
                other => {
                    let mut t = other?;
                    t.location_id = t.location_id.or_else(|| Some(location_id.to_owned()));
                    t.company_id = t.company_id.or_else(|| Some(company_id.to_owned()));
                    return Ok(t);
                }
            }
        }
    }

    /// One form-encoded call to a token endpoint. Retried only when the request surely did
    /// not reach GHL: a refresh that reached it has already spent the refresh token.
    pub(crate) async fn token_request(
        &self,
        account: &Account,
        path: &str,
        form: &[(&str, String)],
        bearer: Option<&Secret>,
    ) -> Result<TokenSet, Error> {
        let base = &account.base_url;
        let mut url = base.clone();
        url.set_path(&format!("{}{}", base.path().trim_end_matches('/'), path));
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.observer.token_refresh(&account.resource);
            let mut rb = self
                .http
                .post(url.clone())
                .header(reqwest::header::ACCEPT, "application/json")
                .header("Version", DEFAULT_VERSION)
                .form(form);
            if let Some(t) = bearer {
                rb = rb.header(reqwest::header::AUTHORIZATION, crate::client::bearer_header(t)?);
            }
            let (outcome, err) = match rb.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    self.observer.response(status);
                    let bytes = resp.bytes().await.map_err(|e| Error::Transport(crate::client::describe(&e)))?;
                    if (200..300).contains(&status) {
                        return parse_token_response(&bytes);
                    }
                    let e = ApiError::from_body(status, &bytes, None);
                    (Outcome::Status { status, retry_after: None }, Error::Api(e))
                }
                Err(e) => {
                    self.observer.transport_error();
                    crate::client::classify(&e)
                }
            };
            match decide(&self.config.retry, catalog::Method::Post, outcome, attempt, rand::random()) {
                Decision::Retry(d) => {
                    self.observer.retry(d);
                    tokio::time::sleep(d).await;
                }
                Decision::GiveUp => return Err(err),
            }
        }
    }

    pub(crate) async fn load_tokens(&self, account: &str) -> Result<Option<TokenSet>, Error> {
        let store: Arc<dyn TokenStore> = self.store.clone();
        let key = account.to_owned();
        tokio::task::spawn_blocking(move || store.load(&key))
            .await
            .map_err(|e| Error::TokenStore(format!("load task failed: {e}")))?
            .map_err(|e| Error::TokenStore(e.0))
    }

    pub(crate) async fn lock_tokens(&self, account: &str) -> Result<Option<Box<dyn Send>>, Error> {
        let store: Arc<dyn TokenStore> = self.store.clone();
        let key = account.to_owned();
        tokio::task::spawn_blocking(move || store.lock(&key))
            .await
            .map_err(|e| Error::TokenStore(format!("lock task failed: {e}")))?
            .map_err(|e| Error::TokenStore(e.0))
    }

    pub(crate) async fn save_tokens(&self, account: &str, tokens: &TokenSet) -> Result<(), Error> {
        let store: Arc<dyn TokenStore> = self.store.clone();
        let key = account.to_owned();
        let tokens = tokens.clone();
        tokio::task::spawn_blocking(move || store.save(&key, &tokens))
            .await
            .map_err(|e| Error::TokenStore(format!("save task failed: {e}")))?
            .map_err(|e| Error::TokenStore(e.0))
    }
}

fn reconnect(account: &str) -> Error {
    Error::ReconnectNeeded {
        account: account.to_owned(),
        reason: "GoHighLevel no longer accepts its refresh token (it was already used, revoked, or the app was \
                 uninstalled); reconnect the account to continue"
            .into(),
    }
}

fn is_invalid_grant(e: &ApiError) -> bool {
    let says = |s: &str| s.to_ascii_lowercase().contains("invalid_grant");
    e.error.as_deref().is_some_and(says) || ((e.status == 400 || e.status == 401) && says(&e.message.to_string()))
}

/// Reads a token endpoint's success body.
pub(crate) fn parse_token_response(bytes: &[u8]) -> Result<TokenSet, Error> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| Error::Decode(format!("token response: {e}")))?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let access = s("access_token").ok_or_else(|| Error::Decode("token response has no access_token".into()))?;
    let expires_in = v.get("expires_in").and_then(Value::as_f64).unwrap_or(86_399.0);
    let expires_in = if expires_in.is_finite() { expires_in.clamp(0.0, 400.0 * 86_400.0) } else { 0.0 };
    let expires_at = Utc::now() + chrono::Duration::milliseconds((expires_in * 1000.0) as i64);
    Ok(TokenSet {
        access_token: Secret::new(access),
        refresh_token: s("refresh_token").map(Secret::new),
        expires_at,
        scope: s("scope"),
        user_type: s("userType"),
        location_id: s("locationId"),
        company_id: s("companyId"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_token_responses() {
        let t = parse_token_response(
            br#"{"access_token":"a","refresh_token":"r","expires_in":86399,"userType":"Location","locationId":"l"}"#,
        )
        .unwrap();
        assert_eq!(t.access_token.expose(), "a");
        assert_eq!(t.refresh_token.as_ref().map(Secret::expose), Some("r"));
        assert_eq!(t.location_id.as_deref(), Some("l"));
        assert!(fresh(&t, Duration::from_secs(3600)));
        assert!(matches!(parse_token_response(br#"{"refresh_token":"r"}"#), Err(Error::Decode(_))));
        assert!(matches!(parse_token_response(b"nope"), Err(Error::Decode(_))));
        let t = parse_token_response(br#"{"access_token":"a","expires_in":-5}"#).unwrap();
        assert!(!fresh(&t, Duration::ZERO) || t.expires_at <= Utc::now());
    }

    #[test]
    fn recognises_invalid_grant() {
        let e = ApiError::from_body(400, br#"{"error":"invalid_grant","error_description":"bad"}"#, None);
        assert!(is_invalid_grant(&e));
        let e = ApiError::from_body(401, br#"{"statusCode":401,"message":"Invalid grant: invalid_grant"}"#, None);
        assert!(is_invalid_grant(&e));
        let e = ApiError::from_body(500, br#"{"statusCode":500,"message":"boom"}"#, None);
        assert!(!is_invalid_grant(&e));
    }

    #[test]
    fn account_base_url_is_validated() {
        let a = Account::new("acc", Credentials::PrivateToken(Secret::new("t"))).unwrap();
        assert_eq!(a.base_url.as_str(), "https://services.leadconnectorhq.com/");
        assert!(a.clone().with_base_url("ftp://x").is_err());
        assert!(a.clone().with_base_url("not a url").is_err());
        assert!(a.with_base_url("http://127.0.0.1:1").is_ok());
    }
}
