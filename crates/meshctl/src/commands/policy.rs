//! `meshctl policy check`: a policy file checked exactly as the server checks it at start.

use crate::cli::PolicyCommand;
use crate::{CliError, failed};

/// `meshctl policy …`.
pub fn run(command: PolicyCommand) -> Result<(), CliError> {
    match command {
        PolicyCommand::Check(args) => {
            let served = mesh_proto::rpc::servers::by_name(&args.service)
                .ok_or_else(|| CliError::Usage(format!("--service {}: unknown", args.service)))?;
            let text = std::fs::read_to_string(&args.file)
                .map_err(|e| CliError::Usage(format!("{}: {e}", args.file.display())))?;
            let name = args.file.display().to_string();
            let policy = auth_interceptor::parse_policy(&text, &name, &args.trust_domain, served)
                .map_err(failed)?;
            println!(
                "{name}: a valid policy for {} ({} rules, trust domain {})",
                args.service,
                policy.methods().len(),
                args.trust_domain
            );
            Ok(())
        }
    }
}
