//! Signing keys: OIDC discovery, the JWKS document, and a key set with algorithms pinned per key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// The largest discovery or JWKS document we read; a bigger one is refused, not buffered.
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// A failure to obtain the issuer's keys.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The HTTP request failed or answered with an error status.
    #[error("fetch {url}: {detail}")]
    Fetch {
        /// What was fetched.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The discovery document names another issuer than the one we trust (OIDC Discovery §4.3).
    #[error("discovery at {url} names issuer {found:?}, expected {expected:?}")]
    IssuerMismatch {
        /// The discovery URL.
        url: String,
        /// The configured issuer.
        expected: String,
        /// What the document said.
        found: String,
    },
    /// The document was not valid JSON of the expected shape, or an unsafe URL.
    #[error("{url}: {detail}")]
    Invalid {
        /// What was fetched.
        url: String,
        /// What was wrong with it.
        detail: String,
    },
}

/// One verification key: the algorithm is fixed here, from the JWKS entry, and a token whose
/// header names another algorithm is refused before any signature check.
#[derive(Clone)]
pub struct VerifyKey {
    /// The only algorithm this key verifies.
    pub algorithm: Algorithm,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The issuer's current verification keys by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
}

impl KeySet {
    /// Builds the key set from a JWKS. Entries without a `kid`, with an algorithm we do not
    /// accept (HMAC, `none`, encryption algorithms), with `use` other than `sig`, or whose
    /// parameters do not match their algorithm are skipped.
    pub fn from_jwks(jwks: &JwkSet) -> Self {
        let mut by_kid = HashMap::new();
        for jwk in &jwks.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if matches!(
                jwk.common.public_key_use,
                Some(ref u) if *u != jsonwebtoken::jwk::PublicKeyUse::Signature
            ) {
                continue;
            }
            let Some(algorithm) = pinned_algorithm(jwk.common.key_algorithm, &jwk.algorithm) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            by_kid.insert(kid, Arc::new(VerifyKey { algorithm, key }));
        }
        Self { by_kid }
    }

    /// The key named `kid`.
    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyKey>> {
        self.by_kid.get(kid)
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.by_kid.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }
}

/// The algorithm a JWK may be used with. An explicit `alg` must agree with the key type; without
/// one, it is derived from the key type only where that is unambiguous (OKP/Ed25519 → EdDSA,
/// EC/P-256 → ES256). RSA keys must say which algorithm they are for.
fn pinned_algorithm(
    declared: Option<KeyAlgorithm>,
    params: &AlgorithmParameters,
) -> Option<Algorithm> {
    let from_params = match params {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Some(Algorithm::EdDSA)
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        AlgorithmParameters::RSA(_) => None,
        _ => return None,
    };
    let declared = match declared {
        None => None,
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(_) => return None,
    };
    match (declared, from_params, params) {
        (Some(Algorithm::RS256), None, AlgorithmParameters::RSA(_)) => Some(Algorithm::RS256),
        (Some(d), Some(p), _) if d == p => Some(d),
        (None, Some(p), _) => Some(p),
        _ => None,
    }
}

/// Where a verifier gets its keys: the issuer's OIDC discovery document and the JWKS it names,
/// over HTTPS with the mesh's trust bundle.
#[derive(Debug, Clone)]
pub struct JwksSource {
    issuer: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

impl JwksSource {
    /// A source for `issuer`, fetched with `http` (which must trust the issuer's certificate).
    pub fn new(issuer: impl Into<String>, http: reqwest::Client) -> Self {
        Self {
            issuer: issuer.into(),
            http,
        }
    }

    /// An HTTPS client that trusts exactly the CAs of `roots`, with short timeouts and no
    /// redirects: a key fetch must never wander off to another host.
    pub fn https_client(roots: mesh_tls::TrustBundle) -> Result<reqwest::Client, JwksError> {
        Self::https_client_builder(roots)?
            .build()
            .map_err(|e| JwksError::Invalid {
                url: String::new(),
                detail: e.to_string(),
            })
    }

    /// The builder behind [`JwksSource::https_client`], for callers that add to it (meshctl
    /// pins the issuer's address with `resolve`).
    pub fn https_client_builder(
        roots: mesh_tls::TrustBundle,
    ) -> Result<reqwest::ClientBuilder, JwksError> {
        let tls = mesh_tls::client::https_client_config(roots).map_err(|e| JwksError::Invalid {
            url: String::new(),
            detail: e.to_string(),
        })?;
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5)))
    }

    /// The issuer this source trusts.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Discovers the JWKS URI and fetches the key set. Inside a request (a refetch for an
    /// unknown `kid`), no longer than the request's deadline ([`mesh_client::deadline`]).
    pub async fn fetch(&self) -> Result<KeySet, JwksError> {
        match mesh_client::deadline::current() {
            Some(deadline) => tokio::time::timeout_at(deadline, self.fetch_now())
                .await
                .unwrap_or_else(|_| {
                    Err(JwksError::Fetch {
                        url: self.issuer.clone(),
                        detail: "the request's deadline passed first".into(),
                    })
                }),
            None => self.fetch_now().await,
        }
    }

    async fn fetch_now(&self) -> Result<KeySet, JwksError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let discovery: DiscoveryDocument = self.get_json(&url).await?;
        if discovery.issuer != self.issuer {
            return Err(JwksError::IssuerMismatch {
                url,
                expected: self.issuer.clone(),
                found: discovery.issuer,
            });
        }
        if !discovery.jwks_uri.starts_with("https://") {
            return Err(JwksError::Invalid {
                url,
                detail: "jwks_uri is not https".into(),
            });
        }
        let jwks: JwkSet = self.get_json(&discovery.jwks_uri).await?;
        Ok(KeySet::from_jwks(&jwks))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, JwksError> {
        let fetch_error = |detail: String| JwksError::Fetch {
            url: url.to_owned(),
            detail,
        };
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| fetch_error(e.to_string()))?;
        if !response.status().is_success() {
            return Err(fetch_error(format!("status {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| fetch_error(e.to_string()))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(fetch_error("document too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| JwksError::Invalid {
            url: url.to_owned(),
            detail: e.to_string(),
        })
    }
}
