//! The client side of the mesh issuer's OAuth2 endpoints: client credentials, the
//! authorization-code flow with PKCE (S256), refresh-token rotation and revocation.
//!
//! Shared by `meshctl` (login, logout, token), the demo, the integration tests and the
//! benchmarks, so every one of them speaks to the issuer the way a user's client would.
use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oauth2::basic::BasicClient;
use oauth2::{
    AccessToken, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    EndpointNotSet, EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, RevocationUrl, Scope, StandardRevocableToken, TokenResponse as _, TokenUrl,
};
use rand::RngCore;

/// meshctl's registered public client.
pub const CLIENT_ID: &str = "meshctl-cli";
/// The loopback redirect URI registered for it.
pub const REDIRECT_URI: &str = "http://127.0.0.1:8976/callback";

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The authorization endpoint refused the request (redirected with an error, or a page).
    #[error("authorization refused: {0}")]
    Refused(String),
    /// The username or password was wrong.
    #[error("invalid username or password")]
    BadCredentials,
    /// The token endpoint refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// HTTP failed.
    #[error("{0}")]
    Http(String),
}

/// A PKCE pair: the verifier stays here, the S256 challenge travels. Made by the `oauth2` crate
/// (256 random bits, base64url), so our issuer is proved against a client we did not write.
#[derive(Debug, Clone)]
pub struct Pkce {
    /// 43 characters of base64url: 256 random bits.
    pub verifier: String,
    /// `BASE64URL(SHA256(verifier))`.
    pub challenge: String,
}

impl Pkce {
    /// A fresh pair.
    pub fn new() -> Self {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        Self {
            verifier: verifier.secret().clone(),
            challenge: challenge.as_str().to_owned(),
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

fn random_text() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The authorization request's URL for `audience` (response type `code`, S256 challenge).
pub fn authorize_url(
    issuer: &str,
    pkce: &Pkce,
    state: &str,
    audience: &str,
) -> Result<String, TokenError> {
    authorize_url_to(issuer, pkce, state, audience, REDIRECT_URI)
}

/// Like [`authorize_url`], with the code sent back to `redirect` (a loopback URI on the port
/// the caller listens on: RFC 8252 lets it be any).
pub fn authorize_url_to(
    issuer: &str,
    pkce: &Pkce,
    state: &str,
    audience: &str,
    redirect: &str,
) -> Result<String, TokenError> {
    let challenge =
        PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(pkce.verifier.clone()));
    let state = state.to_owned();
    let (url, _) = public_client_to(issuer, redirect)?
        .authorize_url(move || CsrfToken::new(state))
        .set_pkce_challenge(challenge)
        .add_extra_param("audience", audience)
        .url();
    Ok(url.into())
}

/// Logs in as `username` by filling in the login form itself (for scripts and tests): the same
/// requests a browser would make, then the code exchange with the PKCE verifier.
pub async fn login_with_password(
    http: &reqwest::Client,
    issuer: &str,
    username: &str,
    password: &str,
    audience: &str,
) -> Result<TokenResponse, LoginError> {
    let pkce = Pkce::new();
    let state = random_text();
    let url = authorize_url(issuer, &pkce, &state, audience)?;
    let page = open_login_page(http, &url).await?;
    let answer = submit_login(http, &url, &page, username, password)
        .await
        .map_err(|e| LoginError::Http(e.to_string()))?;
    match answer.status().as_u16() {
        302 => {}
        401 => return Err(LoginError::BadCredentials),
        _ => return Err(LoginError::Refused(describe_refusal(answer).await)),
    }
    let location = answer
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let code = code_from_redirect(&location, &state)?;
    exchange_code(http, issuer, &code, &pkce).await
}

/// What a browser keeps from the login page: the issuer's session cookie (`name=value`) and
/// the CSRF token of the form, which is bound to that cookie.
#[derive(Debug, Clone)]
pub struct LoginPage {
    /// The `Cookie` header to send back.
    pub cookie: String,
    /// The form's `csrf` field.
    pub csrf: String,
}

/// Opens the login page of the authorization request `url` as a browser would.
pub async fn open_login_page(http: &reqwest::Client, url: &str) -> Result<LoginPage, LoginError> {
    let page = http
        .get(url)
        .send()
        .await
        .map_err(|e| LoginError::Http(e.to_string()))?;
    if page.status().as_u16() != 200 {
        return Err(LoginError::Refused(describe_refusal(page).await));
    }
    let cookie = session_cookie(page.headers());
    let html = page
        .text()
        .await
        .map_err(|e| LoginError::Http(e.to_string()))?;
    match (cookie, csrf_field(&html)) {
        (Some(cookie), Some(csrf)) => Ok(LoginPage { cookie, csrf }),
        _ => Err(LoginError::Refused(
            "the login page set no session cookie or has no CSRF field".into(),
        )),
    }
}

/// The `name=value` of the issuer's session cookie in a response's `Set-Cookie` headers.
pub fn session_cookie(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|pair| pair.starts_with("__Host-mesh-session=") && pair.len() > 21)
        .map(str::to_owned)
}

/// The value of the `csrf` hidden field of a page.
pub fn csrf_field(html: &str) -> Option<String> {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker)? + marker.len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_owned())
}

