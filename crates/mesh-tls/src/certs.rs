//! The mesh's certificate authority: the auth service signs workloads' certificate requests
//! with it, `meshctl certs init` uses it to write a first set of files, and the tests use it to
//! make identities of any kind.
//!
//! Meshes that take their certificates from elsewhere (SPIRE, cert-manager, a cloud CA) only
//! need the PEM files; the rest of the mesh does not care who signed them.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateSigningRequestDer;
use time::{Duration, OffsetDateTime};

use crate::TlsError;
use crate::identity::SpiffeId;

/// The workloads every mesh has; `meshctl certs init` issues these plus any `--name`.
pub const DEFAULT_WORKLOADS: [&str; 4] = ["auth", "orders", "inventory", "meshctl"];

/// A CA (ECDSA P-256) of one trust domain: its certificate and signing key.
#[derive(Debug)]
pub struct CertAuthority {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// How long a freshly generated CA is valid.
pub const CA_LIFETIME: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// Certificates are valid from a little before they are signed, so a peer whose clock runs
/// slightly behind accepts them at once.
const BACKDATE: Duration = Duration::minutes(5);

/// The smallest RSA key a certificate request may carry (NIST SP 800-131A). Smaller ones are
/// refused by name: the crypto library will not even check their signatures, which would
/// otherwise surface as a puzzling "invalid signature".
pub const MIN_RSA_BITS: usize = 2048;

/// Refuses a request whose RSA key is shorter than [`MIN_RSA_BITS`], saying so. Anything this
/// cannot read is left to the full parse, which names the problem.
fn check_key_size(csr: &[u8]) -> Result<(), CsrError> {
    use x509_parser::prelude::FromDer as _;
    use x509_parser::public_key::PublicKey;
    let Ok((_, request)) =
        x509_parser::certification_request::X509CertificationRequest::from_der(csr)
    else {
        return Ok(());
    };
    if let Ok(PublicKey::RSA(rsa)) = request.certification_request_info.subject_pki.parsed() {
        let bits = rsa.key_size();
        if bits < MIN_RSA_BITS {
            return Err(CsrError::Malformed(format!(
                "the RSA key is {bits} bits; at least {MIN_RSA_BITS} are required \
                 (or use an EC P-256 key)"
            )));
        }
    }
    Ok(())
}

/// A leaf signed for a certificate request.
#[derive(Debug, Clone)]
pub struct SignedLeaf {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its serial number, hex.
    pub serial: String,
    /// When it stops being valid.
    pub not_after: std::time::SystemTime,
}

/// Why a certificate request was refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// Not a PKCS#10 request, or its signature does not verify (the requester does not hold
    /// the key it asks a certificate for).
    #[error("not a valid certificate request: {0}")]
    Malformed(String),
    /// The request names an identity other than the one the CA decided on.
    #[error("the request asks for {asked}, but the caller is {decided}")]
    OtherIdentity {
        /// What the request asked for.
        asked: String,
        /// What the CA decided from how the caller authenticated.
        decided: SpiffeId,
    },
    /// The request asks for a CA certificate.
    #[error("the request asks for a CA certificate")]
    AsksForCa,
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] TlsError),
}

/// A leaf certificate and its private key, both PEM.
#[derive(Debug)]
pub struct IssuedCert {
    /// The certificate chain (leaf only; the CA is in the trust bundle).
    pub cert_pem: String,
    /// The PKCS#8 private key. Written 0600, never logged.
    pub key_pem: String,
    /// The SPIFFE ID in the certificate's URI SAN.
    pub spiffe_id: SpiffeId,
}

impl IssuedCert {
    /// The certificate chain (PEM) and the private key, parsed.
    pub fn into_parts(self) -> Result<(String, crate::PrivateKeyDer<'static>), TlsError> {
        use rustls_pki_types::pem::PemObject;
        let key = crate::PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| {
            TlsError::Pem {
                what: "private key",
                path: String::new(),
                detail: e.to_string(),
            }
        })?;
        Ok((self.cert_pem, key))
    }
}

