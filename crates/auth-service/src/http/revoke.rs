//! `POST /oauth2/revoke` (RFC 7009) and `POST /oauth2/introspect` (RFC 7662).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::extract::{ClientAuth, Endpoint};
use super::{HttpState, INTROSPECT_PATH, OAuthError, REVOKE_PATH, no_store};
use crate::audit::Event;

/// `POST /oauth2/revoke`.
pub(super) struct RevokeEndpoint;

impl Endpoint for RevokeEndpoint {
    const PATH: &'static str = REVOKE_PATH;
}

/// `POST /oauth2/introspect`.
pub(super) struct IntrospectEndpoint;

impl Endpoint for IntrospectEndpoint {
    const PATH: &'static str = INTROSPECT_PATH;
}

/// Revokes a refresh token (and with it its whole family) or an access token, if the token
/// belongs to the authenticated client. Unknown tokens answer 200 too (RFC 7009 §2.2), so the
/// endpoint cannot be used to probe for valid tokens.
pub(super) async fn revoke(
    State(state): State<HttpState>,
    ClientAuth {
        client,
        params,
        unproven,
        ..
    }: ClientAuth<RevokeEndpoint>,
) -> Response {
    // Revoking answers the same for any token (RFC 7009 §2.2): there is nothing to guess.
    if let Some(attempt) = unproven {
        attempt.succeeded();
    }
    let result = async {
        let token = params
            .get("token")
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        let now = crate::unix_now() as i64;
        let storage = |_| OAuthError::server_error();
        if let Some((family, _)) = state.grants.refresh_family(token).await.map_err(storage)? {
            if family.client_id == client.client_id {
                state
                    .grants
                    .revoke_family(&family.family_id, now)
                    .await
                    .map_err(storage)?;
                state.audit.refusal(Event {
                    decision: "revoke",
                    reason: "refresh_token",
                    method: REVOKE_PATH,
                    subject: &family.username,
                    client: &client.client_id,
                    ..Event::default()
                });
            }
        } else if let Ok((_, verified)) = state.verifiers.verify_any(token).await
            && verified.client_id == client.client_id
        {
            state
                .grants
                .revoke_access(&verified.token_id, verified.expires_at as i64, now)
                .await
                .map_err(storage)?;
            state.audit.refusal(Event {
                decision: "revoke",
                reason: "access_token",
                method: REVOKE_PATH,
                subject: &verified.subject,
                client: &client.client_id,
                ..Event::default()
            });
        }
        Ok::<_, OAuthError>((StatusCode::OK, no_store()).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Tells a confidential client whether a token is active, and what it says. Public clients may
/// not introspect.
pub(super) async fn introspect(
    State(state): State<HttpState>,
    ClientAuth { client, params, .. }: ClientAuth<IntrospectEndpoint>,
) -> Response {
    let result = async {
        if client.is_public() {
            return Err(OAuthError::invalid_client());
        }
        let token = params
            .get("token")
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        let storage = |_| OAuthError::server_error();
        let inactive = json!({ "active": false });
        let body = if let Some((family, active)) =
            state.grants.refresh_family(token).await.map_err(storage)?
        {
            if active {
                json!({
                    "active": true,
                    "token_type": "refresh_token",
                    "client_id": family.client_id,
                    "sub": family.username,
                    "iss": state.issuer.url(),
                })
            } else {
                inactive
            }
        } else {
            match state.verifiers.verify_any(token).await {
                Ok((audience, verified))
                    if !state
                        .grants
                        .access_revoked(&verified.token_id)
                        .await
                        .map_err(storage)? =>
                {
                    let mut body = json!({
                        "active": true,
                        "token_type": "Bearer",
                        "scope": verified.scopes.join(" "),
                        "client_id": verified.client_id,
                        "sub": verified.subject,
                        "aud": audience,
                        "iss": state.issuer.url(),
                        "exp": verified.expires_at,
                        "jti": verified.token_id,
                    });
                    if let Some(actor) = &verified.actor {
                        body["act"] = json!({ "sub": actor });
                    }
                    // RFC 8705 §3.2: a resource server that introspects checks the binding.
                    if let Some(certificate) = verified.certificate {
                        body["cnf"] = json!({ "x5t#S256": certificate.to_base64url() });
                    }
                    body
                }
                _ => inactive,
            }
        };
        Ok((StatusCode::OK, no_store(), axum::Json(body)).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
