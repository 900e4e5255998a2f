//! The client: accounts, the request loop (limit, authenticate, send, retry).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};

use crate::auth::{Account, AccountState};
use crate::error::{ApiError, Error};
use crate::health::AccountHealth;
use crate::metrics::{Observer, Sending};
use crate::ratelimit::{LocationLimiter, RateHeaders, RateLimit, RateLimiters};
use crate::redact::Secret;
use crate::request::{form_pairs, Body, Request};
use crate::retry::{decide, Decision, Outcome, RetryPolicy};
use crate::shared_budget::{SharedBudget, SharedCredits};
use crate::token_store::{MemoryTokenStore, TokenSet, TokenStore};

/// Tunables; every field has a production default.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub connect_timeout: Duration,
    /// Whole request, body included.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    pub rate_limit: RateLimit,
    /// Refresh OAuth tokens this long before they expire.
    pub refresh_skew: Duration,
    pub user_agent: String,
    pub pool_max_idle_per_host: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            rate_limit: RateLimit::default(),
            refresh_skew: Duration::from_secs(300),
            user_agent: concat!("flowd-ghl/", env!("CARGO_PKG_VERSION")).to_owned(),
            pool_max_idle_per_host: 32,
        }
    }
}

/// The GHL client. Cheap to clone; clones share accounts, limiters and connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) config: ClientConfig,
    pub(crate) store: Arc<dyn TokenStore>,
    pub(crate) observer: Arc<dyn Observer>,
    accounts: RwLock<HashMap<String, Arc<AccountState>>>,
    limiters: RateLimiters,
    /// Set when other processes spend the same locations' budgets (cluster nodes).
    shared_budget: Option<Arc<dyn SharedBudget>>,
    shared_credits: std::sync::Mutex<HashMap<String, Arc<SharedCredits>>>,
}

/// Builds a [`Client`].
pub struct ClientBuilder {
    config: ClientConfig,
    store: Option<Arc<dyn TokenStore>>,
    observer: Option<Arc<dyn Observer>>,
    shared_budget: Option<Arc<dyn SharedBudget>>,
}

struct NoObserver;
impl Observer for NoObserver {}

