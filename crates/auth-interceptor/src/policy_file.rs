//! A service's authorization policy as data: a TOML file with one `[[rule]]` per method the
//! server serves, checked against the methods the protos define before it is used.
//!
//! ```toml
//! [[rule]]
//! method = "/shop.v1.Stock/Reserve"
//! auth = "token"              # public | certificate | token
//! scopes = ["stock:reserve"]
//! callers = ["sa/orders"]     # workloads of the trust domain (`sa/batch-*`: a pattern); absent: any
//! actors = ["orders"]         # exchanged tokens acting for a user through these clients
//! mode = "audit"              # a trial beside the method's enforced rule (default "enforce")
//! rate_limit = { per = "subject", rate = 5, burst = 10 }   # per subject, caller, or both
//! ```
//!
//! A method may have, besides its one enforced rule, one rule in `mode = "audit"`: a trial of a
//! tighter rule. The enforced rule decides every call; a call it allows and the trial would
//! refuse is recorded `would_deny <reason>`. The policy's version is the start of the file's
//! SHA-256: it is in every audit record, so each decision says which policy made it.
//!
//! A whole file can be a trial too: `mode = "audit"` at its top makes every row a trial of the
//! method it names ([`parse_trial_policy`]). Such a file is checked like an enforced one (every
//! served method exactly once) and is tried beside the enforced policy ([`Policy::with_trial`]),
//! never enforced itself: what a new policy would refuse shows up before it refuses anything.
//!
//! A file is refused, with its name and the line, when a row names a method the server does
//! not serve, when a method has no row or two, when an identity is outside the trust domain, or
//! when a row asks what its kind of authentication cannot check (scopes on a public row).

use std::collections::HashMap;

use mesh_proto::rpc::{self, Rpc};
use mesh_tls::SpiffeId;
use serde::Deserialize;
use toml::Spanned;

use crate::policy::{Policy, Rule};

/// Why a policy file was refused: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct PolicyFileError {
    /// The file's name, as given.
    pub source_name: String,
    /// The 1-based line of the offending row or value, when there is one.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// `audit` makes the whole file a trial.
    mode: Option<Spanned<Mode>>,
    #[serde(default)]
    rule: Vec<Spanned<Row>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Enforce,
    Audit,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    method: Spanned<String>,
    auth: Spanned<Auth>,
    #[serde(default)]
    scopes: Vec<Spanned<String>>,
    callers: Option<Vec<Spanned<String>>>,
    actors: Option<Vec<Spanned<String>>>,
    mode: Option<Spanned<Mode>>,
    rate_limit: Option<Spanned<RateLimitRow>>,
}

