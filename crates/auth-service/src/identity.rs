//! `mesh.identity.v1`: the CA's API. `Identity/Certify` signs a workload's certificate request
//! for the identity the CA decides; `IdentityAdmin` creates join tokens and rotates the CA.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use auth_interceptor::Principal;
use auth_interceptor::error::refused;
use mesh_proto::identity::v1::identity_admin_server::IdentityAdmin;
use mesh_proto::identity::v1::identity_server::Identity;
use mesh_proto::identity::v1::rotate_authority_request::Step;
use mesh_proto::identity::v1::{
    Authority, CertifyRequest, CertifyResponse, CreateJoinTokenRequest, CreateJoinTokenResponse,
    RotateAuthorityRequest, RotateAuthorityResponse,
};
use mesh_tls::SpiffeId;
use mesh_tls::certs::{CsrError, validate_workload_name};
use tonic::{Request, Response, Status};

use crate::audit::{Event, IssuerAudit};
use crate::authority::{AuthorityError, AuthorityStore};
use crate::join::JoinTokens;

const CERTIFY: &str = mesh_proto::identity::v1::rpc::identity::CERTIFY.path;

/// The longest a created join token may wait for its first use.
const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(86_400);

/// The CA's API, on both listeners.
#[derive(Debug, Clone)]
pub struct IdentityApi {
    /// Wrong join tokens are guesses, limited per address like wrong secrets.
    pub(crate) limiter: crate::ratelimit::FailureLimiter,
    /// The CA; `None` when this auth service holds none (certificates come from elsewhere).
    pub(crate) authority: Option<Arc<AuthorityStore>>,
    pub(crate) tokens: JoinTokens,
    pub(crate) audit: IssuerAudit,
    pub(crate) trust_domain: String,
    /// How long a rejoin token stays usable after the certificate it came with was issued.
    pub(crate) rejoin_ttl: Duration,
}

/// How the caller of `Certify` authenticated.
enum Caller {
    /// Over mTLS, with a certificate of this identity.
    Certificate(SpiffeId),
    /// With a join token, on the public listener.
    JoinToken,
}

impl IdentityApi {
    fn authority(&self) -> Result<&AuthorityStore, Status> {
        self.authority.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "this auth service holds no CA: the mesh's certificates come from elsewhere",
            )
        })
    }

    /// A refusal, audited: on the mesh listener the auth layer writes the record (it knows the
    /// peer); on the public listener, which has no such layer, the CA writes it here.
    fn refuse(
        &self,
        caller: &Caller,
        status: Status,
        reason: &'static str,
        subject: &str,
    ) -> Status {
        if let Caller::JoinToken = caller {
            self.audit.refusal(Event {
                decision: "deny",
                reason,
                method: CERTIFY,
                subject,
                ..Event::default()
            });
        }
        refused(status, reason)
    }

    /// Decides who the caller is: the certificate's identity, or the join token's.
    async fn decide(
        &self,
        caller: &Caller,
        request: &Request<CertifyRequest>,
    ) -> Result<SpiffeId, Status> {
        let body = request.get_ref();
        match caller {
            Caller::Certificate(id) => {
                if !body.join_token.is_empty() {
                    return Err(Status::invalid_argument(
                        "join_token: a workload with a certificate renews with it; a join token \
                         is for a first certificate",
                    ));
                }
                Ok(id.clone())
            }
            Caller::JoinToken => {
                // Reserved before the lookup and its audit record: a flood of made-up tokens
                // from one address buys its allowance of records, then 429s.
                let addr = request
                    .extensions()
                    .get::<mesh_tls::PeerIdentity>()
                    .and_then(|p| p.remote_addr)
                    .map_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| {
                        a.ip()
                    });
                let attempt = self
                    .limiter
                    .begin(&[crate::ratelimit::FailureLimiter::address(addr)])
                    .await
                    .map_err(|refused| {
                        Status::resource_exhausted(format!(
                            "join_token: too many failed attempts from this address; retry in {} s",
                            refused.retry_after().as_secs().max(1)
                        ))
                    })?;
                let decided = self.redeem_join_token(caller, body).await;
                match &decided {
                    Ok(_) => attempt.succeeded(),
                    Err(status) if status.code() == tonic::Code::Unavailable => attempt.succeeded(),
                    Err(_) => attempt.failed(),
                }
                decided
            }
        }
    }

    /// The identity a join token names, spending it.
    async fn redeem_join_token(
        &self,
        caller: &Caller,
        body: &CertifyRequest,
    ) -> Result<SpiffeId, Status> {
        {
            {
                if body.join_token.is_empty() {
                    return Err(self.refuse(
                        caller,
                        Status::unauthenticated(
                            "join_token: required without a client certificate",
                        ),
                        "join_token_missing",
                        "",
                    ));
                }
                match self.tokens.redeem(&body.join_token).await {
                    Ok(Ok(id)) => Ok(id),
                    Ok(Err(refusal)) => Err(self.refuse(
                        caller,
                        Status::unauthenticated(format!("join_token: {refusal}")),
                        refusal.reason(),
                        "",
                    )),
                    Err(error) => {
                        tracing::error!(%error, "join tokens unavailable");
                        Err(Status::unavailable("join tokens unavailable"))
                    }
                }
            }
        }
    }
}

