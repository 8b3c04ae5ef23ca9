//! `meshctl hash-secret`: a client secret from standard input, hashed for the auth config.

use std::io::Read;

use crate::{CliError, failed};

/// `meshctl hash-secret`.
pub fn run() -> Result<(), CliError> {
    let mut secret = String::new();
    std::io::stdin()
        .read_to_string(&mut secret)
        .map_err(|e| CliError::Usage(format!("stdin: {e}")))?;
    let secret = secret.trim_end_matches(['\n', '\r']);
    if secret.len() < 16 {
        return Err(CliError::Usage(
            "stdin: a client secret must be at least 16 characters".into(),
        ));
    }
    let hash = auth_service::clients::hash_secret(secret).map_err(failed)?;
    println!("{hash}");
    Ok(())
}
