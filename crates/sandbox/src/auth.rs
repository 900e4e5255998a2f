//! Who is calling: Private Integration tokens from config, and OAuth tokens issued by
//! `/oauth/token` with GHL's rules (access tokens expire; refresh tokens are single-use
//! and replaced on every refresh; authorization codes are single-use).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use catalog::{Operation, TokenKind};
use serde::Serialize;
use serde_json::{json, Value};

use crate::clock::IdGen;
use crate::config::{OAuthClient, SandboxConfig};
use crate::error::ApiError;

/// The party a token acts for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    pub kind: PrincipalKind,
    /// Location of a sub-account token; `None` for agency tokens.
    pub location_id: Option<String>,
    pub company_id: String,
    /// Scopes the token carries; `None` means every scope (Private Integration tokens).
    #[serde(skip)]
    pub scopes: Option<HashSet<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PrincipalKind {
    Location,
    Company,
}

impl Principal {
    /// The resource rate limits are counted against: the location, or the company.
    pub fn resource(&self) -> &str {
        self.location_id.as_deref().unwrap_or(&self.company_id)
    }
}

#[derive(Debug)]
struct AccessToken {
    principal: Principal,
    expires_at: Instant,
}

/// What a refresh token or authorization code can be exchanged for.
#[derive(Debug, Clone)]
struct Grant {
    client_id: String,
    principal: Principal,
    user_type: &'static str,
}

#[derive(Debug, Default)]
struct OAuthState {
    clients: HashMap<String, OAuthClient>,
    access: HashMap<String, AccessToken>,
    refresh: HashMap<String, Grant>,
    /// Refresh tokens already exchanged: reusing one is `invalid_grant`.
    spent_refresh: HashSet<String>,
    codes: HashMap<String, Grant>,
}

#[derive(Debug)]
pub struct Auth {
    pits: HashMap<String, Principal>,
    oauth: Mutex<OAuthState>,
    access_ttl: Mutex<Duration>,
    ids: IdGen,
    default_location: String,
    company_id: String,
}

/// An OAuth error in the shape GHL's token endpoint uses.
#[derive(Debug, Clone)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        OAuthError { status, error, description: description.into() }
    }

    pub fn body(&self) -> Value {
        json!({
            "statusCode": self.status.as_u16(),
            "error": self.error,
            "error_description": self.description,
            "message": self.description,
        })
    }
}

