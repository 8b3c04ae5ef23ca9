//! The mesh CA as the auth service keeps it: CA certificates and their sealed keys in SQLite,
//! the trust bundle they make, and the three steps of a CA rotation.
//!
//! A rotation never leaves a workload with a certificate its peers do not trust:
//! 1. **add**: a new CA is generated and published in the trust bundle; the current CA still
//!    signs. Workloads receive the new bundle with their next certificate.
//! 2. **activate**, once every workload has renewed since the add (one certificate lifetime):
//!    the new CA signs; the previous one stays in the bundle.
//! 3. **retire**, once every certificate the previous CA signed has expired (one more
//!    lifetime): the previous CA leaves the bundle.
//!
//! The waits are enforced: a step taken too early is refused with the time left.

use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use mesh_service::Db;
use mesh_tls::SpiffeId;
use mesh_tls::certs::{CertAuthority, CsrError, IssuedCert, SignedLeaf};

use crate::sealing::{SealError, Sealer};

/// Why the CA could not load, change or sign.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// The `authorities` table could not be read or written.
    #[error("CA in the database: {0}")]
    Storage(#[from] sqlx::Error),
    /// A CA key does not open with the configured key-encryption key.
    #[error(transparent)]
    Sealed(#[from] SealError),
    /// A stored or imported CA does not parse, or generating one failed.
    #[error("CA: {0}")]
    Tls(#[from] mesh_tls::TlsError),
    /// A rotation step that cannot be taken now.
    #[error("{0}")]
    Step(String),
}

/// A CA of the bundle, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityInfo {
    /// The CA certificate's serial, hex.
    pub serial: String,
    /// `next`, `current` or `previous`.
    pub state: &'static str,
    /// When the CA certificate expires, seconds since the epoch.
    pub not_after: i64,
}

/// The CA as loaded: the one that signs, and the bundle.
struct Loaded {
    signing: Arc<CertAuthority>,
    bundle_pem: String,
    authorities: Vec<AuthorityInfo>,
    /// When the next CA was added (for the activate guard).
    next_added_at: Option<i64>,
    /// When the previous CA stopped signing (for the retire guard).
    previous_retired_at: Option<i64>,
}

/// A stored CA: serial, certificate, sealed key, not_after, added_at, activated_at, retired_at.
type Row = (String, String, Vec<u8>, i64, i64, Option<i64>, Option<i64>);

fn seal_label(serial: &str) -> String {
    format!("ca-key:{serial}")
}

/// The CAs of the mesh.
pub struct AuthorityStore {
    db: Db,
    sealer: Sealer,
    trust_domain: String,
    cert_lifetime: Duration,
    loaded: RwLock<Arc<Loaded>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for AuthorityStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityStore")
            .field("authorities", &self.loaded().authorities)
            .finish_non_exhaustive()
    }
}