impl CertAuthority {
    /// Generates a CA for `trust_domain` (e.g. `mesh.local`).
    pub fn generate(trust_domain: &str) -> Result<Self, TlsError> {
        // Validate the domain by building an ID in it.
        SpiffeId::workload(trust_domain, "ca")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name =
            distinguished_name(&format!("Zero-Trust Mesh dev CA ({trust_domain})"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_LIFETIME;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its certificate and PKCS#8 key (both PEM), refusing a key that is not the
    /// certificate's.
    pub fn from_pem(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        SpiffeId::workload(trust_domain, "ca")?;
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let certs = crate::material::parse_certs(cert_pem, "CA certificate")?;
        let cert_spki = {
            use x509_parser::prelude::FromDer;
            x509_parser::certificate::X509Certificate::from_der(&certs[0])
                .map(|(_, cert)| cert.public_key().raw.to_vec())
                .unwrap_or_default()
        };
        if cert_spki != rcgen::PublicKeyData::subject_public_key_info(issuer.key()) {
            return Err(TlsError::Invalid {
                what: "CA key",
                value: "the key does not belong to the CA certificate".into(),
            });
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            issuer,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// The CA certificate, to be used as every workload's trust bundle.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PKCS#8 PEM: for sealing into a key store, never for logging.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The trust domain whose workloads this CA certifies.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Signs the certificate request `csr` (DER) for `spiffe_id`, which the caller decided from
    /// how the requester authenticated: the request contributes its public key (after its
    /// signature proves the requester holds the private half) and nothing else. A request that
    /// names another identity, or asks to be a CA, is refused.
    pub fn sign_request(
        &self,
        csr: &[u8],
        spiffe_id: &SpiffeId,
        lifetime: std::time::Duration,
    ) -> Result<SignedLeaf, CsrError> {
        check_key_size(csr)?;
        let request = CertificateSigningRequestParams::from_der(
            &CertificateSigningRequestDer::from(csr.to_vec()),
        )
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
        for san in &request.params.subject_alt_names {
            if let SanType::URI(uri) = san
                && uri.as_str() != spiffe_id.as_str()
            {
                return Err(CsrError::OtherIdentity {
                    asked: uri.as_str().to_owned(),
                    decided: spiffe_id.clone(),
                });
            }
        }
        if !matches!(request.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
            return Err(CsrError::AsksForCa);
        }
        let params = leaf_params(spiffe_id, lifetime)?;
        let not_after = params.not_after;
        let cert = params
            .signed_by(&request.public_key, &self.issuer)
            .map_err(TlsError::from)?;
        Ok(SignedLeaf {
            serial: serial_of(cert.der()),
            cert_pem: cert.pem(),
            not_after: not_after.into(),
        })
    }

    /// Makes a key and a certificate for `spiffe_id` valid for `lifetime`, both in memory: how
    /// the CA's own service certifies itself.
    pub fn issue_in_memory(
        &self,
        spiffe_id: &SpiffeId,
        lifetime: std::time::Duration,
    ) -> Result<IssuedCert, TlsError> {
        let key = KeyPair::generate()?;
        let cert = leaf_params(spiffe_id, lifetime)?.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            spiffe_id: spiffe_id.clone(),
        })
    }

    /// Issues a 90-day certificate for workload `name`: URI SAN `spiffe://<domain>/sa/<name>`,
    /// DNS SANs `<name>` and `localhost`, IP SAN 127.0.0.1, usable as TLS server and client.
    pub fn issue(&self, name: &str) -> Result<IssuedCert, TlsError> {
        self.issue_for(SpiffeId::workload(&self.trust_domain, name)?, name)
    }

    /// Issues a certificate like [`CertAuthority::issue`] but for any SPIFFE ID, also one outside the
    /// CA's trust domain: what a federated or compromised CA in the bundle could sign, and what
    /// the tests use to prove that policy, not the chain, decides who is in the mesh.
    pub fn issue_for(&self, spiffe_id: SpiffeId, name: &str) -> Result<IssuedCert, TlsError> {
        let mut params = leaf_params(&spiffe_id, std::time::Duration::from_secs(90 * 86_400))?;
        params.distinguished_name = distinguished_name(name);
        params.subject_alt_names[1] = SanType::DnsName(name.try_into()?);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            spiffe_id,
        })
    }

    /// Writes `issued` as `<stem>.pem`/`<stem>.key` into `dir` (key 0600), replacing any files
    /// of that name.
    pub fn write_issued(dir: &Path, stem: &str, issued: &IssuedCert) -> Result<(), TlsError> {
        for (path, contents, mode) in [
            (dir.join(format!("{stem}.pem")), &issued.cert_pem, 0o644),
            (dir.join(format!("{stem}.key")), &issued.key_pem, 0o600),
        ] {
            let io_err = |source| TlsError::Io {
                path: path.display().to_string(),
                source,
            };
            // Removed first, as in `write_dir`, so a replaced key never keeps wider permissions.
            let _ = std::fs::remove_file(&path);
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .and_then(|mut file| file.write_all(contents.as_bytes()))
                .map_err(io_err)?;
        }
        Ok(())
    }

    /// Writes `ca.pem` and `<name>.pem`/`<name>.key` for every name into `dir`, keys 0600.
    ///
    /// Refuses to replace any existing file unless `force` is set, so a second run cannot
    /// silently invalidate certificates that running workloads trust.
    pub fn write_dir(
        &self,
        dir: &Path,
        names: &[String],
        force: bool,
    ) -> Result<Vec<PathBuf>, TlsError> {
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| TlsError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut files = vec![(dir.join("ca.pem"), self.cert_pem.clone(), 0o644)];
        for name in names {
            let issued = self.issue(name)?;
            files.push((dir.join(format!("{name}.pem")), issued.cert_pem, 0o644));
            files.push((dir.join(format!("{name}.key")), issued.key_pem, 0o600));
        }
        let existing = files.iter().find(|(path, _, _)| path.exists());
        if let (false, Some((existing, _, _))) = (force, existing) {
            return Err(TlsError::Io {
                path: existing.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "already exists (pass --force to replace the whole set)",
                ),
            });
        }
        for (path, contents, mode) in &files {
            // Remove first so a replaced key file never keeps wider permissions.
            let _ = std::fs::remove_file(path);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(*mode)
                .open(path)
                .map_err(io_err(path))?;
            file.write_all(contents.as_bytes()).map_err(io_err(path))?;
        }
        Ok(files.into_iter().map(|(path, _, _)| path).collect())
    }
}

