//! The client side of the mesh issuer's OAuth2 endpoints: client credentials, the
//! authorization-code flow with PKCE (S256), refresh-token rotation and revocation.
//!
//! Shared by `meshctl` (login, logout, token), the demo, the integration tests and the
//! benchmarks, so every one of them speaks to the issuer the way a user's client would.
use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

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

/// A PKCE pair: the verifier stays here, the S256 challenge travels.
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
        let verifier = random_text();
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Self {
            verifier,
            challenge,
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

/// The authorization request's URL for `audience`.
pub fn authorize_url(issuer: &str, pkce: &Pkce, state: &str, audience: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", CLIENT_ID)
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", state)
        .append_pair("audience", audience)
        .finish();
    format!("{}/oauth2/authorize?{query}", issuer.trim_end_matches('/'))
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
    let url = authorize_url(issuer, &pkce, &state, audience);
    let page = http
        .get(&url)
        .send()
        .await
        .map_err(|e| LoginError::Http(e.to_string()))?;
    if page.status().as_u16() != 200 {
        return Err(LoginError::Refused(describe_refusal(page).await));
    }
    let mut form: Vec<(String, String)> = url
        .split_once('?')
        .map(|(_, q)| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    form.push(("username".into(), username.into()));
    form.push(("password".into(), password.into()));
    let answer = http
        .post(format!("{}/oauth2/authorize", issuer.trim_end_matches('/')))
        .form(&form)
        .send()
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
    let form = [
        ("grant_type", "authorization_code".to_owned()),
        ("code", code.to_owned()),
        ("redirect_uri", REDIRECT_URI.to_owned()),
        ("client_id", CLIENT_ID.to_owned()),
        ("code_verifier", pkce.verifier.clone()),
    ];
    let (status, bytes) = post_form(http.post(token_url(issuer)), &form).await?;
    Ok(token_answer(status, &bytes)?)
}

/// Uses a refresh token (it is rotated: the answer carries the next one) for `audience`.
pub async fn refresh(
    http: &reqwest::Client,
    issuer: &str,
    refresh_token: &str,
    audience: &str,
) -> Result<TokenResponse, TokenError> {
    let form = [
        ("grant_type", "refresh_token".to_owned()),
        ("refresh_token", refresh_token.to_owned()),
        ("client_id", CLIENT_ID.to_owned()),
        ("audience", audience.to_owned()),
    ];
    let (status, bytes) = post_form(http.post(token_url(issuer)), &form).await?;
    token_answer(status, &bytes)
}

/// Revokes a token (a refresh token revokes its whole login).
pub async fn revoke(http: &reqwest::Client, issuer: &str, token: &str) -> Result<(), TokenError> {
    let form = [
        ("token", token.to_owned()),
        ("client_id", CLIENT_ID.to_owned()),
    ];
    let request = http.post(format!("{}/oauth2/revoke", issuer.trim_end_matches('/')));
    let (status, bytes) = post_form(request, &form).await?;
    if status == 200 {
        Ok(())
    } else {
        Err(error_answer(status, &bytes))
    }
}

fn token_url(issuer: &str) -> String {
    format!("{}/oauth2/token", issuer.trim_end_matches('/'))
}

/// A token endpoint response (RFC 6749 §5.1).
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    /// The access token. A secret.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: String,
    /// Seconds until expiry.
    pub expires_in: u64,
    /// Granted scopes, space-separated.
    #[serde(default)]
    pub scope: String,
    /// The next refresh token (user grants only).
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// An RFC 6749 §5.2 error answer, with its HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
#[error("token endpoint answered {status}: {error} ({description})")]
pub struct TokenError {
    /// HTTP status.
    pub status: u16,
    /// The `error` code, e.g. `invalid_client`.
    pub error: String,
    /// `error_description`.
    pub description: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Client credentials, sent with `client_secret_basic`.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The client id.
    pub client_id: String,
    /// The secret. Never printed.
    pub client_secret: String,
}

/// POSTs `form` to `<issuer><path>` and reads an RFC 6749 answer.
async fn post_form(
    request: reqwest::RequestBuilder,
    form: &[(&str, String)],
) -> Result<(u16, bytes::Bytes), TokenError> {
    let response = request.form(form).send().await.map_err(|e| TokenError {
        status: 0,
        error: "unreachable".into(),
        description: e.to_string(),
    })?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(|e| TokenError {
        status,
        error: "unreadable".into(),
        description: e.to_string(),
    })?;
    Ok((status, bytes))
}

/// Reads a token response, or the error answer.
fn token_answer(status: u16, bytes: &[u8]) -> Result<TokenResponse, TokenError> {
    if status == 200 {
        serde_json::from_slice(bytes).map_err(|e| TokenError {
            status,
            error: "malformed_response".into(),
            description: e.to_string(),
        })
    } else {
        Err(error_answer(status, bytes))
    }
}

/// Reads an RFC 6749 §5.2 error answer.
fn error_answer(status: u16, bytes: &[u8]) -> TokenError {
    let body: ErrorBody = serde_json::from_slice(bytes).unwrap_or(ErrorBody {
        error: "unknown".into(),
        error_description: String::from_utf8_lossy(bytes).into_owned(),
    });
    TokenError {
        status,
        error: body.error,
        description: body.error_description,
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
    let mut form = vec![
        ("grant_type", "client_credentials".to_owned()),
        ("audience", audience.to_owned()),
    ];
    if !scopes.is_empty() {
        form.push(("scope", scopes.join(" ")));
    }
    let request = http
        .post(format!("{}/oauth2/token", issuer.trim_end_matches('/')))
        .basic_auth(
            encode(&credentials.client_id),
            Some(encode(&credentials.client_secret)),
        );
    let (status, bytes) = post_form(request, &form).await?;
    token_answer(status, &bytes)
}

/// `application/x-www-form-urlencoded` encoding of one credential, as RFC 6749 §2.3.1 wants
/// before Basic encoding.
fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
