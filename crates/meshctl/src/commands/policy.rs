//! `meshctl policy`: check a policy file as the server would, explain a decision, and diff two
//! versions, all with the server's own parser and rules.

use std::path::Path;

use auth_interceptor::{Policy, RuleSummary, VerifiedToken};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh_tls::SpiffeId;

use crate::cli::{PolicyCheckArgs, PolicyCommand, PolicyDiffArgs, PolicyExplainArgs};
use crate::{CliError, failed};

/// The policies the services ship with (config/policy/), for `explain` without `--file`.
const SHIPPED: [(&str, &str); 3] = [
    ("auth", include_str!("../../../../config/policy/auth.toml")),
    (
        "orders",
        include_str!("../../../../config/policy/orders.toml"),
    ),
    (
        "inventory",
        include_str!("../../../../config/policy/inventory.toml"),
    ),
];

/// `meshctl policy …`.
pub fn run(command: PolicyCommand) -> Result<(), CliError> {
    match command {
        PolicyCommand::Check(args) => check(&args),
        PolicyCommand::Explain(args) => explain(&args),
        PolicyCommand::Diff(args) => diff(&args),
    }
}

/// Reads and checks the policy in `file` (or the shipped one) for `service`.
fn load(file: Option<&Path>, service: &str, trust_domain: &str) -> Result<Policy, CliError> {
    load_as(file, service, trust_domain, auth_interceptor::parse_policy)
}

/// Reads and checks the whole-file trial in `file` for `service`.
fn load_trial(file: &Path, service: &str, trust_domain: &str) -> Result<Policy, CliError> {
    load_as(
        Some(file),
        service,
        trust_domain,
        auth_interceptor::parse_trial_policy,
    )
}

/// `parse_policy` or `parse_trial_policy`: text, its name, trust domain, served methods.
type Parse = fn(
    &str,
    &str,
    &str,
    &[&[mesh_proto::rpc::Rpc]],
) -> Result<Policy, auth_interceptor::PolicyFileError>;

/// Reads the policy in `file` (or the shipped one) for `service` with `parse`.
fn load_as(
    file: Option<&Path>,
    service: &str,
    trust_domain: &str,
    parse: Parse,
) -> Result<Policy, CliError> {
    let served = mesh_proto::rpc::servers::by_name(service)
        .ok_or_else(|| CliError::Usage(format!("--service {service}: unknown")))?;
    let (name, text) = match file {
        Some(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path)
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?,
        ),
        None => {
            let text = SHIPPED
                .iter()
                .find(|(name, _)| *name == service)
                .map(|(_, text)| (*text).to_owned())
                .unwrap_or_default();
            (format!("config/policy/{service}.toml (shipped)"), text)
        }
    };
    parse(&text, &name, trust_domain, served).map_err(failed)
}

fn check(args: &PolicyCheckArgs) -> Result<(), CliError> {
    let policy = if args.trial {
        load_trial(&args.file, &args.service, &args.trust_domain)?
    } else {
        load(Some(&args.file), &args.service, &args.trust_domain)?
    };
    println!(
        "{}: a valid {} for {} ({} rules, version {}, trust domain {})",
        args.file.display(),
        if args.trial { "trial file" } else { "policy" },
        args.service,
        policy.methods().len(),
        policy.version(),
        args.trust_domain
    );
    Ok(())
}

fn explain(args: &PolicyExplainArgs) -> Result<(), CliError> {
    let mut policy = load(args.file.as_deref(), &args.service, &args.trust_domain)?;
    if let Some(trial) = &args.trial {
        let tried = load_trial(trial, &args.service, &args.trust_domain)?;
        policy = policy
            .with_trial(&tried)
            .map_err(|why| failed(format!("{}: {why}", trial.display())))?;
    }
    let method = policy
        .methods()
        .into_iter()
        .find(|rpc| rpc.path == args.method || rpc.method == args.method)
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--method {}: {} serves no such method",
                args.method, args.service
            ))
        })?;
    let caller: SpiffeId = if args.caller.starts_with("spiffe://") {
        args.caller.clone()
    } else {
        format!("spiffe://{}/{}", args.trust_domain, args.caller)
    }
    .parse()
    .map_err(|_| {
        CliError::Usage(format!(
            "--caller {}: not a SPIFFE ID or sa/<name>",
            args.caller
        ))
    })?;
    let token = args.token.as_deref().map(claims_of).transpose()?;
    let rule = policy.rule(method.path).ok_or_else(|| failed("no rule"))?;
    println!("method:  {}", method.path);
    println!("rule:    {}", rule.summary());
    println!("policy:  version {}", policy.version());
    // As the layer decides: the trust domain and the token's presence are never softened; the
    // rule's own checks are, in a dry-run.
    let deny =
        |error: auth_interceptor::AuthError| failed(format!("deny: {error} ({})", error.reason()));
    policy.admits(rule, Some(&caller)).map_err(deny)?;
    if rule.needs_token() && token.is_none() {
        return Err(deny(auth_interceptor::AuthError::MissingToken));
    }
    rule.authorize(token.as_ref(), Some(&caller))
        .map_err(deny)?;
    println!("allow:   {caller} {}", what_it_presents(token.as_ref()));
    if let Some(bound) = token.as_ref().and_then(|t| t.certificate) {
        println!(
            "bound:   only over a connection presenting the certificate with x5t#S256 {}",
            bound.to_base64url()
        );
    }
    if let Some(trial) = policy.trial(method.path) {
        println!("trial:   {}", trial.summary());
        match trial.authorize(token.as_ref(), Some(&caller)) {
            Ok(()) => println!("         the trial allows it too"),
            Err(error) => println!(
                "         the trial would refuse it: recorded as would_deny {} ({error})",
                error.reason()
            ),
        }
    }
    Ok(())
}

