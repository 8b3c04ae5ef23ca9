//! `GET/POST /oauth2/authorize` and `POST /oauth2/consent`: the authorization-code flow (PKCE
//! S256 only) as a person goes through it: the session at the issuer (single sign-on), the
//! sign-in form, `prompt` and `max_age`, and consent for the clients that need it.

use std::collections::HashMap;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::extract::OAuthForm;
use super::pages::{self, Asking};
use super::session;
use super::{AUTHORIZE_PATH, CONSENT_PATH, HttpState, parse_form, redirect};
use crate::audit::Event;
use crate::clients::{Client, GrantError};
use crate::grants::CodeGrant;
use crate::ratelimit::{FailureLimiter, Refused};
use crate::sessions::BrowserSession;
use crate::users::User;

/// How long an authorization code lives.
const CODE_LIFETIME_SECS: i64 = 60;

/// A checked authorization request.
struct AuthorizeRequest {
    client: Client,
    redirect_uri: String,
    state: Option<String>,
    challenge: String,
    audience: String,
    /// The audiences, in the order asked for.
    audiences: Vec<String>,
    requested: Vec<String>,
    /// The identity scopes asked for (`openid`, `profile`): an OpenID Connect login.
    identity: Vec<String>,
    /// The client's `nonce`, required with `openid`.
    nonce: Option<String>,
    /// What `prompt` and `max_age` ask of the session.
    prompt: Prompt,
}

/// `prompt` (OpenID Connect Core §3.1.2.1) and `max_age`.
#[derive(Debug, Clone, Copy, Default)]
struct Prompt {
    /// `none`: answer without showing anything, or with `login_required`/`consent_required`.
    none: bool,
    /// `login`: ask for the password even with a session.
    login: bool,
    /// `consent`: ask again even when the person agreed before.
    consent: bool,
    /// The session's sign-in may be at most this many seconds old.
    max_age: Option<i64>,
}

impl Prompt {
    fn parse(params: &HashMap<String, String>) -> Result<Self, &'static str> {
        let mut prompt = Self::default();
        for value in params
            .get("prompt")
            .map(|p| p.split_ascii_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            match value {
                "none" => prompt.none = true,
                "login" => prompt.login = true,
                "consent" => prompt.consent = true,
                _ => return Err("prompt may hold none, login and consent only"),
            }
        }
        if prompt.none && (prompt.login || prompt.consent) {
            return Err("prompt=none cannot be combined with another value");
        }
        if let Some(max_age) = params.get("max_age") {
            prompt.max_age = Some(
                max_age
                    .parse::<u32>()
                    .map_err(|_| "max_age must be a number of seconds")?
                    .into(),
            );
        }
        Ok(prompt)
    }

    /// Whether `session` may stand in for the password here.
    fn accepts(&self, session: &BrowserSession, now: i64) -> bool {
        !self.login
            && self
                .max_age
                .is_none_or(|max| now - session.auth_time <= max)
    }
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
            Self::Page(status, message) => pages::respond(status, &pages::error(message)),
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
    let prompt = Prompt::parse(params).map_err(|why| refuse("invalid_request", why))?;
    Ok(AuthorizeRequest {
        prompt,
        audiences,
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

/// The fields of the authorization request every form carries through.
const CARRIED: [&str; 12] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "code_challenge",
    "code_challenge_method",
    "scope",
    "audience",
    "nonce",
    "prompt",
    "max_age",
    "login_hint",
];

/// The browser's cookie value, or a new one for a visitor who has none.
struct Browser {
    cookie: String,
    /// Set when the value is new (or replaced): sent back as `Set-Cookie`.
    fresh: bool,
}

impl Browser {
    fn of(headers: &HeaderMap) -> Self {
        match session::cookie(headers) {
            Some(cookie) => Self {
                cookie,
                fresh: false,
            },
            None => Self {
                cookie: crate::grants::new_secret(),
                fresh: true,
            },
        }
    }

    fn with_cookie(&self, state: &HttpState, mut response: Response) -> Response {
        if self.fresh {
            response.headers_mut().append(
                header::SET_COOKIE,
                session::set_cookie(&self.cookie, state.sessions.lifetime()),
            );
        }
        response
    }
}

fn asking<'a>(request: &'a AuthorizeRequest, scopes: &'a [String]) -> Asking<'a> {
    Asking {
        client: &request.client.client_id,
        audiences: &request.audiences,
        scopes,
    }
}

/// The sign-in form for `request`, its CSRF token bound to the browser's cookie.
fn login_form(
    request: &AuthorizeRequest,
    params: &HashMap<String, String>,
    browser: &Browser,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let mut scopes = request.identity.clone();
    scopes.extend(request.requested.iter().cloned());
    let page = pages::login(
        &asking(request, &scopes),
        params,
        &CARRIED,
        &session::csrf_token(&browser.cookie),
        error,
        AUTHORIZE_PATH,
        &request.redirect_uri,
    );
    pages::respond(status, &page)
}

/// The live session the browser holds, if its user still exists.
async fn live_session(
    state: &HttpState,
    headers: &HeaderMap,
    now: i64,
) -> Result<Option<BrowserSession>, Refusal> {
    let Some(cookie) = session::cookie(headers) else {
        return Ok(None);
    };
    match state.sessions.find(&cookie, now).await {
        Ok(found) => Ok(found.filter(|s| state.users.get(&s.username).is_some())),
        Err(error) => {
            tracing::error!(%error, "reading a browser session failed");
            Err(Refusal::Page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again.",
            ))
        }
    }
}