/// The parameters of every workload certificate: URI SAN `spiffe_id`, DNS SANs
/// `<workload name>` and `localhost`, IP SAN 127.0.0.1, TLS server and client, valid from
/// [`BACKDATE`] ago for `lifetime`.
fn leaf_params(
    spiffe_id: &SpiffeId,
    lifetime: std::time::Duration,
) -> Result<CertificateParams, TlsError> {
    let name = spiffe_id.workload_name();
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = distinguished_name(name);
    params.subject_alt_names = vec![
        SanType::URI(spiffe_id.as_str().try_into()?),
        SanType::DnsName(name.try_into()?),
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress([127, 0, 0, 1].into()),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
    Ok(params)
}

pub use crate::identity::serial_of;

/// Makes a P-256 key in memory and a certificate request for it (DER), naming `spiffe_id`.
/// The key never leaves the returned value: a workload keeps it to serve the certificate the
/// CA sends back.
pub fn new_key_and_request(
    spiffe_id: Option<&SpiffeId>,
) -> Result<(rustls_pki_types::PrivateKeyDer<'static>, Vec<u8>), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    if let Some(id) = spiffe_id {
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        params.distinguished_name = distinguished_name(id.workload_name());
    }
    let csr = params.serialize_request(&key)?;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    Ok((der.into(), csr.der().to_vec()))
}

