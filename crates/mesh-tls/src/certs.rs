//! A development certificate authority: what `meshctl certs init` and the tests use to give every
//! workload a certificate with its SPIFFE ID.
//!
//! Production meshes get their certificates from a real CA (SPIRE, cert-manager, a cloud CA);
//! the rest of the mesh only needs the PEM files this module writes.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::TlsError;
use crate::identity::SpiffeId;

/// The workloads every mesh has; `meshctl certs init` issues these plus any `--name`.
pub const DEFAULT_WORKLOADS: [&str; 4] = ["auth", "orders", "inventory", "meshctl"];

/// A freshly generated CA (ECDSA P-256), valid for a year.
#[derive(Debug)]
pub struct DevCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
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

impl DevCa {
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
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(365);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, to be used as every workload's trust bundle.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a 90-day certificate for workload `name`: URI SAN `spiffe://<domain>/sa/<name>`,
    /// DNS SANs `<name>` and `localhost`, IP SAN 127.0.0.1, usable as TLS server and client.
    pub fn issue(&self, name: &str) -> Result<IssuedCert, TlsError> {
        self.issue_for(SpiffeId::workload(&self.trust_domain, name)?, name)
    }

    /// Issues a certificate like [`DevCa::issue`] but for any SPIFFE ID, also one outside the
    /// CA's trust domain: what a federated or compromised CA in the bundle could sign, and what
    /// the tests use to prove that policy, not the chain, decides who is in the mesh.
    pub fn issue_for(&self, spiffe_id: SpiffeId, name: &str) -> Result<IssuedCert, TlsError> {
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
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(90);
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
