//! Registered clients: who may ask for which audiences and scopes, and how they authenticate.

use std::collections::HashMap;

use mesh_tls::SpiffeId;

use crate::settings::ClientConfig;

/// Why a grant was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantError {
    /// The client may not get tokens for this audience.
    Audience,
    /// A requested scope is not allowed for this client and audience.
    Scope,
}

/// A registered client.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its id (also the audience of the service it runs, for workloads).
    pub client_id: String,
    /// The bound workload identity, if any.
    pub spiffe_id: Option<SpiffeId>,
    secret_hash: Option<String>,
    /// The parsed hash when the secret was generated (`meshctl hash-secret --generate`).
    generated_secret: Option<crate::passwords::FastHash>,
    grant_types: Vec<String>,
    audiences: Vec<String>,
    scopes: Vec<String>,
    redirect_uris: Vec<String>,
    acts_for: std::collections::BTreeMap<String, Vec<String>>,
    /// Whether a person is asked before this client gets anything for them.
    pub needs_consent: bool,
    /// Where a signed logout token is POSTed when a person's session with it ends.
    pub backchannel_logout_uri: Option<String>,
    post_logout_redirect_uris: Vec<String>,
}

impl Client {
    /// Whether `uri` is a registered post-logout redirect URI, compared like redirect URIs.
    pub fn allows_post_logout_redirect(&self, uri: &str) -> bool {
        self.post_logout_redirect_uris
            .iter()
            .any(|r| r == uri || same_loopback_but_port(r, uri))
    }

    /// A public client has no secret: it identifies itself by `client_id` and proves possession
    /// of the login with PKCE instead.
    pub fn is_public(&self) -> bool {
        self.secret_hash.is_none()
    }

    /// Whether `uri` is one of the registered redirect URIs: compared exactly, except that a
    /// loopback one may come with any port (RFC 8252 §7.3: a native app listens on whatever port
    /// the system gives it).
    pub fn allows_redirect(&self, uri: &str) -> bool {
        self.redirect_uris
            .iter()
            .any(|r| r == uri || same_loopback_but_port(r, uri))
    }

    /// The audience a user token is for when the request names none: the first registered.
    pub fn default_audience(&self) -> Option<&str> {
        self.audiences.first().map(String::as_str)
    }

    /// What a user's login for `audiences` (RFC 8707-style: one login, several resources)
    /// grants: for each audience, [`Client::grant_for_user`] with the requested scopes that
    /// belong to it. Every requested scope must belong to one of the audiences.
    pub fn grant_login(
        &self,
        audiences: &[String],
        requested: &[String],
        user_scopes: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<String>, GrantError> {
        if requested
            .iter()
            .any(|scope| !audiences.iter().any(|a| scope_audience(scope) == a))
        {
            return Err(GrantError::Scope);
        }
        let mut granted = Vec::new();
        for audience in audiences {
            let asked: Vec<String> = requested
                .iter()
                .filter(|scope| scope_audience(scope) == audience)
                .cloned()
                .collect();
            // Scopes were asked for, none of them for this audience: it gets none.
            if asked.is_empty() && !requested.is_empty() {
                if !self.audiences.contains(audience) {
                    return Err(GrantError::Audience);
                }
                continue;
            }
            granted.extend(self.grant_for_user(audience, &asked, user_scopes)?);
        }
        Ok(granted)
    }

    /// Like [`Client::grant`], further narrowed to what the user's roles allow.
    pub fn grant_for_user(
        &self,
        audience: &str,
        requested: &[String],
        user_scopes: &std::collections::BTreeSet<String>,
    ) -> Result<Vec<String>, GrantError> {
        let granted = self.grant(audience, requested)?;
        if requested.is_empty() {
            Ok(granted
                .into_iter()
                .filter(|s| user_scopes.contains(s))
                .collect())
        } else if granted.iter().all(|s| user_scopes.contains(s)) {
            Ok(granted)
        } else {
            Err(GrantError::Scope)
        }
    }

    /// The scopes of a token this workload gets by exchanging a user's token: like
    /// [`Client::grant`], narrowed to what the subject token's scopes let it do for the user
    /// (`acts_for`). A user who may only read orders cannot be turned into one who reserves stock
    /// by the service acting for them.
    pub fn grant_for_subject(
        &self,
        audience: &str,
        requested: &[String],
        subject_scopes: &[String],
    ) -> Result<Vec<String>, GrantError> {
        let delegable = subject_scopes
            .iter()
            .filter_map(|s| self.acts_for.get(s))
            .flatten()
            .cloned()
            .collect();
        self.grant_for_user(audience, requested, &delegable)
    }

    /// Whether the client may use `grant` on the token endpoint.
    pub fn allows_grant(&self, grant: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant)
    }