impl ClientBuilder {
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Where OAuth tokens are kept; an in-memory store if not set.
    pub fn token_store(mut self, store: Arc<dyn TokenStore>) -> Self {
        self.store = Some(store);
        self
    }

    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// A request budget shared with other processes (see [`SharedBudget`]): every request
    /// also takes one from it, after the local limiter, before it is sent.
    pub fn shared_budget(mut self, budget: Arc<dyn SharedBudget>) -> Self {
        self.shared_budget = Some(budget);
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let c = &self.config;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .gzip(true)
            .connect_timeout(c.connect_timeout)
            .timeout(c.request_timeout)
            .pool_max_idle_per_host(c.pool_max_idle_per_host)
            .user_agent(c.user_agent.clone())
            // A redirect could carry the bearer token to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::InvalidRequest(format!("cannot build HTTP client: {}", describe(&e))))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                limiters: RateLimiters::new(self.config.rate_limit),
                config: self.config,
                store: self.store.unwrap_or_else(|| Arc::new(MemoryTokenStore::new())),
                observer: self.observer.unwrap_or_else(|| Arc::new(NoObserver)),
                accounts: RwLock::new(HashMap::new()),
                shared_budget: self.shared_budget,
                shared_credits: std::sync::Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Client {
    pub fn builder() -> ClientBuilder {
        ClientBuilder { config: ClientConfig::default(), store: None, observer: None, shared_budget: None }
    }

    /// Adds or replaces an account. Replacing drops its cached tokens (they are re-read from
    /// the store), which is what a reconnect needs.
    pub fn add_account(&self, account: Account) {
        let mut map = self.inner.accounts.write().unwrap_or_else(|p| p.into_inner());
        map.insert(account.id.clone(), Arc::new(AccountState::new(account)));
    }

    pub fn remove_account(&self, id: &str) -> bool {
        let mut map = self.inner.accounts.write().unwrap_or_else(|p| p.into_inner());
        map.remove(id).is_some()
    }

    pub fn account(&self, id: &str) -> Option<Account> {
        self.inner.account(id).ok().map(|a| a.account.clone())
    }

    /// Each account's token state as the last answered request left it, sorted by id: a
    /// refresh refused with `invalid_grant` or a Private Integration token refused with 401
    /// is `NeedsReconnect` until a request succeeds again or the account is reconnected.
    pub fn account_health(&self) -> Vec<AccountHealth> {
        let map = self.inner.accounts.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<AccountHealth> = map.values().map(|a| a.health()).collect();
        out.sort_by(|a, b| a.account.cmp(&b.account));
        out
    }

    /// The limiter of a location (to inspect the limit in force, or for tests).
    pub fn limiter(&self, location: &str) -> Arc<LocationLimiter> {
        self.inner.limiters.get(location)
    }

    /// Sends a request for `account` and returns the decoded body.
    pub async fn send(&self, account: &str, req: &Request) -> Result<Body, Error> {
        self.inner.send(account, req).await
    }

    /// Like [`send`](Client::send), and awaits `before_send` once, at the moment the request
    /// first leaves: after the token refresh, the rate limiter's wait and any backoff. A
    /// caller that records "this may have reached GHL" does it there, so a request still
    /// queued when the process stops is known not to have been sent. If `before_send` fails,
    /// nothing is sent and its error is the outer one; if the request fails before it
    /// leaves, `before_send` is never called.
    pub async fn send_marked<F, Fut, E>(
        &self,
        account: &str,
        req: &Request,
        before_send: F,
    ) -> Result<Result<Body, Error>, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        self.inner.send_marked(account, req, before_send).await
    }

    /// Sends a request and returns its body as JSON (see [`Body::into_value`] for downloads).
    pub async fn json(&self, account: &str, req: &Request) -> Result<serde_json::Value, Error> {
        self.inner.send(account, req).await.map(Body::into_value)
    }

    /// Exchanges an authorization code (from GHL's install redirect) for tokens and saves
    /// them for `account`, which must use OAuth credentials.
    pub async fn connect_oauth(
        &self,
        account: &str,
        code: &str,
        redirect_uri: Option<&str>,
    ) -> Result<TokenSet, Error> {
        let acct = self.inner.account(account)?;
        let crate::auth::Credentials::OAuth { app, user_type } = &acct.account.credentials else {
            return Err(Error::InvalidRequest(format!("account {account} does not use OAuth")));
        };
        let mut form = vec![
            ("client_id", app.client_id.clone()),
            ("client_secret", app.client_secret.expose().to_owned()),
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
        ];
        if let Some(uri) = redirect_uri {
            form.push(("redirect_uri", uri.to_owned()));
        }
        if let Some(ut) = user_type {
            form.push(("user_type", ut.clone()));
        }
        let tokens = self.inner.token_request(&acct.account, "/oauth/token", &form, None).await?;
        self.inner.save_tokens(account, &tokens).await?;
        // Fresh state: forget cached tokens and any refresh token marked dead.
        self.add_account(acct.account.clone());
        Ok(tokens)
    }

    /// `POST /oauth/locationToken`: a location token from an agency account's token. To
    /// have it renewed automatically, register an account with `Credentials::FromAgency`.
    pub async fn location_token(
        &self,
        agency_account: &str,
        company_id: &str,
        location_id: &str,
    ) -> Result<TokenSet, Error> {
        let agency = self.inner.account(agency_account)?;
        self.inner.exchange_location_token(&agency, company_id, location_id).await
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

impl Inner {
    /// The shared-budget credits of `location` (see [`SharedBudget`]).
    fn shared_credits(&self, location: &str) -> Arc<SharedCredits> {
        let mut map = self.shared_credits.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(location.to_string()).or_default().clone()
    }

    pub(crate) fn account(&self, id: &str) -> Result<Arc<AccountState>, Error> {
        let map = self.accounts.read().unwrap_or_else(|p| p.into_inner());
        map.get(id).cloned().ok_or_else(|| Error::InvalidRequest(format!("unknown account {id:?}")))
    }

    pub(crate) async fn send(&self, account: &str, req: &Request) -> Result<Body, Error> {
        let nothing = || std::future::ready(Ok::<(), std::convert::Infallible>(()));
        match self.send_marked(account, req, nothing).await {
            Ok(result) => result,
            Err(never) => match never {},
        }
    }

    pub(crate) async fn send_marked<F, Fut, E>(
        &self,
        account: &str,
        req: &Request,
        before_send: F,
    ) -> Result<Result<Body, Error>, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let acct = match self.account(account) {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        let result = self.send_for(&acct, req, before_send).await?;
        acct.observe(&result);
        Ok(result)
    }

    async fn send_for<F, Fut, E>(
        &self,
        acct: &Arc<AccountState>,
        req: &Request,
        before_send: F,
    ) -> Result<Result<Body, Error>, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        /// `?` for the request's own errors, which are the inner result.
        macro_rules! ghl {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(e)),
                }
            };
        }
        let mut before_send = Some(before_send);
        let location = req.location.as_deref().unwrap_or(&acct.account.resource);
        let prepared = Prepared {
            url: ghl!(req.url(&acct.account.base_url)),
            method: ghl!(reqwest::Method::from_bytes(req.method.as_str().as_bytes())
                .map_err(|e| Error::InvalidRequest(format!("method: {e}")))),
            form: match (&req.body, req.form) {
                (Some(b), true) => Some(ghl!(form_pairs(b))),
                _ => None,
            },
            limiter: self.limiters.get(location),
            location,
            req,
        };
        let mut attempt: u32 = 0;
        let mut reauthed = false;
        loop {
            attempt += 1;
            // Token first: a refresh may take a while, and the limiter's slot should be
            // used the moment it is granted.
            let bearer = ghl!(self.bearer(acct).await);
            let mut waited = ghl!(prepared.limiter.acquire_for(req.origin.flow.as_ref()).await);
            if let Some(budget) = &self.shared_budget {
                let credits = self.shared_credits(location);
                let limit = prepared.limiter.current_limit();
                let daily = prepared.limiter.daily().1;
                waited += ghl!(credits.acquire(budget, location, limit, daily).await);
            }
            if !waited.is_zero() {
                self.observer.rate_limit_wait(waited);
            }
            // Later attempts need no mark: the first one's stands for them.
            if let Some(mark) = before_send.take() {
                mark().await?;
            }
            let (outcome, err) = match ghl!(self.attempt(&prepared, &bearer.token, attempt).await) {
                Attempt::Done(body) => return Ok(Ok(body)),
                Attempt::Failed { status: Some(401), .. } if !reauthed && acct.renewable() => {
                    // An expired or revoked access token: renew once and repeat. GHL
                    // rejected the request before acting on it, so even a POST is safe.
                    reauthed = true;
                    attempt -= 1;
                    ghl!(self.renew(acct, bearer.generation).await);
                    continue;
                }
                Attempt::Failed { outcome, error, .. } => (outcome, error),
            };
            match decide(&self.config.retry, req.method, outcome, attempt, rand::random()) {
                Decision::Retry(delay) => {
                    self.observer.retry(delay);
                    tracing::debug!(
                        method = req.method.as_str(),
                        path = %req.path,
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        "retrying GHL request"
                    );
                    tokio::time::sleep(delay).await;
                }
                Decision::GiveUp => return Ok(Err(err)),
            }
        }
    }

    /// One HTTP exchange. `Err` only for a request that cannot be built.
    async fn attempt(&self, p: &Prepared<'_>, token: &Secret, attempt: u32) -> Result<Attempt, Error> {
        let req = p.req;
        let mut rb = self
            .http
            .request(p.method.clone(), p.url.clone())
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .header(AUTHORIZATION, bearer_header(token)?);
        if !req.version.is_empty() {
            rb = rb.header(&*VERSION, req.version.as_str());
        }
        rb = match (&p.form, &req.body) {
            (Some(pairs), _) => rb.form(pairs),
            (None, Some(body)) => rb.json(body),
            (None, None) => rb,
        };
        let (daily_used, daily_max) = p.limiter.daily();
        self.observer.sending(&Sending { location: p.location, origin: &req.origin, daily_used, daily_max });
        let started = Instant::now();
        let resp = match rb.send().await {
            Ok(resp) => resp,
            Err(e) => {
                self.observer.transport_error();
                tracing::debug!(
                    method = req.method.as_str(),
                    path = %req.path,
                    location = p.location,
                    attempt,
                    error = %describe(&e),
                    "GHL request failed"
                );
                let (outcome, error) = classify(&e);
                return Ok(Attempt::Failed { status: None, outcome, error });
            }
        };
        let status = resp.status().as_u16();
        let headers = RateHeaders::from_headers(resp.headers());
        p.limiter.observe(&headers, status);
        self.observer.response(status);
        tracing::debug!(
            method = req.method.as_str(),
            path = %req.path,
            location = p.location,
            status,
            attempt,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "GHL response"
        );
        let content_type = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                self.observer.transport_error();
                let (outcome, error) = classify(&e);
                return Ok(Attempt::Failed { status: None, outcome, error });
            }
        };
        if (200..300).contains(&status) {
            return Body::decode(content_type.as_deref(), bytes).map(Attempt::Done);
        }
        let retry_after = (status == 429).then(|| {
            let pause = headers.pause_after_429().unwrap_or(p.limiter.current_limit().1);
            p.limiter.pause(pause);
            pause
        });
        let error = Error::Api(ApiError::from_body(status, &bytes, retry_after));
        Ok(Attempt::Failed { status: Some(status), outcome: Outcome::Status { status, retry_after }, error })
    }
}