fn unix(time: std::time::SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[tonic::async_trait]
impl Identity for IdentityApi {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let authority = self.authority()?;
        if request.get_ref().certificate_request.is_empty() {
            return Err(Status::invalid_argument("certificate_request: required"));
        }
        let caller = match request
            .extensions()
            .get::<Principal>()
            .and_then(|p| p.peer())
        {
            Some(peer) => Caller::Certificate(peer.clone()),
            None => Caller::JoinToken,
        };
        let id = self.decide(&caller, &request).await?;
        let presented_serial = request
            .extensions()
            .get::<mesh_tls::PeerIdentity>()
            .and_then(|peer| peer.certificate_serial.clone());
        let body = request.into_inner();
        let leaf = match authority.sign(&body.certificate_request, &id) {
            Ok(leaf) => leaf,
            Err(CsrError::OtherIdentity { asked, .. }) => {
                return Err(self.refuse(
                    &caller,
                    Status::permission_denied(format!(
                        "certificate_request: asks for {asked}, but the caller is {id}"
                    )),
                    "csr_other_identity",
                    id.as_str(),
                ));
            }
            Err(CsrError::AsksForCa) => {
                return Err(self.refuse(
                    &caller,
                    Status::permission_denied("certificate_request: asks for a CA certificate"),
                    "csr_asks_for_ca",
                    id.as_str(),
                ));
            }
            Err(CsrError::Malformed(detail)) => {
                return Err(Status::invalid_argument(format!(
                    "certificate_request: {detail}"
                )));
            }
            Err(CsrError::Sign(error)) => {
                tracing::error!(%error, "signing a certificate failed");
                return Err(Status::internal("the certificate could not be signed"));
            }
        };
        let (rejoin_token, rejoin_token_expires_at) = if body.rejoin {
            // The token handed out with the certificate presented is withdrawn by the server,
            // whatever the client names: one live rejoin token per replica.
            let presented = match caller {
                Caller::Certificate(_) => presented_serial.as_deref(),
                Caller::JoinToken => None,
            };
            let named = Some(body.replaces_rejoin_token.as_str()).filter(|t| !t.is_empty());
            let token = self
                .tokens
                .create_rejoin(&id, self.rejoin_ttl, &leaf.serial, presented, named)
                .await
                .map_err(|_| Status::unavailable("join tokens unavailable"))?;
            (token.token, token.expires_at)
        } else {
            (String::new(), 0)
        };
        self.audit
            .grant(Event {
                decision: "allow",
                reason: "certified",
                method: CERTIFY,
                subject: id.as_str(),
                client: &leaf.serial,
                ..Event::default()
            })
            .map_err(|_| Status::unavailable("audit log unavailable"))?;
        Ok(Response::new(CertifyResponse {
            certificate_chain_pem: leaf.cert_pem,
            trust_bundle_pem: authority.bundle_pem(),
            spiffe_id: id.to_string(),
            serial: leaf.serial,
            not_after: unix(leaf.not_after),
            rejoin_token,
            rejoin_token_expires_at,
        }))
    }
}

fn authority_status(error: AuthorityError) -> Status {
    match error {
        AuthorityError::Step(detail) => Status::failed_precondition(detail),
        other => {
            tracing::error!(error = %other, "CA rotation step failed");
            Status::unavailable("the CA could not be changed; nothing changed")
        }
    }
}

#[tonic::async_trait]
impl IdentityAdmin for IdentityApi {
    async fn create_join_token(
        &self,
        request: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        let admin = Principal::user(&request)?;
        self.authority()?;
        let body = request.get_ref();
        validate_workload_name(&body.workload)
            .map_err(|_| Status::invalid_argument("workload: 1-63 characters of [a-z0-9-]"))?;
        let ttl = match body.ttl_seconds {
            0 => Duration::from_secs(3600),
            s => Duration::from_secs(u64::from(s)),
        };
        if ttl > MAX_JOIN_TOKEN_TTL {
            return Err(Status::invalid_argument(
                "ttl_seconds: at most 86400 (one day)",
            ));
        }
        let id = SpiffeId::workload(&self.trust_domain, &body.workload)
            .map_err(|_| Status::invalid_argument("workload: not a valid SPIFFE path segment"))?;
        let token = self
            .tokens
            .create(&id, ttl)
            .await
            .map_err(|_| Status::unavailable("join tokens unavailable"))?;
        self.audit
            .grant(Event {
                decision: "allow",
                reason: "join_token_created",
                method: mesh_proto::identity::v1::rpc::identity_admin::CREATE_JOIN_TOKEN.path,
                subject: id.as_str(),
                client: admin.client_id(),
                actor: admin.subject(),
            })
            .map_err(|_| Status::unavailable("audit log unavailable"))?;
        Ok(Response::new(CreateJoinTokenResponse {
            token: token.token,
            spiffe_id: id.to_string(),
            expires_at: token.expires_at,
        }))
    }

    async fn rotate_authority(
        &self,
        request: Request<RotateAuthorityRequest>,
    ) -> Result<Response<RotateAuthorityResponse>, Status> {
        let admin = Principal::user(&request)?;
        let authority = self.authority()?;
        let (step, reason) = match request.get_ref().step() {
            Step::Add => (authority.add().await, "ca_added"),
            Step::Activate => (authority.activate().await, "ca_activated"),
            Step::Retire => (authority.retire().await, "ca_retired"),
            Step::Unspecified => {
                return Err(Status::invalid_argument("step: add, activate or retire"));
            }
        };
        step.map_err(authority_status)?;
        self.audit
            .grant(Event {
                decision: "allow",
                reason,
                method: mesh_proto::identity::v1::rpc::identity_admin::ROTATE_AUTHORITY.path,
                subject: admin.subject(),
                client: admin.client_id(),
                ..Event::default()
            })
            .map_err(|_| Status::unavailable("audit log unavailable"))?;
        Ok(Response::new(RotateAuthorityResponse {
            authorities: authority
                .authorities()
                .into_iter()
                .map(|a| Authority {
                    serial: a.serial,
                    state: a.state.to_owned(),
                    not_after: a.not_after,
                })
                .collect(),
            trust_bundle_pem: authority.bundle_pem(),
        }))
    }
}