/// `rate_limit = { per = "subject", rate = 5, burst = 10 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitRow {
    per: Per,
    /// Calls a second, on average.
    rate: u32,
    /// Calls at once.
    burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Per {
    Subject,
    Caller,
    SubjectAndCaller,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Auth {
    Public,
    Certificate,
    Token,
}

/// Parses and checks the policy in `text` (named `source_name` in errors) for a server of
/// `trust_domain` that serves `served` (its own services' methods; the health and reflection
/// methods every mesh server carries are added here).
pub fn parse_policy(
    text: &str,
    source_name: &str,
    trust_domain: &str,
    served: &[&[Rpc]],
) -> Result<Policy, PolicyFileError> {
    parse(text, source_name, trust_domain, served, Mode::Enforce)
}

/// Parses and checks a trial file: `mode = "audit"` at its top, then one row per served method
/// (none with a mode of its own), checked as [`parse_policy`] checks an enforced file. The
/// returned policy's rows are the trials; [`Policy::with_trial`] sets them beside the enforced
/// policy.
pub fn parse_trial_policy(
    text: &str,
    source_name: &str,
    trust_domain: &str,
    served: &[&[Rpc]],
) -> Result<Policy, PolicyFileError> {
    parse(text, source_name, trust_domain, served, Mode::Audit)
}

/// Parses a policy file meant to be `expected`: an enforced file, or a trial file.
fn parse(
    text: &str,
    source_name: &str,
    trust_domain: &str,
    served: &[&[Rpc]],
    expected: Mode,
) -> Result<Policy, PolicyFileError> {
    let error = |line: Option<usize>, message: String| PolicyFileError {
        source_name: source_name.to_owned(),
        line,
        message,
    };
    let line_of = |offset: usize| Some(text[..offset.min(text.len())].matches('\n').count() + 1);
    let file: File = toml::from_str(text).map_err(|e| {
        let line = e.span().and_then(|span| line_of(span.start));
        error(line, e.message().to_owned())
    })?;
    let whole_trial = expected == Mode::Audit;
    match (&file.mode, whole_trial) {
        (Some(mode), false) if *mode.get_ref() == Mode::Audit => {
            return Err(error(
                line_of(mode.span().start),
                "mode = \"audit\" makes the whole file a trial, which is tried beside an \
                 enforced policy and never enforced: give it as the trial file"
                    .to_owned(),
            ));
        }
        (Some(mode), true) if *mode.get_ref() == Mode::Audit => {}
        (mode, true) => {
            return Err(error(
                mode.as_ref().and_then(|m| line_of(m.span().start)),
                "a trial file says mode = \"audit\" at its top, before its rows".to_owned(),
            ));
        }
        _ => {}
    }
    let served: HashMap<&str, &Rpc> = served
        .iter()
        .chain([rpc::health::ALL, rpc::reflection::ALL].iter())
        .flat_map(|service| service.iter())
        .map(|rpc| (rpc.path, rpc))
        .collect();
    let mut policy = Policy::new(trust_domain).with_version(version_of(text));
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut tried: HashMap<&str, usize> = HashMap::new();
    for row in &file.rule {
        let at = |spanned_start: usize| line_of(spanned_start);
        let row_line = at(row.span().start);
        let row = row.get_ref();
        let method = row.method.get_ref().as_str();
        let Some(rpc) = served.get(method) else {
            return Err(error(
                at(row.method.span().start),
                format!("{method:?} is not a method this server serves"),
            ));
        };
        if let (Some(mode), true) = (&row.mode, whole_trial) {
            return Err(error(
                at(mode.span().start),
                "in a trial file every row is a trial: a row has no mode of its own".to_owned(),
            ));
        }
        let trial = row.mode.as_ref().map(Spanned::get_ref) == Some(&Mode::Audit);
        let rows = if trial { &mut tried } else { &mut seen };
        if let Some(first) = rows.insert(rpc.path, row_line.unwrap_or(0)) {
            let kind = match (trial, whole_trial) {
                (_, true) => "",
                (true, false) => " trial",
                (false, false) => " enforced",
            };
            return Err(error(
                row_line,
                format!("a second{kind} row for {method} (the first is on line {first})"),
            ));
        }
        let auth = *row.auth.get_ref();
        let refuse_on = |values: &[Spanned<String>], what: &str| -> Result<(), PolicyFileError> {
            match values.first() {
                Some(first) => Err(error(
                    at(first.span().start),
                    format!(
                        "{what} cannot be checked on a row without a token (auth = \"{}\")",
                        match auth {
                            Auth::Public => "public",
                            _ => "certificate",
                        }
                    ),
                )),
                None => Ok(()),
            }
        };
        let mut rule = match auth {
            Auth::Public => Rule::public(),
            Auth::Certificate => Rule::certificate(),
            Auth::Token => Rule::token(),
        };
        if auth != Auth::Token {
            refuse_on(&row.scopes, "scopes")?;
            refuse_on(row.actors.as_deref().unwrap_or_default(), "actors")?;
        }
        if auth == Auth::Public && row.callers.is_some() {
            return Err(error(
                at(row.auth.span().start),
                "a public row admits every caller: callers cannot narrow it".to_owned(),
            ));
        }
        for scope in &row.scopes {
            let text = scope.get_ref();
            if text.is_empty() || text.contains(char::is_whitespace) {
                return Err(error(
                    at(scope.span().start),
                    format!("{text:?} is not a scope"),
                ));
            }
            rule = rule.scope(text.clone());
        }
        if let Some(callers) = &row.callers {
            for caller in callers {
                let written = caller.get_ref();
                let line = at(caller.span().start);
                rule = match written.strip_suffix('*') {
                    Some(prefix) => rule.caller_prefix(
                        caller_prefix(prefix, trust_domain).map_err(|why| error(line, why))?,
                    ),
                    None => rule.callers([
                        caller_id(written, trust_domain).map_err(|why| error(line, why))?
                    ]),
                };
            }
        }
        if let Some(actors) = &row.actors {
            if let Some(empty) = actors.iter().find(|a| a.get_ref().is_empty()) {
                return Err(error(at(empty.span().start), "an empty actor".to_owned()));
            }
            rule = rule.actors(actors.iter().map(|a| a.get_ref().clone()));
        }
        if let Some(limit) = &row.rate_limit {
            let line = at(limit.span().start);
            let limit = limit.get_ref();
            if auth == Auth::Public {
                return Err(error(line, "a public row is not rate limited".to_owned()));
            }
            if auth != Auth::Token && limit.per != Per::Caller {
                return Err(error(
                    line,
                    "a row without a token has no subject: rate limit it per caller".to_owned(),
                ));
            }
            for (name, value) in [("rate", limit.rate), ("burst", limit.burst)] {
                if !(1..=100_000).contains(&value) {
                    return Err(error(
                        line,
                        format!("rate_limit {name} must be 1 to 100000"),
                    ));
                }
            }
            let key = match limit.per {
                Per::Subject => crate::ratelimit::LimitKey::Subject,
                Per::Caller => crate::ratelimit::LimitKey::Caller,
                Per::SubjectAndCaller => crate::ratelimit::LimitKey::SubjectAndCaller,
            };
            rule = rule.rate_limit(key, limit.rate, limit.burst);
        }
        policy = if trial {
            policy.try_rule(**rpc, rule)
        } else {
            policy.allow(**rpc, rule)
        };
    }
    let mut missing: Vec<&str> = served
        .keys()
        .filter(|path| !seen.contains_key(*path))
        .copied()
        .collect();
    missing.sort_unstable();
    if !missing.is_empty() {
        return Err(error(
            None,
            format!(
                "no row for {} (every served method needs exactly one)",
                missing.join(", ")
            ),
        ));
    }
    Ok(policy)
}

/// The version of the policy in `text`: the first 12 hex digits of its SHA-256.
pub fn version_of(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A caller pattern as written, without its `*`: `sa/batch-` or a full SPIFFE ID prefix, which
/// must lie within the trust domain (a pattern never reaches another domain's workloads).
fn caller_prefix(written: &str, trust_domain: &str) -> Result<String, String> {
    let inside = format!("spiffe://{trust_domain}/");
    let full = if written.starts_with("spiffe://") {
        written.to_owned()
    } else {
        format!("{inside}{written}")
    };
    let path_ok = full.strip_prefix(&inside).is_some_and(|path| {
        path.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b))
    });
    if !full.starts_with(&inside) {
        return Err(format!(
            "{written:?}* reaches outside the trust domain {trust_domain:?}"
        ));
    }
    if !path_ok {
        return Err(format!("{written:?}* is not a SPIFFE ID pattern"));
    }
    Ok(full)
}