    /// The scopes to put in a token for `audience`: all the client may have there when
    /// `requested` is empty, else exactly `requested` if every one is allowed.
    ///
    /// A scope `X:…` belongs to audience `X`, so a token never carries scopes for a service
    /// other than the one it is addressed to.
    pub fn grant(&self, audience: &str, requested: &[String]) -> Result<Vec<String>, GrantError> {
        if !self.audiences.iter().any(|a| a == audience) {
            return Err(GrantError::Audience);
        }
        let allowed: Vec<&String> = self
            .scopes
            .iter()
            .filter(|s| s.split(':').next() == Some(audience))
            .collect();
        if requested.is_empty() {
            return Ok(allowed.into_iter().cloned().collect());
        }
        if requested.iter().all(|r| allowed.contains(&r)) {
            let mut granted = requested.to_vec();
            granted.sort_unstable();
            granted.dedup();
            Ok(granted)
        } else {
            Err(GrantError::Scope)
        }
    }
}

/// Every registered client, by id and by bound SPIFFE ID.
#[derive(Debug)]
pub struct Registry {
    by_id: HashMap<String, Client>,
    by_spiffe: HashMap<SpiffeId, String>,
}

impl Registry {
    /// Builds the registry from the (already checked) config.
    pub fn new(clients: &[ClientConfig]) -> Self {
        let mut by_id = HashMap::new();
        let mut by_spiffe = HashMap::new();
        for config in clients {
            let client = Client {
                client_id: config.client_id.clone(),
                spiffe_id: config.spiffe(),
                secret_hash: config.secret_hash.clone(),
                // The config was checked: a hash that does not parse is not in it.
                generated_secret: config
                    .secret_hash
                    .as_deref()
                    .and_then(|h| crate::passwords::FastHash::parse(h).ok().flatten()),
                grant_types: config.grant_types.clone(),
                audiences: config.audiences.clone(),
                scopes: config.scopes.clone(),
                redirect_uris: config.redirect_uris.clone(),
                acts_for: config.acts_for.clone(),
                needs_consent: config.consent,
                backchannel_logout_uri: config.backchannel_logout_uri.clone(),
                post_logout_redirect_uris: config.post_logout_redirect_uris.clone(),
            };
            if let Some(id) = &client.spiffe_id {
                by_spiffe.insert(id.clone(), client.client_id.clone());
            }
            by_id.insert(client.client_id.clone(), client);
        }
        Self { by_id, by_spiffe }
    }

    /// The client bound to a workload identity.
    pub fn by_spiffe(&self, id: &SpiffeId) -> Option<&Client> {
        self.by_spiffe
            .get(id)
            .and_then(|client_id| self.by_id.get(client_id))
    }

    /// Every audience some client may get tokens for, and every workload's own audience.
    pub fn audiences(&self) -> std::collections::BTreeSet<String> {
        self.by_id
            .values()
            .flat_map(|c| c.audiences.iter().cloned())
            .chain(
                self.by_id
                    .values()
                    .filter(|c| c.spiffe_id.is_some())
                    .map(|c| c.client_id.clone()),
            )
            .collect()
    }

    /// The client with `client_id`.
    pub fn get(&self, client_id: &str) -> Option<&Client> {
        self.by_id.get(client_id)
    }

    /// Checks the secret of a client whose secret was generated (a keyed hash, a microsecond:
    /// no hash slot, no blocking thread). `None` when the client is unknown or its secret is an
    /// Argon2 hash: then [`Registry::authenticate`] decides. Client ids are not secrets
    /// (RFC 6749 §2.2), so that a known client with a generated secret answers sooner than an
    /// unknown one tells nothing worth hiding.
    pub fn authenticate_generated(&self, client_id: &str, secret: &str) -> Option<Option<&Client>> {
        let client = self.by_id.get(client_id)?;
        let hash = client.generated_secret.as_ref()?;
        Some(hash.verify(secret.as_bytes()).then_some(client))
    }

    /// Checks a client secret. Unknown clients, clients without a secret and wrong secrets all
    /// take one Argon2 verification and answer `None`. Call from a blocking thread.
    pub fn authenticate(
        &self,
        client_id: &str,
        secret: &str,
        slot: &mut crate::passwords::HashSlot,
    ) -> Option<&Client> {
        let client = self.by_id.get(client_id);
        let hash = client
            .and_then(|c| c.secret_hash.as_deref())
            .unwrap_or(crate::passwords::DUMMY_HASH);
        let matches = slot.verify(hash, secret.as_bytes());
        match client {
            Some(c) if matches && c.secret_hash.is_some() => Some(c),
            _ => None,
        }
    }
}

pub use crate::passwords::hash_secret;

