//! `meshctl certs init`: the offline route to certificates, a dev CA and one certificate per
//! workload.

use mesh_tls::certs::{CertAuthority, DEFAULT_WORKLOADS, validate_workload_name};

use crate::CliError;
use crate::cli::CertsInitArgs;

/// `meshctl certs init`.
pub fn run(args: CertsInitArgs) -> Result<(), CliError> {
    for name in &args.names {
        validate_workload_name(name).map_err(|e| CliError::Usage(format!("--name: {e}")))?;
    }
    let mut names: Vec<String> = DEFAULT_WORKLOADS.iter().map(|n| (*n).to_owned()).collect();
    names.extend(
        args.names
            .iter()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect::<Vec<_>>(),
    );
    if args.if_missing && complete_set(&args.out, &names)? {
        println!(
            "kept the certificates in {} (pass --force to replace them)",
            args.out.display()
        );
        return Ok(());
    }
    let ca = CertAuthority::generate(&args.trust_domain)
        .map_err(|e| CliError::Usage(format!("--trust-domain: {e}")))?;
    let written = ca
        .write_dir(&args.out, &names, args.force)
        .map_err(|e| CliError::Usage(format!("--out: {e}")))?;
    for path in written {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Whether `dir` already holds the whole set for `names`: `Ok(true)` when every file is there,
/// `Ok(false)` when none is, and a usage error naming the first missing file otherwise (a
/// partial set cannot be completed: the CA's key is never written).
fn complete_set(dir: &std::path::Path, names: &[String]) -> Result<bool, CliError> {
    let files: Vec<std::path::PathBuf> = std::iter::once(dir.join("ca.pem"))
        .chain(
            names
                .iter()
                .flat_map(|n| [dir.join(format!("{n}.pem")), dir.join(format!("{n}.key"))]),
        )
        .collect();
    let missing: Vec<_> = files.iter().filter(|path| !path.exists()).collect();
    match missing.first() {
        None => Ok(true),
        Some(_) if missing.len() == files.len() => Ok(false),
        Some(first) => Err(CliError::Usage(format!(
            "--out: {} is missing from an existing set (pass --force to replace the whole set)",
            first.display()
        ))),
    }
}