/// A caller as written: `sa/<name>` (a workload of the trust domain) or a full SPIFFE ID, which
/// must be in the trust domain.
fn caller_id(written: &str, trust_domain: &str) -> Result<SpiffeId, String> {
    let full = if written.starts_with("spiffe://") {
        written.to_owned()
    } else {
        format!("spiffe://{trust_domain}/{written}")
    };
    let id: SpiffeId = full.parse().map_err(|_| {
        format!("{written:?} is not a SPIFFE ID (or sa/<name> in the trust domain)")
    })?;
    if id.trust_domain() != trust_domain {
        return Err(format!(
            "{written:?} is outside the trust domain {trust_domain:?}: its workloads are not ours"
        ));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &[Rpc] = &[rpc::health::CHECK];

    fn parse(text: &str) -> Result<Policy, PolicyFileError> {
        // The made-up server serves the health methods and reflection only.
        parse_policy(text, "p.toml", "mesh.local", &[SERVICE])
    }

    const COMPLETE: &str = r#"
[[rule]]
method = "/grpc.health.v1.Health/Check"
auth = "public"

[[rule]]
method = "/grpc.health.v1.Health/Watch"
auth = "public"

[[rule]]
method = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
auth = "certificate"
callers = ["sa/meshctl", "spiffe://mesh.local/sa/orders"]
"#;

    #[test]
    fn a_complete_file_becomes_the_policy_it_says() {
        let policy = parse(COMPLETE).expect("valid");
        assert_eq!(policy.methods().len(), 3);
        let reflection = policy
            .rule("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
            .expect("row");
        let meshctl = SpiffeId::workload("mesh.local", "meshctl").expect("id");
        let inventory = SpiffeId::workload("mesh.local", "inventory").expect("id");
        assert!(reflection.authorize(None, Some(&meshctl)).is_ok());
        assert!(reflection.authorize(None, Some(&inventory)).is_err());
    }

    #[test]
    fn each_mistake_is_refused_with_its_line() {
        let cases: [(&str, usize, &str); 7] = [
            (
                "[[rule]]\nmethod = \"/grpc.health.v1.Health/Check\"\nscope = []\n",
                3,
                "unknown field",
            ),
            (
                "[[rule]]\nmethod = \"/shop.v1.X/Nope\"\nauth = \"token\"\n",
                2,
                "not a method this server serves",
            ),
            (
                "[[rule]]\nmethod = \"/grpc.health.v1.Health/Check\"\nauth = \"public\"\n\
                 [[rule]]\nmethod = \"/grpc.health.v1.Health/Check\"\nauth = \"public\"\n",
                4,
                "a second enforced row",
            ),
            (
                "[[rule]]\nmethod = \"/grpc.health.v1.Health/Check\"\nauth = \"public\"\n\
                 scopes = [\"x:read\"]\n",
                4,
                "scopes cannot be checked",
            ),
            (
                "[[rule]]\nmethod = \"/grpc.health.v1.Health/Check\"\nauth = \"token\"\n\
                 callers = [\"spiffe://evil.example/sa/orders\"]\n",
                4,
                "outside the trust domain",
            ),
            (
                "[[rule]]\nmethod = \"/grpc.health.v1.Health/Check\"\nauth = \"sometimes\"\n",
                3,
                "unknown variant",
            ),
            (
                "[[rule]]\nmethod = \"/grpc.health.v1.Health/Check\"\nauth = \"token\"\n\
                 scopes = [\"two words\"]\n",
                4,
                "is not a scope",
            ),
        ];
        let limited = [
            (
                "[[rule]]\nmethod = \"/grpc.health.v1.Health/Check\"\nauth = \"public\"\n\
                 rate_limit = { per = \"caller\", rate = 1, burst = 1 }\n",
                4,
                "a public row is not rate limited",
            ),
            (
                "[[rule]]\nmethod = \"/grpc.health.v1.Health/Check\"\nauth = \"certificate\"\n\
                 rate_limit = { per = \"subject\", rate = 1, burst = 1 }\n",
                4,
                "rate limit it per caller",
            ),
            (
                "[[rule]]\nmethod = \"/grpc.health.v1.Health/Check\"\nauth = \"token\"\n\
                 rate_limit = { per = \"subject\", rate = 0, burst = 1 }\n",
                4,
                "rate must be 1 to 100000",
            ),
        ];
        for (text, line, says) in cases.into_iter().chain(limited) {
            let refused = parse(text).expect_err(text);
            assert_eq!(refused.line, Some(line), "{text}: {refused}");
            assert!(refused.to_string().contains(says), "{text}: {refused}");
            assert!(refused.to_string().starts_with(&format!("p.toml:{line}: ")));
        }
    }

    #[test]
    fn a_trial_row_sits_beside_the_enforced_one_and_the_version_comes_from_the_text() {
        let policy = parse(COMPLETE).expect("valid");
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert!(policy.trial(reflection).is_none());
        let tried = format!(
            "{COMPLETE}\n[[rule]]\nmethod = \"{reflection}\"\nauth = \"certificate\"\n\
             callers = [\"sa/meshctl\"]\nmode = \"audit\"\n"
        );
        let with_trial = parse(&tried).expect("valid");
        assert!(
            with_trial
                .trial(reflection)
                .expect("a trial")
                .is_audit_only()
        );
        assert!(
            !with_trial
                .rule(reflection)
                .expect("enforced")
                .is_audit_only()
        );
        // A trial alone is no rule: the method still needs its enforced one.
        let only_trial = COMPLETE.replace(
            "auth = \"certificate\"\n",
            "auth = \"certificate\"\nmode = \"audit\"\n",
        );
        let refused = parse(&only_trial).expect_err("no enforced row");
        assert!(refused.message.contains(reflection), "{refused}");
        let twice = format!(
            "{tried}\n[[rule]]\nmethod = \"{reflection}\"\nauth = \"certificate\"\nmode = \"audit\"\n"
        );
        assert!(
            parse(&twice)
                .expect_err("two trials")
                .message
                .contains("a second trial row")
        );
        assert_eq!(policy.version(), version_of(COMPLETE));
        assert_eq!(policy.version().len(), 12);
        assert_ne!(with_trial.version(), policy.version());
    }

    fn parse_trial(text: &str) -> Result<Policy, PolicyFileError> {
        parse_trial_policy(text, "trial.toml", "mesh.local", &[SERVICE])
    }

    #[test]
    fn a_whole_file_in_audit_mode_is_a_trial_beside_the_enforced_policy_and_never_enforced() {
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        let trial_text = format!(
            "mode = \"audit\"\n{}",
            COMPLETE.replace(
                "callers = [\"sa/meshctl\", \"spiffe://mesh.local/sa/orders\"]",
                "callers = [\"sa/meshctl\"]",
            )
        );
        let trial = parse_trial(&trial_text).expect("a valid trial file");
        let enforced = parse(COMPLETE).expect("valid");
        let combined = enforced.clone().with_trial(&trial).expect("combined");
        assert_eq!(
            combined.version(),
            format!("{}+{}", enforced.version(), trial.version())
        );
        let orders = SpiffeId::workload("mesh.local", "orders").expect("id");
        let enforced_rule = combined.rule(reflection).expect("enforced");
        assert!(!enforced_rule.is_audit_only());
        assert!(enforced_rule.authorize(None, Some(&orders)).is_ok());
        let tried = combined
            .trial(reflection)
            .expect("a trial for every method");
        assert!(tried.is_audit_only());
        assert!(tried.authorize(None, Some(&orders)).is_err(), "would deny");

        // Given as the enforced policy, the trial file is refused (it would enforce nothing).
        let refused = parse(&trial_text).expect_err("a trial is not enforced");
        assert_eq!(refused.line, Some(1));
        assert!(refused.message.contains("whole file a trial"), "{refused}");
        // A trial file says so, has no row-level modes, and still covers every method once.
        let refused = parse_trial(COMPLETE).expect_err("no mode");
        assert!(
            refused.message.contains("mode = \"audit\" at its top"),
            "{refused}"
        );
        let refused = parse_trial(&format!("mode = \"enforce\"\n{COMPLETE}")).expect_err("enforce");
        assert_eq!(refused.line, Some(1));
        let row_mode = trial_text.replacen(
            "auth = \"public\"\n",
            "auth = \"public\"\nmode = \"audit\"\n",
            1,
        );
        let refused = parse_trial(&row_mode).expect_err("a row mode");
        assert!(refused.message.contains("no mode of its own"), "{refused}");
        let missing = trial_text.replace(
            "[[rule]]\nmethod = \"/grpc.health.v1.Health/Watch\"\nauth = \"public\"\n",
            "",
        );
        let refused = parse_trial(&missing).expect_err("a missing row");
        assert!(
            refused.message.contains("/grpc.health.v1.Health/Watch"),
            "{refused}"
        );
        // An enforced policy with trial rows of its own takes no trial file: one trial a method.
        let with_row_trial = parse(&format!(
            "{COMPLETE}\n[[rule]]\nmethod = \"{reflection}\"\nauth = \"certificate\"\n\
             mode = \"audit\"\n"
        ))
        .expect("valid");
        let refused = with_row_trial.with_trial(&trial).expect_err("two trials");
        assert!(refused.contains(reflection), "{refused}");
    }

    #[test]
    fn a_caller_pattern_admits_the_workloads_it_names_in_the_trust_domain_only() {
        let text = COMPLETE.replace(
            "callers = [\"sa/meshctl\", \"spiffe://mesh.local/sa/orders\"]",
            "callers = [\"sa/batch-*\"]",
        );
        let policy = parse(&text).expect("valid");
        let rule = policy
            .rule("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
            .expect("row");
        let batch = SpiffeId::workload("mesh.local", "batch-nightly").expect("id");
        let orders = SpiffeId::workload("mesh.local", "orders").expect("id");
        assert!(rule.authorize(None, Some(&batch)).is_ok());
        assert!(rule.authorize(None, Some(&orders)).is_err());
        for bad in [
            "spiffe://evil.example/sa/*",
            "spiffe://mesh.local.evil/*",
            "sa/b?d*",
        ] {
            let text = COMPLETE.replace(
                "callers = [\"sa/meshctl\", \"spiffe://mesh.local/sa/orders\"]",
                &format!("callers = [\"{bad}\"]"),
            );
            assert!(parse(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_method_without_a_row_is_named() {
        let without_watch = COMPLETE.replace(
            "[[rule]]\nmethod = \"/grpc.health.v1.Health/Watch\"\nauth = \"public\"\n",
            "",
        );
        let refused = parse(&without_watch).expect_err("a missing row");
        assert_eq!(refused.line, None);
        assert!(
            refused.message.contains("/grpc.health.v1.Health/Watch"),
            "{refused}"
        );
    }
}
