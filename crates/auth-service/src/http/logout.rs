//! `GET/POST /oauth2/logout`: RP-initiated sign-out (OpenID Connect RP-Initiated Logout 1.0).
//!
//! Ending a session revokes every login made in it, so every token of those logins (and every
//! token exchanged from them) is refused mesh-wide once the revocation push reaches the
//! verifiers. A request with a valid `id_token_hint` for the browser's own session signs out at
//! once; without one the person is asked first (a link on another site must not be able to
//! sign anyone out). The person is sent back only to a `post_logout_redirect_uri` registered for
//! the client, else shown a page that says what happened.

use std::collections::HashMap;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::extract::OAuthForm;
use super::pages;
use super::session;
use super::{HttpState, LOGOUT_PATH, parse_form, redirect};
use crate::audit::Event;
use crate::sessions::BrowserSession;

/// The parameters a confirmation form carries through.
const CARRIED: [&str; 4] = [
    "client_id",
    "post_logout_redirect_uri",
    "state",
    "ui_locales",
];

fn error_page(status: StatusCode, message: &str) -> Response {
    pages::respond(status, &pages::error(message))
}

/// A checked sign-out request.
struct LogoutRequest {
    /// Where to send the person afterwards (registered for the client).
    redirect: Option<String>,
    state: Option<String>,
    /// The login the hint names, when there was a valid hint.
    hinted_login: Option<String>,
}

/// A request refused before anything changed: the message a person reads.
type Refused = &'static str;

fn validate(state: &HttpState, params: &HashMap<String, String>) -> Result<LogoutRequest, Refused> {
    let hint = match params.get("id_token_hint") {
        None => None,
        Some(token) => Some(
            state
                .issuer
                .keys()
                .verify_id_token_hint(state.issuer.url(), token)
                .ok_or(
                    "The sign-out request carries an ID token this service did not issue. \
                     Nothing was changed.",
                )?,
        ),
    };
    let client_id = match (params.get("client_id"), &hint) {
        (Some(id), Some(hint)) if *id != hint.aud => {
            return Err(
                "The sign-out request names two different applications. Nothing was changed.",
            );
        }
        (Some(id), _) => Some(id.clone()),
        (None, Some(hint)) => Some(hint.aud.clone()),
        (None, None) => None,
    };
    let redirect = match params.get("post_logout_redirect_uri") {
        None => None,
        Some(uri) => {
            let registered = client_id
                .as_deref()
                .and_then(|id| state.registry.get(id))
                .is_some_and(|client| client.allows_post_logout_redirect(uri));
            if !registered {
                return Err(
                    "The address to return to after signing out is not registered for this \
                     application. Nothing was changed.",
                );
            }
            Some(uri.clone())
        }
    };
    Ok(LogoutRequest {
        redirect,
        state: params.get("state").cloned(),
        hinted_login: hint.map(|h| h.sid),
    })
}

pub(super) async fn page(
    State(state): State<HttpState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let Ok(params) = parse_form(query.unwrap_or_default().as_bytes()) else {
        return error_page(StatusCode::BAD_REQUEST, "A parameter was repeated.");
    };
    logout(&state, &headers, &params, false).await
}

pub(super) async fn form(
    State(state): State<HttpState>,
    form: Result<OAuthForm, Response>,
) -> Response {
    let Ok(OAuthForm {
        headers, params, ..
    }) = form
    else {
        return error_page(StatusCode::BAD_REQUEST, "Malformed sign-out form.");
    };
    // A confirmation comes from our own page, with the session's CSRF token.
    let confirmed = params.get("confirm").map(String::as_str) == Some("yes");
    if confirmed {
        if !session::same_origin(&headers, state.issuer.url()) {
            return error_page(
                StatusCode::FORBIDDEN,
                "This form was sent from another site, so it was not accepted.",
            );
        }
        let matches = session::cookie(&headers).is_some_and(|cookie| {
            params
                .get("csrf")
                .is_some_and(|token| session::csrf_matches(&cookie, token))
        });
        if !matches {
            return error_page(
                StatusCode::BAD_REQUEST,
                "This form has expired or was not sent from this browser session. Nothing was \
                 changed.",
            );
        }
    }
    logout(&state, &headers, &params, confirmed).await
}

async fn logout(
    state: &HttpState,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    confirmed: bool,
) -> Response {
    let request = match validate(state, params) {
        Ok(request) => request,
        Err(message) => return error_page(StatusCode::BAD_REQUEST, message),
    };
    let now = crate::unix_now() as i64;
    let cookie = session::cookie(headers);
    let session = match &cookie {
        Some(cookie) => match state.sessions.find(cookie, now).await {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(%error, "reading a browser session failed");
                return error_page(StatusCode::SERVICE_UNAVAILABLE, "Please try again.");
            }
        },
        None => None,
    };
    let Some(session) = session else {
        // Nothing to end here (signed out already, or another browser): say so, or go back.
        return finish(&request, 0, false);
    };
    let vouched = match &request.hinted_login {
        Some(login) => match state.sessions.session_of_login(login).await {
            Ok(of) if of.as_deref() == Some(session.session_id.as_str()) => true,
            Ok(_) => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "The sign-out request is for another session than the one in this browser. \
                     Nothing was changed.",
                );
            }
            Err(error) => {
                tracing::error!(%error, "reading a login's session failed");
                return error_page(StatusCode::SERVICE_UNAVAILABLE, "Please try again.");
            }
        },
        None => false,
    };
    if !vouched && !confirmed {
        let cookie = cookie.unwrap_or_default();
        let page = pages::confirm_logout(
            &session.username,
            params,
            &CARRIED,
            &session::csrf_token(&cookie),
            LOGOUT_PATH,
            request.redirect.as_deref(),
        );
        return pages::respond(StatusCode::OK, &page);
    }
    end(state, &request, &session, now).await
}

async fn end(
    state: &HttpState,
    request: &LogoutRequest,
    session: &BrowserSession,
    now: i64,
) -> Response {
    let revoked = match state.sessions.end(&session.session_id, now).await {
        Ok(revoked) => revoked,
        Err(error) => {
            tracing::error!(%error, "ending a browser session failed");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "You could not be signed out right now. Please try again.",
            );
        }
    };
    state.audit.refusal(Event {
        decision: "revoke",
        reason: "logout",
        method: LOGOUT_PATH,
        subject: &session.username,
        ..Event::default()
    });
    let clients = revoked
        .iter()
        .map(|login| login.client_id.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    state.backchannel.notify(revoked);
    finish(request, clients, true)
}

/// Back to the client (with its `state`) or the signed-out page; the cookie goes either way.
fn finish(request: &LogoutRequest, revoked: usize, clear: bool) -> Response {
    let mut response = match &request.redirect {
        Some(uri) => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            if let Some(state) = &request.state {
                query.append_pair("state", state);
            }
            redirect(uri, &query.finish())
        }
        None => pages::respond(StatusCode::OK, &pages::signed_out(revoked)),
    };
    if clear {
        response
            .headers_mut()
            .append(header::SET_COOKIE, session::clear_cookie());
    }
    response
}
