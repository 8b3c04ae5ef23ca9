//! Test support: the whole mesh on `127.0.0.1:0`, and the tokens an attacker would forge.
//!
//! Tests get real parts only: certificates from a fresh dev CA, real TLS handshakes, tokens
//! from the real auth service, real SQLite files in a temporary directory (or a real PostgreSQL). Logs are shown only
//! with `TEST_LOG=1`.
//!
//! # Layout
//! - [`TestMesh`]: a [`mesh_dev::devmesh::DevMesh`] in a temp dir, with helpers for clients.
//! - [`forge`]: hand-made JWTs (any header, any claims), signed with the issuer's real key,
//!   a foreign key, HMAC over the public key, or nothing.
//! - [`chaos`]: a proxy that slows a replica down, an address that never answers.
//! - [`postgres`]: a real PostgreSQL server per test ([`Backend::Postgres`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chaos;
pub mod forge;
pub mod postgres;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use mesh_dev::devmesh::{DevMesh, MESHCTL_DEMO_SECRET, STOCK_ADMIN_DEMO_SECRET};
use mesh_dev::oauth::{ClientCredentials, TokenResponse, client_credentials};
use tempfile::TempDir;
use tonic::transport::Channel;

pub use mesh_dev::devmesh::TRUST_DOMAIN;

/// A running mesh in a temporary directory that lives as long as the value.
#[derive(Debug)]
pub struct TestMesh {
    /// The running services.
    pub mesh: DevMesh,

    dir: TempDir,
    /// The PostgreSQL server of a mesh on [`Backend::Postgres`]; dropped (stopped) last.
    postgres: Option<postgres::PgServer>,
}

/// The database backend a test mesh runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite files in the mesh's temporary directory.
    Sqlite,
    /// A PostgreSQL server of its own ([`postgres::PgServer`]).
    Postgres,
}

impl Backend {
    /// The backend `MESH_TEST_DB` asks for (`postgres` or `sqlite`, the default): how the
    /// whole suite runs again on PostgreSQL.
    pub fn from_env() -> Self {
        match std::env::var("MESH_TEST_DB").as_deref() {
            Ok("postgres") => Self::Postgres,
            _ => Self::Sqlite,
        }
    }
}