/// Posts the login form of `url` (its query is the authorization request) with the page's
/// cookie and CSRF token, as a browser would; the answer is not followed.
pub async fn submit_login(
    http: &reqwest::Client,
    url: &str,
    page: &LoginPage,
    username: &str,
    password: &str,
) -> Result<reqwest::Response, reqwest::Error> {
    let (action, query) = url.split_once('?').unwrap_or((url, ""));
    let mut form: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    form.push(("csrf".into(), page.csrf.clone()));
    form.push(("username".into(), username.into()));
    form.push(("password".into(), password.into()));
    http.post(action)
        .header(reqwest::header::COOKIE, &page.cookie)
        .form(&form)
        .send()
        .await
}

/// Reads the code out of the redirect back to us, checking `state`.
pub fn code_from_redirect(location: &str, state: &str) -> Result<String, LoginError> {
    let query = location.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if let Some(error) = params.get("error") {
        return Err(LoginError::Refused(format!(
            "{error}: {}",
            params.get("error_description").map_or("", String::as_str)
        )));
    }
    if params.get("state").map(String::as_str) != Some(state) {
        return Err(LoginError::Refused("state mismatch".into()));
    }
    params
        .get("code")
        .cloned()
        .ok_or_else(|| LoginError::Refused("no code in the redirect".into()))
}

async fn describe_refusal(response: reqwest::Response) -> String {
    let status = response.status().as_u16();
    if let Some(location) = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
    {
        return match code_from_redirect(location, "") {
            Err(LoginError::Refused(reason)) => reason,
            _ => format!("redirected to {location}"),
        };
    }
    format!("HTTP {status}")
}

/// Exchanges an authorization code for tokens, proving the login with the PKCE verifier.
pub async fn exchange_code(
    http: &reqwest::Client,
    issuer: &str,
    code: &str,
    pkce: &Pkce,
) -> Result<TokenResponse, LoginError> {
    exchange_code_to(http, issuer, code, pkce, REDIRECT_URI).await
}

/// Like [`exchange_code`], for a code sent to `redirect`.
pub async fn exchange_code_to(
    http: &reqwest::Client,
    issuer: &str,
    code: &str,
    pkce: &Pkce,
    redirect: &str,
) -> Result<TokenResponse, LoginError> {
    let answer = public_client_to(issuer, redirect)?
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(PkceCodeVerifier::new(pkce.verifier.clone()))
        .request_async(http)
        .await;
    Ok(token_answer(answer)?)
}

/// Uses a refresh token (it is rotated: the answer carries the next one) for `audience`.
pub async fn refresh(
    http: &reqwest::Client,
    issuer: &str,
    refresh_token: &str,
    audience: &str,
) -> Result<TokenResponse, TokenError> {
    let token = RefreshToken::new(refresh_token.to_owned());
    let answer = public_client(issuer)?
        .exchange_refresh_token(&token)
        .add_extra_param("audience", audience)
        .request_async(http)
        .await;
    token_answer(answer)
}

/// Revokes a token (a refresh token revokes its whole login). Opaque tokens are refresh tokens,
/// JWTs access tokens: the hint says which (RFC 7009 §2.1).
pub async fn revoke(http: &reqwest::Client, issuer: &str, token: &str) -> Result<(), TokenError> {
    let token = if token.matches('.').count() == 2 {
        StandardRevocableToken::AccessToken(AccessToken::new(token.to_owned()))
    } else {
        StandardRevocableToken::RefreshToken(RefreshToken::new(token.to_owned()))
    };
    let client = public_client(issuer)?.set_revocation_url(endpoint(
        issuer,
        "/oauth2/revoke",
        RevocationUrl::new,
    )?);
    let request = client
        .revoke_token(token)
        .map_err(|e| TokenError::local("configuration", e))?;
    request.request_async(http).await.map_err(|e| match e {
        RequestTokenError::ServerResponse(body) => TokenError {
            error: body.error().to_string(),
            description: body.error_description().cloned().unwrap_or_default(),
        },
        other => TokenError::local("request", other),
    })
}

