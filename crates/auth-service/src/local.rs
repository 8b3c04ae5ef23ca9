//! The issuer verifying its own tokens (for token exchange, revocation and introspection),
//! with the same verifier the services use and the keys it signs with.

use std::collections::HashMap;
use std::sync::Arc;

use auth_interceptor::{AuthError, RevocationList, TokenVerifier, VerifiedToken, VerifierConfig};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::keys::KeyStore;

/// One verifier per audience the issuer issues for.
#[derive(Debug)]
pub struct LocalVerifiers {
    keys: Arc<KeyStore>,
    by_audience: HashMap<String, Arc<TokenVerifier>>,
}

impl LocalVerifiers {
    /// Verifiers for `audiences`, tokens from `issuer`, keys from `keys`, all refusing what
    /// `revoked` lists.
    pub fn new(
        issuer: &str,
        keys: Arc<KeyStore>,
        audiences: impl IntoIterator<Item = String>,
        revoked: Arc<RevocationList>,
    ) -> Self {
        let by_audience = audiences
            .into_iter()
            .map(|audience| {
                let config = VerifierConfig::new(issuer, audience.clone());
                let verifier = TokenVerifier::with_keys_and_revocations(
                    config,
                    keys.key_set(),
                    revoked.clone(),
                );
                (audience, verifier)
            })
            .collect();
        Self { keys, by_audience }
    }

    /// Re-reads the published keys (after a rotation).
    pub fn refresh_keys(&self) {
        for verifier in self.by_audience.values() {
            verifier.replace_keys(self.keys.key_set());
        }
    }

    /// Verifies a token that must be addressed to `audience`.
    pub async fn verify_for(
        &self,
        audience: &str,
        token: &str,
    ) -> Result<Arc<VerifiedToken>, AuthError> {
        let verifier = self
            .by_audience
            .get(audience)
            .ok_or(AuthError::WrongAudience)?;
        verifier.verify(token).await
    }

    /// Verifies a token for whichever of our audiences it names; returns the audience too.
    /// The unverified `aud` only picks the verifier, which then checks everything.
    pub async fn verify_any(&self, token: &str) -> Result<(String, Arc<VerifiedToken>), AuthError> {
        let audience = unverified_audience(token).ok_or(AuthError::InvalidToken("malformed"))?;
        let verified = self.verify_for(&audience, token).await?;
        Ok((audience, verified))
    }
}

fn unverified_audience(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.get("aud")?.as_str().map(str::to_owned)
}
