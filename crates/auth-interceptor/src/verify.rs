//! Token verification: every check of our access-token profile, and the verified-token cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};

use crate::ACCESS_TOKEN_TYP;
pub use crate::claims::{VerifiedToken, unix_now};

use crate::claims::AccessClaims;
use crate::error::AuthError;
use crate::jwks::{JwksError, JwksSource, KeySet, VerifyKey};
use crate::revocation::RevocationList;

/// How a service verifies tokens.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// The only issuer we accept (`MESH_ISSUER`).
    pub issuer: String,
    /// Our own audience (`MESH_AUDIENCE`): tokens for other services are refused.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`; at most 30 s by our rules.
    pub leeway: Duration,
    /// A token with an unknown `kid` triggers a JWKS refetch at most this often.
    pub refetch_cooldown: Duration,
    /// How often the key set is refreshed in the background.
    pub refresh_interval: Duration,
    /// Verified tokens kept; 0 turns the cache off.
    pub cache_capacity: usize,
    /// Tokens longer than this are refused unparsed.
    pub max_token_bytes: usize,
}

impl VerifierConfig {
    /// The defaults for `issuer` and `audience`.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: Duration::from_secs(30),
            refetch_cooldown: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(300),
            cache_capacity: 10_000,
            max_token_bytes: 8 * 1024,
        }
    }
}

/// Verifies access tokens for one service.
///
/// Keys are refreshed in the background, never on the request path, except that a token with an
/// unknown `kid` may trigger one refetch per `refetch_cooldown` (so a key rotation is picked up
/// at once, while a flood of made-up `kid`s costs at most one fetch per cooldown).
#[derive(Debug)]
pub struct TokenVerifier {
    config: VerifierConfig,
    validation: HashMap<jsonwebtoken::Algorithm, Validation>,
    keys: RwLock<Arc<KeySet>>,
    source: Option<JwksSource>,
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
    fetches: AtomicU64,
    fetch_failures: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache: VerifiedCache,
    revocations: Arc<RevocationList>,
}