/// The client type for our issuer: authorization and token endpoints set.
type IssuerClient =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// meshctl's public client at `issuer`: no secret, the login proved with PKCE.
fn public_client(issuer: &str) -> Result<IssuerClient, TokenError> {
    public_client_to(issuer, REDIRECT_URI)
}

/// meshctl's public client, its codes sent to `redirect`.
fn public_client_to(issuer: &str, redirect: &str) -> Result<IssuerClient, TokenError> {
    Ok(BasicClient::new(ClientId::new(CLIENT_ID.to_owned()))
        .set_auth_uri(endpoint(issuer, "/oauth2/authorize", AuthUrl::new)?)
        .set_token_uri(endpoint(issuer, "/oauth2/token", TokenUrl::new)?)
        .set_redirect_uri(
            RedirectUrl::new(redirect.to_owned())
                .map_err(|e| TokenError::local("redirect URI", e))?,
        ))
}

/// `<issuer><path>` as one of oauth2's URL types.
fn endpoint<U>(
    issuer: &str,
    path: &str,
    parse: impl FnOnce(String) -> Result<U, url::ParseError>,
) -> Result<U, TokenError> {
    parse(format!("{}{path}", issuer.trim_end_matches('/')))
        .map_err(|e| TokenError::local("issuer URL", e))
}

/// A token endpoint response (RFC 6749 §5.1).
#[derive(Debug, Clone)]
pub struct TokenResponse {
    /// The access token. A secret.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds until expiry.
    pub expires_in: u64,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// The next refresh token (user grants only).
    pub refresh_token: Option<String>,
}

/// A refused or failed token request: the RFC 6749 §5.2 `error` code and its description when
/// the issuer answered, or what went wrong on our side (`unreachable`, `malformed_response`, …).
#[derive(Debug, Clone, thiserror::Error)]
#[error("token endpoint: {error} ({description})")]
pub struct TokenError {
    /// The `error` code, e.g. `invalid_client`, `invalid_grant`.
    pub error: String,
    /// `error_description`, or the local failure.
    pub description: String,
}

impl TokenError {
    fn local(error: &str, cause: impl std::fmt::Display) -> Self {
        Self {
            error: error.to_owned(),
            description: cause.to_string(),
        }
    }
}

/// Client credentials, sent with `client_secret_basic` (each part form-encoded first, RFC 6749
/// §2.3.1).
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The client id.
    pub client_id: String,
    /// The secret. Never printed.
    pub client_secret: String,
}

type TokenAnswer = Result<
    oauth2::basic::BasicTokenResponse,
    RequestTokenError<oauth2::HttpClientError<reqwest::Error>, oauth2::basic::BasicErrorResponse>,
>;

/// Reads a token answer, or the error.
fn token_answer(answer: TokenAnswer) -> Result<TokenResponse, TokenError> {
    match answer {
        Ok(response) => Ok(TokenResponse {
            access_token: response.access_token().secret().clone(),
            token_type: "Bearer".to_owned(),
            expires_in: response.expires_in().map_or(0, |d| d.as_secs()),
            scope: response
                .scopes()
                .map(|scopes| {
                    scopes
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default(),
            refresh_token: response.refresh_token().map(|t| t.secret().clone()),
        }),
        Err(RequestTokenError::ServerResponse(body)) => Err(TokenError {
            error: body.error().to_string(),
            description: body.error_description().cloned().unwrap_or_default(),
        }),
        Err(RequestTokenError::Request(e)) => Err(TokenError::local("unreachable", e)),
        Err(RequestTokenError::Parse(e, _)) => Err(TokenError::local("malformed_response", e)),
        Err(RequestTokenError::Other(e)) => Err(TokenError::local("unexpected_response", e)),
    }
}

/// Asks `issuer`'s token endpoint for a client-credentials token.
pub async fn client_credentials(
    http: &reqwest::Client,
    issuer: &str,
    credentials: &ClientCredentials,
    audience: &str,
    scopes: &[String],
) -> Result<TokenResponse, TokenError> {
    let client = BasicClient::new(ClientId::new(credentials.client_id.clone()))
        .set_client_secret(ClientSecret::new(credentials.client_secret.clone()))
        .set_auth_type(AuthType::BasicAuth)
        .set_token_uri(endpoint(issuer, "/oauth2/token", TokenUrl::new)?);
    let answer = client
        .exchange_client_credentials()
        .add_scopes(scopes.iter().map(|s| Scope::new(s.clone())))
        .add_extra_param("audience", audience)
        .request_async(http)
        .await;
    token_answer(answer)
}
