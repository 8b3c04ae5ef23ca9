//! Per-method authorization: one table per service, a row per method (a typed [`Rpc`], so a
//! method that does not exist cannot be named), looked up by the request's path, default deny.

use std::collections::HashMap;

use mesh_proto::rpc::{self, Rpc};
use mesh_tls::SpiffeId;

use crate::error::AuthError;
use crate::verify::VerifiedToken;

/// What a method requires of its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Authentication {
    /// Nothing beyond the mesh's mTLS handshake (health checks).
    Public,
    /// A verified client certificate, no token: the caller's workload identity is the
    /// credential (e.g. `AuthService.IssueServiceToken`).
    Certificate,
    /// A valid bearer token addressed to this service, on top of the certificate.
    Token,
}

/// The rule for one method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    authentication: Authentication,
    scopes: Vec<String>,
    callers: Option<Vec<CallerMatch>>,
    actors: Option<Vec<String>>,
    /// Dry-run: a call the rule's checks would refuse is allowed and recorded `would_deny`.
    audit_only: bool,
    /// A token-bucket limit per identity, shared by every call the rule admits.
    rate_limit: Option<std::sync::Arc<crate::ratelimit::RateLimit>>,
}

impl Rule {
    /// Anyone who completed the mTLS handshake. Use for health checks only.
    pub fn public() -> Self {
        Self::with(Authentication::Public)
    }

    /// A caller identified by its certificate alone.
    pub fn certificate() -> Self {
        Self::with(Authentication::Certificate)
    }

    /// A caller with a valid token for this service.
    pub fn token() -> Self {
        Self::with(Authentication::Token)
    }

    fn with(authentication: Authentication) -> Self {
        Self {
            authentication,
            scopes: Vec::new(),
            callers: None,
            actors: None,
            audit_only: false,
            rate_limit: None,
        }
    }

    /// Limits each identity (`key`) to `rate` calls a second, `burst` at once (see
    /// [`crate::ratelimit`]).
    pub fn rate_limit(mut self, key: crate::ratelimit::LimitKey, rate: u32, burst: u32) -> Self {
        self.rate_limit = Some(std::sync::Arc::new(crate::ratelimit::RateLimit::new(
            key, rate, burst,
        )));
        self
    }

    /// Marks the rule as a trial (`mode = "audit"`): see [`Policy::try_rule`].
    pub fn audit_only(mut self) -> Self {
        self.audit_only = true;
        self
    }

    /// Whether the rule is a trial.
    pub fn is_audit_only(&self) -> bool {
        self.audit_only
    }

    /// What the rule asks, for people (`meshctl policy explain` and `diff`).
    pub fn summary(&self) -> RuleSummary {
        RuleSummary {
            auth: match self.authentication {
                Authentication::Public => "public",
                Authentication::Certificate => "certificate",
                Authentication::Token => "token",
            },
            scopes: self.scopes.clone(),
            callers: self
                .callers
                .as_ref()
                .map(|c| c.iter().map(CallerMatch::to_string).collect()),
            actors: self.actors.clone(),
            audit_only: self.audit_only,
            rate_limit: self.rate_limit.as_ref().map(|l| l.describe()),
        }
    }

    /// Requires `scope` on the token.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Allows only callers whose certificate carries one of these SPIFFE IDs.
    pub fn callers(mut self, callers: impl IntoIterator<Item = SpiffeId>) -> Self {
        self.callers
            .get_or_insert_with(Vec::new)
            .extend(callers.into_iter().map(CallerMatch::Exact));
        self
    }

