//! `meshctl hash-secret`: a client secret from standard input, hashed for the auth config; or,
//! with `--generate`, a new random secret and its hash.

use std::io::Read;

use crate::{CliError, failed};

/// `meshctl hash-secret`.
pub fn run(args: &crate::cli::HashSecretArgs) -> Result<(), CliError> {
    if args.generate {
        let (secret, hash) = auth_service::passwords::generate_secret();
        println!("{secret}");
        println!("{hash}");
        return Ok(());
    }
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
