//! One file per command; each exposes `run`, which [`crate::run`] dispatches to. Helpers every
//! command shares (the HTTPS client for the issuer, the mTLS channel as meshctl, the caller's
//! token) live here.

pub mod audit;
pub mod certs;
pub mod demo;
pub mod health;
pub mod identity;
pub mod inventory;
pub mod keys;
pub mod loadgen;
pub mod login;
pub mod orders;
pub mod policy;
pub mod secret;
pub mod stat;
pub mod token;
pub mod trace_sink;

use std::path::PathBuf;

use auth_interceptor::BearerToken;
use mesh_tls::client::MeshConnector;
use mesh_tls::{Reloadable, SpiffeId};

use crate::cli::{SessionArgs, TlsArgs};
use crate::session::{Session, default_session_path};
use crate::{CliError, failed};

/// An HTTPS client for `issuer`, trusting `tls_ca`; with `issuer_ip`, the issuer's host name
/// is pinned to that address.
pub(crate) fn https(
    tls_ca: &std::path::Path,
    issuer: &str,
    issuer_ip: Option<std::net::IpAddr>,
) -> Result<reqwest::Client, CliError> {
    let roots = mesh_tls::material::load_trust_bundle(tls_ca)
        .map_err(|e| CliError::Usage(format!("--tls-ca: {e}")))?;
    let mut builder =
        auth_interceptor::jwks::JwksSource::https_client_builder(roots).map_err(failed)?;
    if let Some(ip) = issuer_ip {
        let host = reqwest::Url::parse(issuer)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
            .ok_or_else(|| CliError::Usage(format!("--issuer {issuer:?}: not an https URL")))?;
        // reqwest takes the port from the URL; the one given here is ignored.
        builder = builder.resolve(&host, std::net::SocketAddr::new(ip, 0));
    }
    builder.build().map_err(failed)
}

pub(crate) fn session_path(path: &Option<PathBuf>) -> PathBuf {
    path.clone().unwrap_or_else(default_session_path)
}

/// The access token for `audience`: `--token`, else the session's (refreshed and saved).
pub(crate) async fn token_for(
    session: &SessionArgs,
    tls: &TlsArgs,
    audience: &str,
) -> Result<BearerToken, CliError> {
    let bearer = |token: String| {
        BearerToken::new(token).map_err(|e| CliError::Usage(format!("--token: {e}")))
    };
    if let Some(token) = &session.token {
        return bearer(token.clone());
    }
    let path = session_path(&session.session_file);
    let mut stored = Session::load(&path).map_err(CliError::Usage)?;
    let http = https(ca_file(tls)?, &stored.issuer, session.issuer_ip)?;
    let token = stored
        .access_token(&http, audience)
        .await
        .map_err(|error| match error.to_string() {
            // A refresh never widens a login: say how to get one that covers the audience.
            text if text.contains("invalid_target") => failed(format!(
                "{text}; log in again for it: meshctl login --audience \"orders inventory \
                 {audience}\""
            )),
            text => failed(text),
        })?;
    stored.save(&path).map_err(failed)?;
    bearer(token)
}

/// An mTLS channel to the auth service and the administrator's token for it.
pub(crate) async fn auth_admin(
    admin: &crate::cli::AuthAdmin,
) -> Result<(tonic::transport::Channel, BearerToken), CliError> {
    let token = token_for(&admin.session, &admin.tls, "auth").await?;
    Ok((connect(&admin.tls, "auth", &admin.addr)?, token))
}

/// The trust bundle file of `--tls-ca`.
pub(crate) fn ca_file(tls: &TlsArgs) -> Result<&std::path::Path, CliError> {
    tls.ca_file()
        .map(|path| path.as_path())
        .map_err(|e| CliError::Usage(e.to_string()))
}

pub(crate) fn status_error(status: tonic::Status) -> CliError {
    failed(format!("{:?}: {}", status.code(), status.message()))
}

/// An mTLS channel to `addr`, presenting meshctl's certificate, expecting workload `workload`.
pub(crate) fn connect(
    tls: &TlsArgs,
    workload: &str,
    addr: &str,
) -> Result<tonic::transport::Channel, CliError> {
    connector(tls, workload)?
        .channel(addr)
        .map_err(|e| CliError::Usage(format!("--addr: {e}")))
}

/// Like [`connect`], for a long-running client: balanced over every replica `addr` resolves to
/// (re-resolved as replicas come and go) or lists, each pinned to `workload`'s SPIFFE ID, and
/// traced with `telemetry`'s client layer.
pub(crate) fn connect_balanced(
    tls: &TlsArgs,
    workload: &str,
    addr: &str,
    flag: &str,
    telemetry: &mesh_telemetry::trace::Telemetry,
) -> Result<mesh_client::Transport, CliError> {
    let balanced = mesh_client::balance::Balanced::new(
        connector(tls, workload)?,
        addr,
        std::sync::Arc::new(mesh_client::Dns),
        mesh_client::RESOLVE_EVERY,
    )
    .map_err(|e| CliError::Usage(format!("{flag}: {e}")))?;
    Ok(mesh_client::Transport::new(tower::Layer::layer(
        &telemetry.client_layer(addr),
        balanced,
    )))
}

/// meshctl's certificate, trusting `--tls-ca`, expecting workload `workload`.
fn connector(tls: &TlsArgs, workload: &str) -> Result<MeshConnector, CliError> {
    let files = tls.files().map_err(|e| CliError::Usage(e.to_string()))?;
    let roots = files
        .trust_bundle()
        .map_err(|e| CliError::Usage(format!("--tls-ca: {e}")))?;
    let identity = Reloadable::load(files)
        .map_err(|e| CliError::Usage(format!("--tls-cert/--tls-key: {e}")))?;
    let expected = SpiffeId::workload(&tls.trust_domain, workload)
        .map_err(|e| CliError::Usage(format!("--workload/--trust-domain: {e}")))?;
    MeshConnector::new(identity, roots, expected)
        .map_err(|e| CliError::Usage(format!("--tls: {e}")))
}