impl TokenVerifier {
    /// A verifier that fetches its keys through OIDC discovery at `config.issuer`, retrying for
    /// up to `startup_timeout` so a service can start while the auth service is still coming up,
    /// and refreshes them in the background for as long as the verifier lives.
    pub async fn discover(
        config: VerifierConfig,
        source: JwksSource,
        startup_timeout: Duration,
    ) -> Result<Arc<Self>, JwksError> {
        let deadline = Instant::now() + startup_timeout;
        let keys = loop {
            match source.fetch().await {
                Ok(keys) => break keys,
                Err(error) if Instant::now() < deadline => {
                    tracing::info!(%error, "issuer keys not available yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(error) => return Err(error),
            }
        };
        let verifier = Arc::new(Self::build(config, keys, Some(source)));
        verifier.fetches.store(1, Ordering::Relaxed);
        spawn_refresher(Arc::downgrade(&verifier));
        Ok(verifier)
    }

    /// [`TokenVerifier::discover`] with the defaults for `issuer` and `audience`, fetching over
    /// HTTPS that trusts `roots` (the mesh CA), and retrying for up to 30 s at start.
    pub async fn for_issuer(
        issuer: &str,
        audience: &str,
        roots: mesh_tls::TrustBundle,
    ) -> Result<Arc<Self>, JwksError> {
        let http = JwksSource::https_client(roots)?;
        Self::discover(
            VerifierConfig::new(issuer, audience),
            JwksSource::new(issuer, http),
            Duration::from_secs(30),
        )
        .await
    }

    /// A verifier over a fixed key set (the issuer itself, benches). Keys change only through
    /// [`TokenVerifier::replace_keys`].
    pub fn with_keys(config: VerifierConfig, keys: KeySet) -> Arc<Self> {
        Arc::new(Self::build(config, keys, None))
    }

    fn build(config: VerifierConfig, keys: KeySet, source: Option<JwksSource>) -> Self {
        use jsonwebtoken::Algorithm::{ES256, EdDSA, RS256};
        let validation = [EdDSA, ES256, RS256]
            .into_iter()
            .map(|alg| (alg, validation_for(alg, &config)))
            .collect();
        Self {
            cache: VerifiedCache::new(config.cache_capacity),
            config,
            validation,
            keys: RwLock::new(Arc::new(keys)),
            source,
            last_refetch: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
            fetch_failures: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            revocations: RevocationList::new(),
        }
    }

    /// A verifier over a fixed key set that consults `revocations`, a list it shares (the
    /// issuer's verifiers all read the one list its revocation log feeds).
    pub fn with_keys_and_revocations(
        config: VerifierConfig,
        keys: KeySet,
        revocations: Arc<RevocationList>,
    ) -> Arc<Self> {
        let mut verifier = Self::build(config, keys, None);
        verifier.revocations = revocations;
        Arc::new(verifier)
    }

    /// The revocations this verifier refuses: fed by [`crate::revocation::spawn_feed`].
    pub fn revocations(&self) -> &Arc<RevocationList> {
        &self.revocations
    }

    /// The configuration in force.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// How many times keys were fetched from the issuer (start-up, background and on-miss).
    pub fn jwks_fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Key fetches that failed (after start-up: background refreshes and refetches).
    pub fn jwks_fetch_failures(&self) -> u64 {
        self.fetch_failures.load(Ordering::Relaxed)
    }

    /// Verifications answered from the verified-token cache, and those that were not (each
    /// miss checked a signature, or refused the token before that).
    pub fn cache_hits_and_misses(&self) -> (u64, u64) {
        (
            self.cache_hits.load(Ordering::Relaxed),
            self.cache_misses.load(Ordering::Relaxed),
        )
    }

    /// Swaps in a new key set.
    pub fn replace_keys(&self, keys: KeySet) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }

    /// Verifies `token` against every rule of our profile and the revocations pushed by the
    /// issuer, and returns what it says.
    pub async fn verify(&self, token: &str) -> Result<Arc<VerifiedToken>, AuthError> {
        let verified = self.verify_signed(token).await?;
        // Checked on every call, cache hits included: a revocation takes effect at once.
        if self.revocations.is_revoked(&verified) {
            return Err(AuthError::Revoked);
        }
        Ok(verified)
    }

    async fn verify_signed(&self, token: &str) -> Result<Arc<VerifiedToken>, AuthError> {
        let now = unix_now();
        if let Some(hit) = self.cache.get(token, now) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
        if token.len() > self.config.max_token_bytes {
            return Err(AuthError::InvalidToken("too large"));
        }
        // The header is read only to find the key; nothing in it chooses how we verify.
        let header = decode_header(token).map_err(|_| AuthError::InvalidToken("malformed"))?;
        if header.crit.is_some() {
            return Err(AuthError::InvalidToken("crit header not supported"));
        }
        match header.typ.as_deref() {
            Some(typ)
                if typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYP)
                    || typ.eq_ignore_ascii_case("application/at+jwt") => {}
            _ => return Err(AuthError::InvalidToken("typ is not at+jwt")),
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or(AuthError::InvalidToken("no kid"))?;
        let key = self.key_for(kid).await.ok_or(AuthError::UnknownKey)?;
        if header.alg != key.algorithm {
            return Err(AuthError::InvalidToken("algorithm does not match the key"));
        }
        let validation = self
            .validation
            .get(&key.algorithm)
            .ok_or(AuthError::InvalidToken("unsupported algorithm"))?;
        let claims = decode::<AccessClaims>(token, &key.key, validation)
            .map_err(|e| map_jwt_error(e.kind()))?
            .claims;
        if claims.sub.is_empty() {
            return Err(AuthError::InvalidToken("empty sub"));
        }
        if claims.jti.is_empty() {
            return Err(AuthError::InvalidToken("empty jti"));
        }
        let certificate = match &claims.cnf {
            None => None,
            Some(cnf) => Some(
                cnf.x5t_s256
                    .as_deref()
                    .and_then(mesh_tls::Thumbprint::from_base64url)
                    .ok_or(AuthError::InvalidToken(
                        "cnf holds no certificate thumbprint this mesh can check",
                    ))?,
            ),
        };
        let verified = Arc::new(VerifiedToken {
            scopes: claims.scopes().map(str::to_owned).collect(),
            subject: claims.sub,
            client_id: claims.client_id,
            token_id: claims.jti,
            actor: claims.act.map(|a| a.sub),
            expires_at: claims.exp,
            session: claims.sid,
            certificate,
        });
        self.cache.insert(token, verified.clone(), now);
        Ok(verified)
    }

    async fn key_for(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        if let Some(key) = self.current_keys().get(kid) {
            return Some(key.clone());
        }
        let source = self.source.as_ref()?;
        // One refetch at a time; whoever waited behind it looks again before fetching.
        let mut last = self.last_refetch.lock().await;
        if let Some(key) = self.current_keys().get(kid) {
            return Some(key.clone());
        }
        if last.is_some_and(|at| at.elapsed() < self.config.refetch_cooldown) {
            return None;
        }
        *last = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match source.fetch().await {
            Ok(keys) => self.replace_keys(keys),
            Err(error) => {
                self.fetch_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "jwks refetch for unknown kid failed");
            }
        }
        self.current_keys().get(kid).cloned()
    }

