//! `meshctl certs init`: the offline route to a mesh, a CA and, per workload, either a
//! certificate and key (file mode) or a join token (the workload then gets its certificate from
//! the auth service's CA, with its key only in memory).

use std::path::{Path, PathBuf};

use mesh_tls::SpiffeId;
use mesh_tls::certs::{CertAuthority, DEFAULT_WORKLOADS, validate_workload_name, write_private};

use crate::CliError;
use crate::cli::CertsInitArgs;

/// `meshctl certs init`.
pub fn run(args: CertsInitArgs) -> Result<(), CliError> {
    for name in &args.names {
        validate_workload_name(name).map_err(|e| CliError::Usage(format!("--name: {e}")))?;
    }
    let online = |name: &str| {
        args.joins.iter().any(|(joining, _)| joining == name)
            || (name == "auth" && args.ca_key.is_some())
    };
    let mut names: Vec<String> = DEFAULT_WORKLOADS.iter().map(|n| (*n).to_owned()).collect();
    names.extend(args.names.iter().cloned());
    names.dedup();
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()) && !online(n));

    let mut expected = vec![args.out.join("ca.pem")];
    for name in &names {
        expected.push(args.out.join(format!("{name}.pem")));
        expected.push(args.out.join(format!("{name}.key")));
    }
    expected.extend(args.ca_key.iter().cloned());
    expected.extend(args.joins.iter().map(|(_, file)| file.clone()));
    expected.extend(args.join_list.iter().cloned());
    if args.if_missing && complete_set(&expected)? {
        println!(
            "kept the certificates in {} (pass --force to replace them)",
            args.out.display()
        );
        return Ok(());
    }
    if !args.force
        && let Some(existing) = expected.iter().find(|path| path.exists())
    {
        return Err(CliError::Usage(format!(
            "--out: {} already exists (pass --force to replace the whole set)",
            existing.display()
        )));
    }
    let ca = CertAuthority::generate(&args.trust_domain)
        .map_err(|e| CliError::Usage(format!("--trust-domain: {e}")))?;
    let written = ca
        .write_dir(&args.out, &names, true)
        .map_err(|e| CliError::Usage(format!("--out: {e}")))?;
    for path in written {
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.ca_key {
        write_private(path, &ca.key_pem())
            .map_err(|e| CliError::Usage(format!("--ca-key: {e}")))?;
        println!(
            "wrote {} (the CA key: for the auth service alone)",
            path.display()
        );
    }
    if let Some(list) = &args.join_list {
        write_join_tokens(&args, list)?;
    }
    Ok(())
}

/// `meshctl certs server`: a certificate from the mesh CA for a server named by host name.
pub fn server(args: crate::cli::CertsServerArgs) -> Result<(), CliError> {
    validate_workload_name(&args.name).map_err(|e| CliError::Usage(format!("--name: {e}")))?;
    let read = |path: &Path, flag: &str| {
        std::fs::read_to_string(path).map_err(|e| CliError::Usage(format!("{flag}: {e}")))
    };
    let ca_pem = read(&args.ca_cert, "--ca-cert")?;
    let ca = CertAuthority::from_pem(
        &args.trust_domain,
        &ca_pem,
        &read(&args.ca_key, "--ca-key")?,
    )
    .map_err(|e| CliError::Usage(format!("--ca-key: {e}")))?;
    let mut issued = ca
        .issue(&args.name)
        .map_err(|e| CliError::Usage(format!("--name: {e}")))?;
    // The chain a client verifies: the server's certificate, then the CA's.
    issued.cert_pem.push_str(&ca_pem);
    std::fs::create_dir_all(&args.out).map_err(|e| CliError::Usage(format!("--out: {e}")))?;
    CertAuthority::write_issued(&args.out, &args.name, &issued)
        .map_err(|e| CliError::Usage(format!("--out: {e}")))?;
    println!(
        "wrote {}/{}.pem and .key (DNS name {}, 90 days)",
        args.out.display(),
        args.name,
        args.name
    );
    Ok(())
}

/// Writes one join token per `--join` and their hashes to `list`.
fn write_join_tokens(args: &CertsInitArgs, list: &Path) -> Result<(), CliError> {
    let expires = auth_service::join::expiry(args.join_ttl);
    let mut hashes = String::from("# sha256(token) spiffe-id expires-at; for MESH_JOIN_TOKENS\n");
    for (name, file) in &args.joins {
        let id = SpiffeId::workload(&args.trust_domain, name)
            .map_err(|e| CliError::Usage(format!("--join: {e}")))?;
        let token = auth_service::join::new_token().map_err(crate::failed)?;
        write_private(file, &format!("{token}\n"))
            .map_err(|e| CliError::Usage(format!("--join {name}: {e}")))?;
        hashes.push_str(&format!(
            "{} {id} {expires}\n",
            auth_service::join::token_hash(&token)
        ));
        println!("wrote {} (join token for {id})", file.display());
    }
    write_private(list, &hashes).map_err(|e| CliError::Usage(format!("--join-list: {e}")))?;
    println!("wrote {}", list.display());
    Ok(())
}

/// Whether every file of the set exists: `Ok(true)` when all do, `Ok(false)` when none does,
/// and a usage error naming the first missing file otherwise (a partial set cannot be
/// completed: the CA's key is not kept beside the certificates).
fn complete_set(files: &[PathBuf]) -> Result<bool, CliError> {
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

/// `meshctl certs show`: one line, `ADDR SPIFFE-ID serial SERIAL expires in Ns`.
pub async fn show(addr: &str, workload: &str, tls: &crate::cli::TlsArgs) -> Result<(), CliError> {
    let files = tls.files().map_err(|e| CliError::Usage(e.to_string()))?;
    let roots = files
        .trust_bundle()
        .map_err(|e| CliError::Usage(format!("--tls-ca: {e}")))?;
    let identity = mesh_tls::Reloadable::load(files)
        .map_err(|e| CliError::Usage(format!("--tls-cert/--tls-key: {e}")))?;
    let expected = SpiffeId::workload(&tls.trust_domain, workload)
        .map_err(|e| CliError::Usage(format!("--workload: {e}")))?;
    let config = mesh_tls::client::mesh_client_config(identity, roots, expected.clone())
        .map_err(|e| CliError::Usage(format!("--tls-ca: {e}")))?;
    let socket = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| crate::failed(format!("{addr}: {e}")))?
        .next()
        .ok_or_else(|| crate::failed(format!("{addr}: no address")))?;
    let leaf = mesh_tls::client::peer_certificate(socket, config)
        .await
        .map_err(|e| crate::failed(format!("{addr}: {e}")))?;
    let left = mesh_tls::identity::validity_of(&leaf)
        .and_then(|(_, not_after)| not_after.duration_since(std::time::SystemTime::now()).ok())
        .map_or(0, |d| d.as_secs());
    println!(
        "{addr} {expected} serial {} expires in {left}s",
        mesh_tls::certs::serial_of(&leaf)
    );
    Ok(())
}
