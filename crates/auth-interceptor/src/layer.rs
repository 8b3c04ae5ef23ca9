//! The tower layer that authenticates, authorizes and audits every request of a tonic server.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use mesh_tls::{PeerIdentity, SpiffeId, Thumbprint};
use tonic::body::Body;
use tower::{Layer, Service};

use crate::audit::AuditLog;
use crate::bearer::BearerToken;
use crate::error::AuthError;
use crate::policy::{Policy, PolicySlot};
use crate::principal::Principal;
use crate::verify::{TokenVerifier, VerifiedToken};
use mesh_telemetry::metrics::OTHER;

/// Puts [`AuthService`] in front of a tonic server's routes.
///
/// It must sit *inside* tonic's transport (use `Server::builder().layer(..)`), where the request
/// still carries the connection's [`PeerIdentity`] and the full method path.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    state: Arc<State>,
}

#[derive(Debug, Clone)]
struct State {
    verifier: Arc<TokenVerifier>,
    policy: PolicySlot,
    audit: Option<Arc<AuditLog>>,
    decisions: Option<opentelemetry::metrics::Counter<u64>>,
}

impl AuthLayer {
    /// A layer enforcing `policy`, verifying tokens with `verifier`.
    pub fn new(verifier: Arc<TokenVerifier>, policy: Policy) -> Self {
        Self {
            state: Arc::new(State {
                verifier,
                policy: PolicySlot::new(policy),
                audit: None,
                decisions: None,
            }),
        }
    }

    /// Also appends every decision to the HMAC-chained `log`. A decision whose record cannot be
    /// written is not carried out: the call fails with UNAVAILABLE (fail closed).
    pub fn with_audit(self, log: Option<Arc<AuditLog>>) -> Self {
        let mut state = State::clone(&self.state);
        state.audit = log;
        Self {
            state: Arc::new(state),
        }
    }

    /// Also counts every decision in `mesh.authz.decisions`, by method (`_OTHER` for a path
    /// the policy has no row for), decision and reason: labels from closed sets only.
    pub fn with_metrics(self, meter: &opentelemetry::metrics::Meter) -> Self {
        let mut state = State::clone(&self.state);
        state.decisions = Some(
            meter
                .u64_counter("mesh.authz.decisions")
                .with_description("Authorization decisions at the server edge, by reason")
                .build(),
        );
        Self {
            state: Arc::new(state),
        }
    }

    /// The policy enforced now.
    pub fn policy(&self) -> Arc<Policy> {
        self.state.policy.current()
    }

    /// The slot the policy is read from on every call: replacing what it holds (a reloaded
    /// policy file) takes effect for the next call.
    pub fn policy_slot(&self) -> PolicySlot {
        self.state.policy.clone()
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    state: Arc<State>,
}

impl<S, B, ResBody> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The clone is not ready; the ready one (self.inner) is taken for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move {
            let method = request.uri().path().to_owned();
            let connection = request.extensions().get::<PeerIdentity>();
            let peer = connection.and_then(|p| p.spiffe_id.clone());
            let certificate = connection.and_then(|p| p.certificate);
            let token = take_bearer(request.headers_mut());
            let presented = token.as_ref().ok().and_then(Option::clone);
            // One policy for the whole call: a reload in between changes nothing here.
            let policy = state.policy.current();
            let decision = state
                .decide(&policy, &method, token, peer.as_ref(), certificate)
                .await;
            if let Err(status) = state
                .record(&policy, &method, &decision, peer.as_ref())
                .await
            {
                return Ok(status.into_http());
            }
            match decision {
                Ok(Allowed {
                    token: verified,
                    would_deny,
                }) => {
                    match &would_deny {
                        None => audit_allow(&method, verified.as_deref(), peer.as_ref()),
                        Some(error) => {
                            audit_would_deny(&method, error, verified.as_deref(), peer.as_ref())
                        }
                    }
                    // The token travels on only inside the Principal, for delegation.
                    let presented = verified.as_ref().and(presented);
                    request.extensions_mut().insert(Principal::new(
                        verified.clone(),
                        peer.clone(),
                        presented,
                    ));
                    let mut response = inner.call(request).await?;
                    if let Some(reason) = handler_refusal(response.headers_mut()) {
                        // The policy allowed the call and the handler refused it: the chain
                        // must end with that refusal, not with the allow.
                        let error = AuthError::Handler(reason);
                        audit_deny(&method, &error, verified.as_deref(), peer.as_ref());
                        let refusal = Err((error, verified.clone()));
                        if let Err(status) = state
                            .record(&policy, &method, &refusal, peer.as_ref())
                            .await
                        {
                            return Ok(status.into_http());
                        }
                    }
                    Ok(response.map(Body::new))
                }
                Err((error, verified)) => {
                    audit_deny(&method, &error, verified.as_deref(), peer.as_ref());
                    Ok(tonic::Status::from(error).into_http())
                }
            }
        })
    }
}

/// A call the policy lets through: the verified token, if the rule needs one, and what a trial
/// rule beside the enforced one would have refused it for.
struct Allowed {
    token: Option<Arc<VerifiedToken>>,
    would_deny: Option<AuthError>,
}

