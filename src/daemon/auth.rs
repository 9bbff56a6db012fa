//! API tokens: made at random, shown once, stored as their SHA-256 only; the check of a request's scope; and
//! the daemon's short-lived cache of tokens it has looked up ([`TokenCache`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::model::{Scope, TokenInfo};

/// A new token: `berth_` and 32 random bytes in hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("berth_{hex}")
}

/// What is stored of a token: its SHA-256, in lowercase hex.
pub fn hash(token: &str) -> String {
    hash_bytes(token.as_bytes())
}

/// SHA-256 of `bytes`, in lowercase hex.
pub fn hash_bytes(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    let mut text = String::with_capacity(digest.len() * 2);
    for byte in digest {
        text.push(HEX[usize::from(byte >> 4)] as char);
        text.push(HEX[usize::from(byte & 0x0f)] as char);
    }
    text
}

/// How long the daemon trusts a token it looked up without asking the database again. `berth token revoke`
/// writes the database from another process, so a revoked token keeps working in a running daemon for at
/// most this long.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);

/// Most tokens the cache holds (a daemon has a handful; this bounds what random tokens could cost).
const TOKEN_CACHE_CAPACITY: usize = 1024;

/// Valid tokens by hash, each for [`TOKEN_CACHE_TTL`] after it was read from the database. Unknown or
/// revoked tokens are never cached: a token created meanwhile works at once, a wrong one costs a lookup.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, (TokenInfo, Instant)>>,
}

impl TokenCache {
    /// The token with this hash, if it was read less than [`TOKEN_CACHE_TTL`] ago.
    pub fn get(&self, hash: &str) -> Option<TokenInfo> {
        let entries = self.entries.lock().unwrap_or_else(|poison| poison.into_inner());
        entries.get(hash).filter(|(_, read)| read.elapsed() < TOKEN_CACHE_TTL).map(|(token, _)| token.clone())
    }

    /// Remembers a token just read from the database.
    pub fn put(&self, hash: &str, token: &TokenInfo) {
        let mut entries = self.entries.lock().unwrap_or_else(|poison| poison.into_inner());
        if entries.len() >= TOKEN_CACHE_CAPACITY && !entries.contains_key(hash) {
            entries.retain(|_, (_, read)| read.elapsed() < TOKEN_CACHE_TTL);
            if entries.len() >= TOKEN_CACHE_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(hash.to_string(), (token.clone(), Instant::now()));
    }

    /// Forgets a token (revoked by this process: at once, not after the TTL).
    pub fn forget(&self, id: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|poison| poison.into_inner());
        entries.retain(|_, (token, _)| token.id != id);
    }
}

/// Why a token may not do something.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// The scope is too small.
    Scope { needed: Scope, has: Scope },
    /// The token is limited to another service.
    Service { allowed: String },
}

/// Whether `token` may act with `needed` scope, on `service` when the action concerns one.
pub fn allows(token: &TokenInfo, needed: Scope, service: Option<&str>) -> Result<(), Denied> {
    if token.scope < needed {
        return Err(Denied::Scope { needed, has: token.scope });
    }
    match (&token.service, service) {
        (Some(allowed), Some(service)) if allowed != service => Err(Denied::Service { allowed: allowed.clone() }),
        // A service-limited token cannot act on things outside any service (the audit log, all services).
        (Some(allowed), None) if needed > Scope::Read => Err(Denied::Service { allowed: allowed.clone() }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(scope: Scope, service: Option<&str>) -> TokenInfo {
        TokenInfo {
            id: 1,
            name: "t".into(),
            scope,
            service: service.map(str::to_string),
            created_at: String::new(),
            revoked_at: None,
            last_used_at: None,
        }
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("berth_") && a.len() == 70);
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
        assert!(!hash(&a).contains(&a[6..]));
        // The SHA-256 of "abc".
        assert_eq!(hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn the_cache_keeps_tokens_for_its_ttl_and_forgets_revoked_ones() {
        let cache = TokenCache::default();
        assert_eq!(cache.get("h1"), None);
        cache.put("h1", &token(Scope::Read, None));
        assert_eq!(cache.get("h1").unwrap().id, 1);
        cache.forget(1);
        assert_eq!(cache.get("h1"), None);
        cache.put("h1", &token(Scope::Read, None));
        {
            let mut entries = cache.entries.lock().unwrap();
            let read = &mut entries.get_mut("h1").unwrap().1;
            *read = Instant::now().checked_sub(TOKEN_CACHE_TTL).unwrap();
        }
        assert_eq!(cache.get("h1"), None, "read a TTL ago: looked up again");
        for n in 0..TOKEN_CACHE_CAPACITY + 10 {
            cache.put(&format!("h{n}"), &token(Scope::Read, None));
        }
        assert!(cache.entries.lock().unwrap().len() <= TOKEN_CACHE_CAPACITY);
    }

    #[test]
    fn scopes_include_the_smaller_ones_and_services_limit() {
        assert!(allows(&token(Scope::Admin, None), Scope::Deploy, Some("app")).is_ok());
        assert_eq!(
            allows(&token(Scope::Read, None), Scope::Deploy, Some("app")),
            Err(Denied::Scope { needed: Scope::Deploy, has: Scope::Read })
        );
        assert!(allows(&token(Scope::Deploy, Some("app")), Scope::Deploy, Some("app")).is_ok());
        assert!(allows(&token(Scope::Deploy, Some("app")), Scope::Deploy, Some("web")).is_err());
        assert!(allows(&token(Scope::Read, Some("app")), Scope::Read, None).is_ok());
    }
}