fn what_it_presents(token: Option<&VerifiedToken>) -> String {
    match token {
        None => "by its certificate".to_owned(),
        Some(t) => format!(
            "with {}'s token (scopes: {}{})",
            t.subject,
            t.scopes.join(" "),
            t.actor
                .as_deref()
                .map(|a| format!(", acting through {a}"))
                .unwrap_or_default()
        ),
    }
}

/// The claims of a JWT, read without verifying it (explain is a what-if).
fn claims_of(token: &str) -> Result<VerifiedToken, CliError> {
    let bad = || CliError::Usage("--token: not a JWT".into());
    let payload = token.split('.').nth(1).ok_or_else(bad)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).map_err(|_| bad())?)
            .map_err(|_| bad())?;
    let text = |name: &str| claims[name].as_str().unwrap_or_default().to_owned();
    Ok(VerifiedToken {
        subject: text("sub"),
        client_id: text("client_id"),
        scopes: text("scope")
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        token_id: text("jti"),
        actor: claims["act"]["sub"].as_str().map(str::to_owned),
        expires_at: claims["exp"].as_u64().unwrap_or_default(),
        session: claims["sid"].as_str().map(str::to_owned),
        certificate: claims["cnf"]["x5t#S256"]
            .as_str()
            .and_then(mesh_tls::Thumbprint::from_base64url),
    })
}

fn diff(args: &PolicyDiffArgs) -> Result<(), CliError> {
    let old = load(Some(&args.old), &args.service, &args.trust_domain)?;
    let new = load(Some(&args.new), &args.service, &args.trust_domain)?;
    println!("{} {} -> {}", args.service, old.version(), new.version());
    let mut changed = 0;
    for rpc in old.methods() {
        let (Some(before), Some(after)) = (old.rule(rpc.path), new.rule(rpc.path)) else {
            continue;
        };
        let (before, after) = (before.summary(), after.summary());
        let trials = (
            old.trial(rpc.path).map(|t| t.summary()),
            new.trial(rpc.path).map(|t| t.summary()),
        );
        if before == after && trials.0 == trials.1 {
            continue;
        }
        changed += 1;
        println!("\n{}", rpc.path);
        if before != after {
            println!("  was: {before}");
            println!("  now: {after}");
            for line in consequences(&before, &after) {
                println!("  {line}");
            }
        }
        if trials.0 != trials.1 {
            let show =
                |t: &Option<RuleSummary>| t.as_ref().map_or("none".to_owned(), ToString::to_string);
            println!("  trial was: {}", show(&trials.0));
            println!(
                "  trial now: {} (records would_deny; refuses nothing)",
                show(&trials.1)
            );
        }
    }
    if changed == 0 {
        println!("no method changes");
    }
    Ok(())
}

/// Who gains or loses the method, field by field.
fn consequences(before: &RuleSummary, after: &RuleSummary) -> Vec<String> {
    let mut lines = Vec::new();
    if before.auth != after.auth {
        lines.push(format!("authentication: {} -> {}", before.auth, after.auth));
    }
    let added: Vec<&String> = after
        .scopes
        .iter()
        .filter(|s| !before.scopes.contains(s))
        .collect();
    let removed: Vec<&String> = before
        .scopes
        .iter()
        .filter(|s| !after.scopes.contains(s))
        .collect();
    if !added.is_empty() {
        lines.push(format!("lose it: tokens without {}", join(&added)));
    }
    if !removed.is_empty() {
        lines.push(format!("no longer needed: {}", join(&removed)));
    }
    for (what, old, new) in [
        ("callers", &before.callers, &after.callers),
        ("acting through", &before.actors, &after.actors),
    ] {
        match (old, new) {
            (None, Some(new)) => lines.push(format!("{what}: any -> only {}", new.join(", "))),
            (Some(old), None) => lines.push(format!("{what}: only {} -> any", old.join(", "))),
            (Some(old), Some(new)) => {
                let gained: Vec<&String> = new.iter().filter(|c| !old.contains(c)).collect();
                let lost: Vec<&String> = old.iter().filter(|c| !new.contains(c)).collect();
                if !gained.is_empty() {
                    lines.push(format!("{what} gaining it: {}", join(&gained)));
                }
                if !lost.is_empty() {
                    lines.push(format!("{what} losing it: {}", join(&lost)));
                }
            }
            (None, None) => {}
        }
    }
    if before.rate_limit != after.rate_limit {
        lines.push(format!(
            "rate limit: {} -> {}",
            before.rate_limit.as_deref().unwrap_or("none"),
            after.rate_limit.as_deref().unwrap_or("none")
        ));
    }
    lines
}

fn join(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
