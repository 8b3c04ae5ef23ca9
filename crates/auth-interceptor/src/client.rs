//! The client side: get a service token over the mesh, keep it fresh, attach it to calls.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Request;
use mesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use mesh_proto::auth::v1::{ExchangeTokenRequest, IssueServiceTokenRequest};
use tokio::sync::RwLock;
use tower::{Layer, Service};

use mesh_client::Transport;
use mesh_tls::{Reloadable, Thumbprint};

use crate::bearer::BearerToken;
use crate::principal::User;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A workload's own access token for one audience, fetched with `AuthService.IssueServiceToken`
/// (the workload authenticates by its certificate; it holds no secret), cached, and renewed
/// once 80 % of its lifetime has passed, so callers never present an almost-expired token.
///
/// The issuer binds the token to the certificate that asked for it (RFC 8705). Once the
/// workload's certificate has been renewed, the token is replaced before it is sent again; one
/// already on its way goes out with the certificate it is bound to ([`BearerToken::issued`]).
pub struct ServiceTokenSource {
    client: AuthServiceClient<Transport>,
    identity: Arc<Reloadable>,
    audience: String,
    scopes: Vec<String>,
    cached: RwLock<Option<Cached>>,
}

impl std::fmt::Debug for ServiceTokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTokenSource")
            .field("audience", &self.audience)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct Cached {
    token: BearerToken,
    renew_at: Instant,
    /// The certificate the workload served when the token was asked for.
    asked_under: Thumbprint,
}

impl ServiceTokenSource {
    /// A source of tokens for `audience` with `scopes` (empty: all the registration allows),
    /// asked of the auth service over `auth` (mTLS to its mesh port presenting `identity`; a
    /// `Runtime::client` keeps a channel per certificate, so a token is sent with the one it is
    /// bound to).
    pub fn new(
        auth: Transport,
        identity: Arc<Reloadable>,
        audience: impl Into<String>,
        scopes: Vec<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            client: AuthServiceClient::new(auth),
            identity,
            audience: audience.into(),
            scopes,
            cached: RwLock::new(None),
        })
    }

    /// The current token, fetching a new one first if the cached one is due for renewal.
    pub async fn token(&self) -> Result<BearerToken, tonic::Status> {
        if let Some(token) = fresh(&*self.cached.read().await, &self.identity) {
            return Ok(token);
        }
        let mut slot = self.cached.write().await;
        // Someone else may have renewed while we waited for the lock.
        if let Some(token) = fresh(&slot, &self.identity) {
            return Ok(token);
        }
        let requested_at = Instant::now();
        let asked_under = self.identity.thumbprint();
        let response = self
            .client
            .clone()
            .issue_service_token(IssueServiceTokenRequest {
                audience: self.audience.clone(),
                scopes: self.scopes.clone(),
            })
            .await?
            .into_inner();
        let token = BearerToken::issued(response.access_token)
            .map_err(|_| tonic::Status::internal("auth service returned an unusable token"))?;
        let lifetime = Duration::from_secs(u64::from(response.expires_in));
        *slot = Some(Cached {
            token: token.clone(),
            renew_at: requested_at + lifetime.mul_f64(0.8),
            asked_under,
        });
        Ok(token)
    }
}

/// Acts for the caller of the current request: exchanges the token it presented (kept inside its
/// [`User`]) for a token addressed to a downstream service, with the calling service
/// recorded as actor (RFC 8693).
///
/// An exchanged token is reused for the same subject token, audience and scopes until 80 % of
/// its lifetime has passed (as [`ServiceTokenSource`] does with service tokens): a second order
/// by the same login costs no exchange at auth and no cold signature check downstream. This
/// extends no token's life (the issuer caps an exchanged token at its subject token's `exp`), and
/// a revoked subject token never reaches the cache: the caller's own auth layer refuses it first
/// (revocations reach every service). The cache is keyed by a SHA-256 of the subject token, so it
/// holds no user token, and holds at most [`EXCHANGE_CACHE_ENTRIES`] tokens: when full, expired
/// ones are dropped, and if none has expired, all of them (the next calls exchange again).
///
/// The issuer binds each exchanged token to the certificate that asked (RFC 8705), so a token
/// is also exchanged again once the workload's certificate has been renewed, as
/// [`ServiceTokenSource`] does.
#[derive(Clone)]
pub struct TokenExchanger {
    client: AuthServiceClient<Transport>,
    identity: Arc<Reloadable>,
    reused: Arc<std::sync::Mutex<std::collections::HashMap<[u8; 32], Cached>>>,
}

