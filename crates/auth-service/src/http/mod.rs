//! The public HTTPS side: OIDC discovery, the JWKS, the login page and the OAuth2 endpoints.
//!
//! Every error answer follows RFC 6749 §5.2: a JSON body with `error` (and a description that
//! never echoes a credential), 400 or 401, `WWW-Authenticate` on 401, and `Cache-Control:
//! no-store` on every token-endpoint answer.

mod authorize;
mod extract;
mod logout;
mod pages;
mod revoke;
mod session;
mod token;
mod userinfo;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::clients::{Client, Registry};
use crate::grants::Grants;
use crate::issuer::Issuer;
use crate::local::LocalVerifiers;
use crate::ratelimit::{Attempt, FailureLimiter, Refused};
use crate::users::Users;

/// Path of the JWKS document.
pub const JWKS_PATH: &str = "/oauth2/jwks";
/// Path of the token endpoint.
pub const TOKEN_PATH: &str = "/oauth2/token";
/// Path of the authorization endpoint (the login page).
pub const AUTHORIZE_PATH: &str = "/oauth2/authorize";
/// Path of the revocation endpoint (RFC 7009).
pub const REVOKE_PATH: &str = "/oauth2/revoke";
/// Path of the introspection endpoint (RFC 7662).
pub const INTROSPECT_PATH: &str = "/oauth2/introspect";
/// Path of the consent form's answer.
pub const CONSENT_PATH: &str = "/oauth2/consent";
/// Path of the end-session endpoint (RP-initiated sign-out).
pub const LOGOUT_PATH: &str = "/oauth2/logout";
/// Path of the OpenID Connect userinfo endpoint.
pub const USERINFO_PATH: &str = "/oauth2/userinfo";

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Signs tokens.
    pub issuer: Arc<Issuer>,
    /// Registered clients.
    pub registry: Arc<Registry>,
    /// Users.
    pub users: Arc<Users>,
    /// Codes, refresh tokens and their families.
    pub grants: Grants,
    /// People's sessions at the issuer and their consents.
    pub sessions: crate::sessions::Sessions,
    /// Tells clients that a session ended (back-channel logout).
    pub backchannel: crate::backchannel::BackChannel,
    /// Verifies our own tokens (revocation, introspection).
    pub verifiers: Arc<LocalVerifiers>,
    /// The token-exchange grant's rules, shared with the mesh's `ExchangeToken`.
    pub exchange: Arc<crate::exchange::TokenExchange>,
    /// Failed client and user authentications per address and account.
    pub limiter: FailureLimiter,
    /// Access-token lifetime.
    pub ttl: Duration,
    /// Refresh-token lifetime.
    pub refresh_ttl: Duration,
    /// Where logins, grants and refusals are recorded.
    pub audit: crate::audit::IssuerAudit,
    /// `mesh.tokens.issued`: token endpoint answers by grant type and outcome.
    pub tokens: opentelemetry::metrics::Counter<u64>,
}

/// The public router.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route(JWKS_PATH, get(jwks))
        .route(TOKEN_PATH, post(token::token))
        .route(AUTHORIZE_PATH, get(authorize::page).post(authorize::login))
        .route(CONSENT_PATH, post(authorize::consent))
        .route(LOGOUT_PATH, get(logout::page).post(logout::form))
        .route(REVOKE_PATH, post(revoke::revoke))
        .route(INTROSPECT_PATH, post(revoke::introspect))
        .route(
            USERINFO_PATH,
            get(userinfo::userinfo).post(userinfo::userinfo),
        )
        // OAuth2 requests are a few hundred bytes; refuse anything large before reading it.
        .layer(DefaultBodyLimit::max(16 * 1024))
        .with_state(state)
}

