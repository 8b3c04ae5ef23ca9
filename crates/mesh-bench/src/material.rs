//! What a benchmark run shares between the load generator and its server processes: a dev CA
//! with a server and a client workload, an Ed25519 signing key (tokens are signed exactly as
//! our issuer signs them and verified by the real `TokenVerifier`) and an audit key.

use std::path::{Path, PathBuf};

use anyhow::Context;
use auth_interceptor::claims::Audience;
use auth_interceptor::{AccessClaims, KeySet};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh_tls::TlsFiles;
use mesh_tls::certs::CertAuthority;

/// The issuer named in benchmark tokens (never contacted: keys are handed to the verifier).
pub const ISSUER: &str = "https://issuer.bench.invalid";
/// The audience of the benchmark server.
pub const AUDIENCE: &str = "bench";
/// The scope the benchmark RPC requires.
pub const SCOPE: &str = "bench:read";
/// The trust domain of the benchmark's certificates and policy.
pub const TRUST_DOMAIN: &str = "mesh.local";

/// The server's workload name (SPIFFE ID `spiffe://mesh.local/sa/bench-server`).
pub const SERVER: &str = "bench-server";
/// The client's workload name.
pub const CLIENT: &str = "bench-client";
const KID: &str = "bench-key";

/// A directory of benchmark material.
#[derive(Debug, Clone)]
pub struct Material {
    dir: PathBuf,
}

impl Material {
    /// Writes fresh material into `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        CertAuthority::generate(TRUST_DOMAIN)?.write_dir(
            dir,
            &[SERVER.to_owned(), CLIENT.to_owned()],
            true,
        )?;
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("generating the signing key"))?;
        std::fs::write(dir.join("signing.pk8"), pkcs8.as_ref())?;
        auth_interceptor::audit::write_new_key(&dir.join("audit.key"))?;
        Ok(Self::open(dir))
    }

    /// Material written earlier by [`Material::create`].
    pub fn open(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's certificate, key and trust bundle.
    pub fn server_files(&self) -> TlsFiles {
        TlsFiles::in_dir(&self.dir, SERVER)
    }

    /// The client's certificate, key and trust bundle.
    pub fn client_files(&self) -> TlsFiles {
        TlsFiles::in_dir(&self.dir, CLIENT)
    }

    fn pkcs8(&self) -> anyhow::Result<Vec<u8>> {
        std::fs::read(self.dir.join("signing.pk8")).context("signing.pk8")
    }

    /// The token-signing key's public half (32 bytes, Ed25519).
    pub fn public_key(&self) -> anyhow::Result<Vec<u8>> {
        let pair = Ed25519KeyPair::from_pkcs8(&self.pkcs8()?)
            .map_err(|_| anyhow::anyhow!("signing.pk8 is not an Ed25519 key"))?;
        Ok(pair.public_key().as_ref().to_vec())
    }

    /// The verification key set, built from a JWKS exactly as a verifier builds it.
    pub fn key_set(&self) -> anyhow::Result<KeySet> {
        let jwks = serde_json::json!({ "keys": [{
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": KID,
            "x": URL_SAFE_NO_PAD.encode(self.public_key()?),
        }]});
        Ok(KeySet::from_jwks(&serde_json::from_value(jwks)?))
    }

    /// A token for the benchmark server, valid for an hour, signed as our issuer signs.
    pub fn token(&self, subject: &str) -> anyhow::Result<String> {
        let now = auth_interceptor::verify::unix_now();
        let claims = AccessClaims {
            iss: ISSUER.into(),
            sub: subject.into(),
            aud: Audience::One(AUDIENCE.into()),
            client_id: CLIENT.into(),
            scope: SCOPE.into(),
            exp: now + 3600,
            iat: now,
            nbf: Some(now),
            jti: format!("bench-{subject}-{now}"),
            act: None,
            sid: None,
            cnf: None,
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(KID.into());
        let key = jsonwebtoken::EncodingKey::from_ed_der(&self.pkcs8()?);
        Ok(jsonwebtoken::encode(&header, &claims, &key)?)
    }

    /// The audit log's HMAC key file.
    pub fn audit_key(&self) -> PathBuf {
        self.dir.join("audit.key")
    }
}
