//! The issuer's own decisions (logins, issued tokens, refused grants and clients, revocations),
//! appended to the same HMAC-chained log as the mesh layer's decisions.
//!
//! "Audit" means one thing in this repository: a record in the chain. Each record here is also
//! a `tracing` event on target `audit`, exactly as the layer's are.

use std::sync::Arc;

use auth_interceptor::audit::{AuditError, AuditLog, Decision, current_trace_id};

/// One decision of the issuer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Event<'a> {
    /// `allow`, `deny` or `revoke`.
    pub decision: &'a str,
    /// The reason label (`client_credentials`, `login`, `bad_credentials`, `code_reused`, …).
    pub reason: &'a str,
    /// The endpoint path or gRPC method.
    pub method: &'a str,
    /// The user or client the decision is about.
    pub subject: &'a str,
    /// The OAuth2 client that asked.
    pub client: &'a str,
    /// The acting client of a token exchange.
    pub actor: &'a str,
}

/// Where the issuer's decisions go: the service's audit chain, when one is configured.
#[derive(Debug, Clone, Default)]
pub struct IssuerAudit {
    log: Option<Arc<AuditLog>>,
}

impl IssuerAudit {
    /// Records into `log` (none: events only).
    pub fn new(log: Option<Arc<AuditLog>>) -> Self {
        Self { log }
    }

    /// Records a decision that grants something. An error means the record was not written,
    /// and the grant must not be handed out (fail closed, like the mesh layer).
    pub fn grant(&self, event: Event<'_>) -> Result<(), AuditError> {
        tracing::info!(target: "audit", decision = event.decision, reason = event.reason, method = event.method, subject = event.subject, client = event.client, actor = event.actor);
        self.append(&event)
    }

    /// Records a refusal or a revocation: it stands whether or not the record is written, so a
    /// write failure is logged, not returned.
    pub fn refusal(&self, event: Event<'_>) {
        tracing::warn!(target: "audit", decision = event.decision, reason = event.reason, method = event.method, subject = event.subject, client = event.client, actor = event.actor);
        if let Err(error) = self.append(&event) {
            tracing::error!(%error, "audit record of a refusal not written");
        }
    }

    fn append(&self, event: &Event<'_>) -> Result<(), AuditError> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        log.append(&Decision {
            decision: event.decision,
            reason: event.reason,
            method: event.method,
            subject: event.subject,
            actor: event.actor,
            client: event.client,
            peer: "",
            trace_id: &current_trace_id(),
        })
    }
}