impl Auth {
    pub fn new(config: &SandboxConfig) -> Auth {
        let mut pits = HashMap::new();
        for t in &config.tokens {
            pits.insert(
                t.clone(),
                Principal {
                    kind: PrincipalKind::Location,
                    location_id: Some(config.location_id.clone()),
                    company_id: config.company_id.clone(),
                    scopes: None,
                },
            );
        }
        for t in &config.agency_tokens {
            pits.insert(
                t.clone(),
                Principal {
                    kind: PrincipalKind::Company,
                    location_id: None,
                    company_id: config.company_id.clone(),
                    scopes: None,
                },
            );
        }
        let mut oauth = OAuthState::default();
        for c in &config.oauth_clients {
            oauth.clients.insert(c.client_id.clone(), c.clone());
        }
        Auth {
            pits,
            oauth: Mutex::new(oauth),
            access_ttl: Mutex::new(config.access_token_ttl),
            ids: IdGen::default(),
            default_location: config.location_id.clone(),
            company_id: config.company_id.clone(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, OAuthState> {
        self.oauth.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn token(&self, prefix: &str) -> String {
        format!("{prefix}-{}{}", self.ids.next(), self.ids.next())
    }

    /// Resolves the `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, ApiError> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("Invalid JWT"))?;
        if let Some(p) = self.pits.get(token) {
            return Ok(p.clone());
        }
        let state = self.state();
        match state.access.get(token) {
            Some(t) if t.expires_at > Instant::now() => Ok(t.principal.clone()),
            Some(_) => Err(ApiError::unauthorized("Invalid JWT")),
            None => Err(ApiError::unauthorized("Invalid JWT")),
        }
    }

    /// Token kind and scopes an operation needs, as GHL's IAM checks them.
    pub fn authorize(&self, p: &Principal, op: &Operation) -> Result<(), ApiError> {
        let wanted = match p.kind {
            PrincipalKind::Location => TokenKind::Location,
            PrincipalKind::Company => TokenKind::Agency,
        };
        if !op.tokens.is_empty() && !op.tokens.contains(&wanted) {
            return Err(ApiError::unauthorized(
                "This route is not yet supported by the IAM Service. Please use the correct token type for this route.",
            ));
        }
        if let Some(scopes) = &p.scopes {
            if op.scopes.iter().any(|s| !scopes.contains(s)) {
                return Err(ApiError::unauthorized("The token is not authorized for this scope."));
            }
        }
        Ok(())
    }

    pub fn register_client(&self, client: OAuthClient) {
        self.state().clients.insert(client.client_id.clone(), client);
    }

    pub fn set_access_ttl(&self, ttl: Duration) {
        *self.access_ttl.lock().unwrap_or_else(|e| e.into_inner()) = ttl;
    }

    fn scopes_of(client: &OAuthClient) -> Option<HashSet<String>> {
        (!client.scopes.is_empty()).then(|| client.scopes.iter().cloned().collect())
    }

    fn principal_for(&self, client: &OAuthClient, user_type: &str, location: Option<&str>) -> Principal {
        if user_type == "Company" {
            Principal {
                kind: PrincipalKind::Company,
                location_id: None,
                company_id: self.company_id.clone(),
                scopes: Self::scopes_of(client),
            }
        } else {
            Principal {
                kind: PrincipalKind::Location,
                location_id: Some(location.unwrap_or(&self.default_location).to_string()),
                company_id: self.company_id.clone(),
                scopes: Self::scopes_of(client),
            }
        }
    }

    /// Mints an initial refresh token for a registered client (tests and demos start here).
    pub fn mint_refresh_token(
        &self,
        client_id: &str,
        user_type: &str,
        location: Option<&str>,
    ) -> Result<String, ApiError> {
        let mut state = self.state();
        let client = state
            .clients
            .get(client_id)
            .cloned()
            .ok_or_else(|| ApiError::bad_request(format!("unknown client_id {client_id}")))?;
        let user_type = if user_type == "Company" { "Company" } else { "Location" };
        let principal = self.principal_for(&client, user_type, location);
        let token = self.token("rt");
        state.refresh.insert(token.clone(), Grant { client_id: client.client_id, principal, user_type });
        Ok(token)
    }

    /// Mints a single-use authorization code, as the consent screen would.
    pub fn mint_code(&self, client_id: &str, user_type: &str, location: Option<&str>) -> Result<String, ApiError> {
        let mut state = self.state();
        let client = state
            .clients
            .get(client_id)
            .cloned()
            .ok_or_else(|| ApiError::bad_request(format!("unknown client_id {client_id}")))?;
        let user_type = if user_type == "Company" { "Company" } else { "Location" };
        let principal = self.principal_for(&client, user_type, location);
        let code = self.token("code");
        state.codes.insert(code.clone(), Grant { client_id: client.client_id, principal, user_type });
        Ok(code)
    }

    /// `POST /oauth/token`.
    pub fn exchange(&self, form: &HashMap<String, String>) -> Result<Value, OAuthError> {
        let field = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
        let (Some(client_id), Some(secret), Some(grant_type)) =
            (field("client_id"), field("client_secret"), field("grant_type"))
        else {
            return Err(OAuthError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "client_id, client_secret and grant_type are required",
            ));
        };
        let mut state = self.state();
        match state.clients.get(client_id) {
            Some(c) if c.client_secret == secret => {}
            _ => {
                return Err(OAuthError::new(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed"))
            }
        }
        let grant = match grant_type {
            "refresh_token" => {
                let Some(rt) = field("refresh_token") else {
                    return Err(OAuthError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "refresh_token is required",
                    ));
                };
                match state.refresh.remove(rt) {
                    Some(g) if g.client_id == client_id => {
                        state.spent_refresh.insert(rt.to_string());
                        g
                    }
                    Some(g) => {
                        // A token presented by the wrong client stays valid for its owner.
                        state.refresh.insert(rt.to_string(), g);
                        return Err(OAuthError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            "Invalid grant: refresh token is invalid",
                        ));
                    }
                    None if state.spent_refresh.contains(rt) => {
                        return Err(OAuthError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            "Invalid grant: refresh token has already been used",
                        ));
                    }
                    None => {
                        return Err(OAuthError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            "Invalid grant: refresh token is invalid",
                        ));
                    }
                }
            }
            "authorization_code" => {
                let Some(code) = field("code") else {
                    return Err(OAuthError::new(StatusCode::BAD_REQUEST, "invalid_request", "code is required"));
                };
                match state.codes.remove(code) {
                    Some(g) if g.client_id == client_id => g,
                    _ => {
                        return Err(OAuthError::new(
                            StatusCode::BAD_REQUEST,
                            "invalid_grant",
                            "Invalid grant: authorization code is invalid",
                        ));
                    }
                }
            }
            other => {
                return Err(OAuthError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unsupported_grant_type",
                    format!("grant_type must be authorization_code or refresh_token, not {other}"),
                ));
            }
        };
        drop(state);
        Ok(self.issue(grant, true))
    }

    /// `POST /oauth/locationToken`: an agency token buys a location token.
    pub fn location_token(&self, agency: &Principal, form: &HashMap<String, String>) -> Result<Value, ApiError> {
        if agency.kind != PrincipalKind::Company {
            return Err(ApiError::unauthorized(
                "This route is not yet supported by the IAM Service. Please use the correct token type for this route.",
            ));
        }
        let mut missing = Vec::new();
        for f in ["companyId", "locationId"] {
            if form.get(f).is_none_or(|v| v.is_empty()) {
                missing.push(format!("{f} should not be empty"));
            }
        }
        if !missing.is_empty() {
            return Err(ApiError::unprocessable(missing));
        }
        let company = form.get("companyId").map(String::as_str).unwrap_or_default();
        if company != agency.company_id {
            return Err(ApiError::forbidden("The token does not have access to this company"));
        }
        let location = form.get("locationId").map(String::as_str).unwrap_or_default();
        let principal = Principal {
            kind: PrincipalKind::Location,
            location_id: Some(location.to_string()),
            company_id: agency.company_id.clone(),
            scopes: agency.scopes.clone(),
        };
        Ok(self.issue(Grant { client_id: String::new(), principal, user_type: "Location" }, false))
    }

    fn issue(&self, grant: Grant, with_refresh: bool) -> Value {
        let ttl = *self.access_ttl.lock().unwrap_or_else(|e| e.into_inner());
        let access = self.token("at");
        let mut state = self.state();
        state.access.insert(
            access.clone(),
            AccessToken { principal: grant.principal.clone(), expires_at: Instant::now() + ttl },
        );
        let scope = state.clients.get(&grant.client_id).map(|c| c.scopes.join(" ")).unwrap_or_default();
        let mut body = json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": ttl.as_secs(),
            "scope": scope,
            "userType": grant.user_type,
            "companyId": grant.principal.company_id,
            "userId": "usr_sandbox_installer",
        });
        if let (Some(loc), Some(map)) = (&grant.principal.location_id, body.as_object_mut()) {
            map.insert("locationId".into(), json!(loc));
        }
        if with_refresh {
            let refresh = self.token("rt");
            state.refresh.insert(refresh.clone(), grant);
            if let Some(map) = body.as_object_mut() {
                map.insert("refresh_token".into(), json!(refresh));
            }
        }
        body
    }
}
