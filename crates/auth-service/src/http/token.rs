//! `POST /oauth2/token`: client credentials, authorization code with PKCE, refresh token, token
//! exchange (RFC 8693).

use std::collections::{BTreeSet, HashMap};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::extract::{ClientAuth, Endpoint};
use super::{HttpState, OAuthError, TOKEN_PATH, no_store};
use crate::audit::Event;
use crate::clients::{Client, GrantError, scope_audience};
use crate::exchange::Refusal;
use crate::grants::{Family, RedeemError};
use crate::issuer::{IdTokenRequest, IssuedToken, TokenRequest};
use crate::oidc;
use crate::settings::TOKEN_EXCHANGE;

/// The token endpoint; the client is authenticated by [`ClientAuth`] before this runs.
pub(super) async fn token(
    State(state): State<HttpState>,
    ClientAuth {
        client,
        params,
        unproven,
        ..
    }: ClientAuth<TokenEndpoint>,
) -> Response {
    let result = async {
        // `precheck` made sure it is there and supported.
        let grant_type = params.get("grant_type").map_or("", String::as_str);
        if !client.allows_grant(grant_type) {
            return Err(OAuthError::bad_request(
                "unauthorized_client",
                "the client may not use this grant type",
            ));
        }
        match grant_type {
            "client_credentials" => client_credentials(&state, &client, &params).await,
            "authorization_code" => authorization_code(&state, &client, &params).await,
            TOKEN_EXCHANGE => token_exchange(&state, &client, &params).await,
            _ => refresh_token(&state, &client, &params).await,
        }
    }
    .await;
    // A public client proved itself only if its code or refresh token held: a wrong one is a
    // guess, limited like a wrong secret.
    if let Some(attempt) = unproven {
        match &result {
            Err(error) if error.code == "invalid_grant" => attempt.failed(),
            _ => attempt.succeeded(),
        }
    }
    // `precheck` bounded the grant type to the supported ones; outcomes are OAuth2 codes.
    let grant_type = params.get("grant_type").map_or("", String::as_str);
    let outcome = match &result {
        Ok(_) => "issued",
        Err(error) => error.code,
    };
    state.tokens.add(
        1,
        &[
            opentelemetry::KeyValue::new("grant_type", grant_type.to_owned()),
            opentelemetry::KeyValue::new("outcome", outcome),
        ],
    );
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /oauth2/token`.
pub(super) struct TokenEndpoint;

impl Endpoint for TokenEndpoint {
    const PATH: &'static str = TOKEN_PATH;

    /// A missing or unsupported `grant_type` is refused before the client is authenticated.
    fn precheck(params: &HashMap<String, String>) -> Result<(), OAuthError> {
        let grant_type = params
            .get("grant_type")
            .ok_or_else(|| OAuthError::invalid_request("grant_type is required"))?;
        if !crate::settings::GRANT_TYPES.contains(&grant_type.as_str()) {
            return Err(OAuthError::bad_request(
                "unsupported_grant_type",
                "supported: client_credentials, authorization_code, refresh_token, \
                 urn:ietf:params:oauth:grant-type:token-exchange",
            ));
        }
        Ok(())
    }
}

/// A grant (code or refresh token) refused: audited with the precise `reason`, answered with
/// the one `invalid_grant` that tells the caller nothing about which check failed.
fn refused_grant(state: &HttpState, client: &Client, reason: &'static str) -> OAuthError {
    state.audit.refusal(Event {
        decision: "deny",
        reason,
        method: TOKEN_PATH,
        client: &client.client_id,
        ..Event::default()
    });
    OAuthError::invalid_grant()
}

fn scope_error(error: GrantError) -> OAuthError {
    match error {
        GrantError::Audience => OAuthError::bad_request(
            "invalid_target",
            "the client may not get tokens for this audience",
        ),
        GrantError::Scope => OAuthError::bad_request(
            "invalid_scope",
            "a requested scope is not allowed for this client and audience",
        ),
    }
}

fn requested_scopes(params: &HashMap<String, String>) -> Vec<String> {
    params
        .get("scope")
        .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A successful token response (RFC 6749 §5.1), with the refresh token and the ID token when
/// there are some.
fn success(
    issued: &IssuedToken,
    refresh_token: Option<String>,
    id_token: Option<String>,
) -> Response {
    let mut body = json!({
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scopes.join(" "),
    });
    if let Some(refresh) = refresh_token {
        body["refresh_token"] = json!(refresh);
    }
    if let Some(id_token) = id_token {
        body["id_token"] = json!(id_token);
    }
    (StatusCode::OK, no_store(), axum::Json(body)).into_response()
}

async fn client_credentials(
    state: &HttpState,
    client: &Client,
    params: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    let audience = params
        .get("audience")
        .ok_or_else(|| OAuthError::invalid_request("audience is required"))?;
    let scopes = client
        .grant(audience, &requested_scopes(params))
        .map_err(scope_error)?;
    let issued = state
        .issuer
        .issue(TokenRequest {
            subject: &client.client_id,
            client_id: &client.client_id,
            audience,
            scopes,
            actor: None,
            lifetime: state.ttl,
            session: None,
            certificate: None,
        })
        .map_err(|_| OAuthError::server_error())?;
    state
        .audit
        .grant(Event {
            decision: "allow",
            reason: "client_credentials",
            method: TOKEN_PATH,
            subject: &client.client_id,
            client: &client.client_id,
            ..Event::default()
        })
        .map_err(|_| OAuthError::audit_unavailable())?;
    // Client credentials never get a refresh token: the client can always ask again.
    Ok(success(&issued, None, None))
}

/// PKCE verifiers are 43 to 128 characters of the unreserved set (RFC 7636 §4.1).
fn valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

async fn authorization_code(
    state: &HttpState,
    client: &Client,
    params: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    let code = params
        .get("code")
        .ok_or_else(|| OAuthError::invalid_request("code is required"))?;
    let redirect_uri = params
        .get("redirect_uri")
        .ok_or_else(|| OAuthError::invalid_request("redirect_uri is required"))?;
    let verifier = params
        .get("code_verifier")
        .ok_or_else(|| OAuthError::invalid_request("code_verifier is required"))?;
    if !valid_verifier(verifier) {
        return Err(OAuthError::invalid_request("code_verifier is malformed"));
    }
    let now = crate::unix_now() as i64;
    let deny = |reason| refused_grant(state, client, reason);
    let grant = match state.grants.redeem_code(code, now).await {
        Ok(grant) => grant,
        Err(RedeemError::Reused) => return Err(deny("code_reused_family_revoked")),
        Err(RedeemError::Expired) => return Err(deny("code_expired")),
        Err(_) => return Err(deny("code_unknown")),
    };
    if grant.client_id != client.client_id {
        return Err(deny("code_of_another_client"));
    }
    if grant.redirect_uri != *redirect_uri {
        return Err(deny("redirect_uri_mismatch"));
    }
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if aws_lc_rs::constant_time::verify_slices_are_equal(
        computed.as_bytes(),
        grant.code_challenge.as_bytes(),
    )
    .is_err()
    {
        return Err(deny("pkce_verifier_mismatch"));
    }
    // The first access token is for the login's first audience.
    let audience = grant
        .audience
        .split_ascii_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    // Its scopes: the login's for that audience, and the identity scopes (`openid` lets the
    // token read the user's claims at the userinfo endpoint).
    let scopes: Vec<String> = grant
        .scope
        .split_ascii_whitespace()
        .filter(|scope| scope_audience(scope) == audience || oidc::is_identity_scope(scope))
        .map(str::to_owned)
        .collect();
    let login = Login {
        username: &grant.username,
        family_id: &grant.family_id,
        // An OpenID Connect login: the code's ID token facts.
        openid: scopes
            .iter()
            .any(|s| s == oidc::OPENID)
            .then_some((grant.nonce.as_deref(), grant.auth_time as u64)),
    };
    issue_user_tokens(state, client, login, &audience, scopes).await
}

async fn refresh_token(
    state: &HttpState,
    client: &Client,
    params: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    let token = params
        .get("refresh_token")
        .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))?;
    // A refresh that asks for more than the login gave is refused before the token is used up:
    // a bad request must not cost the user their login.
    if let Ok(Some((family, true))) = state.grants.refresh_family(token).await
        && family.client_id == client.client_id
        && let Some(user) = state.users.get(&family.username)
    {
        narrowed(client, &family, &user.scopes, params)?;
    }
    let now = crate::unix_now() as i64;
    let deny = |reason| refused_grant(state, client, reason);
    let family = match state.grants.rotate_refresh(token, now).await {
        Ok(family) => family,
        Err(RedeemError::Reused) => return Err(deny("refresh_reused_family_revoked")),
        Err(RedeemError::Revoked) => return Err(deny("refresh_family_revoked")),
        Err(RedeemError::Expired) => return Err(deny("refresh_expired")),
        Err(RedeemError::Unknown) => return Err(deny("refresh_unknown")),
    };
    if family.client_id != client.client_id {
        // Another client holding this token means it leaked: nothing from the login may live on.
        let _ = state.grants.revoke_family(&family.family_id, now).await;
        return Err(deny("refresh_of_another_client"));
    }
    let user = state
        .users
        .get(&family.username)
        .ok_or_else(|| deny("user_removed"))?
        .clone();
    let (audience, scopes) = narrowed(client, &family, &user.scopes, params)?;
    // A refresh renews the access token only: OpenID Connect Core §12.2 lets it leave the ID
    // token out, and the client keeps the one from the login.
    let login = Login {
        username: &user.username,
        family_id: &family.family_id,
        openid: None,
    };
    issue_user_tokens(state, client, login, &audience, scopes).await
}

/// What a refresh may grant (RFC 6749 §6): an access token for one of the login's audiences
/// (the first when none is named), with the scopes asked for only if the login granted each of
/// them for that audience; none asked for means all the login granted for it. Either way
/// narrowed again to what the client and the user's roles allow today, so a role taken away
/// since the login is not renewed.
fn narrowed(
    client: &Client,
    family: &Family,
    user_scopes: &BTreeSet<String>,
    params: &HashMap<String, String>,
) -> Result<(String, Vec<String>), OAuthError> {
    let (asked_identity, asked) = oidc::split_scopes(requested_scopes(params));
    let login_identity: Vec<String> = family
        .scope
        .split_ascii_whitespace()
        .filter(|scope| oidc::is_identity_scope(scope))
        .map(str::to_owned)
        .collect();
    if asked_identity.iter().any(|s| !login_identity.contains(s)) {
        return Err(OAuthError::bad_request(
            "invalid_scope",
            "a refresh may ask for the login's scopes or fewer, never more",
        ));
    }
    // No `scope` at all: everything the login had, identity included (RFC 6749 §6).
    let identity = if params.contains_key("scope") {
        asked_identity
    } else {
        login_identity
    };
    let audiences: Vec<&str> = family.audience.split_ascii_whitespace().collect();
    let audience = match params.get("audience") {
        Some(asked) if audiences.contains(&asked.as_str()) => asked.clone(),
        Some(_) => {
            return Err(OAuthError::bad_request(
                "invalid_target",
                "a refresh may ask only for an audience the login was for",
            ));
        }
        None => audiences.first().copied().unwrap_or_default().to_owned(),
    };
    let granted: Vec<&str> = family
        .scope
        .split_ascii_whitespace()
        .filter(|scope| scope_audience(scope) == audience)
        .collect();
    if asked.iter().any(|scope| !granted.contains(&scope.as_str())) {
        return Err(OAuthError::bad_request(
            "invalid_scope",
            "a refresh may ask for the login's scopes or fewer, never more",
        ));
    }
    let wanted: Vec<String> = if asked.is_empty() {
        granted
            .iter()
            .filter(|scope| user_scopes.contains(**scope))
            .map(|scope| (*scope).to_owned())
            .collect()
    } else {
        asked
    };
    // An empty request would mean "everything the client may have" to the grant below.
    if wanted.is_empty() {
        return Err(OAuthError::bad_request(
            "invalid_scope",
            "nothing the login granted for this audience is left to renew: sign in again",
        ));
    }
    let mut scopes = client
        .grant_for_user(&audience, &wanted, user_scopes)
        .map_err(scope_error)?;
    scopes.extend(identity);
    Ok((audience, scopes))
}

/// The login an access token is issued from.
struct Login<'a> {
    username: &'a str,
    family_id: &'a str,
    /// For an OpenID Connect login's first tokens: its `nonce` and `auth_time`, so an ID token
    /// is issued beside the access token.
    openid: Option<(Option<&'a str>, u64)>,
}

/// An access token for the user, the next refresh token of the family and, for an OpenID
/// Connect login, its ID token.
async fn issue_user_tokens(
    state: &HttpState,
    client: &Client,
    login: Login<'_>,
    audience: &str,
    scopes: Vec<String>,
) -> Result<Response, OAuthError> {
    let Login {
        username,
        family_id,
        openid,
    } = login;
    let issued = state
        .issuer
        .issue(TokenRequest {
            subject: username,
            client_id: &client.client_id,
            audience,
            scopes,
            actor: None,
            lifetime: state.ttl,
            session: Some(family_id),
            certificate: None,
        })
        .map_err(|_| OAuthError::server_error())?;
    let id_token = match openid {
        Some((nonce, auth_time)) => Some(
            state
                .issuer
                .issue_id_token(IdTokenRequest {
                    subject: username,
                    client_id: &client.client_id,
                    nonce,
                    auth_time,
                    session: family_id,
                    access_token: &issued.access_token,
                    lifetime: state.ttl,
                })
                .map_err(|_| OAuthError::server_error())?,
        ),
        None => None,
    };
    let now = crate::unix_now() as i64;
    state
        .grants
        .record_access(
            &issued.token_id,
            Some(family_id),
            now + issued.expires_in as i64,
        )
        .await
        .map_err(|_| OAuthError::server_error())?;
    let refresh = state
        .grants
        .issue_refresh(family_id, now + state.refresh_ttl.as_secs() as i64)
        .await
        .map_err(|_| OAuthError::server_error())?;
    state
        .audit
        .grant(Event {
            decision: "allow",
            reason: "user_token",
            method: TOKEN_PATH,
            subject: username,
            client: &client.client_id,
            ..Event::default()
        })
        .map_err(|_| OAuthError::audit_unavailable())?;
    Ok(success(&issued, Some(refresh), id_token))
}

/// The token type of an access token (RFC 8693 §3): the only type exchanged here, both ways.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The token-exchange grant (RFC 8693 §2): the authenticated client is the actor, the subject
/// token a user's access token addressed to it. The rules are the mesh `ExchangeToken`'s, from
/// the same [`crate::exchange::TokenExchange`].
async fn token_exchange(
    state: &HttpState,
    client: &Client,
    params: &HashMap<String, String>,
) -> Result<Response, OAuthError> {
    let subject_token = params
        .get("subject_token")
        .ok_or_else(|| OAuthError::invalid_request("subject_token is required"))?;
    match params.get("subject_token_type").map(String::as_str) {
        Some(ACCESS_TOKEN_TYPE) => {}
        Some(_) => {
            return Err(OAuthError::invalid_request(
                "subject_token_type must be urn:ietf:params:oauth:token-type:access_token",
            ));
        }
        None => {
            return Err(OAuthError::invalid_request(
                "subject_token_type is required",
            ));
        }
    }
    if params
        .get("requested_token_type")
        .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
    {
        return Err(OAuthError::invalid_request(
            "requested_token_type: only access tokens are issued",
        ));
    }
    // The actor is the client that authenticated; a second proof of it is not taken.
    if params.contains_key("actor_token") || params.contains_key("actor_token_type") {
        return Err(OAuthError::invalid_request(
            "actor_token is not accepted: the authenticated client is the actor",
        ));
    }
    if params.contains_key("resource") {
        return Err(OAuthError::bad_request(
            "invalid_target",
            "name the service with audience; resource URIs are not used by this issuer",
        ));
    }
    let audience = params
        .get("audience")
        .ok_or_else(|| OAuthError::invalid_request("audience is required"))?;
    let exchanged = state
        .exchange
        .exchange(
            client,
            subject_token,
            audience,
            &requested_scopes(params),
            TOKEN_PATH,
            // Asked over HTTPS with a client secret: no certificate to bind to.
            None,
        )
        .await
        .map_err(|refusal| exchange_error(state, client, refusal))?;
    let issued = exchanged.issued;
    let body = json!({
        "access_token": issued.access_token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scopes.join(" "),
    });
    Ok((StatusCode::OK, no_store(), axum::Json(body)).into_response())
}

/// A refused exchange as RFC 8693 §2.2.2 answers it: `invalid_request` for a subject token that
/// is not acceptable (which check failed is for the audit chain only), `invalid_target` and
/// `invalid_scope` for what the client may not get.
fn exchange_error(state: &HttpState, client: &Client, refusal: Refusal) -> OAuthError {
    let error = match &refusal {
        Refusal::Grant(error) => scope_error(*error),
        Refusal::NotDelegated => OAuthError::bad_request(
            "invalid_scope",
            "the user's token does not let this client act with these scopes",
        ),
        Refusal::Unavailable | Refusal::Signing => OAuthError::server_error(),
        Refusal::AuditUnavailable => return OAuthError::audit_unavailable(),
        Refusal::NotForCaller
        | Refusal::Revoked
        | Refusal::Invalid(_)
        | Refusal::AlreadyExchanged
        | Refusal::Expired => OAuthError::invalid_request(
            "subject_token is invalid, expired, revoked or not addressed to this client",
        ),
    };
    state.audit.refusal(Event {
        decision: "deny",
        reason: refusal.reason(),
        method: TOKEN_PATH,
        client: &client.client_id,
        actor: &client.client_id,
        ..Event::default()
    });
    error
}
