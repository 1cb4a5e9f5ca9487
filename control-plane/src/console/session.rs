//! Console sessions: server-side, in this replica's memory. The browser holds only a random id
//! in an HttpOnly, Secure, SameSite=Strict cookie; the server keeps the operator, the token they
//! signed in with (every page calls the API with it, with the API's checks) and the session's
//! CSRF token.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::time::Instant;

use crate::auth::Operator;

/// The cookie's name. `__Host-` makes the browser refuse it unless it is Secure, has `Path=/`
/// and no `Domain`: no sibling host can plant or overwrite it.
pub const COOKIE: &str = "__Host-portcullis-session";

/// How long sessions last.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Ended after this long without a request.
    pub idle: Duration,
    /// Ended this long after sign-in, however busy.
    pub absolute: Duration,
    /// Sessions kept at most; signing in beyond it ends the least recently used one.
    pub max_sessions: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 3600),
            max_sessions: 10_000,
        }
    }
}

/// A signed-in operator.
#[derive(Clone)]
pub struct Session {
    pub operator: Operator,
    /// The bearer token the operator signed in with.
    pub token: Arc<str>,
    /// Every state-changing form carries it back.
    pub csrf: Arc<str>,
    created: Instant,
    last_used: Instant,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        presented.len() == self.csrf.len()
            && bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes()))
    }

    pub fn is_admin(&self) -> bool {
        self.operator.role == crate::auth::Role::Admin
    }
}

/// Every live session, by the SHA-256 of its cookie value (the map never holds the value itself).
pub struct Sessions {
    limits: SessionLimits,
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    pub fn new(limits: SessionLimits) -> Self {
        Sessions {
            limits,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a session; returns the cookie value.
    pub fn create(&self, operator: Operator, token: &str) -> (String, Session) {
        let id = random_hex();
        let now = Instant::now();
        let session = Session {
            operator,
            token: token.into(),
            csrf: random_hex().into(),
            created: now,
            last_used: now,
        };
        let mut map = self.lock();
        if map.len() >= self.limits.max_sessions {
            map.retain(|_, s| !self.expired(s, now));
        }
        if map.len() >= self.limits.max_sessions
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(key, _)| *key)
        {
            map.remove(&oldest);
        }
        map.insert(key(&id), session.clone());
        (id, session)
    }

    /// The live session of a cookie value, marked used now; an expired one is ended.
    pub fn get(&self, cookie_value: &str) -> Option<Session> {
        let key = key(cookie_value);
        let now = Instant::now();
        let mut map = self.lock();
        let session = map.get_mut(&key)?;
        if self.expired(session, now) {
            map.remove(&key);
            return None;
        }
        session.last_used = now;
        Some(session.clone())
    }

    /// Whether the session of a cookie value is live, without counting this as its use (a
    /// live stream asks before each event it sends).
    pub fn is_live(&self, cookie_value: &str) -> bool {
        let now = Instant::now();
        self.lock()
            .get(&key(cookie_value))
            .is_some_and(|session| !self.expired(session, now))
    }

    /// Ends the session of a cookie value (sign-out).
    pub fn end(&self, cookie_value: &str) {
        self.lock().remove(&key(cookie_value));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn expired(&self, session: &Session, now: Instant) -> bool {
        now.duration_since(session.last_used) >= self.limits.idle
            || now.duration_since(session.created) >= self.limits.absolute
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding the lock leaves the map consistent (every change is one call).
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(cookie_value: &str) -> [u8; 32] {
    Sha256::digest(cookie_value.as_bytes()).into()
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The value of our cookie among a request's `Cookie` headers.
pub fn cookie_value(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// `Set-Cookie` for a new session: no `Max-Age` (gone when the browser closes); the server
/// enforces the idle and absolute expiry.
pub fn set_cookie(value: &str) -> String {
    format!("{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn operator() -> Operator {
        Operator {
            name: "alice".into(),
            role: Role::Admin,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_absolute_expiry() {
        let sessions = Sessions::new(SessionLimits {
            idle: Duration::from_secs(60),
            absolute: Duration::from_secs(150),
            max_sessions: 10,
        });
        let (id, _) = sessions.create(operator(), "t");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(sessions.get(&id).is_some(), "used within the idle time");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(sessions.get(&id).is_some());
        tokio::time::advance(Duration::from_secs(40)).await;
        assert!(
            sessions.get(&id).is_none(),
            "past the absolute expiry though busy"
        );
        assert_eq!(sessions.len(), 0, "an expired session is ended");

        let (id, _) = sessions.create(operator(), "t");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(sessions.get(&id).is_none(), "idle too long");
    }

    #[tokio::test]
    async fn forged_and_ended_cookies_find_nothing() {
        let sessions = Sessions::new(SessionLimits::default());
        let (id, session) = sessions.create(operator(), "t");
        assert!(sessions.get("").is_none());
        assert!(sessions.get(&random_hex()).is_none());
        assert!(sessions.get(&id[..63]).is_none());
        assert!(session.csrf_matches(&session.csrf));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&random_hex()));
        assert!(sessions.is_live(&id));
        sessions.end(&id);
        assert!(sessions.get(&id).is_none());
        assert!(!sessions.is_live(&id));
    }

    #[tokio::test]
    async fn the_least_recently_used_session_makes_room() {
        let sessions = Sessions::new(SessionLimits {
            max_sessions: 2,
            ..SessionLimits::default()
        });
        let (first, _) = sessions.create(operator(), "t");
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (second, _) = sessions.create(operator(), "t");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(
            sessions.get(&first).is_some(),
            "first used again: second is oldest now"
        );
        let (third, _) = sessions.create(operator(), "t");
        assert_eq!(sessions.len(), 2);
        assert!(sessions.get(&second).is_none());
        assert!(sessions.get(&first).is_some() && sessions.get(&third).is_some());
    }

    #[test]
    fn cookie_header_parsing() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::COOKIE,
            "a=1; __Host-portcullis-session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_value(&headers), Some("abc"));
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::COOKIE,
            "portcullis-session=abc".parse().unwrap(),
        );
        assert_eq!(cookie_value(&headers), None);
    }
}
