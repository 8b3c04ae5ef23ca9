//! `meshctl token`: a client-credentials token, printed (or as JSON).

use mesh_dev::oauth;

use super::https;
use crate::cli::TokenArgs;
use crate::{CliError, failed};

/// `meshctl token`.
pub async fn run(args: TokenArgs) -> Result<(), CliError> {
    let http = https(&args.reach.tls_ca, &args.issuer, args.reach.issuer_ip)?;
    let credentials = oauth::ClientCredentials {
        client_id: args.client_id,
        client_secret: args.client_secret,
    };
    let response = oauth::client_credentials(
        &http,
        &args.issuer,
        &credentials,
        &args.audience,
        &args.scopes,
    )
    .await
    .map_err(failed)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "access_token": response.access_token,
                "token_type": response.token_type,
                "expires_in": response.expires_in,
                "scope": response.scope,
            })
        );
    } else {
        println!("{}", response.access_token);
    }
    Ok(())
}