pub(super) async fn page(
    State(state): State<HttpState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let params = match parse_form(query.unwrap_or_default().as_bytes()) {
        Ok(params) => params,
        Err(_) => {
            return Refusal::Page(StatusCode::BAD_REQUEST, "A parameter was repeated.")
                .into_response();
        }
    };
    let request = match validate(&state, &params) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let now = crate::unix_now() as i64;
    let session = match live_session(&state, &headers, now).await {
        Ok(session) => session,
        Err(refusal) => return refusal.into_response(),
    };
    match session.filter(|s| request.prompt.accepts(s, now)) {
        Some(session) => {
            let browser = Browser::of(&headers);
            signed_in(&state, request, &params, &session, &browser, "sso").await
        }
        None if request.prompt.none => request.refuse("login_required", "no session to use"),
        None => {
            let browser = Browser::of(&headers);
            let form = login_form(&request, &params, &browser, StatusCode::OK, None);
            browser.with_cookie(&state, form)
        }
    }
}

impl AuthorizeRequest {
    /// The refusal sent back to the client's registered redirect URI.
    fn refusal(&self, error: &'static str, description: &'static str) -> Refusal {
        Refusal::Redirect {
            redirect_uri: self.redirect_uri.clone(),
            state: self.state.clone(),
            error,
            description,
        }
    }

    fn refuse(&self, error: &'static str, description: &'static str) -> Response {
        self.refusal(error, description).into_response()
    }
}

/// The person is signed in (by the session, or by the password just now): ask for consent if
/// the client needs it and the person has not given it, else issue the code. A fresh `browser`
/// cookie goes out with whatever the answer is.
async fn signed_in(
    state: &HttpState,
    request: AuthorizeRequest,
    params: &HashMap<String, String>,
    session: &BrowserSession,
    browser: &Browser,
    how: &'static str,
) -> Response {
    let answer = async {
        let Some(user) = state.users.get(&session.username).cloned() else {
            return request.refuse("login_required", "sign in again");
        };
        let scopes = match granted_scopes(&request, &user) {
            Ok(scopes) => scopes,
            Err(refusal) => return refusal.into_response(),
        };
        if request.client.needs_consent {
            let consented = state
                .sessions
                .consented(
                    &user.username,
                    &request.client.client_id,
                    &request.audience,
                    &scopes,
                )
                .await
                .unwrap_or(false);
            if request.prompt.consent || !consented {
                if request.prompt.none {
                    return request.refuse("consent_required", "consent is needed");
                }
                return consent_form(&request, params, &user, &scopes, &browser.cookie);
            }
        }
        issue_code(state, request, &user, scopes, session, how).await
    }
    .await;
    browser.with_cookie(state, answer)
}

