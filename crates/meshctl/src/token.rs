//! The OAuth2 client side of meshctl: client credentials against the public token endpoint.

use serde::Deserialize;

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
pub(crate) async fn post_form(
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
pub(crate) fn token_answer(status: u16, bytes: &[u8]) -> Result<TokenResponse, TokenError> {
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
pub(crate) fn error_answer(status: u16, bytes: &[u8]) -> TokenError {
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