type Decision = Result<Allowed, (AuthError, Option<Arc<VerifiedToken>>)>;

impl State {
    /// Appends the decision to the audit log, if there is one.
    async fn record(
        &self,
        policy: &Policy,
        method: &str,
        decision: &Decision,
        peer: Option<&SpiffeId>,
    ) -> Result<(), tonic::Status> {
        use opentelemetry::KeyValue;
        use opentelemetry::trace::TraceContextExt as _;
        let (verdict, reason, token) = match decision {
            Ok(Allowed {
                token,
                would_deny: None,
            }) => ("allow", "policy", token.as_deref()),
            Ok(Allowed {
                token,
                would_deny: Some(error),
            }) => ("would_deny", error.reason(), token.as_deref()),
            Err((error, token)) => ("deny", error.reason(), token.as_deref()),
        };
        // An allow's labels are constants; a refusal's reason is copied (refusals are rare).
        let reason_value = || match decision {
            Ok(Allowed {
                would_deny: None, ..
            }) => opentelemetry::Value::from("policy"),
            _ => opentelemetry::Value::from(reason.to_owned()),
        };
        // The decision is also an event on the server span, and the audit record carries the
        // trace id, so a trace and the audit log point at each other.
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let trace_id = crate::audit::current_trace_id();
        span.add_event(
            "audit",
            vec![
                KeyValue::new("decision", verdict),
                KeyValue::new("reason", reason_value()),
                KeyValue::new(
                    "subject",
                    token.map_or(String::new(), |t| t.subject.clone()),
                ),
                KeyValue::new("peer", peer.map_or(Arc::from(""), SpiffeId::shared)),
            ],
        );
        if let Some(decisions) = &self.decisions {
            // The generated constants' names: no label is made per call.
            let (service, name) = policy
                .rpc(method)
                .map_or((OTHER, OTHER), |rpc| (rpc.service, rpc.method));
            decisions.add(
                1,
                &[
                    KeyValue::new("rpc.service", service),
                    KeyValue::new("rpc.method", name),
                    KeyValue::new("decision", verdict),
                    KeyValue::new("reason", reason_value()),
                ],
            );
        }
        let Some(log) = &self.audit else {
            return Ok(());
        };
        log.append_async(&crate::audit::Decision {
            decision: verdict,
            reason,
            method,
            subject: token.map_or("", |t| t.subject.as_str()),
            actor: token.and_then(|t| t.actor.as_deref()).unwrap_or(""),
            client: token.map_or("", |t| t.client_id.as_str()),
            peer: peer.map_or("", SpiffeId::as_str),
            trace_id: &trace_id,
            policy: policy.version(),
        })
        .await
        .map_err(|error| {
            tracing::error!(%error, "audit record not written; refusing the call");
            tonic::Status::unavailable("audit log unavailable")
        })
    }

    async fn decide(
        &self,
        policy: &Policy,
        method: &str,
        token: Result<Option<BearerToken>, AuthError>,
        peer: Option<&SpiffeId>,
        certificate: Option<Thumbprint>,
    ) -> Decision {
        // Default deny, decided before any signature is checked.
        let rule = policy
            .rule(method)
            .ok_or((AuthError::MethodNotInPolicy, None))?;
        policy.admits(rule, peer).map_err(|e| (e, None))?;
        let token = if rule.needs_token() {
            let token = token
                .map_err(|e| (e, None))?
                .ok_or((AuthError::MissingToken, None))?;
            let verified = self
                .verifier
                .verify(token.expose_secret())
                .await
                .map_err(|e| (e, None))?;
            // A token bound to a certificate (RFC 8705) is good only from a connection that
            // presents that certificate: a copy replayed from another workload is refused.
            if verified
                .certificate
                .is_some_and(|bound| certificate != Some(bound))
            {
                return Err((AuthError::CertificateMismatch, Some(verified)));
            }
            Some(verified)
        } else {
            None
        };
        if let Err(error) = rule.authorize(token.as_deref(), peer) {
            return Err((error, token));
        }
        // The enforced rule allowed it; a trial of a tighter rule only records what it would do.
        let would_deny = policy
            .trial(method)
            .and_then(|trial| trial.authorize(token.as_deref(), peer).err());
        Ok(Allowed { token, would_deny })
    }
}

/// The refusal a handler marked with [`crate::error::refused`] (the marker is removed here, so
/// it never reaches the caller), or a generic one for a PERMISSION_DENIED or UNAUTHENTICATED
/// answer that carries no marker.
fn handler_refusal(headers: &mut HeaderMap) -> Option<String> {
    if let Some(reason) = headers.remove(crate::error::DENY_REASON_KEY) {
        return Some(reason.to_str().unwrap_or("handler_refused").to_owned());
    }
    let code = mesh_telemetry::trace::status_in_headers(headers);
    matches!(
        code,
        Some(tonic::Code::PermissionDenied | tonic::Code::Unauthenticated)
    )
    .then(|| "handler_refused".to_owned())
}

