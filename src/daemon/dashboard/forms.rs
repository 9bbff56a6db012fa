//! What the dashboard reads from a browser's requests, as pure functions: the session cookie, the CSRF field
//! derived from the session's token, urlencoded form bodies, the `Origin` check and the page to return to
//! after signing in.

use axum::http::{HeaderMap, header};

use crate::daemon::auth;
pub use crate::daemon::form::{Form, url_encode};

/// The cookie that holds the session's token (HttpOnly: page scripts never see it).
pub const SESSION_COOKIE: &str = "berth_session";

/// The name of the hidden CSRF field of every form that changes something.
pub const CSRF_FIELD: &str = "csrf";

/// The session's token from the request's `Cookie` headers, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// `Set-Cookie` for a new session: HttpOnly, SameSite=Strict (a cross-site request never carries it), for the
/// whole daemon (the JSON API reads it for GETs), `Secure` when the browser came over https.
pub fn session_set_cookie(token: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{secure}")
}

/// `Set-Cookie` that ends the session in the browser.
pub fn session_clear_cookie() -> String {
    format!("{SESSION_COOKIE}=; Max-Age=0; HttpOnly; SameSite=Strict; Path=/")
}

/// Whether a token can be a cookie value as it is (berth's tokens are `berth_` and hex; anything else is
/// refused at sign-in rather than quoted).
pub fn cookie_safe(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 200
        && token.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'))
}

/// The CSRF field of a session: derived from its token (a cross-site page can neither read the cookie nor
/// compute this), so the daemon keeps no state for it.
pub fn csrf_token(session_token: &str) -> String {
    auth::hash(&format!("berth-dashboard-csrf:{session_token}"))
}

/// Whether a form's CSRF field is the session's, compared in constant time.
pub fn csrf_matches(session_token: &str, presented: Option<&str>) -> bool {
    let expected = csrf_token(session_token);
    presented.is_some_and(|presented| constant_time_eq(expected.as_bytes(), presented.as_bytes()))
}

/// Byte-wise equality whose time depends on the lengths only, not on where the first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |difference, (x, y)| difference | (x ^ y)) == 0
}

/// Whether a request's `Origin` (scheme://host[:port], or `null`) names the host the request was sent to
/// (its `Host`); default ports are ignored on both sides, the scheme is not compared (a proxy in front may
/// end TLS).
pub fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.trim().split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let normal = |authority: &str| {
        let lower = authority.trim().to_ascii_lowercase();
        lower.strip_suffix(default_port).map(str::to_string).unwrap_or(lower)
    };
    !authority.is_empty() && !authority.contains('/') && normal(authority) == normal(host)
}

/// Where to go after signing in: a dashboard page of this daemon named by `next`, or the overview. Anything
/// that could leave the daemon (`//host`, a scheme, a backslash) is ignored.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with("/ui/")
                && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.~?=&%".contains(&b))
                && !path.contains("//") =>
        {
            path.to_string()
        }
        _ => "/ui/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_session_cookie_is_found_among_others_and_set_with_its_attributes() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("theme=dark; berth_session=berth_abc; x=1"));
        assert_eq!(session_cookie(&headers), Some("berth_abc"));
        let mut other = HeaderMap::new();
        other.append(header::COOKIE, HeaderValue::from_static("not_berth_session=berth_abc"));
        assert_eq!(session_cookie(&other), None);
        assert_eq!(session_cookie(&HeaderMap::new()), None);
        assert_eq!(session_set_cookie("t", false), "berth_session=t; HttpOnly; SameSite=Strict; Path=/");
        assert!(session_set_cookie("t", true).ends_with("; Secure"));
        assert!(session_clear_cookie().contains("Max-Age=0"));
        assert!(cookie_safe(&auth::new_token()));
        for bad in ["", "a;b", "a b", "a\"b", "é"] {
            assert!(!cookie_safe(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_csrf_field_is_derived_from_the_session_and_checked_exactly() {
        let token = auth::new_token();
        let field = csrf_token(&token);
        assert_eq!(field.len(), 64);
        assert_ne!(field, auth::hash(&token), "not the token's stored hash");
        assert!(csrf_matches(&token, Some(&field)));
        assert!(!csrf_matches(&token, None));
        assert!(!csrf_matches(&token, Some("")));
        assert!(!csrf_matches(&token, Some(&field[..63])));
        assert!(!csrf_matches(&auth::new_token(), Some(&field)), "another session's field");
        let mut flipped = field.clone().into_bytes();
        flipped[63] = if flipped[63] == b'0' { b'1' } else { b'0' };
        assert!(!csrf_matches(&token, Some(std::str::from_utf8(&flipped).unwrap())));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn origins_must_name_the_daemon_itself() {
        assert!(same_origin("http://127.0.0.1:7420", "127.0.0.1:7420"));
        assert!(same_origin("https://Berth.Example", "berth.example"));
        assert!(same_origin("https://berth.example:443", "berth.example"));
        assert!(same_origin("http://berth.example", "berth.example:80"));
        assert!(!same_origin("http://evil.example", "berth.example"));
        assert!(!same_origin("http://berth.example.evil", "berth.example"));
        assert!(!same_origin("http://127.0.0.1:7421", "127.0.0.1:7420"));
        assert!(!same_origin("null", "berth.example"));
        assert!(!same_origin("file://", ""));
    }

    #[test]
    fn only_dashboard_pages_are_returned_to() {
        assert_eq!(safe_next(Some("/ui/deploys/4")), "/ui/deploys/4");
        assert_eq!(safe_next(Some("/ui/deploys?cursor=4")), "/ui/deploys?cursor=4");
        for bad in ["//evil.example/ui/", "https://evil.example/", "/ui//evil", "/ui/\\evil", "/deploys", "/ui/<x>"] {
            assert_eq!(safe_next(Some(bad)), "/ui/", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui/");
    }
}