/// What the login grants: the client's and the user's scopes for the audiences, and the
/// identity scopes asked for.
fn granted_scopes(request: &AuthorizeRequest, user: &User) -> Result<Vec<String>, Refusal> {
    match request
        .client
        .grant_login(&request.audiences, &request.requested, &user.scopes)
    {
        Ok(mut scopes) => {
            scopes.extend(request.identity.iter().cloned());
            Ok(scopes)
        }
        Err(_) => Err(request.refusal(
            "invalid_scope",
            "the user may not have the requested scopes",
        )),
    }
}

fn consent_form(
    request: &AuthorizeRequest,
    params: &HashMap<String, String>,
    user: &User,
    scopes: &[String],
    cookie: &str,
) -> Response {
    let page = pages::consent(
        &asking(request, scopes),
        &user.username,
        params,
        &CARRIED,
        &session::csrf_token(cookie),
        CONSENT_PATH,
        &request.redirect_uri,
    );
    pages::respond(StatusCode::OK, &page)
}

/// Stores the code of a login (a new token family in `session`) and redirects to the client.
async fn issue_code(
    state: &HttpState,
    request: AuthorizeRequest,
    user: &User,
    scopes: Vec<String>,
    session: &BrowserSession,
    how: &'static str,
) -> Response {
    let grant = CodeGrant {
        family_id: crate::grants::new_secret(),
        client_id: request.client.client_id.clone(),
        redirect_uri: request.redirect_uri.clone(),
        code_challenge: request.challenge.clone(),
        username: user.username.clone(),
        scope: scopes.join(" "),
        audience: request.audience.clone(),
        expires_at: crate::unix_now() as i64 + CODE_LIFETIME_SECS,
        nonce: request.nonce.clone(),
        auth_time: session.auth_time,
        browser_session: Some(session.session_id.clone()),
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
        reason: how,
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

/// Refuses a form that another site could have sent, or whose CSRF token is not the one of the
/// browser's cookie; on success, the cookie value.
fn checked_form(
    state: &HttpState,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<String, Refusal> {
    if !session::same_origin(headers, state.issuer.url()) {
        return Err(Refusal::Page(
            StatusCode::FORBIDDEN,
            "This form was sent from another site, so it was not accepted. Open the sign-in \
             page of the application you were using again.",
        ));
    }
    let cookie = session::cookie(headers);
    let token = params.get("csrf");
    match (cookie, token) {
        (Some(cookie), Some(token)) if session::csrf_matches(&cookie, token) => Ok(cookie),
        _ => Err(Refusal::Page(
            StatusCode::BAD_REQUEST,
            "This form has expired or was not sent from this browser session. Go back to the \
             application and sign in again.",
        )),
    }
}

pub(super) async fn login(
    State(state): State<HttpState>,
    form: Result<OAuthForm, Response>,
) -> Response {
    let Ok(OAuthForm {
        addr,
        headers,
        params,
    }) = form
    else {
        return Refusal::Page(StatusCode::BAD_REQUEST, "Malformed login form.").into_response();
    };
    let request = match validate(&state, &params) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let cookie = match checked_form(&state, &headers, &params) {
        Ok(cookie) => cookie,
        Err(refused) => return refused.into_response(),
    };
    let browser = Browser {
        cookie: cookie.clone(),
        fresh: false,
    };
    let username = params.get("username").cloned().unwrap_or_default();
    let password = params.get("password").cloned().unwrap_or_default();
    // Reserved before the hash, per address and per account: parallel guesses cannot buy more
    // hashes than the allowance, and one account cannot be guessed from many addresses.
    let address = FailureLimiter::address(addr);
    let account = state.limiter.account("user", &username);
    let refused_page = |refused| {
        login_form(
            &request,
            &params,
            &browser,
            StatusCode::TOO_MANY_REQUESTS,
            Some(too_many_sentence(refused)),
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
        // One sentence for an unknown user and a wrong password.
        return login_form(
            &request,
            &params,
            &browser,
            StatusCode::UNAUTHORIZED,
            Some("The username or password is not right. Check them and try again."),
        );
    };
    attempt.succeeded();
    let now = crate::unix_now() as i64;
    let previous = session_of_cookie(&state, &cookie, now).await;
    // A new cookie value at every sign-in: a value someone planted before it names nothing after.
    let (new_cookie, session) = match state
        .sessions
        .start(&user.username, previous.as_ref(), now)
        .await
    {
        Ok((cookie, session, revoked)) => {
            // Someone else's session ended here: their clients are told.
            state.backchannel.notify(revoked);
            (cookie, session)
        }
        Err(error) => {
            tracing::error!(%error, "starting a browser session failed");
            return Refusal::Page(StatusCode::SERVICE_UNAVAILABLE, "Please try again.")
                .into_response();
        }
    };
    // The password was just typed: `prompt=login` and `max_age` are satisfied.
    let mut request = request;
    request.prompt = Prompt::default();
    let browser = Browser {
        cookie: new_cookie,
        fresh: true,
    };
    signed_in(&state, request, &params, &session, &browser, "login").await
}

/// The live session a cookie value names, if any (errors count as none: the sign-in goes on
/// and the old session, if any, simply is not carried over).
async fn session_of_cookie(state: &HttpState, cookie: &str, now: i64) -> Option<BrowserSession> {
    state.sessions.find(cookie, now).await.ok().flatten()
}

/// `POST /oauth2/consent`: the person's answer on the consent page.
pub(super) async fn consent(
    State(state): State<HttpState>,
    form: Result<OAuthForm, Response>,
) -> Response {
    let Ok(OAuthForm {
        headers, params, ..
    }) = form
    else {
        return Refusal::Page(StatusCode::BAD_REQUEST, "Malformed consent form.").into_response();
    };
    let request = match validate(&state, &params) {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    if let Err(refused) = checked_form(&state, &headers, &params) {
        return refused.into_response();
    }
    let now = crate::unix_now() as i64;
    let session = match live_session(&state, &headers, now).await {
        Ok(Some(session)) => session,
        Ok(None) => {
            return Refusal::Page(
                StatusCode::BAD_REQUEST,
                "Your session has ended. Go back to the application and sign in again.",
            )
            .into_response();
        }
        Err(refusal) => return refusal.into_response(),
    };
    let Some(user) = state.users.get(&session.username).cloned() else {
        return request.refuse("login_required", "sign in again");
    };
    let scopes = match granted_scopes(&request, &user) {
        Ok(scopes) => scopes,
        Err(refusal) => return refusal.into_response(),
    };
    if params.get("decision").map(String::as_str) != Some("allow") {
        state.audit.refusal(Event {
            decision: "deny",
            reason: "consent_denied",
            method: CONSENT_PATH,
            subject: &user.username,
            client: &request.client.client_id,
            ..Event::default()
        });
        return request.refuse("access_denied", "the user did not allow it");
    }
    if let Err(error) = state
        .sessions
        .remember_consent(
            &user.username,
            &request.client.client_id,
            &request.audience,
            &scopes,
            now,
        )
        .await
    {
        tracing::error!(%error, "storing a consent failed");
        return Refusal::Page(StatusCode::SERVICE_UNAVAILABLE, "Please try again.").into_response();
    }
    issue_code(&state, request, &user, scopes, &session, "consent").await
}
