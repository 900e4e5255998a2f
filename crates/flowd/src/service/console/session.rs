//! Console sessions: a random id in an HttpOnly, SameSite=Strict cookie, looked up in a
//! table kept in memory with an expiry, and a CSRF token per session that every form
//! posts back.
//!
//! In memory on purpose: a restart logs everyone out, which is what an operator expects
//! of a process-local admin console, and nothing secret reaches the store.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use rand::RngCore;

pub const COOKIE: &str = "flowd_session";
/// How long a session lasts after login, whatever is done with it.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most; the oldest goes first past it, so a client that logs in in a
/// loop cannot grow the table without bound.
const MAX_SESSIONS: usize = 1024;

#[derive(Debug, Clone)]
pub struct Session {
    pub csrf: String,
    expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    table: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes from the OS-seeded generator, as hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets in time that depends only on their lengths.
pub fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

impl Sessions {
    /// A new session: its id (for the cookie) and its CSRF token.
    pub fn create(&self) -> (String, Session) {
        let id = random_token();
        let session = Session { csrf: random_token(), expires: Instant::now() + LIFETIME };
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        table.retain(|_, s| s.expires > now);
        if table.len() >= MAX_SESSIONS {
            if let Some(oldest) = table.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone()) {
                table.remove(&oldest);
            }
        }
        table.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The live session named by the request's cookie, if any.
    pub fn lookup(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie(headers, COOKIE)?;
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        match table.get(&id) {
            Some(s) if s.expires > Instant::now() => Some((id, s.clone())),
            Some(_) => {
                table.remove(&id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The `Set-Cookie` value that starts a session: not readable from scripts, never sent
/// by a request another site starts, for the whole console.
pub fn set_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", LIFETIME.as_secs())
}

pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_only() {
        let sessions = Sessions::default();
        let (id, s) = sessions.create();
        assert_eq!(id.len(), 64);
        assert_ne!(id, s.csrf);
        let mut h = HeaderMap::new();
        h.insert("cookie", format!("other=1; {COOKIE}={id}").parse().expect("header"));
        assert_eq!(sessions.lookup(&h).map(|(_, s)| s.csrf), Some(s.csrf));
        h.insert("cookie", format!("{COOKIE}=x{id}").parse().expect("header"));
        assert!(sessions.lookup(&h).is_none());
        sessions.remove(&id);
        h.insert("cookie", format!("{COOKIE}={id}").parse().expect("header"));
        assert!(sessions.lookup(&h).is_none());
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("ab", "abc"));
    }
}
