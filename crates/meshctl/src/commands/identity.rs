//! `meshctl identity join-token` and `meshctl ca rotate`: the mesh CA's operator commands.

use mesh_proto::identity::v1::identity_admin_client::IdentityAdminClient;
use mesh_proto::identity::v1::rotate_authority_request::Step;
use mesh_proto::identity::v1::{CreateJoinTokenRequest, RotateAuthorityRequest};

use super::{auth_admin, status_error};
use crate::cli::{CaCommand, CaStep, IdentityCommand};
use crate::{CliError, failed};

/// `meshctl identity …`.
pub async fn run(command: IdentityCommand) -> Result<(), CliError> {
    let IdentityCommand::JoinToken {
        workload,
        ttl,
        out,
        admin,
    } = command;
    mesh_tls::certs::validate_workload_name(&workload)
        .map_err(|e| CliError::Usage(format!("--workload: {e}")))?;
    let (channel, token) = auth_admin(&admin).await?;
    let created = IdentityAdminClient::new(channel)
        .create_join_token(token.request(CreateJoinTokenRequest {
            workload,
            ttl_seconds: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
        }))
        .await
        .map_err(status_error)?
        .into_inner();
    match out {
        Some(path) => {
            mesh_tls::certs::write_private(&path, &format!("{}\n", created.token))
                .map_err(|e| failed(format!("--out: {e}")))?;
            println!(
                "join token for {} written to {} (expires at {})",
                created.spiffe_id,
                path.display(),
                created.expires_at
            );
        }
        None => {
            eprintln!(
                "join token for {} (single use, expires at {}):",
                created.spiffe_id, created.expires_at
            );
            println!("{}", created.token);
        }
    }
    Ok(())
}

/// `meshctl ca …`.
pub async fn run_ca(command: CaCommand) -> Result<(), CliError> {
    let CaCommand::Rotate {
        step,
        bundle_out,
        admin,
    } = command;
    let (channel, token) = auth_admin(&admin).await?;
    let step = match step {
        CaStep::Add => Step::Add,
        CaStep::Activate => Step::Activate,
        CaStep::Retire => Step::Retire,
    };
    let rotated = IdentityAdminClient::new(channel)
        .rotate_authority(token.request(RotateAuthorityRequest { step: step.into() }))
        .await
        .map_err(status_error)?
        .into_inner();
    for authority in &rotated.authorities {
        println!(
            "{:<9} {}  (expires at {})",
            authority.state, authority.serial, authority.not_after
        );
    }
    if let Some(path) = bundle_out {
        // Written aside and renamed, so a watcher never reads half a bundle.
        let aside = path.with_extension("next");
        std::fs::write(&aside, &rotated.trust_bundle_pem)
            .and_then(|()| std::fs::rename(&aside, &path))
            .map_err(|e| failed(format!("--bundle-out {}: {e}", path.display())))?;
        println!("trust bundle written to {}", path.display());
    }
    Ok(())
}