/// Writes a secret (a key, a token) to `path`, mode 0600, replacing any file of that name: the
/// old file is removed first, so the new one never keeps wider permissions.
pub fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    let _ = std::fs::remove_file(path);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(|source| TlsError::Io {
            path: path.display().to_string(),
            source,
        })
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Zero-Trust Mesh");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Checks a workload name for certificates: 1 to 63 characters of `[a-z0-9-]`, not starting
/// with `-`, so it is valid both as a DNS label and as a SPIFFE path segment.
pub fn validate_workload_name(raw: &str) -> Result<(), TlsError> {
    let ok = !raw.is_empty()
        && raw.len() <= 63
        && !raw.starts_with('-')
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TlsError::Invalid {
            what: "workload name",
            value: raw.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::spiffe_id_of;
    use crate::material::{Reloadable, parse_certs};
    use rustls_pki_types::pem::PemObject;

    fn id(name: &str) -> SpiffeId {
        SpiffeId::workload("mesh.local", name).expect("id")
    }

    #[test]
    fn a_slot_holds_the_served_certificate_and_the_one_it_replaced_only() {
        let ca = CertAuthority::generate("mesh.local").expect("ca");
        let issue = || {
            let (chain, key) = ca
                .issue("orders")
                .expect("issued")
                .into_parts()
                .expect("parts");
            (parse_certs(&chain, "leaf").expect("pem"), key)
        };
        let (first, key) = issue();
        let slot = Reloadable::in_memory(first.clone(), key).expect("slot");
        let first = crate::Thumbprint::of(&first[0]);
        assert_eq!(slot.thumbprint(), first);
        let mut replaced = first;
        for _ in 0..3 {
            let (next, key) = issue();
            slot.install(next.clone(), key).expect("renewed");
            let next = crate::Thumbprint::of(&next[0]);
            assert_eq!(slot.thumbprint(), next);
            assert!(slot.held(next).is_some(), "the served one");
            assert!(slot.held(replaced).is_some(), "the one it replaced");
            replaced = next;
        }
        assert!(slot.held(first).is_none(), "three renewals ago: gone");
    }

    #[test]
    fn a_request_is_signed_for_the_identity_the_ca_decided_and_no_other() {
        let ca = CertAuthority::generate("mesh.local").expect("ca");
        let hour = std::time::Duration::from_secs(3600);

        // A request naming no identity gets the decided one, for the requester's own key.
        let (key, csr) = new_key_and_request(None).expect("csr");
        let leaf = ca.sign_request(&csr, &id("orders"), hour).expect("signed");
        let chain = parse_certs(&leaf.cert_pem, "leaf").expect("pem");
        assert_eq!(spiffe_id_of(&chain[0]), Some(id("orders")));
        let slot = Reloadable::in_memory(chain, key).expect("the key is the certificate's");
        assert_eq!(slot.serial(), leaf.serial);
        let remaining = slot.remaining();
        assert!(remaining > hour - std::time::Duration::from_secs(5) && remaining <= hour);

        // A request naming the decided identity is fine; naming another is refused.
        let (_, csr) = new_key_and_request(Some(&id("orders"))).expect("csr");
        ca.sign_request(&csr, &id("orders"), hour).expect("same id");
        let (_, csr) = new_key_and_request(Some(&id("auth"))).expect("csr");
        let refused = ca
            .sign_request(&csr, &id("orders"), hour)
            .expect_err("other id");
        assert!(
            matches!(refused, CsrError::OtherIdentity { .. }),
            "{refused}"
        );

        // Garbage, and a request whose signature does not verify, are malformed.
        let refused = ca
            .sign_request(b"not a csr", &id("orders"), hour)
            .expect_err("garbage");
        assert!(matches!(refused, CsrError::Malformed(_)), "{refused}");
        let (_, mut csr) = new_key_and_request(None).expect("csr");
        let last = csr.len() - 1;
        csr[last] ^= 0x55;
        let refused = ca
            .sign_request(&csr, &id("orders"), hour)
            .expect_err("bad signature");
        assert!(matches!(refused, CsrError::Malformed(_)), "{refused}");
    }

    /// A CSR made by `openssl req` (a tool we did not write) for a new RSA key of `bits`.
    fn openssl_rsa_csr(bits: u32) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("dir");
        let csr = dir.path().join("csr.der");
        let status = std::process::Command::new("openssl")
            .args(["req", "-new", "-newkey"])
            .arg(format!("rsa:{bits}"))
            .args([
                "-nodes",
                "-subj",
                "/CN=reports",
                "-outform",
                "DER",
                "-keyout",
            ])
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(&csr)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl req");
        std::fs::read(csr).expect("csr")
    }

    #[test]
    fn an_rsa_key_under_2048_bits_is_refused_by_its_size() {
        let ca = CertAuthority::generate("mesh.local").expect("ca");
        let hour = std::time::Duration::from_secs(3600);
        let refused = ca
            .sign_request(&openssl_rsa_csr(1024), &id("reports"), hour)
            .expect_err("RSA-1024");
        assert!(
            refused.to_string().contains("1024 bits; at least 2048"),
            "{refused}"
        );
        let signed = ca
            .sign_request(&openssl_rsa_csr(2048), &id("reports"), hour)
            .expect("RSA-2048 is signed");
        assert!(signed.cert_pem.contains("BEGIN CERTIFICATE"));
    }

    #[test]
    fn a_ca_reloads_from_its_pem_and_refuses_a_key_that_is_not_its_own() {
        let ca = CertAuthority::generate("mesh.local").expect("ca");
        let other = CertAuthority::generate("mesh.local").expect("other");
        let again =
            CertAuthority::from_pem("mesh.local", ca.cert_pem(), &ca.key_pem()).expect("same CA");
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let refused = CertAuthority::from_pem("mesh.local", ca.cert_pem(), &other.key_pem())
            .expect_err("mismatched key");
        assert!(refused.to_string().contains("does not belong"), "{refused}");
    }

    #[test]
    fn a_served_certificate_must_match_its_key() {
        let ca = CertAuthority::generate("mesh.local").expect("ca");
        let first = ca.issue("orders").expect("first");
        let second = ca.issue("orders").expect("second");
        let chain = parse_certs(&first.cert_pem, "leaf").expect("pem");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(second.key_pem.as_bytes())
            .expect("key");
        let refused = Reloadable::in_memory(chain, key).expect_err("mismatch");
        assert!(refused.to_string().contains("tls"), "{refused}");
    }
}
