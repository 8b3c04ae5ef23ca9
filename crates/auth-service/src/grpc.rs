//! The mesh side: `mesh.auth.v1.AuthService`, where workloads authenticate by certificate.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use auth_interceptor::Principal;
use auth_interceptor::error::refused;
use mesh_proto::auth::v1::auth_service_server::AuthService;
use mesh_proto::auth::v1::{
    ExchangeTokenRequest, ExchangeTokenResponse, IssueServiceTokenRequest,
    IssueServiceTokenResponse, Revocation, RotateSigningKeyRequest, RotateSigningKeyResponse,
    WatchRevocationsRequest,
};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::KeyRotator;
use crate::audit::{Event, IssuerAudit};
use crate::clients::{Client, GrantError, Registry};
use crate::exchange::{Refusal, TokenExchange};
use crate::issuer::{Issuer, TokenRequest};
use crate::revocations;
use mesh_proto::auth::v1::rpc::auth_service;

/// The gRPC API of the auth service.
#[derive(Debug)]
pub struct MeshApi {
    pub(crate) issuer: Arc<Issuer>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) ttl: Duration,
    /// `ExchangeToken`'s rules, shared with the token endpoint's token-exchange grant.
    pub(crate) exchange: Arc<TokenExchange>,
    /// Where issued tokens are recorded (the layer records the call, this the grant).
    pub(crate) audit: IssuerAudit,
    /// Rotates the signing key on an administrator's request.
    pub(crate) rotator: KeyRotator,
    /// The revocation log as last read: what every revocation stream serves.
    pub(crate) hub: Arc<revocations::RevocationHub>,
    /// Changes when the service stops: every revocation stream ends, so the drain can finish.
    pub(crate) stopping: tokio::sync::watch::Receiver<()>,
}

impl MeshApi {
    /// The registered client bound to the caller's certificate.
    fn calling_client<T>(&self, request: &Request<T>) -> Result<&Client, Status> {
        let peer = Principal::workload(request)?;
        self.registry.by_spiffe(&peer).ok_or_else(|| {
            refused(
                Status::permission_denied("no client is registered for this workload identity"),
                "unregistered_workload",
            )
        })
    }
}

/// The certificate the calling workload presented on this connection, which the token it asks
/// for is bound to (RFC 8705). The mesh listener always has one; a request without it cannot be
/// given a bound token.
fn presented_certificate<T>(request: &Request<T>) -> Result<mesh_tls::Thumbprint, Status> {
    request
        .extensions()
        .get::<mesh_tls::PeerIdentity>()
        .and_then(|peer| peer.certificate)
        .ok_or_else(|| Status::unauthenticated("no client certificate on this connection"))
}

fn grant_status(error: GrantError) -> Status {
    match error {
        GrantError::Audience => refused(
            Status::permission_denied("the caller may not reach this audience"),
            "audience_not_allowed",
        ),
        GrantError::Scope => refused(
            Status::permission_denied(
                "a requested scope is not allowed for the caller and audience",
            ),
            "scope_not_allowed",
        ),
    }
}

/// The status of a refused exchange, labelled with its reason for the audit record.
fn exchange_status(refusal: Refusal) -> Status {
    let status = match &refusal {
        Refusal::NotForCaller => {
            Status::permission_denied("subject token is not addressed to the caller")
        }
        Refusal::Revoked => Status::unauthenticated("subject token: revoked"),
        Refusal::Invalid(why) => Status::unauthenticated(format!("subject token: {why}")),
        Refusal::AlreadyExchanged => {
            Status::permission_denied("an exchanged token cannot be exchanged again")
        }
        Refusal::Grant(error) => return grant_status(*error),
        Refusal::NotDelegated => Status::permission_denied(
            "scopes: the user's token does not let the caller act with these scopes",
        ),
        Refusal::Expired => Status::unauthenticated("subject token: expired"),
        Refusal::Unavailable => return Status::unavailable("revocation state unavailable"),
        Refusal::Signing => return Status::internal("could not sign the token"),
        Refusal::AuditUnavailable => return Status::unavailable("audit log unavailable"),
    };
    refused(status, refusal.reason())
}

fn expires_in(seconds: u64) -> u32 {
    u32::try_from(seconds).unwrap_or(u32::MAX)
}

