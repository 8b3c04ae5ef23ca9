//! The user side of OAuth2 for meshctl: the authorization-code flow with PKCE, refresh-token
//! rotation, revocation, and the session file that keeps the tokens between runs.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::token::{TokenError, TokenResponse, error_answer, post_form, token_answer};

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

/// The tokens kept between runs, in a file only the user can read (0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The issuer the tokens are from.
    pub issuer: String,
    /// The current refresh token (rotated on every use).
    pub refresh_token: String,
    /// Access tokens by audience.
    #[serde(default)]
    pub access: BTreeMap<String, CachedAccess>,
}

/// An access token and when it expires.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedAccess {
    /// The token.
    pub token: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
}

impl Session {
    /// A session from a fresh login for `audience`.
    pub fn from_login(issuer: &str, audience: &str, response: TokenResponse) -> Option<Self> {
        let mut session = Self {
            issuer: issuer.to_owned(),
            refresh_token: response.refresh_token.clone()?,
            access: BTreeMap::new(),
        };
        session.remember(audience, &response);
        Some(session)
    }

    fn remember(&mut self, audience: &str, response: &TokenResponse) {
        self.access.insert(
            audience.to_owned(),
            CachedAccess {
                token: response.access_token.clone(),
                expires_at: now() + response.expires_in,
            },
        );
        if let Some(next) = &response.refresh_token {
            self.refresh_token = next.clone();
        }
    }

    /// An access token for `audience`: the cached one while it has 30 s left, else a new one
    /// bought with the refresh token (which rotates; the caller must save the session).
    pub async fn access_token(
        &mut self,
        http: &reqwest::Client,
        audience: &str,
    ) -> Result<String, TokenError> {
        if let Some(cached) = self.access.get(audience)
            && cached.expires_at > now() + 30
        {
            return Ok(cached.token.clone());
        }
        let response = refresh(http, &self.issuer, &self.refresh_token, audience).await?;
        self.remember(audience, &response);
        Ok(response.access_token)
    }

    /// Reads a session file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: {e} (run `meshctl login` first)", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes the session file, readable by the owner only.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let temporary = path.with_extension("tmp");
        let _ = std::fs::remove_file(&temporary);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(|e| format!("{}: {e}", temporary.display()))?;
        file.write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", temporary.display()))?;
        // Replace in one step, so a crash never leaves half a session behind.
        std::fs::rename(&temporary, path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The default session file: `$HOME/.config/meshctl/session.json`.
pub fn default_session_path() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".config/meshctl/session.json")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