/// The issuer's metadata: OpenID Connect Discovery 1.0 §3 (which RFC 8414 extends). It
/// advertises exactly what is served, and says `false` where a default would promise more (a
/// missing `request_uri_parameter_supported` means `true`).
async fn discovery(State(state): State<HttpState>) -> Response {
    let issuer = state.issuer.url();
    let body = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "token_endpoint": format!("{issuer}{TOKEN_PATH}"),
        "authorization_endpoint": format!("{issuer}{AUTHORIZE_PATH}"),
        "userinfo_endpoint": format!("{issuer}{USERINFO_PATH}"),
        "end_session_endpoint": format!("{issuer}{LOGOUT_PATH}"),
        "revocation_endpoint": format!("{issuer}{REVOKE_PATH}"),
        "introspection_endpoint": format!("{issuer}{INTROSPECT_PATH}"),
        "grant_types_supported": crate::settings::GRANT_TYPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "prompt_values_supported": ["none", "login", "consent"],
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "scopes_supported": crate::oidc::IDENTITY_SCOPES,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "acr_values_supported": [crate::oidc::ACR_PASSWORD],
        "claims_supported": [
            "iss", "sub", "aud", "azp", "exp", "iat", "auth_time", "nonce", "at_hash", "sid",
            "acr", "amr", "preferred_username"
        ],
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
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

    fn invalid_request(description: &'static str) -> Self {
        Self::bad_request("invalid_request", description)
    }

    fn invalid_grant() -> Self {
        // One description for every failed grant: which check failed is for the audit log.
        Self::bad_request(
            "invalid_grant",
            "the grant is invalid, expired, revoked or was used",
        )
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

    fn too_many(refused: Refused) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "temporarily_unavailable",
            description: match refused {
                Refused::Blocked(_) => "too many failed authentications; retry later",
                Refused::Busy => "too many authentications at once; retry later",
            },
            retry_after: Some(refused.retry_after().as_secs().max(1)),
        }
    }

    /// The audit chain cannot be written (a full disk, say): nothing is granted until it can.
    fn audit_unavailable() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "temporarily_unavailable",
            description: "the audit log cannot be written; retry later",
            retry_after: Some(5),
        }
    }

    fn server_error() -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "server_error",
            description: "the request could not be completed",
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

/// A `302 Found` to `uri` with `query` (form-encoded, may be empty) appended, not cached. The
/// callers redirect only to registered URIs.
fn redirect(uri: &str, query: &str) -> Response {
    let location = match (query.is_empty(), uri.contains('?')) {
        (true, _) => uri.to_owned(),
        (false, true) => format!("{uri}&{query}"),
        (false, false) => format!("{uri}?{query}"),
    };
    match HeaderValue::try_from(location) {
        Ok(location) => {
            let mut headers = no_store();
            headers.insert(header::LOCATION, location);
            (StatusCode::FOUND, headers).into_response()
        }
        Err(_) => pages::respond(StatusCode::BAD_REQUEST, &pages::error("Invalid redirect.")),
    }
}

fn no_store() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers
}

/// Whether the request body is declared as a form.
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Parses a form body or query. Every parameter may appear once (RFC 6749 §3.1, §3.2); an
/// empty value counts as absent.
fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut params = HashMap::new();
    for (key, value) in form_urlencoded::parse(body) {
        if params.contains_key(key.as_ref()) {
            return Err(OAuthError::invalid_request("a parameter was repeated"));
        }
        if !value.is_empty() {
            params.insert(key.into_owned(), value.into_owned());
        }
    }
    Ok(params)
}

/// Reads a form body, refusing other content types.
fn form_body(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    if !is_form(headers) {
        return Err(OAuthError::invalid_request(
            "content type must be application/x-www-form-urlencoded",
        ));
    }
    parse_form(body)
}

/// How the client identified itself, before it is checked.
enum Presented {
    /// `client_secret_basic` or `client_secret_post`.
    Secret { client_id: String, secret: String },
    /// A public client: `client_id` only (it proves the login with PKCE).
    Public { client_id: String },
    /// Nothing.
    Nothing,
}

/// The client's credentials from exactly one of `client_secret_basic` (the `Authorization`
/// header) or `client_secret_post` (the body); both at once is `invalid_request`.
fn presented(
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Presented, OAuthError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => Some(parse_basic(value).ok_or_else(OAuthError::invalid_client)?),
    };
    match (basic, params.get("client_secret")) {
        (Some(_), Some(_)) => Err(OAuthError::invalid_request(
            "use one client authentication method, not both",
        )),
        (Some((client_id, secret)), None) => {
            if params.get("client_id").is_some_and(|id| *id != client_id) {
                return Err(OAuthError::invalid_request(
                    "client_id in the body differs from the Authorization header",
                ));
            }
            Ok(Presented::Secret { client_id, secret })
        }
        (None, Some(secret)) => {
            let client_id = params
                .get("client_id")
                .ok_or_else(|| OAuthError::invalid_request("client_secret_post needs client_id"))?;
            Ok(Presented::Secret {
                client_id: client_id.clone(),
                secret: secret.clone(),
            })
        }
        (None, None) => Ok(match params.get("client_id") {
            Some(client_id) => Presented::Public {
                client_id: client_id.clone(),
            },
            None => Presented::Nothing,
        }),
    }
}

