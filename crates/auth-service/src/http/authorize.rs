//! `GET/POST /oauth2/authorize`: the login page of the authorization-code flow, PKCE S256 only.

use std::collections::HashMap;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::extract::OAuthForm;
use super::{AUTHORIZE_PATH, HttpState, parse_form};
use crate::audit::Event;
use crate::clients::{Client, GrantError};
use crate::grants::CodeGrant;
use crate::ratelimit::{FailureLimiter, Refused};

/// How long an authorization code lives.
const CODE_LIFETIME_SECS: i64 = 60;

/// A checked authorization request.
struct AuthorizeRequest {
    client: Client,
    redirect_uri: String,
    state: Option<String>,
    challenge: String,
    audience: String,
    requested: Vec<String>,
    /// The identity scopes asked for (`openid`, `profile`): an OpenID Connect login.
    identity: Vec<String>,
    /// The client's `nonce`, required with `openid`.
    nonce: Option<String>,
}

/// Why an authorization request was refused.
enum Refusal {
    /// Shown to the user: the client or redirect URI cannot be trusted with a redirect.
    Page(StatusCode, &'static str),
    /// Sent back to the (registered) redirect URI, RFC 6749 §4.1.2.1.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: &'static str,
    },
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Page(status, message) => page_response(status, &error_page(message)),
            Self::Redirect {
                redirect_uri,
                state,
                error,
                description,
            } => {
                let mut query = form_urlencoded::Serializer::new(String::new());
                query.append_pair("error", error);
                query.append_pair("error_description", description);
                if let Some(state) = &state {
                    query.append_pair("state", state);
                }
                redirect(&redirect_uri, &query.finish())
            }
        }
    }
}

fn validate(
    state: &HttpState,
    params: &HashMap<String, String>,
) -> Result<AuthorizeRequest, Refusal> {
    let client = params
        .get("client_id")
        .and_then(|id| state.registry.get(id))
        .filter(|c| c.allows_grant("authorization_code"))
        .cloned()
        .ok_or(Refusal::Page(StatusCode::BAD_REQUEST, "Unknown client."))?;
    // Only an exactly registered redirect URI is ever redirected to.
    let redirect_uri = params
        .get("redirect_uri")
        .filter(|uri| client.allows_redirect(uri))
        .cloned()
        .ok_or(Refusal::Page(
            StatusCode::BAD_REQUEST,
            "The redirect URI is not registered for this client.",
        ))?;
    let refuse = |error: &'static str, description: &'static str| Refusal::Redirect {
        redirect_uri: redirect_uri.clone(),
        state: params.get("state").cloned(),
        error,
        description,
    };
    if params.get("response_type").map(String::as_str) != Some("code") {
        return Err(refuse(
            "unsupported_response_type",
            "response_type must be code",
        ));
    }
    let challenge = params
        .get("code_challenge")
        .ok_or_else(|| refuse("invalid_request", "code_challenge is required (PKCE)"))?;
    if params.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return Err(refuse(
            "invalid_request",
            "code_challenge_method must be S256",
        ));
    }
    let well_formed = challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return Err(refuse(
            "invalid_request",
            "code_challenge is not a base64url SHA-256",
        ));
    }
    // One login may be for several audiences (space-separated; the first is the first access
    // token's): later refreshes may ask for any of them, and for nothing else.
    let mut audiences: Vec<String> = match params.get("audience") {
        Some(audience) => audience
            .split_ascii_whitespace()
            .map(str::to_owned)
            .collect(),
        None => client
            .default_audience()
            .into_iter()
            .map(str::to_owned)
            .collect(),
    };
    let mut seen = std::collections::BTreeSet::new();
    audiences.retain(|audience| seen.insert(audience.clone()));
    if audiences.is_empty() {
        return Err(refuse("invalid_request", "audience is empty"));
    }
    let (identity, requested) = crate::oidc::split_scopes(
        params
            .get("scope")
            .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
    );
    let nonce = if identity.iter().any(|s| s == crate::oidc::OPENID) {
        // OpenID Connect Core makes `nonce` optional in the code flow; here it is required, so
        // every ID token is bound to the request of the client that receives it.
        let nonce = params
            .get("nonce")
            .ok_or_else(|| refuse("invalid_request", "nonce is required with openid"))?;
        if !crate::oidc::valid_nonce(nonce) {
            return Err(refuse(
                "invalid_request",
                "nonce must be 1 to 256 visible ASCII characters",
            ));
        }
        Some(nonce.clone())
    } else if !identity.is_empty() {
        return Err(refuse("invalid_scope", "profile needs the openid scope"));
    } else {
        None
    };
    let everything = std::collections::BTreeSet::from_iter(requested.iter().cloned());
    client
        .grant_login(&audiences, &requested, &everything)
        .map_err(|e| match e {
            GrantError::Audience => {
                refuse("invalid_request", "the client may not reach this audience")
            }
            GrantError::Scope => refuse("invalid_scope", "a requested scope is not allowed"),
        })?;
    let audience = audiences.join(" ");
    Ok(AuthorizeRequest {
        redirect_uri: redirect_uri.clone(),
        state: params.get("state").cloned(),
        challenge: challenge.clone(),
        audience,
        requested,
        identity,
        nonce,
        client,
    })
}

