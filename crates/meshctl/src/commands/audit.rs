//! `meshctl audit verify|keygen`: check an HMAC-chained audit log, make a key for one.

use std::path::PathBuf;

use crate::cli::AuditCommand;
use crate::{CliError, failed};

/// `meshctl audit …`.
pub fn run(command: AuditCommand) -> Result<(), CliError> {
    match command {
        AuditCommand::Verify { file, key_file } => verify(file, key_file),
        AuditCommand::Keygen { out } => keygen(out),
    }
}

/// Exit 0 and OK, or name the first broken record and exit 1.
fn verify(file: PathBuf, key_file: PathBuf) -> Result<(), CliError> {
    use auth_interceptor::audit::{VerifyError, verify};
    match verify(&file, &key_file) {
        Ok(verified) => {
            let segments = match verified.sealed_segments {
                0 => String::new(),
                n => format!(" in {} segments", n + 1),
            };
            let from = match verified.first_seq {
                0 => String::new(),
                first => format!(", from record {first}: older segments were removed"),
            };
            println!(
                "audit verify: OK ({} records{segments}{from})",
                verified.records
            );
            Ok(())
        }
        Err(VerifyError::Open(error)) => Err(CliError::Usage(error.to_string())),
        Err(VerifyError::Chain(problem)) => {
            println!("audit verify: FAILED: {problem}");
            Err(failed(format!("{}: {problem}", file.display())))
        }
    }
}

/// A new hex key, never over an existing file.
fn keygen(out: PathBuf) -> Result<(), CliError> {
    auth_interceptor::audit::write_new_key(&out)
        .map_err(|e| CliError::Usage(format!("--out: {e}")))?;
    println!("wrote {}", out.display());
    Ok(())
}
