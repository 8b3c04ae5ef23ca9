//! The public HTTPS side: OIDC discovery, the JWKS, and the OAuth2 token endpoint (RFC 6749).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mesh_tls::PeerIdentity;
use serde_json::json;

use crate::clients::{GrantError, Registry};
use crate::issuer::{Issuer, TokenRequest};
use crate::ratelimit::FailureLimiter;

/// Path of the JWKS document.
pub const JWKS_PATH: &str = "/oauth2/jwks";
/// Path of the token endpoint.
pub const TOKEN_PATH: &str = "/oauth2/token";

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Signs tokens.
    pub issuer: Arc<Issuer>,
    /// Registered clients.
    pub registry: Arc<Registry>,
    /// Failed-authentication limiter.
    pub limiter: Arc<FailureLimiter>,
    /// Access-token lifetime.
    pub ttl: std::time::Duration,
}

/// The public router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route(JWKS_PATH, get(jwks))
        .route(TOKEN_PATH, post(token))
        // Token requests are a few hundred bytes; refuse anything large before reading it.
        .layer(DefaultBodyLimit::max(16 * 1024))
        .with_state(state)
}

async fn discovery(State(state): State<HttpState>) -> Response {
    let issuer = state.issuer.url();
    let body = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "token_endpoint": format!("{issuer}{TOKEN_PATH}"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
    });
    (
        [(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=300"),
        )],
        axum::Json(body),
    )
        .into_response()
}

async fn jwks(State(state): State<HttpState>) -> Response {
    (
        [(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        )],
        axum::Json(state.issuer.keys().jwks()),
    )
        .into_response()
}

/// An RFC 6749 §5.2 error response.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: &'static str,
    retry_after: Option<u64>,
}

impl OAuthError {
    fn bad_request(code: &'static str, description: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            description,
            retry_after: None,
        }
    }

    /// The one answer for every failed client authentication: unknown client, wrong secret and
    /// no credentials look the same.
    fn invalid_client() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_client",
            description: "client authentication failed",
            retry_after: None,
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut headers = no_store();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="mesh", charset="UTF-8""#),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        let body = json!({ "error": self.code, "error_description": self.description });
        (self.status, headers, axum::Json(body)).into_response()
    }
}

fn no_store() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers
}

/// Client credentials as presented, before they are checked.
struct Presented {
    client_id: String,
    secret: String,
}