/// A client that authenticated, and for a public client the attempt still open: a public
/// client proves nothing until its code or refresh token is checked, so a wrong one is a failed
/// authentication like a wrong secret, and the handler settles it.
pub(crate) struct Authenticated {
    pub(crate) client: Client,
    pub(crate) unproven: Option<Attempt>,
}

/// Authenticates the client of a token, revocation or introspection request. The attempt is
/// reserved with the limiter (per address, and per client id for a secret) before any hash is
/// computed, and the hash runs in one of the limiter's few slots.
async fn authenticate_client(
    state: &HttpState,
    addr: IpAddr,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    endpoint: &'static str,
) -> Result<Authenticated, OAuthError> {
    let presented = presented(headers, params)?;
    let address = FailureLimiter::address(addr);
    let (attempt, client, client_id) = match presented {
        Presented::Secret { client_id, secret } => {
            let account = state.limiter.account("client", &client_id);
            let attempt = state
                .limiter
                .begin(&[address, account])
                .await
                .map_err(OAuthError::too_many)?;
            if let Some(client) = state.registry.authenticate_generated(&client_id, &secret) {
                (attempt, client.cloned(), client_id)
            } else {
                let slot = match state.limiter.hash_slot().await {
                    Ok(slot) => slot,
                    Err(refused) => {
                        // No guess was checked: a wait for a hash slot is not a failure.
                        attempt.succeeded();
                        return Err(OAuthError::too_many(refused));
                    }
                };
                // Argon2 is deliberately slow: keep it off the async workers. The slot moves into
                // the task, so it is held exactly as long as the hash runs.
                let registry = state.registry.clone();
                let id = client_id.clone();
                let client = tokio::task::spawn_blocking(move || {
                    let mut slot = slot;
                    registry.authenticate(&id, &secret, &mut slot).cloned()
                })
                .await
                .ok()
                .flatten();
                (attempt, client, client_id)
            }
        }
        Presented::Public { client_id } => {
            let attempt = state
                .limiter
                .begin(&[address])
                .await
                .map_err(OAuthError::too_many)?;
            let client = state
                .registry
                .get(&client_id)
                .filter(|c| c.is_public())
                .cloned();
            if let Some(client) = client {
                return Ok(Authenticated {
                    client,
                    unproven: Some(attempt),
                });
            }
            (attempt, None, client_id)
        }
        Presented::Nothing => {
            let attempt = state
                .limiter
                .begin(&[address])
                .await
                .map_err(OAuthError::too_many)?;
            (attempt, None, String::new())
        }
    };
    match client {
        Some(client) => {
            attempt.succeeded();
            Ok(Authenticated {
                client,
                unproven: None,
            })
        }
        None => {
            attempt.failed();
            state.audit.refusal(crate::audit::Event {
                decision: "deny",
                reason: "invalid_client",
                method: endpoint,
                client: &client_id,
                ..Default::default()
            });
            Err(OAuthError::invalid_client())
        }
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
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
    (!client_id.is_empty()).then_some(())?;
    Some((client_id, decode(secret)?))
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            // `PROPTEST_CASES` when set (CI's fuzz step: 10,000), else 1,000.
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Any body or query string (RFC 6749 forms) parses or is `invalid_request`, never a
        /// panic; a parsed form holds each parameter once and no empty value.
        #[test]
        fn any_form_body_parses_or_is_invalid_request(
            body in prop::collection::vec(any::<u8>(), 0..300),
            pairs in prop::collection::vec(("[a-z_%&=+]{0,12}", "[ -~]{0,20}"), 0..8),
        ) {
            for input in [body, pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
                .into_bytes()]
            {
                match super::parse_form(&input) {
                    Ok(params) => prop_assert!(params.values().all(|v| !v.is_empty())),
                    Err(error) => prop_assert_eq!(error.code, "invalid_request"),
                }
            }
        }
    }
}
