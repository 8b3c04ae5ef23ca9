//! Loading PEM material, and the two swappable slots of a workload: its own certificate
//! ([`Reloadable`]) and the CAs it trusts ([`Trust`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::{SpiffeId, Thumbprint, spiffe_id_of};
use crate::{TlsError, provider};

/// The trust bundle of a workload, shared by every TLS config built from it and swappable at
/// run time (see [`Trust`]).
pub type TrustBundle = Arc<Trust>;

/// The CA certificates a workload trusts, replaceable while it runs.
///
/// A mesh rotates its CA by adding the new CA to every bundle, re-issuing the leaves, then
/// removing the old one; every verifier of the process reads this slot on each handshake, so
/// each step takes effect for the next connection without a restart. The bundle may hold any
/// number of CAs.
#[derive(Debug)]
pub struct Trust {
    current: RwLock<Arc<Anchors>>,
}

/// One version of the bundle, with the verifiers built from it (built once per version, not per
/// handshake).
#[derive(Debug)]
pub(crate) struct Anchors {
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
    pub(crate) server_verifier: Arc<WebPkiServerVerifier>,
    pub(crate) pem: String,
}

impl Trust {
    /// A bundle of the CA certificates in `pem` (at least one).
    pub fn from_pem(pem: &str) -> Result<TrustBundle, TlsError> {
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(Anchors::parse(pem, "trust bundle")?)),
        }))
    }

    /// Replaces the bundle with the CAs in `pem`. On error the current bundle stays.
    pub fn replace_pem(&self, pem: &str) -> Result<(), TlsError> {
        let anchors = Arc::new(Anchors::parse(pem, "trust bundle")?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = anchors;
        Ok(())
    }

    /// The trust anchors as they stand.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.anchors().roots.clone()
    }

    /// The bundle as they stand, PEM.
    pub fn pem(&self) -> String {
        self.anchors().pem.clone()
    }

    /// How many CAs the bundle holds.
    pub fn len(&self) -> usize {
        self.anchors().roots.len()
    }

    /// Whether the bundle is empty (never, once built: an empty bundle is refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn anchors(&self) -> Arc<Anchors> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Anchors {
    fn parse(pem: &str, what: &'static str) -> Result<Self, TlsError> {
        let invalid = |detail: String| TlsError::Pem {
            what,
            path: String::new(),
            detail,
        };
        let certs = parse_certs(pem, what)?;
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|e| invalid(e.to_string()))?;
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build()?;
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            roots,
            client_verifier,
            server_verifier,
            pem: pem.to_owned(),
        })
    }
}

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
    let pem = std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Trust::from_pem(&pem).map_err(|e| at_path(e, path))
}

/// Every certificate in a PEM text (at least one).
pub fn parse_pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(pem, "certificate")
}

/// Every certificate in a PEM text (at least one), errors naming `what`.
pub(crate) fn parse_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |detail: String| TlsError::Pem {
        what,
        path: String::new(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("no certificate found".into()));
    }
    Ok(certs)
}

fn at_path(error: TlsError, path: &Path) -> TlsError {
    match error {
        TlsError::Pem { what, detail, .. } => TlsError::Pem {
            what,
            path: path.display().to_string(),
            detail,
        },
        other => other,
    }
}

/// A workload's own certificate and key, swappable at run time.
///
/// TLS configs hold resolvers that read this slot on every handshake, so a swap takes effect
/// for the next connection without a restart; established connections keep the certificate
/// they were made with. The slot is filled from files ([`Reloadable::load`], re-read by
/// [`Reloadable::reload`]) or from memory ([`Reloadable::in_memory`], replaced by
/// [`Reloadable::install`]) when the certificate comes from the mesh CA and the key was never
/// written anywhere. Whatever the source, a chain whose leaf does not match the key is refused
/// and the previous certificate stays in service.
///
/// The certificate replaced last is kept beside the current one ([`Reloadable::held`]): a call
/// whose token is bound to it (RFC 8705) while the swap happens is still sent with it, over a
/// connection that presents it ([`crate::client::CertChannel`]).
#[derive(Debug)]
pub struct Reloadable {
    files: Option<TlsFiles>,
    current: RwLock<Certificates>,
}

/// The certificate served, and the one it replaced.
#[derive(Debug)]
struct Certificates {
    served: Arc<Served>,
    replaced: Option<Arc<Served>>,
}

