//! Criterion benches of the pieces on the request path: token verification (cold, per
//! algorithm, and cached), policy lookup, audit-chain append, and service-token issuance over
//! mTLS against a real auth service. `cargo bench -p mesh-bench`; `cargo test --benches` runs
//! each once (CI).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use auth_interceptor::audit::{AuditLog, Decision};
use auth_interceptor::{Policy, Rule, TokenVerifier, VerifierConfig};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mesh_bench::material::{AUDIENCE, ISSUER, Material};
use mesh_bench::server::METHOD;
use mesh_proto::auth::v1::IssueServiceTokenRequest;
use mesh_proto::auth::v1::auth_service_client::AuthServiceClient;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn verification(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("dir");
    let material = Material::create(dir.path()).expect("material");
    let token = material.token("alice").expect("token");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let cold = {
        let mut config = VerifierConfig::new(ISSUER, AUDIENCE);
        config.cache_capacity = 0;
        TokenVerifier::with_keys(config, material.key_set().expect("keys"))
    };
    let cached = TokenVerifier::with_keys(
        VerifierConfig::new(ISSUER, AUDIENCE),
        material.key_set().expect("keys"),
    );
    rt.block_on(cached.verify(&token)).expect("verifies");

    let mut group = c.benchmark_group("verify");
    group.bench_function("TokenVerifier, EdDSA, cache off (every check)", |b| {
        b.iter(|| rt.block_on(cold.verify(black_box(&token))).expect("ok"))
    });
    group.bench_function("TokenVerifier, cached", |b| {
        b.iter(|| rt.block_on(cached.verify(black_box(&token))).expect("ok"))
    });
    // The signature check alone, per algorithm (jsonwebtoken on aws-lc-rs).
    for (name, alg, params) in [
        (
            "jsonwebtoken decode, EdDSA",
            Algorithm::EdDSA,
            &rcgen::PKCS_ED25519,
        ),
        (
            "jsonwebtoken decode, ES256",
            Algorithm::ES256,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        ),
        (
            "jsonwebtoken decode, RS256 (2048)",
            Algorithm::RS256,
            &rcgen::PKCS_RSA_SHA256,
        ),
    ] {
        let pair = rcgen::KeyPair::generate_for(params).expect("key");
        let (encoding, decoding) = match alg {
            Algorithm::EdDSA => (
                EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()),
                DecodingKey::from_ed_pem(pair.public_key_pem().as_bytes()),
            ),
            Algorithm::ES256 => (
                EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()),
                DecodingKey::from_ec_pem(pair.public_key_pem().as_bytes()),
            ),
            _ => (
                EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()),
                DecodingKey::from_rsa_pem(pair.public_key_pem().as_bytes()),
            ),
        };
        let (encoding, decoding) = (encoding.expect("encoding"), decoding.expect("decoding"));
        let claims = serde_json::json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": 4_000_000_000u64,
        });
        let signed = jsonwebtoken::encode(&Header::new(alg), &claims, &encoding).expect("sign");
        let mut validation = Validation::new(alg);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        group.bench_function(name, |b| {
            b.iter(|| {
                jsonwebtoken::decode::<serde_json::Value>(
                    black_box(&signed),
                    &decoding,
                    &validation,
                )
                .expect("ok")
            })
        });
    }
    group.finish();
}

fn policy(c: &mut Criterion) {
    // 21 made-up methods beside health (2) and reflection (1): 24 rows.
    let mut policy = Policy::new("mesh.local").with_health().with_reflection();
    let mut last = "";
    for i in 0..21 {
        let method: &'static str = Box::leak(format!("Method{i}").into_boxed_str());
        let path: &'static str =
            Box::leak(format!("/mesh.bench.v1.Bench/{method}").into_boxed_str());
        last = path;
        let rpc = mesh_proto::rpc::Rpc {
            path,
            service: "mesh.bench.v1.Bench",
            method,
            idempotency: mesh_proto::rpc::Idempotency::Unknown,
            client_streaming: false,
            server_streaming: false,
        };
        policy = policy.allow(rpc, Rule::token().scope("bench:read"));
    }
    c.bench_function("policy lookup (24 rows)", |b| {
        b.iter(|| black_box(policy.rule(black_box(last))).is_some())
    });
}

fn audit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("dir");
    let material = Material::create(dir.path()).expect("material");
    let log = AuditLog::open(
        "bench",
        &dir.path().join("audit.log"),
        &material.audit_key(),
    )
    .expect("log");
    let decision = Decision {
        decision: "allow",
        reason: "policy",
        method: METHOD,
        subject: "alice",
        actor: "orders",
        client: "meshctl",
        peer: "spiffe://mesh.local/sa/orders",
        trace_id: "0af7651916cd43dd8448eb211c80319c",
        policy: "3f1c9a0b7e2d",
    };
    c.bench_function("audit chain append (HMAC + write)", |b| {
        b.iter(|| log.append(black_box(&decision)).expect("append"))
    });
}

fn issuance(c: &mut Criterion) {
    const IN_FLIGHT: usize = 32;
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let (mesh, client) = rt.block_on(async {
        let mesh = mesh_dev::devmesh::DevMesh::start(dir.path())
            .await
            .expect("mesh");
        let channel = mesh
            .connector("orders", "auth")
            .expect("connector")
            .channel(&mesh.auth_addr.to_string())
            .expect("channel");
        (mesh, AuthServiceClient::new(channel))
    });
    let mut group = c.benchmark_group("issuance");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.bench_function(
        "IssueServiceToken over mTLS, 32 in flight (time per token)",
        |b| {
            b.iter_custom(|tokens| {
                let client = client.clone();
                rt.block_on(async move {
                    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
                    let started = Instant::now();
                    let workers: Vec<_> = (0..IN_FLIGHT)
                        .map(|_| {
                            let (mut client, next) = (client.clone(), next.clone());
                            tokio::spawn(async move {
                                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                                    < tokens
                                {
                                    client
                                        .issue_service_token(IssueServiceTokenRequest {
                                            audience: "inventory".into(),
                                            scopes: Vec::new(),
                                        })
                                        .await
                                        .expect("token");
                                }
                            })
                        })
                        .collect();
                    for worker in workers {
                        worker.await.expect("worker");
                    }
                    started.elapsed()
                })
            })
        },
    );
    group.finish();
    rt.block_on(mesh.stop());
}

criterion_group!(benches, verification, policy, audit, issuance);
criterion_main!(benches);
