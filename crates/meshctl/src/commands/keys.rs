//! `meshctl keys rotate`.

use mesh_proto::auth::v1::RotateSigningKeyRequest;
use mesh_proto::auth::v1::auth_service_client::AuthServiceClient;

use super::{auth_admin, status_error};
use crate::CliError;
use crate::cli::KeysCommand;

/// `meshctl keys …`.
pub async fn run(command: KeysCommand) -> Result<(), CliError> {
    let KeysCommand::Rotate { admin } = command;
    let (channel, token) = auth_admin(&admin).await?;
    let rotated = AuthServiceClient::new(channel)
        .rotate_signing_key(token.request(RotateSigningKeyRequest {}))
        .await
        .map_err(status_error)?
        .into_inner();
    println!("signing   {}", rotated.signing_kid);
    println!("next      {}", rotated.next_kid);
    for kid in &rotated.retired_kids {
        println!("retired   {kid}");
    }
    Ok(())
}
