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
    mode: Option<Mode>,
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
        let trial = row.mode == Some(Mode::Audit);
        let rows = if trial { &mut tried } else { &mut seen };
        if let Some(first) = rows.insert(rpc.path, row_line.unwrap_or(0)) {
            let kind = if trial { "trial" } else { "enforced" };
            return Err(error(
                row_line,
                format!("a second {kind} row for {method} (the first is on line {first})"),
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
        assert!(
            parse(&format!("mode = \"audit\"\n{COMPLETE}")).is_err(),
            "no file-wide mode"
        );
        assert_eq!(policy.version(), version_of(COMPLETE));
        assert_eq!(policy.version().len(), 12);
        assert_ne!(with_trial.version(), policy.version());
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