impl TestMesh {
    /// Starts auth and inventory on loopback with fresh certificates and databases.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(mesh_dev::devmesh::DevOptions::default()).await
    }

    /// [`TestMesh::start`] with `options` (a short certificate lifetime, say), on the backend
    /// [`Backend::from_env`] names.
    pub async fn start_with(options: mesh_dev::devmesh::DevOptions) -> anyhow::Result<Self> {
        Self::start_on(Backend::from_env(), options).await
    }

    /// A mesh on `backend`. PostgreSQL must be installed for [`Backend::Postgres`]: the tests
    /// that need it are marked ignored in builds where it is not (see `build.rs`), so the
    /// summary line counts them.
    pub async fn start_on(
        backend: Backend,
        mut options: mesh_dev::devmesh::DevOptions,
    ) -> anyhow::Result<Self> {
        init_logs();
        let postgres = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let server = postgres::PgServer::start(&["auth", "orders", "inventory"]).await?;
                options.database = mesh_dev::devmesh::DevDatabase::Postgres(server.server_url());
                Some(server)
            }
        };
        let dir = tempfile::tempdir()?;
        let mesh = DevMesh::start_with(dir.path(), options).await?;
        Ok(Self {
            mesh,
            dir,
            postgres,
        })
    }

    /// The backend this mesh runs on.
    pub fn backend(&self) -> Backend {
        if self.postgres.is_some() {
            Backend::Postgres
        } else {
            Backend::Sqlite
        }
    }

    /// A connection pool on `service`'s database (`auth`, `orders`, `inventory`), whichever
    /// the backend: for tests that inspect rows or move time forward. Write `$1` placeholders.
    pub async fn db(&self, service: &str) -> anyhow::Result<sqlx::AnyPool> {
        sqlx::any::install_default_drivers();
        let url = match self.mesh.db_url(service) {
            mesh_service::DbUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            mesh_service::DbUrl::Postgres(url) => url,
        };
        Ok(sqlx::AnyPool::connect(&url).await?)
    }

    /// The temporary directory (certs/, auth.toml, *.db).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An HTTPS client trusting the mesh CA.
    pub fn https(&self) -> anyhow::Result<reqwest::Client> {
        self.mesh.https_client()
    }

    /// `as_workload`'s certificate and key, as its files hold them.
    pub fn identity(&self, as_workload: &str) -> anyhow::Result<Arc<mesh_tls::Reloadable>> {
        Ok(mesh_tls::Reloadable::load(
            self.mesh.tls_files(as_workload),
        )?)
    }

    /// A channel presenting `as_workload`'s certificate to inventory.
    pub fn inventory_channel(&self, as_workload: &str) -> anyhow::Result<Channel> {
        Ok(self
            .mesh
            .connector(as_workload, "inventory")?
            .channel(&self.mesh.inventory_addr.to_string())?)
    }

    /// A channel presenting `as_workload`'s certificate to the auth service's mesh port.
    pub fn auth_channel(&self, as_workload: &str) -> anyhow::Result<Channel> {
        Ok(self
            .mesh
            .connector(as_workload, "auth")?
            .channel(&self.mesh.auth_addr.to_string())?)
    }

    /// A channel presenting `as_workload`'s certificate to orders.
    pub fn orders_channel(&self, as_workload: &str) -> anyhow::Result<Channel> {
        Ok(self
            .mesh
            .connector(as_workload, "orders")?
            .channel(&self.mesh.orders_addr.to_string())?)
    }

    /// Logs `user` in with the demo password (`<user>-demo-password`) through the real login
    /// form and PKCE; the tokens are for `audience`.
    pub async fn login(&self, user: &str, audience: &str) -> anyhow::Result<TokenResponse> {
        Ok(mesh_dev::oauth::login_with_password(
            &self.https()?,
            &self.mesh.issuer,
            user,
            &format!("{user}-demo-password"),
            audience,
        )
        .await?)
    }

    /// `user`'s access token for `audience`.
    pub async fn user_token(&self, user: &str, audience: &str) -> anyhow::Result<String> {
        Ok(self.login(user, audience).await?.access_token)
    }

    /// The auth service's database, for tests that must move time forward (expire a code).
    pub async fn auth_db(&self) -> anyhow::Result<sqlx::AnyPool> {
        self.db("auth").await
    }

    /// A token of the `meshctl` client (scope `inventory:read`, audience inventory).
    pub async fn meshctl_token(&self) -> anyhow::Result<String> {
        self.client_token("meshctl", MESHCTL_DEMO_SECRET, "inventory", &[])
            .await
    }

    /// A token of the `stock-admin` client (scopes `inventory:read inventory:admin`).
    pub async fn admin_token(&self) -> anyhow::Result<String> {
        self.client_token("stock-admin", STOCK_ADMIN_DEMO_SECRET, "inventory", &[])
            .await
    }

    /// A client-credentials token from the real token endpoint.
    pub async fn client_token(
        &self,
        client_id: &str,
        secret: &str,
        audience: &str,
        scopes: &[String],
    ) -> anyhow::Result<String> {
        let response = client_credentials(
            &self.https()?,
            &self.mesh.issuer,
            &ClientCredentials {
                client_id: client_id.into(),
                client_secret: secret.into(),
            },
            audience,
            scopes,
        )
        .await?;
        Ok(response.access_token)
    }

    /// What `service`'s admin listener serves at `/metrics` now, parsed.
    pub async fn scrape(&self, service: &str) -> anyhow::Result<mesh_telemetry::prom::Samples> {
        let addr = self
            .mesh
            .metrics_addrs
            .get(service)
            .with_context(|| format!("{service} has no admin listener"))?;
        let client = mesh_service::admin::scrape_client()?;
        Ok(mesh_service::admin::scrape(&client, &addr.to_string()).await?)
    }

    /// The issuer's current signing key, read from the auth service's database and opened
    /// with its key-encryption key (both are needed), for forging.
    pub async fn issuer_key(&self) -> anyhow::Result<forge::SigningKey> {
        let pool = self.auth_db().await?;
        let (kid, sealed): (String, Vec<u8>) = sqlx::query_as(
            "SELECT kid, sealed FROM signing_keys \
             WHERE activated_at IS NOT NULL AND retired_at IS NULL",
        )
        .fetch_one(&pool)
        .await
        .context("reading the signing key")?;
        pool.close().await;
        let pkcs8 = self
            .sealer()?
            .open(&format!("signing-key:{kid}"), &sealed)?;
        forge::SigningKey::from_pkcs8(kid, &pkcs8)
    }

    /// What opens the auth service's keys at rest: its key-encryption key.
    pub fn sealer(&self) -> anyhow::Result<auth_service::sealing::Sealer> {
        let kek = auth_service::sealing::LocalKek::from_file(
            &self.dir().join("auth-secrets").join("auth.kek"),
        )?;
        Ok(auth_service::sealing::Sealer::new(std::sync::Arc::new(kek)))
    }

    /// Stops the services.
    pub async fn stop(self) {
        self.mesh.stop().await;
    }
}

/// Adds `authorization: Bearer <token>` to a request.
pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Installs logging once, only when `TEST_LOG=1`.
pub fn init_logs() {
    if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
        mesh_telemetry::init_with_default("info");
    }
}
