//! The browser's side of a session: the `__Host-` cookie, the CSRF token bound to it, and the
//! same-origin check on every form the issuer receives.
//!
//! The cookie holds a random 256-bit value; before sign-in it names no session (an anonymous
//! visitor gets one so the login form has something to bind its CSRF token to), after sign-in a
//! new value names the session row. The CSRF token is SHA-256 of a label and the cookie value:
//! only a page that could read the cookie (ours, it is `HttpOnly`) could know it, a form from
//! another session carries another one, and a form from before a sign-in or sign-out carries
//! the token of a value that is gone.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// The cookie's name. `__Host-` makes the browser refuse it unless it is `Secure`, has
/// `Path=/` and no `Domain`: no other host (a sibling subdomain) can set or overwrite it.
pub(super) const COOKIE: &str = "__Host-mesh-session";

/// The cookie value the request carries, if it is one we could have made (43 base64url
/// characters); anything else is ignored, never stored or looked up.
pub(super) fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|value| {
            value.len() == 43
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `Set-Cookie` for `value`. `SameSite=Lax`, not `Strict`: a relying party sends the person
/// here by a top-level navigation from its own site, and with `Strict` the browser would leave
/// the cookie out of exactly that request, so single sign-on would never see the session. `Lax`
/// still keeps it out of cross-site POSTs (a forged login or consent form) and subresources.
pub(super) fn set_cookie(value: &str, lifetime: std::time::Duration) -> HeaderValue {
    let cookie = format!(
        "{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
        lifetime.as_secs()
    );
    HeaderValue::try_from(cookie).expect("base64url is a valid header value")
}

/// `Set-Cookie` that removes the cookie.
pub(super) fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "__Host-mesh-session=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
    )
}

/// The CSRF token of the forms shown with cookie value `cookie`.
pub(super) fn csrf_token(cookie: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(b"zero-trust-mesh csrf\0");
    hash.update(cookie.as_bytes());
    URL_SAFE_NO_PAD.encode(hash.finalize())
}

/// Whether `token` is the CSRF token of `cookie`, compared in constant time.
pub(super) fn csrf_matches(cookie: &str, token: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(
        csrf_token(cookie).as_bytes(),
        token.as_bytes(),
    )
    .is_ok()
}

/// Whether a form POST may have come from one of our own pages: a browser says where a request
/// comes from (`Sec-Fetch-Site`, `Origin`); a form from another site is refused whatever it
/// carries. Clients that are not browsers send neither and rely on the CSRF token alone.
pub(super) fn same_origin(headers: &HeaderMap, issuer: &str) -> bool {
    let header_text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = header_text("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return false;
    }
    match header_text("origin") {
        None => true,
        Some(origin) => url::Url::parse(issuer)
            .is_ok_and(|issuer| issuer.origin().ascii_serialization() == origin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn only_a_well_formed_session_cookie_is_read() {
        let good = "a".repeat(43);
        let text: &'static str = format!("other=1; {COOKIE}={good}").leak();
        assert_eq!(cookie(&headers(&[("cookie", text)])), Some(good));
        for bad in [
            "__Host-mesh-session=short",
            "__Host-mesh-session=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!",
            "mesh-session=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert_eq!(cookie(&headers(&[("cookie", bad)])), None, "{bad}");
        }
    }

    #[test]
    fn a_csrf_token_matches_its_own_cookie_only() {
        let (one, two) = ("a".repeat(43), "b".repeat(43));
        assert!(csrf_matches(&one, &csrf_token(&one)));
        assert!(!csrf_matches(&one, &csrf_token(&two)));
        assert!(!csrf_matches(&one, ""));
    }

    #[test]
    fn forms_from_another_site_are_refused_and_from_ours_or_no_browser_accepted() {
        let issuer = "https://auth.mesh.local:8443";
        assert!(same_origin(&headers(&[]), issuer));
        assert!(same_origin(
            &headers(&[
                ("origin", "https://auth.mesh.local:8443"),
                ("sec-fetch-site", "same-origin")
            ]),
            issuer
        ));
        assert!(!same_origin(
            &headers(&[("origin", "https://evil.example")]),
            issuer
        ));
        assert!(!same_origin(
            &headers(&[("sec-fetch-site", "cross-site")]),
            issuer
        ));
        assert!(!same_origin(
            &headers(&[("sec-fetch-site", "same-site")]),
            issuer
        ));
        assert!(!same_origin(&headers(&[("origin", "null")]), issuer));
    }
}