    /// Also allows callers whose SPIFFE ID starts with `prefix` (a pattern such as
    /// `spiffe://mesh.local/sa/batch-`, written `sa/batch-*` in a policy file).
    pub fn caller_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.callers
            .get_or_insert_with(Vec::new)
            .push(CallerMatch::Prefix(prefix.into()));
        self
    }

    /// Allows only exchanged tokens whose `act.sub` is one of these clients.
    pub fn actors(mut self, actors: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.actors = Some(actors.into_iter().map(Into::into).collect());
        self
    }

    /// Whether anyone who completed the handshake may call (health checks), whatever their
    /// trust domain.
    pub fn is_public(&self) -> bool {
        self.authentication == Authentication::Public
    }

    /// Whether the method needs a bearer token.
    pub fn needs_token(&self) -> bool {
        self.authentication == Authentication::Token
    }

    /// Checks an authenticated caller against the rule.
    pub fn authorize(
        &self,
        token: Option<&VerifiedToken>,
        peer: Option<&SpiffeId>,
    ) -> Result<(), AuthError> {
        if self.authentication == Authentication::Public {
            return Ok(());
        }
        if let Some(callers) = &self.callers {
            match peer {
                Some(peer) if callers.iter().any(|c| c.matches(peer)) => {}
                _ => return Err(AuthError::CallerNotAllowed),
            }
        } else if peer.is_none() {
            return Err(AuthError::CallerNotAllowed);
        }
        if self.authentication == Authentication::Token {
            let token = token.ok_or(AuthError::MissingToken)?;
            if let Some(missing) = self
                .scopes
                .iter()
                .find(|scope| !token.scopes.contains(scope))
            {
                return Err(AuthError::MissingScope(missing.clone()));
            }
            if let Some(actors) = &self.actors {
                match &token.actor {
                    Some(actor) if actors.contains(actor) => {}
                    _ => return Err(AuthError::Forbidden("actor not allowed")),
                }
            }
        }
        // Counted last: only a call the rule admits spends a token.
        if let Some(limit) = &self.rate_limit {
            limit.take(token, peer).map_err(AuthError::RateLimited)?;
        }
        Ok(())
    }
}

/// One entry of a rule's callers: a workload, or every workload whose SPIFFE ID starts so.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CallerMatch {
    Exact(SpiffeId),
    Prefix(String),
}

impl CallerMatch {
    fn matches(&self, peer: &SpiffeId) -> bool {
        match self {
            Self::Exact(id) => id == peer,
            Self::Prefix(prefix) => peer.as_str().starts_with(prefix.as_str()),
        }
    }
}

impl std::fmt::Display for CallerMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(id) => f.write_str(id.as_str()),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// A rule as people read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSummary {
    /// `public`, `certificate` or `token`.
    pub auth: &'static str,
    /// Scopes the token must carry.
    pub scopes: Vec<String>,
    /// The workloads allowed, `None` for any of the trust domain.
    pub callers: Option<Vec<String>>,
    /// The clients an exchanged token may act through, `None` for any (or none needed).
    pub actors: Option<Vec<String>>,
    /// Dry-run.
    pub audit_only: bool,
    /// The rate limit, described.
    pub rate_limit: Option<String>,
}

impl std::fmt::Display for RuleSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "auth = {}", self.auth)?;
        if !self.scopes.is_empty() {
            write!(f, "; scopes: {}", self.scopes.join(", "))?;
        }
        match &self.callers {
            Some(callers) => write!(f, "; callers: {}", callers.join(", "))?,
            None if self.auth != "public" => {
                write!(f, "; callers: any workload of the trust domain")?
            }
            None => {}
        }
        if let Some(actors) = &self.actors {
            write!(f, "; acting through: {}", actors.join(", "))?;
        }
        if let Some(limit) = &self.rate_limit {
            write!(f, "; rate limit: {limit}")?;
        }
        if self.audit_only {
            write!(
                f,
                "; mode = audit (a trial: records would_deny, refuses nothing)"
            )?;
        }
        Ok(())
    }
}

/// The policy a server enforces now, replaceable while it runs (a reloaded policy file). Each
/// call takes one snapshot and decides and records with it alone, so a call sees the old policy
/// or the new one, never a mix of their rows.
#[derive(Debug, Clone)]
pub struct PolicySlot(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Policy>>>);

impl PolicySlot {
    /// A slot holding `policy`.
    pub fn new(policy: Policy) -> Self {
        Self(std::sync::Arc::new(std::sync::RwLock::new(
            std::sync::Arc::new(policy),
        )))
    }

    /// The policy in force.
    pub fn current(&self) -> std::sync::Arc<Policy> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `policy` in force at once; returns the one it replaces.
    pub fn replace(&self, policy: Policy) -> std::sync::Arc<Policy> {
        let mut slot = self.0.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *slot, std::sync::Arc::new(policy))
    }
}

/// A service's authorization table. A method that has no row is denied.
///
/// The table belongs to one SPIFFE trust domain: a certificate from any other domain is refused
/// on every row but the public ones, even when it chains to a CA in the trust bundle (a bundle
/// may carry a federated domain's CA; its workloads are not ours).
#[derive(Debug, Clone)]
pub struct Policy {
    trust_domain: String,
    rules: HashMap<&'static str, (Rpc, Rule)>,
    /// Trial rules (dry-run), beside the enforced rule of the same method.
    trials: HashMap<&'static str, Rule>,
    version: String,
}