/// Exchanged tokens a [`TokenExchanger`] keeps at most.
pub const EXCHANGE_CACHE_ENTRIES: usize = 10_000;

impl std::fmt::Debug for TokenExchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenExchanger").finish_non_exhaustive()
    }
}

impl TokenExchanger {
    /// An exchanger asking the auth service over `auth` (mTLS with our certificate,
    /// `identity`).
    pub fn new(auth: Transport, identity: Arc<Reloadable>) -> Self {
        Self {
            client: AuthServiceClient::new(auth),
            identity,
            reused: Arc::default(),
        }
    }

    /// A token for `audience` on behalf of `user`, ready to attach to the downstream call.
    pub async fn exchange(
        &self,
        user: &User,
        audience: &str,
        scopes: &[&str],
    ) -> Result<BearerToken, tonic::Status> {
        let subject_token = user
            .bearer()
            .ok_or_else(|| tonic::Status::permission_denied("no user token to act on behalf of"))?;
        let key = {
            let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            for part in std::iter::once(subject_token.expose_secret())
                .chain(std::iter::once(audience))
                .chain(scopes.iter().copied())
            {
                // Length-prefixed, so no two lists of parts hash the same bytes.
                context.update(&(part.len() as u64).to_be_bytes());
                context.update(part.as_bytes());
            }
            let mut key = [0u8; 32];
            key.copy_from_slice(context.finish().as_ref());
            key
        };
        if let Some(token) = fresh(&self.reused().get(&key).cloned(), &self.identity) {
            return Ok(token);
        }
        let requested_at = Instant::now();
        let asked_under = self.identity.thumbprint();
        let response = self
            .client
            .clone()
            .exchange_token(ExchangeTokenRequest {
                subject_token: subject_token.expose_secret().to_owned(),
                audience: audience.to_owned(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            })
            .await?
            .into_inner();
        let token = BearerToken::issued(response.access_token)
            .map_err(|_| tonic::Status::internal("auth service returned an unusable token"))?;
        let lifetime = Duration::from_secs(u64::from(response.expires_in));
        let mut reused = self.reused();
        if reused.len() >= EXCHANGE_CACHE_ENTRIES {
            let now = Instant::now();
            reused.retain(|_, cached| now < cached.renew_at);
            if reused.len() >= EXCHANGE_CACHE_ENTRIES {
                reused.clear();
            }
        }
        reused.insert(
            key,
            Cached {
                token: token.clone(),
                renew_at: requested_at + lifetime.mul_f64(0.8),
                asked_under,
            },
        );
        Ok(token)
    }

    fn reused(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<[u8; 32], Cached>> {
        self.reused.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The cached token, if it is not yet due for renewal and `identity` has not been renewed since
/// it was asked for (it is bound to the certificate that asked: a renewal replaces it before it
/// is sent again, and so tokens follow the certificate the workload presents).
fn fresh(cached: &Option<Cached>, identity: &Reloadable) -> Option<BearerToken> {
    cached
        .as_ref()
        .filter(|c| Instant::now() < c.renew_at && c.asked_under == identity.thumbprint())
        .map(|c| c.token.clone())
}

/// Wraps a client channel so every request carries the workload's service token.
#[derive(Debug, Clone)]
pub struct AttachTokenLayer {
    source: Arc<ServiceTokenSource>,
}

impl AttachTokenLayer {
    /// Attaches tokens from `source`.
    pub fn new(source: Arc<ServiceTokenSource>) -> Self {
        Self { source }
    }
}

impl<S> Layer<S> for AttachTokenLayer {
    type Service = AttachToken<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttachToken {
            inner,
            source: self.source.clone(),
        }
    }
}

/// The service [`AttachTokenLayer`] produces.
#[derive(Debug, Clone)]
pub struct AttachToken<S> {
    inner: S,
    source: Arc<ServiceTokenSource>,
}

impl<S, B> Service<Request<B>> for AttachToken<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    // A boxed error lets a failed token fetch travel as the `Status` it is: tonic's client
    // downcasts it back.
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let source = self.source.clone();
        Box::pin(async move {
            source.token().await?.attach_http(&mut request);
            inner.call(request).await.map_err(Into::into)
        })
    }
}