/// GHL's API version header, parsed once instead of on every request.
static VERSION: LazyLock<HeaderName> = LazyLock::new(|| HeaderName::from_static("version"));

/// What stays the same across the attempts of one request.
struct Prepared<'a> {
    req: &'a Request,
    url: url::Url,
    method: reqwest::Method,
    form: Option<Vec<(String, String)>>,
    location: &'a str,
    limiter: Arc<LocationLimiter>,
}

enum Attempt {
    Done(Body),
    Failed { status: Option<u16>, outcome: Outcome, error: Error },
}

pub(crate) fn bearer_header(token: &Secret) -> Result<HeaderValue, Error> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| Error::InvalidRequest("the access token contains characters not allowed in a header".into()))?;
    // Keeps it out of reqwest/hyper Debug output.
    v.set_sensitive(true);
    Ok(v)
}

/// A reqwest error as text: its chain of causes, without the URL's query string.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        src = s.source();
    }
    let text = parts.join(": ");
    match e.url().and_then(|u| u.query()) {
        Some(q) if !q.is_empty() => text.replace(q, "…"),
        _ => text,
    }
}

/// What a transport error means for retrying.
pub(crate) fn classify(e: &reqwest::Error) -> (Outcome, Error) {
    if e.is_connect() {
        (Outcome::ConnectFailed, Error::Connect(describe(e)))
    } else if e.is_timeout() {
        (Outcome::Timeout, Error::Timeout)
    } else {
        (Outcome::Broken, Error::Transport(describe(e)))
    }
}