    fn current_keys(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn validation_for(alg: jsonwebtoken::Algorithm, config: &VerifierConfig) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&[&config.audience]);
    // Listing every claim makes a mistyped one (e.g. `exp` as a string) an error, not "absent".
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.validate_exp = true;
    validation.leeway = config.leeway.as_secs();
    validation
}

fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm => AuthError::InvalidToken("algorithm does not match the key"),
        ErrorKind::MissingRequiredClaim(_) => AuthError::InvalidToken("missing claim"),
        ErrorKind::Json(_) => AuthError::InvalidToken("malformed claims"),
        _ => AuthError::InvalidToken("malformed"),
    }
}

fn spawn_refresher(verifier: Weak<TokenVerifier>) {
    let Some(interval) = verifier.upgrade().map(|v| v.config.refresh_interval) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(verifier) = verifier.upgrade() else {
                return;
            };
            let Some(source) = verifier.source.clone() else {
                return;
            };
            verifier.fetches.fetch_add(1, Ordering::Relaxed);
            match source.fetch().await {
                Ok(keys) => verifier.replace_keys(keys),
                Err(error) => {
                    verifier.fetch_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "background jwks refresh failed");
                }
            }
        }
    });
}

/// Verified tokens by their full text, each valid until its `exp`. Bounded: when full, expired
/// entries are dropped first, then an arbitrary one.
#[derive(Debug)]
struct VerifiedCache {
    capacity: usize,
    entries: RwLock<HashMap<Box<str>, Arc<VerifiedToken>>>,
}

impl VerifiedCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: RwLock::new(HashMap::new()),
        }
    }

    fn get(&self, token: &str, now: u64) -> Option<Arc<VerifiedToken>> {
        if self.capacity == 0 {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(token)
            .filter(|hit| now < hit.expires_at)
            .cloned()
    }

    fn insert(&self, token: &str, verified: Arc<VerifiedToken>, now: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, v| now < v.expires_at);
        }
        if entries.len() >= self.capacity
            && let Some(victim) = entries.keys().next().cloned()
        {
            entries.remove(&victim);
        }
        entries.insert(token.into(), verified);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_at: u64) -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            subject: "alice".into(),
            client_id: "meshctl-cli".into(),
            scopes: vec![],
            token_id: "jti".into(),
            actor: None,
            expires_at,
            session: None,
            certificate: None,
        })
    }

    #[test]
    fn the_cache_is_bounded_keyed_by_the_whole_token_and_honours_exp() {
        let cache = VerifiedCache::new(3);
        for i in 0..10 {
            cache.insert(&format!("token-{i}"), token(1_000), 500);
            assert!(cache.entries.read().expect("lock").len() <= 3);
        }
        cache.insert("a.b.c", token(1_000), 500);
        assert!(cache.get("a.b.c", 999).is_some());
        assert!(cache.get("a.b.c", 1_000).is_none(), "not at or after exp");
        assert!(
            cache.get("a.b.", 999).is_none(),
            "a prefix is another token"
        );
        // Expired entries make room first.
        cache.insert("old", token(10), 5);
        cache.insert("new", token(2_000), 1_500);
        assert!(cache.get("new", 1_500).is_some());
        assert!(VerifiedCache::new(0).get("x", 0).is_none());
    }
}