impl AuthorityStore {
    /// Opens the CA of `trust_domain`. With no CA stored yet, `import` (a CA certificate and its
    /// PKCS#8 key, PEM, as `meshctl certs init` writes them) becomes the signing CA; with one
    /// stored, `import` is ignored. Without either there is no CA (`Ok(None)`): the mesh's
    /// certificates come from elsewhere.
    pub async fn open(
        db: Db,
        sealer: Sealer,
        trust_domain: &str,
        import: Option<(String, String)>,
        cert_lifetime: Duration,
    ) -> Result<Option<Self>, AuthorityError> {
        // Serialized, so replicas starting together on one database import the CA once.
        let mut tx = db.begin_serialized("authorities").await?;
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM authorities")
            .fetch_one(&mut *tx)
            .await?;
        match (stored, import) {
            (0, None) => return Ok(None),
            (0, Some((cert_pem, key_pem))) => {
                let ca = CertAuthority::from_pem(trust_domain, &cert_pem, &key_pem)?;
                let now = crate::unix_now() as i64;
                insert(&mut tx, &sealer, &ca, now, Some(now)).await?;
                tracing::info!("CA imported into the database, sealed; the key file can go");
            }
            (_, Some(_)) => {
                tracing::info!("the database holds the CA already: the CA key file is not read");
            }
            _ => {}
        }
        tx.commit().await?;
        let loaded = load(&db, &sealer, trust_domain).await?;
        Ok(Some(Self {
            db,
            sealer,
            trust_domain: trust_domain.to_owned(),
            cert_lifetime,
            loaded: RwLock::new(Arc::new(loaded)),
            changed: tokio::sync::watch::channel(0).0,
        }))
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How long the certificates this CA signs live.
    pub fn cert_lifetime(&self) -> Duration {
        self.cert_lifetime
    }

    /// Every CA workloads must trust now, PEM.
    pub fn bundle_pem(&self) -> String {
        self.loaded().bundle_pem.clone()
    }

    /// The CAs of the bundle.
    pub fn authorities(&self) -> Vec<AuthorityInfo> {
        self.loaded().authorities.clone()
    }

    /// Changes whenever the bundle or the signing CA changes.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Signs a workload's certificate request for `spiffe_id` (see
    /// [`CertAuthority::sign_request`]).
    pub fn sign(&self, csr: &[u8], spiffe_id: &SpiffeId) -> Result<SignedLeaf, CsrError> {
        self.loaded()
            .signing
            .sign_request(csr, spiffe_id, self.cert_lifetime)
    }

    /// A key and certificate for the auth service itself, made in memory.
    pub fn issue_own(&self, spiffe_id: &SpiffeId) -> Result<IssuedCert, mesh_tls::TlsError> {
        self.loaded()
            .signing
            .issue_in_memory(spiffe_id, self.cert_lifetime)
    }

    /// Step 1: generates a CA and publishes it in the bundle.
    pub async fn add(&self) -> Result<(), AuthorityError> {
        let mut tx = self.db.begin_serialized("authorities").await?;
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM authorities WHERE activated_at IS NULL")
                .fetch_one(&mut *tx)
                .await?;
        if pending > 0 {
            return Err(AuthorityError::Step(
                "a new CA is already in the bundle: activate it next".into(),
            ));
        }
        let ca = CertAuthority::generate(&self.trust_domain)?;
        insert(&mut tx, &self.sealer, &ca, crate::unix_now() as i64, None).await?;
        tx.commit().await?;
        self.reload("added").await
    }

    /// Step 2: the new CA signs from now on; the one that signed stays in the bundle.
    pub async fn activate(&self) -> Result<(), AuthorityError> {
        self.refresh().await?;
        let Some(added_at) = self.loaded().next_added_at else {
            return Err(AuthorityError::Step(
                "no new CA in the bundle: add one first".into(),
            ));
        };
        self.wait_passed(added_at, "every workload has renewed with the new bundle")?;
        if self.loaded().previous_retired_at.is_some() {
            return Err(AuthorityError::Step(
                "the previous CA is still in the bundle: retire it first".into(),
            ));
        }
        let now = crate::unix_now() as i64;
        let mut tx = self.db.begin_serialized("authorities").await?;
        sqlx::query(
            "UPDATE authorities SET retired_at = $1 \
             WHERE activated_at IS NOT NULL AND retired_at IS NULL",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE authorities SET activated_at = $1 WHERE activated_at IS NULL")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.reload("activated").await
    }

    /// Step 3: the previous CA leaves the bundle.
    pub async fn retire(&self) -> Result<(), AuthorityError> {
        self.refresh().await?;
        let Some(retired_at) = self.loaded().previous_retired_at else {
            return Err(AuthorityError::Step("no previous CA in the bundle".into()));
        };
        self.wait_passed(
            retired_at,
            "every certificate the previous CA signed has expired",
        )?;
        sqlx::query(
            "UPDATE authorities SET removed_at = $1 \
             WHERE retired_at IS NOT NULL AND removed_at IS NULL",
        )
        .bind(crate::unix_now() as i64)
        .execute(self.db.pool())
        .await?;
        self.reload("retired").await
    }

    /// Refuses a step until one certificate lifetime has passed since `since`.
    fn wait_passed(&self, since: i64, until: &str) -> Result<(), AuthorityError> {
        let ready = since + self.cert_lifetime.as_secs() as i64;
        let now = crate::unix_now() as i64;
        if now < ready {
            return Err(AuthorityError::Step(format!(
                "too early: wait {}s more, until {until} (one certificate lifetime)",
                ready - now
            )));
        }
        Ok(())
    }

    /// Re-reads the CAs, for a replica sharing the database with others that may have taken a
    /// rotation step: when anything changed, the new state is swapped in and
    /// [`AuthorityStore::changes`] fires. Returns whether it changed.
    pub async fn refresh(&self) -> Result<bool, AuthorityError> {
        let loaded = load(&self.db, &self.sealer, &self.trust_domain).await?;
        if loaded.authorities == self.loaded().authorities {
            return Ok(false);
        }
        tracing::info!(authorities = ?loaded.authorities, "CA state changed in the database");
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        self.changed.send_modify(|n| *n += 1);
        Ok(true)
    }

    async fn reload(&self, step: &str) -> Result<(), AuthorityError> {
        let loaded = load(&self.db, &self.sealer, &self.trust_domain).await?;
        tracing::info!(step, authorities = ?loaded.authorities, "CA rotation step");
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }
}

async fn insert(
    tx: &mut mesh_service::Tx,
    sealer: &Sealer,
    ca: &CertAuthority,
    added_at: i64,
    activated_at: Option<i64>,
) -> Result<(), AuthorityError> {
    let der = mesh_tls::material::parse_pem_certs(ca.cert_pem())?;
    let serial = mesh_tls::certs::serial_of(&der[0]);
    let not_after = mesh_tls::identity::validity_of(&der[0])
        .and_then(|(_, not_after)| not_after.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);
    sqlx::query(
        "INSERT INTO authorities \
         (serial, cert_pem, sealed_key, not_after, added_at, activated_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&serial)
    .bind(ca.cert_pem())
    .bind(sealer.seal(&seal_label(&serial), ca.key_pem().as_bytes())?)
    .bind(not_after)
    .bind(added_at)
    .bind(activated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn load(db: &Db, sealer: &Sealer, trust_domain: &str) -> Result<Loaded, AuthorityError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT serial, cert_pem, sealed_key, not_after, added_at, activated_at, retired_at \
         FROM authorities WHERE removed_at IS NULL ORDER BY added_at, activated_at IS NULL, activated_at, serial",
    )
    .fetch_all(db.pool())
    .await?;
    let mut signing = None;
    let mut bundle_pem = String::new();
    let mut authorities = Vec::new();
    let (mut next_added_at, mut previous_retired_at) = (None, None);
    for (serial, cert_pem, sealed_key, not_after, added_at, activated_at, retired_at) in rows {
        let state = match (activated_at, retired_at) {
            (None, _) => {
                next_added_at = Some(added_at);
                "next"
            }
            (Some(_), None) => {
                let key = sealer.open(&seal_label(&serial), &sealed_key)?;
                let key = String::from_utf8(key).map_err(|_| SealError::Damaged {
                    label: seal_label(&serial),
                    detail: "not PEM",
                })?;
                signing = Some(Arc::new(CertAuthority::from_pem(
                    trust_domain,
                    &cert_pem,
                    &key,
                )?));
                "current"
            }
            (Some(_), Some(retired_at)) => {
                previous_retired_at = Some(retired_at);
                "previous"
            }
        };
        bundle_pem.push_str(cert_pem.trim_end());
        bundle_pem.push('\n');
        authorities.push(AuthorityInfo {
            serial,
            state,
            not_after,
        });
    }
    let signing = signing
        .ok_or_else(|| AuthorityError::Step("the database holds CAs but none that signs".into()))?;
    Ok(Loaded {
        signing,
        bundle_pem,
        authorities,
        next_added_at,
        previous_retired_at,
    })
}

/// How often a replica re-reads the CAs for a rotation step another replica took.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// Re-reads the CAs every [`REFRESH_EVERY`] while `store` lives, so every replica on one
/// database follows a rotation step taken at any of them: its trust bundle and signing CA
/// change, and [`AuthorityStore::changes`] makes it renew its own certificate.
pub fn spawn_refresh(store: std::sync::Weak<AuthorityStore>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(REFRESH_EVERY).await;
            let Some(store) = store.upgrade() else {
                return;
            };
            if let Err(error) = store.refresh().await {
                tracing::warn!(%error, "re-reading the CAs failed; retrying");
            }
        }
    });
}
