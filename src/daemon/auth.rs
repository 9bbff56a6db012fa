//! API tokens: made at random, shown once, stored as their SHA-256 only; and the check of a request's scope.

use sha2::{Digest, Sha256};

use super::model::{Scope, TokenInfo};

/// A new token: `berth_` and 32 random bytes in hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("berth_{hex}")
}

/// What is stored of a token.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
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