impl Certificates {
    fn first(served: Served) -> RwLock<Self> {
        RwLock::new(Self {
            served: Arc::new(served),
            replaced: None,
        })
    }
}

/// One certificate as served, with what the renewal logic and operators read from it.
#[derive(Debug)]
struct Served {
    key: Arc<CertifiedKey>,
    spiffe_id: Option<SpiffeId>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: String,
    thumbprint: Thumbprint,
}

impl Reloadable {
    /// Loads the certificate and key named by `files`, checking that they belong together.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let served = Self::read(&files)?;
        Ok(Arc::new(Self {
            files: Some(files),
            current: Certificates::first(served),
        }))
    }

    /// A slot holding `chain` (leaf first) and `key`, which exist only in memory.
    pub fn in_memory(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            files: None,
            current: Certificates::first(Served::new(chain, key)?),
        }))
    }

    /// Serves `chain` and `key` from the next handshake on. On error (no certificate, a key
    /// that is not the leaf's) the current certificate stays in service.
    pub fn install(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsError> {
        self.serve(Served::new(chain, key)?);
        Ok(())
    }

    /// Re-reads the files. On error the previous certificate stays in service.
    pub fn reload(&self) -> Result<(), TlsError> {
        let files = self.files.as_ref().ok_or(TlsError::Invalid {
            what: "reload",
            value: "this certificate is held in memory, not read from files".into(),
        })?;
        self.serve(Self::read(files)?);
        Ok(())
    }

    fn serve(&self, served: Served) {
        let mut certificates = self.current.write().unwrap_or_else(|p| p.into_inner());
        let replaced = std::mem::replace(&mut certificates.served, Arc::new(served));
        certificates.replaced = Some(replaced);
    }

    /// The certificate currently served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.served().key.clone()
    }

    /// The thumbprint of the certificate currently served.
    pub fn thumbprint(&self) -> Thumbprint {
        self.served().thumbprint
    }

    /// The certificate with `thumbprint`, while this workload still holds it: the one served or
    /// the one it replaced last.
    pub fn held(&self, thumbprint: Thumbprint) -> Option<Arc<CertifiedKey>> {
        let certificates = self.current.read().unwrap_or_else(|p| p.into_inner());
        std::iter::once(&certificates.served)
            .chain(&certificates.replaced)
            .find(|served| served.thumbprint == thumbprint)
            .map(|served| served.key.clone())
    }

    /// The SPIFFE ID of the certificate currently served, if it has one.
    pub fn spiffe_id(&self) -> Option<SpiffeId> {
        self.served().spiffe_id.clone()
    }

    /// The validity of the certificate currently served.
    pub fn validity(&self) -> (SystemTime, SystemTime) {
        let served = self.served();
        (served.not_before, served.not_after)
    }

    /// The serial number (hex) of the certificate currently served.
    pub fn serial(&self) -> String {
        self.served().serial.clone()
    }

    /// How long the certificate currently served remains valid (zero once it has expired).
    pub fn remaining(&self) -> Duration {
        self.served()
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }

    /// The files this slot reads, when it reads files.
    pub fn files(&self) -> Option<&TlsFiles> {
        self.files.as_ref()
    }

    fn served(&self) -> Arc<Served> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .served
            .clone()
    }

    fn read(files: &TlsFiles) -> Result<Served, TlsError> {
        let chain = load_certs(&files.cert)?;
        let key = load_key(&files.key)?;
        Served::new(chain, key).map_err(|e| at_path(e, &files.cert))
    }
}

impl Served {
    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or_else(|| TlsError::Pem {
            what: "certificate chain",
            path: String::new(),
            detail: "no certificate found".into(),
        })?;
        let (not_before, not_after) =
            crate::identity::validity_of(leaf).ok_or_else(|| TlsError::Pem {
                what: "certificate chain",
                path: String::new(),
                detail: "the leaf certificate does not parse".into(),
            })?;
        let spiffe_id = spiffe_id_of(leaf);
        let serial = crate::identity::serial_of(leaf);
        let thumbprint = Thumbprint::of(leaf);
        let certified = CertifiedKey::from_der(chain, key, &provider())?;
        // from_der lets an undecidable comparison pass; a mesh certificate must prove it.
        certified.keys_match()?;
        Ok(Self {
            key: Arc::new(certified),
            spiffe_id,
            not_before,
            not_after,
            serial,
            thumbprint,
        })
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
