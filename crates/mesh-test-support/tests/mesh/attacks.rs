//! Every token attack the verifier must refuse with UNAUTHENTICATED, without panicking, without
//! echoing the token, and without following anything the token header points at.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use mesh_proto::inventory::v1::ListItemsRequest;
use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_test_support::forge::{self, SigningKey};
use mesh_test_support::{TestMesh, bearer};
use serde_json::{Value, json};
use tonic::Code;
use tonic::metadata::MetadataValue;

/// Calls inventory's ListItems (scope `inventory:read`) with `authorization: Bearer <token>`
/// and asserts UNAUTHENTICATED with a message that does not contain the token.
async fn assert_unauthenticated(mesh: &TestMesh, token: &str) -> tonic::Status {
    let mut client =
        InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("channel"));
    let status = client
        .list_items(bearer(ListItemsRequest::default(), token))
        .await
        .expect_err("must be refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    if token.len() > 8 {
        assert!(!status.message().contains(token), "the token was echoed");
    }
    status
}

/// A mesh, the issuer's real signing key, and valid claims for inventory.
async fn setup() -> (TestMesh, SigningKey, Value) {
    let mesh = TestMesh::start().await.expect("mesh");
    let key = mesh.issuer_key().await.expect("issuer key");
    let claims = forge::claims(&mesh.mesh.issuer, "inventory", "inventory:read");
    (mesh, key, claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_token_with_real_key_is_accepted_so_the_negatives_below_mean_something() {
    let (mesh, key, claims) = setup().await;
    let token = key.sign(&key.header(), &claims);
    let mut client =
        InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("channel"));
    client
        .list_items(bearer(ListItemsRequest::default(), &token))
        .await
        .expect("a well-formed token signed by the issuer's key is accepted");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_unauthenticated() {
    let mesh = TestMesh::start().await.expect("mesh");
    let mut client =
        InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("channel"));
    let status = client
        .list_items(ListItemsRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "missing bearer token");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_authorization_is_unauthenticated() {
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.meshctl_token().await.expect("token");
    let mut client =
        InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("channel"));
    for value in [
        format!("Basic {token}"),
        "Bearer".to_owned(),
        format!("Bearer {token} extra"),
        token.clone(),
        "Bearer not-a-jwt".to_owned(),
    ] {
        let mut request = tonic::Request::new(ListItemsRequest::default());
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("ascii"));
        let status = client.list_items(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{value}: {status:?}");
        assert!(!status.message().contains(&token));
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_entries_are_unauthenticated() {
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.meshctl_token().await.expect("token");
    let mut client =
        InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("channel"));
    let mut request = tonic::Request::new(ListItemsRequest::default());
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii");
    request
        .metadata_mut()
        .append("authorization", value.clone());
    request.metadata_mut().append("authorization", value);
    let status = client.list_items(request).await.expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("more than one"));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_is_unauthenticated() {
    let (mesh, key, claims) = setup().await;
    let header = json!({ "alg": "none", "typ": "at+jwt", "kid": key.kid });
    assert_unauthenticated(&mesh, &forge::unsigned(&header, &claims)).await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_signed_with_the_public_key_is_unauthenticated() {
    let (mesh, key, claims) = setup().await;
    let header = json!({ "alg": "HS256", "typ": "at+jwt", "kid": key.kid });
    // Both forms of "the public key's bytes": raw, and the JWK's base64url text.
    let raw = forge::sign_hs256(&header, &claims, key.public_key());
    assert_unauthenticated(&mesh, &raw).await;
    let text = key.public_jwk()["x"].as_str().expect("x").to_owned();
    let as_text = forge::sign_hs256(&header, &claims, text.as_bytes());
    assert_unauthenticated(&mesh, &as_text).await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_key_under_a_known_kid_is_unauthenticated() {
    let (mesh, key, claims) = setup().await;
    let foreign = SigningKey::foreign(&key.kid).expect("key");
    let status = assert_unauthenticated(&mesh, &foreign.sign(&foreign.header(), &claims)).await;
    assert!(status.message().contains("bad signature"), "{status:?}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_unauthenticated() {
    let (mesh, key, mut claims) = setup().await;
    let now = forge::now();
    claims["iat"] = json!(now - 600);
    claims["nbf"] = json!(now - 600);
    claims["exp"] = json!(now - 120); // beyond the 30 s leeway
    let status = assert_unauthenticated(&mesh, &key.sign(&key.header(), &claims)).await;
    assert!(status.message().contains("expired"));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbf_in_the_future_is_unauthenticated() {
    let (mesh, key, mut claims) = setup().await;
    claims["nbf"] = json!(forge::now() + 300);
    let status = assert_unauthenticated(&mesh, &key.sign(&key.header(), &claims)).await;
    assert!(status.message().contains("not yet valid"));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_audience_is_unauthenticated() {
    let (mesh, key, mut claims) = setup().await;
    claims["aud"] = json!("orders");
    let status = assert_unauthenticated(&mesh, &key.sign(&key.header(), &claims)).await;
    assert!(status.message().contains("wrong audience"));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_issuer_is_unauthenticated() {
    let (mesh, key, mut claims) = setup().await;
    claims["iss"] = json!("https://evil.example");
    let status = assert_unauthenticated(&mesh, &key.sign(&key.header(), &claims)).await;
    assert!(status.message().contains("wrong issuer"));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_sub_or_jti_is_unauthenticated() {
    let (mesh, key, claims) = setup().await;
    for claim in ["sub", "jti", "iat", "exp"] {
        let mut without = claims.clone();
        without.as_object_mut().expect("object").remove(claim);
        assert_unauthenticated(&mesh, &key.sign(&key.header(), &without)).await;
    }
    let mut empty_sub = claims.clone();
    empty_sub["sub"] = json!("");
    assert_unauthenticated(&mesh, &key.sign(&key.header(), &empty_sub)).await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistyped_claims_are_unauthenticated_not_ignored() {
    let (mesh, key, claims) = setup().await;
    for (claim, value) in [
        ("exp", json!(format!("{}", forge::now() + 300))),
        ("nbf", json!("later")),
        ("iss", json!(42)),
        ("aud", json!({ "inventory": true })),
    ] {
        let mut mistyped = claims.clone();
        mistyped[claim] = value;
        assert_unauthenticated(&mesh, &key.sign(&key.header(), &mistyped)).await;
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typ_other_than_at_jwt_is_unauthenticated() {
    let (mesh, key, claims) = setup().await;
    for typ in [json!("JWT"), json!(null), json!("id+jwt")] {
        let mut header = key.header();
        header["typ"] = typ;
        let status = assert_unauthenticated(&mesh, &key.sign(&header, &claims)).await;
        assert!(status.message().contains("typ"), "{status:?}");
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crit_header_is_unauthenticated() {
    let (mesh, key, claims) = setup().await;
    let mut header = key.header();
    header["crit"] = json!(["exp"]);
    let status = assert_unauthenticated(&mesh, &key.sign(&header, &claims)).await;
    assert!(status.message().contains("crit"));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_tampered_after_signing_is_unauthenticated() {
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.meshctl_token().await.expect("token");
    let payload = token.split('.').nth(1).expect("payload");
    let mut claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .expect("b64"),
    )
    .expect("json");
    claims["scope"] = json!("inventory:read inventory:admin");
    let status = assert_unauthenticated(&mesh, &forge::with_payload(&token, &claims)).await;
    assert!(status.message().contains("bad signature"));
    mesh.stop().await;
}

/// A listener that counts connection attempts: the attacker's key server.
async fn attacker_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (format!("https://{addr}/jwks.json"), hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jku_x5u_and_jwk_headers_are_ignored_and_never_fetched() {
    let (mesh, key, claims) = setup().await;
    let (url, hits) = attacker_server().await;
    let fetches_before = mesh.mesh.inventory_verifier.jwks_fetches();

    // The attacker signs with its own key and points every header at it, under the real kid
    // and under a kid of its own.
    for kid in [key.kid.clone(), "attacker-key".to_owned()] {
        let attacker = SigningKey::foreign(&kid).expect("key");
        let mut header = attacker.header();
        header["jku"] = json!(url);
        header["x5u"] = json!(url);
        header["jwk"] = attacker.public_jwk();
        assert_unauthenticated(&mesh, &attacker.sign(&header, &claims)).await;
    }

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a header URL was fetched");
    // The unknown kid may cost one refetch from the real issuer, never more.
    assert!(mesh.mesh.inventory_verifier.jwks_fetches() - fetches_before <= 1);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_unknown_kids_cost_exactly_one_jwks_refetch() {
    let (mesh, key, claims) = setup().await;
    let before = mesh.mesh.inventory_verifier.jwks_fetches();
    let channel = mesh.inventory_channel("meshctl").expect("channel");
    let mut calls = Vec::new();
    for i in 0..1000 {
        let mut header = key.header();
        header["kid"] = json!(format!("unknown-{i}-{}", rand::random::<u64>()));
        let token = key.sign(&header, &claims);
        let mut client = InventoryServiceClient::new(channel.clone());
        calls.push(async move {
            client
                .list_items(bearer(ListItemsRequest::default(), &token))
                .await
                .map(|_| ())
        });
    }
    // 50 in flight at a time, to keep the test's own load modest.
    let results: Vec<_> = futures_util::stream::iter(calls)
        .buffer_unordered(50)
        .collect()
        .await;
    let mut refused = 0;
    for result in results {
        let status = result.expect_err("unknown kid");
        assert_eq!(status.code(), Code::Unauthenticated);
        refused += 1;
    }
    assert_eq!(refused, 1000);
    let refetches = mesh.mesh.inventory_verifier.jwks_fetches() - before;
    // Exactly one: the first unknown kid looks again (a rotation is picked up at once), the
    // other 999 find the cooldown running.
    assert_eq!(refetches, 1, "{refetches} refetches for 1000 unknown kids");
    mesh.stop().await;
}