/// What a person is told when the limiter refuses, in words they can act on.
fn too_many_sentence(refused: Refused) -> &'static str {
    match refused {
        Refused::Blocked(_) => {
            "Too many failed sign-in attempts for this account or from this network. \
             Wait a minute, then try again."
        }
        Refused::Busy => "The sign-in service is busy. Try again in a few seconds.",
    }
}

pub(super) async fn page(State(state): State<HttpState>, RawQuery(query): RawQuery) -> Response {
    let params = match parse_form(query.unwrap_or_default().as_bytes()) {
        Ok(params) => params,
        Err(_) => {
            return Refusal::Page(StatusCode::BAD_REQUEST, "A parameter was repeated.")
                .into_response();
        }
    };
    match validate(&state, &params) {
        Ok(request) => page_response(StatusCode::OK, &login_page(&request.client, &params, None)),
        Err(refusal) => refusal.into_response(),
    }
}

pub(super) async fn login(
    State(state): State<HttpState>,
    form: Result<OAuthForm, Response>,
) -> Response {
    let Ok(OAuthForm { addr, params, .. }) = form else {
        return Refusal::Page(StatusCode::BAD_REQUEST, "Malformed login form.").into_response();
    };
    let request = match validate(&state, &params) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let username = params.get("username").cloned().unwrap_or_default();
    let password = params.get("password").cloned().unwrap_or_default();
    // Reserved before the hash, per address and per account: parallel guesses cannot buy more
    // hashes than the allowance, and one account cannot be guessed from many addresses.
    let address = FailureLimiter::address(addr);
    let account = state.limiter.account("user", &username);
    let refused_page = |refused| {
        page_response(
            StatusCode::TOO_MANY_REQUESTS,
            &login_page(&request.client, &params, Some(too_many_sentence(refused))),
        )
    };
    let attempt = match state.limiter.begin(&[address, account]).await {
        Ok(attempt) => attempt,
        Err(refused) => return refused_page(refused),
    };
    let slot = match state.limiter.hash_slot().await {
        Ok(slot) => slot,
        Err(refused) => {
            // No guess was checked: a wait for a hash slot is not a failure.
            attempt.succeeded();
            return refused_page(refused);
        }
    };
    let users = state.users.clone();
    let name = username.clone();
    let user = tokio::task::spawn_blocking(move || {
        let mut slot = slot;
        users.authenticate(&name, &password, &mut slot)
    })
    .await
    .ok()
    .flatten();
    let Some(user) = user else {
        attempt.failed();
        state.audit.refusal(Event {
            decision: "deny",
            reason: "bad_credentials",
            method: AUTHORIZE_PATH,
            subject: &username,
            client: &request.client.client_id,
            ..Event::default()
        });
        return page_response(
            StatusCode::UNAUTHORIZED,
            &login_page(
                &request.client,
                &params,
                Some("Invalid username or password."),
            ),
        );
    };
    attempt.succeeded();
    let scopes = match request.client.grant_login(
        &audiences_of(&request.audience),
        &request.requested,
        &user.scopes,
    ) {
        Ok(mut scopes) => {
            scopes.extend(request.identity.iter().cloned());
            scopes
        }
        Err(_) => {
            return Refusal::Redirect {
                redirect_uri: request.redirect_uri,
                state: request.state,
                error: "invalid_scope",
                description: "the user may not have the requested scopes",
            }
            .into_response();
        }
    };
    let grant = CodeGrant {
        family_id: crate::grants::new_secret(),
        client_id: request.client.client_id.clone(),
        redirect_uri: request.redirect_uri.clone(),
        code_challenge: request.challenge,
        username: user.username.clone(),
        scope: scopes.join(" "),
        audience: request.audience,
        expires_at: crate::unix_now() as i64 + CODE_LIFETIME_SECS,
        nonce: request.nonce,
        auth_time: crate::unix_now() as i64,
    };
    let code = match state.grants.create_code(&grant).await {
        Ok(code) => code,
        Err(error) => {
            tracing::error!(%error, "storing an authorization code failed");
            return Refusal::Page(StatusCode::INTERNAL_SERVER_ERROR, "Please try again.")
                .into_response();
        }
    };
    let recorded = state.audit.grant(Event {
        decision: "allow",
        reason: "login",
        method: AUTHORIZE_PATH,
        subject: &user.username,
        client: &grant.client_id,
        ..Event::default()
    });
    if recorded.is_err() {
        return Refusal::Page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The sign-in cannot be recorded right now. Please try again in a minute.",
        )
        .into_response();
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("code", &code);
    if let Some(state) = &request.state {
        query.append_pair("state", state);
    }
    redirect(&request.redirect_uri, &query.finish())
}