/// The stream `WatchRevocations` answers with.
type RevocationStream = Pin<Box<dyn Stream<Item = Result<Revocation, Status>> + Send>>;

#[tonic::async_trait]
impl AuthService for MeshApi {
    type WatchRevocationsStream = RevocationStream;

    async fn watch_revocations(
        &self,
        request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<RevocationStream>, Status> {
        let caller = Principal::workload(&request)?;
        let slot = self.hub.open_stream(caller.as_str()).ok_or_else(|| {
            Status::resource_exhausted(format!(
                "{caller} holds {} revocation streams already; close one first",
                revocations::MAX_STREAMS_PER_IDENTITY
            ))
        })?;
        let start = self
            .hub
            .starting_point(request.get_ref().after_sequence)
            .await
            .ok_or_else(|| Status::unavailable("revocation log unavailable"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut stopping = self.stopping.clone();
        stopping.borrow_and_update();
        let hub = self.hub.clone();
        tokio::spawn(async move {
            let _slot = slot;
            revocations::serve_stream(hub, start, tx, stopping).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<RotateSigningKeyRequest>,
    ) -> Result<Response<RotateSigningKeyResponse>, Status> {
        let admin = Principal::user(&request)?;
        let rotation = self.rotator.rotate().await.map_err(|error| {
            tracing::error!(%error, "forced signing-key rotation failed");
            Status::unavailable("the signing keys could not be rotated; nothing changed")
        })?;
        self.audit
            .grant(Event {
                decision: "allow",
                reason: "signing_key_rotated",
                method: auth_service::ROTATE_SIGNING_KEY.path,
                subject: admin.subject(),
                client: admin.client_id(),
                ..Event::default()
            })
            .map_err(|_| Status::unavailable("audit log unavailable"))?;
        Ok(Response::new(RotateSigningKeyResponse {
            signing_kid: rotation.signing_kid,
            next_kid: rotation.next_kid,
            retired_kids: rotation.retired_kids,
        }))
    }

    async fn issue_service_token(
        &self,
        request: Request<IssueServiceTokenRequest>,
    ) -> Result<Response<IssueServiceTokenResponse>, Status> {
        let client = self.calling_client(&request)?;
        let certificate = presented_certificate(&request)?;
        let body = request.get_ref();
        if body.audience.is_empty() {
            return Err(Status::invalid_argument("audience: required"));
        }
        let scopes = client
            .grant(&body.audience, &body.scopes)
            .map_err(grant_status)?;
        let issued = self
            .issuer
            .issue(TokenRequest {
                subject: &client.client_id,
                client_id: &client.client_id,
                audience: &body.audience,
                scopes,
                actor: None,
                lifetime: self.ttl,
                session: None,
                certificate: Some(certificate),
            })
            .map_err(|_| Status::internal("could not sign the token"))?;
        self.audit
            .grant(Event {
                decision: "allow",
                reason: "service_token",
                method: auth_service::ISSUE_SERVICE_TOKEN.path,
                subject: &client.client_id,
                client: &client.client_id,
                ..Event::default()
            })
            .map_err(|_| Status::unavailable("audit log unavailable"))?;
        Ok(Response::new(IssueServiceTokenResponse {
            access_token: issued.access_token,
            token_type: "Bearer".into(),
            expires_in: expires_in(issued.expires_in),
            scopes: issued.scopes,
        }))
    }

    async fn exchange_token(
        &self,
        request: Request<ExchangeTokenRequest>,
    ) -> Result<Response<ExchangeTokenResponse>, Status> {
        let client = self.calling_client(&request)?;
        let certificate = presented_certificate(&request)?;
        let body = request.get_ref();
        if body.subject_token.is_empty() {
            return Err(Status::invalid_argument("subject_token: required"));
        }
        if body.audience.is_empty() {
            return Err(Status::invalid_argument("audience: required"));
        }
        let exchanged = self
            .exchange
            .exchange(
                client,
                &body.subject_token,
                &body.audience,
                &body.scopes,
                auth_service::EXCHANGE_TOKEN.path,
                Some(certificate),
            )
            .await
            .map_err(exchange_status)?;
        let issued = exchanged.issued;
        Ok(Response::new(ExchangeTokenResponse {
            access_token: issued.access_token,
            token_type: "Bearer".into(),
            expires_in: expires_in(issued.expires_in),
            scopes: issued.scopes,
        }))
    }
}