/// Removes every `authorization` entry from the request and returns the bearer token, if the
/// request carried exactly one well-formed `Bearer` entry. Removing it means no handler, log line
/// or downstream call can see the raw token.
fn take_bearer(headers: &mut HeaderMap) -> Result<Option<BearerToken>, AuthError> {
    let mut values = match headers.entry(http::header::AUTHORIZATION) {
        http::header::Entry::Occupied(entry) => entry.remove_entry_mult().1,
        http::header::Entry::Vacant(_) => return Ok(None),
    };
    let first = values.next().ok_or(AuthError::MalformedHeader("empty"))?;
    if values.next().is_some() {
        return Err(AuthError::MalformedHeader(
            "more than one authorization entry",
        ));
    }
    let text = first
        .to_str()
        .map_err(|_| AuthError::MalformedHeader("not visible ASCII"))?;
    let (scheme, token) = text
        .split_once(' ')
        .ok_or(AuthError::MalformedHeader("expected `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MalformedHeader("scheme is not Bearer"));
    }
    BearerToken::new(token.trim())
        .map(Some)
        .map_err(|_| AuthError::MalformedHeader("expected `Bearer <token>`"))
}

/// A call the enforced rule allowed and a trial rule would have refused: a `warn` like a
/// refusal, so the log shows what enforcing the trial would break.
fn audit_would_deny(
    method: &str,
    error: &AuthError,
    token: Option<&VerifiedToken>,
    peer: Option<&SpiffeId>,
) {
    tracing::warn!(
        target: "audit",
        decision = "would_deny",
        reason = error.reason(),
        method,
        subject = token.map_or("", |t| t.subject.as_str()),
        client = token.map_or("", |t| t.client_id.as_str()),
        peer = peer.map_or("", SpiffeId::as_str),
    );
}

/// An allowed call is a `debug` event: the audit chain, the span event and the decision counter
/// already record each one, and a log line per call at `info` (the services' default filter)
/// cost ~4 µs of CPU per call, more than an audit append (docs/benchmarks.md). Refusals stay at
/// `warn`.
fn audit_allow(method: &str, token: Option<&VerifiedToken>, peer: Option<&SpiffeId>) {
    tracing::debug!(
        target: "audit",
        decision = "allow",
        reason = "policy",
        method,
        subject = token.map_or("", |t| t.subject.as_str()),
        client = token.map_or("", |t| t.client_id.as_str()),
        actor = token.and_then(|t| t.actor.as_deref()).unwrap_or(""),
        peer = peer.map_or("", SpiffeId::as_str),
        token_id = token.map_or("", |t| t.token_id.as_str()),
    );
}

fn audit_deny(
    method: &str,
    error: &AuthError,
    token: Option<&VerifiedToken>,
    peer: Option<&SpiffeId>,
) {
    tracing::warn!(
        target: "audit",
        decision = "deny",
        reason = error.reason(),
        detail = %error,
        method,
        subject = token.map_or("", |t| t.subject.as_str()),
        client = token.map_or("", |t| t.client_id.as_str()),
        actor = token.and_then(|t| t.actor.as_deref()).unwrap_or(""),
        peer = peer.map_or("", SpiffeId::as_str),
        token_id = token.map_or("", |t| t.token_id.as_str()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

    #[test]
    fn take_bearer_accepts_exactly_one_well_formed_bearer_and_removes_it() {
        let mut one = headers(&["Bearer abc.def.ghi"]);
        let token = take_bearer(&mut one).expect("ok").expect("present");
        assert_eq!(token.expose_secret(), "abc.def.ghi");
        assert!(one.is_empty(), "the raw token must not stay in the request");
        let mut lower = headers(&["bearer abc"]);
        assert!(
            take_bearer(&mut lower)
                .expect("scheme is case-insensitive")
                .is_some()
        );
        assert_eq!(take_bearer(&mut HeaderMap::new()), Ok(None));
    }

    #[test]
    fn take_bearer_refuses_everything_else_and_still_removes_it() {
        for bad in [
            &["Bearer a", "Bearer b"][..],
            &["Basic dXNlcjpwYXNz"],
            &["Bearer"],
            &["Bearer "],
            &["Bearer a b"],
            &["Token abc"],
        ] {
            let mut map = headers(bad);
            assert!(
                matches!(take_bearer(&mut map), Err(AuthError::MalformedHeader(_))),
                "{bad:?}"
            );
            assert!(map.is_empty(), "{bad:?} left in the request");
        }
    }

    #[test]
    fn a_handler_marker_is_recorded_and_stripped_and_bare_refusals_count_too() {
        let mut marked = HeaderMap::new();
        marked.insert(
            crate::error::DENY_REASON_KEY,
            http::HeaderValue::from_static("not_owner"),
        );
        marked.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(handler_refusal(&mut marked).as_deref(), Some("not_owner"));
        assert!(marked.get(crate::error::DENY_REASON_KEY).is_none());

        let mut denied = HeaderMap::new();
        denied.insert("grpc-status", http::HeaderValue::from_static("7"));
        assert_eq!(
            handler_refusal(&mut denied).as_deref(),
            Some("handler_refused")
        );

        let mut not_found = HeaderMap::new();
        not_found.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(handler_refusal(&mut not_found), None);
    }
}
