//! Bad input at scale: every parser that reads outside input, fed generated cases (proptest, on
//! stable Rust): 1,000 each in a plain `cargo test`, 10,000 in CI's fuzz step
//! (`PROPTEST_CASES=10000`). None may panic, and every refusal must be the parser's typed error.
//! Random text finds the crashes; mutations of valid input and structured values (signed tokens
//! with arbitrary claims) reach past the first check.

use std::sync::OnceLock;
use std::time::Duration;

use auth_interceptor::{KeySet, TokenVerifier, VerifierConfig};
use mesh_proto::domain::{Quantity, RequestKey, Sku, parse_lines, parse_page_size};
use mesh_test_support::forge::SigningKey;
use mesh_tls::identity::SpiffeId;
use proptest::prelude::*;
use serde_json::{Value, json};

/// `PROPTEST_CASES` when set (proptest's own knob), else 1,000.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(1_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Claims-like JSON: the claim names a verifier reads, with values of every JSON type.
fn claims() -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::from),
        prop::collection::vec(".{0,10}", 0..4).prop_map(|v| json!(v)),
    ];
    let names = prop::sample::select(vec![
        "iss",
        "sub",
        "aud",
        "exp",
        "nbf",
        "iat",
        "jti",
        "scope",
        "client_id",
        "act",
        "sid",
        "typ",
        "alg",
        "kid",
        "crit",
        "jku",
        "x5u",
        "jwk",
        "b64",
    ]);
    prop::collection::btree_map(names, value, 0..12).prop_map(|m| json!(m))
}

struct Verifying {
    runtime: tokio::runtime::Runtime,
    key: SigningKey,
    verifier: std::sync::Arc<TokenVerifier>,
}

fn verifying() -> &'static Verifying {
    static VERIFYING: OnceLock<Verifying> = OnceLock::new();
    VERIFYING.get_or_init(|| {
        let key = SigningKey::foreign("fuzz-kid").expect("key");
        let jwks = serde_json::from_value(json!({ "keys": [key.public_jwk()] })).expect("jwks");
        let verifier = TokenVerifier::with_keys(
            VerifierConfig::new("https://issuer.test", "inventory"),
            KeySet::from_jwks(&jwks),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Verifying {
            runtime,
            key,
            verifier,
        }
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_text_as_a_bearer_token_is_refused_with_a_typed_error(token in ".{0,300}") {
        let v = verifying();
        prop_assert!(v.runtime.block_on(v.verifier.verify(&token)).is_err());
    }

    #[test]
    fn tokens_signed_by_the_real_key_with_any_header_and_claims_never_panic(
        header in claims(),
        body in claims(),
    ) {
        let v = verifying();
        let mut header = header;
        if let Some(map) = header.as_object_mut() {
            map.entry("alg").or_insert_with(|| json!("EdDSA"));
            map.entry("kid").or_insert_with(|| json!("fuzz-kid"));
        }
        let token = v.key.sign(&header, &body);
        // Accepted only when every claim the verifier requires is there and well typed.
        if let Ok(verified) = v.runtime.block_on(v.verifier.verify(&token)) {
            prop_assert!(!verified.subject.is_empty());
            prop_assert_eq!(body["iss"].as_str(), Some("https://issuer.test"));
        }
    }

    #[test]
    fn spiffe_ids_parse_or_are_refused(raw in "(spiffe://)?.{0,80}") {
        if let Ok(id) = raw.parse::<SpiffeId>() {
            prop_assert!(id.as_str().starts_with("spiffe://"));
            prop_assert_eq!(id.as_str().parse::<SpiffeId>().ok(), Some(id.clone()));
        }
    }

    #[test]
    fn domain_fields_parse_or_name_the_field(
        sku in ".{0,40}",
        key in ".{0,80}",
        quantity in any::<u32>(),
        page in any::<u32>(),
    ) {
        if let Err(violation) = Sku::parse("lines[0].sku", &sku) {
            prop_assert_eq!(violation.field.as_str(), "lines[0].sku");
        }
        if let Err(violation) = RequestKey::parse("idempotency_key", &key) {
            prop_assert_eq!(violation.field.as_str(), "idempotency_key");
        }
        if let Err(violation) = Quantity::parse("lines[0].quantity", quantity) {
            prop_assert_eq!(violation.field.as_str(), "lines[0].quantity");
        }
        let lines = parse_lines("lines", [(sku.as_str(), quantity), ("SKU-001", 1)].into_iter());
        if let Ok(lines) = lines {
            prop_assert!(!lines.is_empty());
        }
        if let Ok(size) = parse_page_size("page_size", page, 20, 100) {
            prop_assert!((1..=100).contains(&size));
        }
    }

    #[test]
    fn grpc_timeouts_and_database_urls_parse_or_are_refused(raw in ".{0,40}") {
        if let Some(timeout) = mesh_client::deadline::parse_grpc_timeout(&raw) {
            prop_assert!(timeout <= Duration::from_secs(99_999_999 * 3600));
        }
        let _ = raw.parse::<mesh_service::DbUrl>();
    }

    #[test]
    fn the_auth_config_parses_or_says_why(text in ".{0,400}") {
        if let Err(reason) = auth_service::settings::AuthConfig::parse(&text) {
            prop_assert!(!reason.is_empty());
        }
    }

    #[test]
    fn mutations_of_the_example_config_parse_or_say_why(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut text = mesh_dev::devmesh::EXAMPLE_AUTH_CONFIG.as_bytes().to_vec();
        for (at, byte) in flips {
            let i = at.index(text.len());
            text[i] = byte;
        }
        let text = String::from_utf8_lossy(&text);
        if let Err(reason) = auth_service::settings::AuthConfig::parse(&text) {
            prop_assert!(!reason.is_empty());
        }
    }

    #[test]
    fn certificate_requests_of_any_bytes_are_refused_with_a_typed_error(
        bytes in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        static CA: OnceLock<mesh_tls::certs::CertAuthority> = OnceLock::new();
        let ca = CA.get_or_init(|| mesh_tls::certs::CertAuthority::generate("mesh.local").expect("ca"));
        let id = SpiffeId::workload("mesh.local", "orders").expect("id");
        prop_assert!(ca.sign_request(&bytes, &id, Duration::from_secs(60)).is_err());
    }

    #[test]
    fn audit_logs_of_any_lines_verify_or_say_where_the_chain_breaks(
        lines in prop::collection::vec(
            prop_oneof![
                ".{0,120}",
                r#"\{"seq":[0-9]{1,3},"prev":"[0-9a-f]{0,64}","mac":"[0-9a-f]{0,64}"[^\n]{0,40}\}"#,
            ],
            0..6,
        ),
    ) {
        static KEY: OnceLock<(tempfile::TempDir, std::path::PathBuf)> = OnceLock::new();
        let (dir, key) = KEY.get_or_init(|| {
            let dir = tempfile::tempdir().expect("dir");
            let key = dir.path().join("audit.key");
            auth_interceptor::audit::write_new_key(&key).expect("key");
            (dir, key)
        });
        let log = dir.path().join(format!("audit-{:?}.log", std::thread::current().id()));
        std::fs::write(&log, lines.join("\n")).expect("write");
        match auth_interceptor::audit::verify(&log, key) {
            // Only an empty log verifies without a key's MAC on every record.
            Ok(verified) => prop_assert_eq!(verified.records, 0),
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }
}