impl Policy {
    /// An empty table for the workloads of `trust_domain` (e.g. `mesh.local`): everything denied.
    pub fn new(trust_domain: impl Into<String>) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            rules: HashMap::new(),
            trials: HashMap::new(),
            version: "built-in".to_owned(),
        }
    }

    /// Names this version of the policy (a policy file's: the start of its SHA-256), for the
    /// audit records and the `mesh.policy.active` metric.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// This version's name.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The trust domain whose workloads the table admits.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Refuses a caller from outside the trust domain on every non-public row. Checked before
    /// any token is looked at: a foreign workload buys no signature checks.
    pub fn admits(&self, rule: &Rule, peer: Option<&SpiffeId>) -> Result<(), AuthError> {
        match peer {
            _ if rule.is_public() => Ok(()),
            Some(peer) if peer.trust_domain() == self.trust_domain => Ok(()),
            Some(_) => Err(AuthError::ForeignTrustDomain),
            None => Err(AuthError::CallerNotAllowed),
        }
    }

    /// Adds the row for `method` (a generated constant, e.g.
    /// `mesh_proto::inventory::v1::rpc::inventory_service::LIST_ITEMS`).
    ///
    /// # Panics
    /// When `method` has a row already: a method has exactly one, and a second would silently
    /// replace the first. Every service builds its policy at start, so every test sees this.
    pub fn allow(mut self, method: Rpc, rule: Rule) -> Self {
        let replaced = self.rules.insert(method.path, (method, rule));
        assert!(
            replaced.is_none(),
            "{}: a second policy row for one method",
            method.path
        );
        self
    }

    /// Adds a trial of a tighter rule for `method`, beside its enforced row: the enforced rule
    /// still decides every call; a call it allows and `rule` would refuse is recorded
    /// `would_deny <reason>`, so an operator sees what the tightening would break before
    /// enforcing it. A trial never lets through anything the enforced rule refuses.
    ///
    /// # Panics
    /// When `method` has a trial already.
    pub fn try_rule(mut self, method: Rpc, rule: Rule) -> Self {
        let replaced = self.trials.insert(method.path, rule.audit_only());
        assert!(
            replaced.is_none(),
            "{}: a second trial rule for one method",
            method.path
        );
        self
    }

    /// The trial rule for the request path `method`, if one is being tried.
    pub fn trial(&self, method: &str) -> Option<&Rule> {
        self.trials.get(method)
    }

    /// This policy with the rows of `trial` (a whole trial file, see
    /// [`crate::policy_file::parse_trial_policy`]) as the trials of the same methods, and a
    /// version naming both (`<enforced>+<trial>`). Refused when this policy has trial rows of
    /// its own (one method would have two trials) or when the two do not cover the same methods.
    pub fn with_trial(mut self, trial: &Policy) -> Result<Self, String> {
        if let Some(method) = self.trials.keys().min() {
            return Err(format!(
                "the enforced policy already tries a rule for {method}: with a trial file, \
                 trials live in the trial file alone"
            ));
        }
        if self.methods() != trial.methods() || self.trust_domain != trial.trust_domain {
            return Err("the trial file is for another server than the enforced policy".into());
        }
        for (path, (_, rule)) in &trial.rules {
            self.trials.insert(path, rule.clone().audit_only());
        }
        self.version = format!("{}+{}", self.version, trial.version);
        Ok(self)
    }

    /// Adds the gRPC health-checking methods as public rows.
    pub fn with_health(self) -> Self {
        rpc::health::ALL
            .iter()
            .fold(self, |policy, method| policy.allow(*method, Rule::public()))
    }

    /// Adds gRPC reflection as a row for mesh workloads only (certificate required, no token):
    /// the schema is no secret inside the mesh, but it is nobody else's business.
    pub fn with_reflection(self) -> Self {
        self.allow(rpc::reflection::SERVER_REFLECTION_INFO, Rule::certificate())
    }

    /// The row for the request path `method`.
    pub fn rule(&self, method: &str) -> Option<&Rule> {
        self.rules.get(method).map(|(_, rule)| rule)
    }

    /// The method the request path `method` names, when the policy has a row for it.
    pub fn rpc(&self, method: &str) -> Option<&Rpc> {
        self.rules.get(method).map(|(rpc, _)| rpc)
    }

    /// Every method with a row, sorted by path (for docs and tests).
    pub fn methods(&self) -> Vec<Rpc> {
        let mut methods: Vec<Rpc> = self.rules.values().map(|(rpc, _)| *rpc).collect();
        methods.sort_unstable_by_key(|rpc| rpc.path);
        methods
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(scopes: &[&str], actor: Option<&str>) -> VerifiedToken {
        VerifiedToken {
            subject: "alice".into(),
            client_id: "meshctl-cli".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            token_id: "jti".into(),
            actor: actor.map(str::to_owned),
            expires_at: 0,
            session: None,
            certificate: None,
        }
    }

    fn id(domain: &str, name: &str) -> SpiffeId {
        SpiffeId::workload(domain, name).expect("id")
    }

    /// A method of a made-up service `s.S`.
    const fn method(path: &'static str, name: &'static str) -> Rpc {
        Rpc {
            path,
            service: "s.S",
            method: name,
            idempotency: rpc::Idempotency::Unknown,
            client_streaming: false,
            server_streaming: false,
        }
    }
    const READ: Rpc = method("/s.S/Read", "Read");
    const RESERVE: Rpc = method("/s.S/Reserve", "Reserve");

    fn policy() -> Policy {
        Policy::new("mesh.local")
            .with_health()
            .allow(READ, Rule::token().scope("s:read"))
            .allow(
                RESERVE,
                Rule::token()
                    .scope("s:reserve")
                    .callers([id("mesh.local", "orders")])
                    .actors(["orders"]),
            )
    }

    #[test]
    #[should_panic(expected = "a second policy row for one method")]
    fn a_second_row_for_one_method_is_a_mistake_caught_at_start() {
        let _ = policy().allow(READ, Rule::public());
    }

    #[test]
    fn lookup_is_by_full_path_and_unknown_methods_have_no_row() {
        let policy = policy();
        assert!(policy.rule("/s.S/Read").is_some());
        for unknown in ["/s.S/read", "s.S/Read", "/s.S/Read/", "/other.S/Read", ""] {
            assert!(policy.rule(unknown).is_none(), "{unknown:?}");
        }
        assert_eq!(
            policy
                .methods()
                .iter()
                .map(|rpc| rpc.path)
                .collect::<Vec<_>>(),
            [
                "/grpc.health.v1.Health/Check",
                "/grpc.health.v1.Health/Watch",
                "/s.S/Read",
                "/s.S/Reserve"
            ]
        );
    }

    #[test]
    fn foreign_trust_domains_get_only_the_public_rows() {
        let policy = policy();
        let health = policy.rule(rpc::health::CHECK.path).expect("health");
        let read = policy.rule("/s.S/Read").expect("read");
        let foreign = id("evil.example", "orders");
        assert_eq!(policy.admits(health, Some(&foreign)), Ok(()));
        assert_eq!(policy.admits(health, None), Ok(()));
        assert_eq!(
            policy.admits(read, Some(&foreign)),
            Err(AuthError::ForeignTrustDomain)
        );
        assert_eq!(policy.admits(read, None), Err(AuthError::CallerNotAllowed));
        assert_eq!(
            policy.admits(read, Some(&id("mesh.local", "meshctl"))),
            Ok(())
        );
    }

    #[test]
    fn a_rule_checks_scope_caller_and_actor_each() {
        let reserve = policy().rule("/s.S/Reserve").expect("row").clone();
        let orders = id("mesh.local", "orders");
        let good = token(&["s:reserve"], Some("orders"));
        assert_eq!(reserve.authorize(Some(&good), Some(&orders)), Ok(()));
        assert_eq!(
            reserve.authorize(Some(&token(&["s:read"], Some("orders"))), Some(&orders)),
            Err(AuthError::MissingScope("s:reserve".into()))
        );
        assert_eq!(
            reserve.authorize(Some(&good), Some(&id("mesh.local", "meshctl"))),
            Err(AuthError::CallerNotAllowed)
        );
        assert_eq!(
            reserve.authorize(Some(&token(&["s:reserve"], None)), Some(&orders)),
            Err(AuthError::Forbidden("actor not allowed"))
        );
        assert_eq!(
            reserve.authorize(None, Some(&orders)),
            Err(AuthError::MissingToken)
        );
    }
}
