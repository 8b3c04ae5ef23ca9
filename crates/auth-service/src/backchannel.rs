//! OpenID Connect Back-Channel Logout 1.0: when a person's session ends, every client that
//! registered a `backchannel_logout_uri` and had a login in it is told, server to server, with a
//! signed logout token. The tokens of those logins are already revoked at every service; this
//! tells the client to end its own session for the person too.
//!
//! Delivery runs after the sign-out is answered (the person does not wait on clients): a POST
//! per login, 5 s at most, tried twice, each outcome logged and counted
//! (`mesh.logout.backchannel`). The client's address is https with a certificate from the mesh
//! CA (the trust bundle follows CA rotations) or loopback http.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;

use crate::clients::Registry;
use crate::issuer::Issuer;
use crate::sessions::RevokedLogin;

/// Tells clients about ended sessions.
#[derive(Debug, Clone)]
pub struct BackChannel {
    pub(crate) http: reqwest::Client,
    pub(crate) issuer: Arc<Issuer>,
    pub(crate) registry: Arc<Registry>,
    /// `mesh.logout.backchannel`: deliveries by outcome.
    pub(crate) deliveries: Counter<u64>,
}

impl BackChannel {
    /// A client for the clients' endpoints: the mesh trust bundle, no redirects, 5 s.
    pub fn http_client(
        roots: mesh_tls::TrustBundle,
    ) -> Result<reqwest::Client, auth_interceptor::jwks::JwksError> {
        auth_interceptor::JwksSource::https_client_builder(roots)?
            // Registered addresses are https or loopback http (checked at load).
            .https_only(false)
            .build()
            .map_err(|e| auth_interceptor::jwks::JwksError::Invalid {
                url: String::new(),
                detail: e.to_string(),
            })
    }

    /// Tells the client of each login that has a back-channel address, in the background.
    pub fn notify(&self, logins: Vec<RevokedLogin>) {
        for login in logins {
            let Some(uri) = self
                .registry
                .get(&login.client_id)
                .and_then(|c| c.backchannel_logout_uri.clone())
            else {
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move { this.deliver(&uri, &login).await });
        }
    }

    async fn deliver(&self, uri: &str, login: &RevokedLogin) {
        let token = match self.issuer.issue_logout_token(
            &login.client_id,
            &login.username,
            &login.family_id,
        ) {
            Ok(token) => token,
            Err(error) => {
                tracing::error!(%error, client = %login.client_id, "signing a logout token failed");
                return;
            }
        };
        let mut last = String::new();
        for attempt in 0..2 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            match self
                .http
                .post(uri)
                .form(&[("logout_token", token.as_str())])
                .send()
                .await
            {
                Ok(answer) if answer.status().is_success() => {
                    self.count("delivered");
                    return;
                }
                Ok(answer) => last = format!("HTTP {}", answer.status().as_u16()),
                Err(error) => last = error.to_string(),
            }
        }
        self.count("failed");
        tracing::warn!(
            client = %login.client_id,
            reason = %last,
            "a client was not told of a sign-out (back-channel logout); its tokens are revoked"
        );
    }

    fn count(&self, outcome: &'static str) {
        self.deliveries.add(1, &[KeyValue::new("outcome", outcome)]);
    }
}