/// Whether `asked` is the loopback `registered` (`http`, an IP literal: 127.0.0.1 or ::1) with
/// another port and nothing else changed, written in the URL parser's normal form (so the string
/// stored with the code is the URL the browser goes to).
fn same_loopback_but_port(registered: &str, asked: &str) -> bool {
    let (Ok(registered), Ok(parsed)) = (url::Url::parse(registered), url::Url::parse(asked)) else {
        return false;
    };
    let loopback = match registered.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    };
    loopback
        && registered.scheme() == "http"
        && parsed.scheme() == "http"
        && parsed.host() == registered.host()
        && parsed.path() == registered.path()
        && parsed.query() == registered.query()
        && parsed.username().is_empty()
        && parsed.password().is_none()
        && parsed.fragment().is_none()
        && parsed.as_str() == asked
}

/// The audience a scope belongs to: what comes before its first `:` (`orders:read` → `orders`).
pub fn scope_audience(scope: &str) -> &str {
    scope.split(':').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_redirect_may_change_its_port_and_nothing_else() {
        let registered = "http://127.0.0.1:8976/callback";
        assert!(same_loopback_but_port(
            registered,
            "http://127.0.0.1:41234/callback"
        ));
        for other in [
            "http://127.0.0.2:41234/callback",
            "http://localhost:41234/callback",
            "https://127.0.0.1:41234/callback",
            "http://127.0.0.1:41234/callback2",
            "http://127.0.0.1:41234/callback?x=1",
            "http://127.0.0.1:41234/callback#f",
            "http://u@127.0.0.1:41234/callback",
            "http://127.0.0.1:41234/./callback",
        ] {
            assert!(!same_loopback_but_port(registered, other), "{other}");
        }
        assert!(!same_loopback_but_port(
            "https://shop.example/cb",
            "https://shop.example:444/cb"
        ));
    }
    use crate::settings::AuthConfig;

    fn registry() -> Registry {
        let config =
            AuthConfig::parse(include_str!("../../../config/auth.example.toml")).expect("example");
        Registry::new(&config.clients)
    }

    #[test]
    fn a_workload_is_found_by_its_spiffe_id_only() {
        let registry = registry();
        let orders = SpiffeId::workload("mesh.local", "orders").expect("id");
        assert_eq!(
            registry.by_spiffe(&orders).map(|c| c.client_id.as_str()),
            Some("orders")
        );
        for other in [("mesh.local", "stranger"), ("evil.example", "orders")] {
            let id = SpiffeId::workload(other.0, other.1).expect("id");
            assert!(registry.by_spiffe(&id).is_none(), "{id}");
        }
    }

    #[test]
    fn grants_narrow_to_the_registration() {
        let registry = registry();
        let orders = registry.get("orders").expect("orders");
        assert_eq!(
            orders.grant("inventory", &["inventory:read".into()]),
            Ok(vec!["inventory:read".to_owned()])
        );
        assert_eq!(orders.grant("auth", &[]), Err(GrantError::Audience));
        assert_eq!(
            orders.grant("inventory", &["inventory:admin".into()]),
            Err(GrantError::Scope)
        );
    }

    #[tokio::test]
    async fn secrets_are_checked_against_the_hash_and_unknown_clients_fail_the_same_way() {
        let registry = registry();
        let slots = crate::passwords::HashSlots::new(1);
        let slot = &mut slots
            .take(std::time::Duration::from_secs(1))
            .await
            .expect("slot");
        assert!(
            registry
                .authenticate("meshctl", "meshctl-demo-secret", slot)
                .is_some()
        );
        assert!(
            registry
                .authenticate("meshctl", "wrong-secret-value", slot)
                .is_none()
        );
        assert!(
            registry
                .authenticate("nobody", "meshctl-demo-secret", slot)
                .is_none()
        );
    }

    #[test]
    fn a_generated_secret_is_checked_by_its_keyed_hash_and_a_chosen_one_goes_to_argon2() {
        let registry = registry();
        // The example config's stock-admin secret was generated (see the config's comment).
        let secret = "IRr2hs2icOVrJflHEVzjF0iIVcdpSCNDdaQTT3_X-h0";
        let found = registry.authenticate_generated("stock-admin", secret);
        assert_eq!(
            found.flatten().map(|c| c.client_id.as_str()),
            Some("stock-admin")
        );
        assert!(matches!(
            registry.authenticate_generated("stock-admin", &secret[1..]),
            Some(None)
        ));
        // meshctl's secret is an Argon2 hash, and an unknown client has none: Argon2 decides.
        assert!(
            registry
                .authenticate_generated("meshctl", "meshctl-demo-secret")
                .is_none()
        );
        assert!(registry.authenticate_generated("nobody", secret).is_none());
    }
}
