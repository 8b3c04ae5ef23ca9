//! The opening every OAuth2 handler shares, as axum extractors: the caller's address, the form
//! body (parsed the strict RFC 6749 way), and, for the endpoints that need it, the authenticated
//! client.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use mesh_tls::PeerIdentity;

use super::{Authenticated, HttpState, OAuthError, authenticate_client, form_body};
use crate::clients::Client;
use crate::ratelimit::Attempt;

/// A form POST to an OAuth2 endpoint: who sent it (for rate limiting) and its parameters, each
/// present once (a repeated parameter or another content type is `invalid_request`).
#[derive(Debug)]
pub(super) struct OAuthForm {
    /// The peer's IP address, from the TLS connection.
    pub addr: IpAddr,
    /// The request headers (client authentication may be in `Authorization`).
    pub headers: HeaderMap,
    /// The form parameters; an empty value counts as absent.
    pub params: HashMap<String, String>,
}

impl FromRequest<HttpState> for OAuthForm {
    type Rejection = Response;

    async fn from_request(request: Request, state: &HttpState) -> Result<Self, Response> {
        let addr = request
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.remote_addr)
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let headers = request.headers().clone();
        // The body limit (DefaultBodyLimit on the router) answers 413 before anything is read.
        let body = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let params = form_body(&headers, &body).map_err(IntoResponse::into_response)?;
        Ok(Self {
            addr,
            headers,
            params,
        })
    }
}

/// An endpoint that authenticates its client: its path (for the audit line) and what it checks
/// before spending a hash on the client's secret.
pub(super) trait Endpoint: Send + Sync + 'static {
    /// The endpoint's path.
    const PATH: &'static str;

    /// Refusals that need no client (e.g. an unsupported `grant_type`), answered first.
    fn precheck(_params: &HashMap<String, String>) -> Result<(), OAuthError> {
        Ok(())
    }
}

/// A request whose client authenticated with exactly one method (`client_secret_basic`,
/// `client_secret_post`, or a public client's `client_id`), behind the failure limiter. Extracting it is the whole opening of the token, revocation and introspection
/// handlers.
#[derive(Debug)]
pub(super) struct ClientAuth<E> {
    /// The authenticated client.
    pub client: Client,
    /// The form parameters.
    pub params: HashMap<String, String>,
    /// A public client's attempt, open until its grant is checked: the handler settles it
    /// (dropped, it counts as a failure).
    pub unproven: Option<Attempt>,
    endpoint: PhantomData<E>,
}

impl<E: Endpoint> FromRequest<HttpState> for ClientAuth<E> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &HttpState) -> Result<Self, Response> {
        let form = OAuthForm::from_request(request, state).await?;
        E::precheck(&form.params).map_err(IntoResponse::into_response)?;
        let Authenticated { client, unproven } =
            authenticate_client(state, form.addr, &form.headers, &form.params, E::PATH)
                .await
                .map_err(IntoResponse::into_response)?;
        Ok(Self {
            client,
            params: form.params,
            unproven,
            endpoint: PhantomData,
        })
    }
}