async fn token(
    State(state): State<HttpState>,
    peer: Option<Extension<PeerIdentity>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let addr = peer
        .and_then(|Extension(p)| p.remote_addr)
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    match token_inner(&state, addr, &headers, &body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn token_inner(
    state: &HttpState,
    addr: IpAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, OAuthError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
    if !is_form {
        return Err(OAuthError::bad_request(
            "invalid_request",
            "content type must be application/x-www-form-urlencoded",
        ));
    }
    let params = parse_form(body)?;
    let grant_type = params.get("grant_type").ok_or(OAuthError::bad_request(
        "invalid_request",
        "grant_type is required",
    ))?;
    if grant_type != "client_credentials" {
        return Err(OAuthError::bad_request(
            "unsupported_grant_type",
            "this endpoint supports grant_type=client_credentials",
        ));
    }
    let presented = presented_credentials(headers, &params)?;
    if let Some(retry) = state.limiter.blocked(addr) {
        return Err(OAuthError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "temporarily_unavailable",
            description: "too many failed client authentications; retry later",
            retry_after: Some(retry.as_secs().max(1)),
        });
    }
    let Some(presented) = presented else {
        state.limiter.record_failure(addr);
        return Err(OAuthError::invalid_client());
    };
    // Argon2 is deliberately slow: keep it off the async workers.
    let registry = state.registry.clone();
    let client_id = presented.client_id.clone();
    let authenticated = tokio::task::spawn_blocking(move || {
        registry
            .authenticate(&presented.client_id, &presented.secret)
            .is_some()
    })
    .await
    .unwrap_or(false);
    let client = match state.registry.get(&client_id) {
        Some(client) if authenticated => client,
        _ => {
            state.limiter.record_failure(addr);
            tracing::warn!(target: "audit", decision = "deny", reason = "invalid_client", method = TOKEN_PATH, client = %client_id, "client authentication failed");
            return Err(OAuthError::invalid_client());
        }
    };
    if !client.allows_grant("client_credentials") {
        return Err(OAuthError::bad_request(
            "unauthorized_client",
            "the client may not use this grant type",
        ));
    }
    let audience = params.get("audience").ok_or(OAuthError::bad_request(
        "invalid_request",
        "audience is required",
    ))?;
    let requested: Vec<String> = params
        .get("scope")
        .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let scopes = client.grant(audience, &requested).map_err(|e| match e {
        GrantError::Audience => OAuthError::bad_request(
            "invalid_target",
            "the client may not get tokens for this audience",
        ),
        GrantError::Scope => OAuthError::bad_request(
            "invalid_scope",
            "a requested scope is not allowed for this client and audience",
        ),
    })?;
    let issued = state
        .issuer
        .issue(TokenRequest {
            subject: &client.client_id,
            client_id: &client.client_id,
            audience,
            scopes,
            actor: None,
            lifetime: state.ttl,
        })
        .map_err(|_| OAuthError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "server_error",
            description: "could not sign the token",
            retry_after: None,
        })?;
    tracing::info!(target: "audit", decision = "allow", reason = "client_credentials", method = TOKEN_PATH, client = %client.client_id, audience = %audience, token_id = %issued.token_id, "token issued");
    let body = json!({
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scopes.join(" "),
    });
    Ok((StatusCode::OK, no_store(), axum::Json(body)).into_response())
}

/// Parses a form body. Every parameter may appear once (RFC 6749 §3.2); an empty value counts as
/// absent.
fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut params = HashMap::new();
    for (key, value) in form_urlencoded::parse(body) {
        if params.contains_key(key.as_ref()) {
            return Err(OAuthError::bad_request(
                "invalid_request",
                "a parameter was repeated",
            ));
        }
        if !value.is_empty() {
            params.insert(key.into_owned(), value.into_owned());
        }
    }
    Ok(params)
}

/// The client's credentials from exactly one of `client_secret_basic` (the `Authorization`
/// header) or `client_secret_post` (the body). Both at once is `invalid_request`; neither is
/// `Ok(None)`.
fn presented_credentials(
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Option<Presented>, OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => Some(parse_basic(value).ok_or(OAuthError::invalid_client())?),
    };
    let post_secret = params.get("client_secret");
    match (basic, post_secret) {
        (Some(_), Some(_)) => Err(OAuthError::bad_request(
            "invalid_request",
            "use one client authentication method, not both",
        )),
        (Some(basic), None) => {
            if params
                .get("client_id")
                .is_some_and(|id| *id != basic.client_id)
            {
                return Err(OAuthError::bad_request(
                    "invalid_request",
                    "client_id in the body differs from the Authorization header",
                ));
            }
            Ok(Some(basic))
        }
        (None, Some(secret)) => {
            let client_id = params.get("client_id").ok_or(OAuthError::bad_request(
                "invalid_request",
                "client_secret_post needs client_id",
            ))?;
            Ok(Some(Presented {
                client_id: client_id.clone(),
                secret: secret.clone(),
            }))
        }
        (None, None) => Ok(None),
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
fn parse_basic(value: &HeaderValue) -> Option<Presented> {
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let decode = |s: &str| -> Option<String> {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .ok()
            .map(|v| v.into_owned())
    };
    let client_id = decode(id)?;
    if client_id.is_empty() {
        return None;
    }
    Some(Presented {
        client_id,
        secret: decode(secret)?,
    })
}
