//! `GET/POST /oauth2/userinfo` (OpenID Connect Core §5.3): the signed-in user's claims, for an
//! access token of theirs that carries `openid`.
//!
//! The token is checked by the verifier the services use (signature, `typ = at+jwt`, expiry,
//! revocation), for whichever of our audiences it names: the endpoint belongs to the issuer, and
//! `openid` in the token is the user's consent to read who they are. Errors follow RFC 6750 §3.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{HttpState, USERINFO_PATH, no_store};
use crate::audit::Event;
use crate::oidc;

/// Why the claims were not given, as RFC 6750 §3.1 names it.
enum Refusal {
    /// No bearer token: the challenge without an error code.
    NoToken,
    /// Malformed, bad, expired or revoked, or not a user's own token.
    InvalidToken,
    /// A good token without `openid`.
    InsufficientScope,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, challenge) = match self {
            Self::NoToken => (StatusCode::UNAUTHORIZED, r#"Bearer realm="mesh""#),
            Self::InvalidToken => (
                StatusCode::UNAUTHORIZED,
                r#"Bearer realm="mesh", error="invalid_token""#,
            ),
            Self::InsufficientScope => (
                StatusCode::FORBIDDEN,
                r#"Bearer realm="mesh", error="insufficient_scope", scope="openid""#,
            ),
        };
        let mut headers = no_store();
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        (status, headers).into_response()
    }
}

/// The bearer token of the `Authorization` header (RFC 6750 §2.1), if there is exactly one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub(super) async fn userinfo(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let Some(token) = bearer(&headers) else {
        return Refusal::NoToken.into_response();
    };
    let refuse = |reason: &str, subject: &str, refusal: Refusal| {
        state.audit.refusal(Event {
            decision: "deny",
            reason,
            method: USERINFO_PATH,
            subject,
            ..Event::default()
        });
        refusal.into_response()
    };
    let verified = match state.verifiers.verify_any(token).await {
        Ok((_, verified)) => verified,
        // The reason class only: never any part of the token.
        Err(error) => return refuse(&error.to_string(), "", Refusal::InvalidToken),
    };
    // A token a service got by exchanging the user's is for that service's calls, not for
    // reading who the user is; neither is a client's own service token.
    if verified.actor.is_some() || verified.session.is_none() {
        return refuse("not_a_user_token", &verified.subject, Refusal::InvalidToken);
    }
    if !verified.scopes.iter().any(|s| s == oidc::OPENID) {
        return refuse(
            "openid_not_granted",
            &verified.subject,
            Refusal::InsufficientScope,
        );
    }
    let Some(user) = state.users.get(&verified.subject) else {
        return refuse("user_removed", &verified.subject, Refusal::InvalidToken);
    };
    let mut claims = json!({ "sub": user.username });
    if verified.scopes.iter().any(|s| s == oidc::PROFILE) {
        claims["preferred_username"] = json!(user.username);
    }
    (StatusCode::OK, no_store(), axum::Json(claims)).into_response()
}
