//! Loading PEM material, and the reloadable slot that serves a workload's own certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::{SpiffeId, spiffe_id_of};
use crate::{TlsError, provider};

/// A set of trust anchors (the CA certificates of the mesh), shared by every config built from it.
pub type TrustBundle = Arc<RootCertStore>;

/// The three PEM files a workload needs (`MESH_TLS_CERT`, `MESH_TLS_KEY`, `MESH_TLS_CA`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The workload's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The workload's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The trust bundle: the CA certificates peers must chain to.
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The conventional layout written by `meshctl certs init`: `DIR/<name>.pem`, `DIR/<name>.key`
    /// and `DIR/ca.pem`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            ca: dir.join("ca.pem"),
        }
    }

    /// Loads the trust bundle.
    pub fn trust_bundle(&self) -> Result<TrustBundle, TlsError> {
        load_trust_bundle(&self.ca)
    }
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |detail: String| TlsError::Pem {
        what: "certificate file",
        path: path.display().to_string(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no certificate found".into()));
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        what: "private key file",
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

/// Reads a trust bundle: every certificate in the file becomes a trust anchor.
pub fn load_trust_bundle(path: &Path) -> Result<TrustBundle, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what: "trust bundle",
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// A workload's own certificate and key, swappable at run time.
///
/// TLS configs hold resolvers that read this slot on every handshake, so [`Reloadable::reload`]
/// (after the files were renewed on disk) takes effect for the next connection without a restart.
/// Established connections keep the certificate they were made with.
#[derive(Debug)]
pub struct Reloadable {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    spiffe_id: RwLock<Option<SpiffeId>>,
}

impl Reloadable {
    /// Loads the certificate and key named by `files`, checking that they belong together.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let (key, id) = Self::read(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(key),
            spiffe_id: RwLock::new(id),
        }))
    }

    /// Re-reads the files. On error the previous certificate stays in service.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (key, id) = Self::read(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
        *self.spiffe_id.write().unwrap_or_else(|p| p.into_inner()) = id;
        Ok(())
    }

    /// The certificate currently served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The SPIFFE ID of the certificate currently served, if it has one.
    pub fn spiffe_id(&self) -> Option<SpiffeId> {
        self.spiffe_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The files this slot reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn read(files: &TlsFiles) -> Result<(Arc<CertifiedKey>, Option<SpiffeId>), TlsError> {
        let chain = load_certs(&files.cert)?;
        let key = load_key(&files.key)?;
        let id = spiffe_id_of(&chain[0]);
        let certified = CertifiedKey::from_der(chain, key, &provider())?;
        Ok((Arc::new(certified), id))
    }
}

impl rustls::server::ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for Reloadable {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