fn redirect(uri: &str, query: &str) -> Response {
    let separator = if uri.contains('?') { '&' } else { '?' };
    let location = format!("{uri}{separator}{query}");
    match HeaderValue::try_from(location) {
        Ok(location) => (
            StatusCode::FOUND,
            [
                (header::LOCATION, location),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
        )
            .into_response(),
        Err(_) => page_response(StatusCode::BAD_REQUEST, &error_page("Invalid redirect.")),
    }
}

fn page_response(status: StatusCode, html: &str) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
                ),
            ),
        ],
        html.to_owned(),
    )
        .into_response()
}

/// The fields of the authorization request carried through the login form.
const CARRIED: [&str; 9] = [
    "nonce",
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "code_challenge",
    "code_challenge_method",
    "scope",
    "audience",
];

fn login_page(client: &Client, params: &HashMap<String, String>, error: Option<&str>) -> String {
    let hidden: String = CARRIED
        .iter()
        .filter_map(|name| params.get(*name).map(|value| (name, value)))
        .map(|(name, value)| {
            format!(
                r#"<input type="hidden" name="{name}" value="{}">"#,
                escape(value)
            )
        })
        .collect();
    let error = error
        .map(|e| format!(r#"<p style="color:#b00">{}</p>"#, escape(e)))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in · Zero-Trust Mesh</title></head>
<body style="font-family:sans-serif;max-width:24em;margin:4em auto">
<h1>Sign in</h1>
<p>to continue to <b>{client}</b></p>
{error}
<form method="post" action="{AUTHORIZE_PATH}">
{hidden}
<p><label>Username<br><input name="username" autocomplete="username" required></label></p>
<p><label>Password<br><input name="password" type="password" autocomplete="current-password" required></label></p>
<p><button type="submit">Sign in</button></p>
</form>
</body></html>
"#,
        client = escape(&client.client_id),
    )
}

fn error_page(message: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign-in error</title></head>\
         <body><h1>Cannot sign in</h1><p>{}</p></body></html>\n",
        escape(message)
    )
}

fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// The audiences of a login, as stored (space-separated).
pub(crate) fn audiences_of(stored: &str) -> Vec<String> {
    stored.split_ascii_whitespace().map(str::to_owned).collect()
}
