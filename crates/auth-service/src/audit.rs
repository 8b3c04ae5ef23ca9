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

/// The longest name recorded as it was given. Names in refusals come from strangers (a failed
/// login's username may be 16 KiB): past this they are cut, and the cut is marked.
pub const MAX_RECORDED_NAME: usize = 128;

/// `name`, cut to [`MAX_RECORDED_NAME`] bytes at a character boundary, with `…` when cut.
fn bounded(name: &str) -> std::borrow::Cow<'_, str> {
    if name.len() <= MAX_RECORDED_NAME {
        return name.into();
    }
    let mut end = MAX_RECORDED_NAME;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end]).into()
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
        let (subject, client) = (bounded(event.subject), bounded(event.client));
        let event = Event {
            subject: &subject,
            client: &client,
            ..event
        };
        tracing::info!(target: "audit", decision = event.decision, reason = event.reason, method = event.method, subject = event.subject, client = event.client, actor = event.actor);
        self.append(&event)
    }

    /// Records a refusal or a revocation: it stands whether or not the record is written, so a
    /// write failure is logged, not returned.
    pub fn refusal(&self, event: Event<'_>) {
        let (subject, client) = (bounded(event.subject), bounded(event.client));
        let event = Event {
            subject: &subject,
            client: &client,
            ..event
        };
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
            // The issuer's own decisions (grants, logins) are not the mesh policy's.
            policy: "",
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_names_are_cut_at_a_character_boundary_and_marked() {
        assert_eq!(super::bounded("alice"), "alice");
        let long = "é".repeat(10_000);
        let cut = super::bounded(&long);
        assert!(
            cut.len() <= super::MAX_RECORDED_NAME + '…'.len_utf8(),
            "{}",
            cut.len()
        );
        assert!(cut.ends_with('…'));
    }
}
