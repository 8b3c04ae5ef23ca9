//! Signing keys survive restarts; a rotation promotes the key verifiers already hold, keeps the
//! retired one published, fails no call under load, and only an administrator may force one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use mesh_dev::devmesh::DevMesh;
use mesh_proto::auth::v1::RotateSigningKeyRequest;
use mesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use mesh_proto::inventory::v1::ListItemsRequest;
use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_test_support::{TestMesh, bearer};
use tonic::Code;

async fn published_kids(http: &reqwest::Client, issuer: &str) -> Vec<String> {
    let jwks: JwkSet = http
        .get(format!("{issuer}/oauth2/jwks"))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    jwks.keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("header")
        .kid
        .expect("kid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_persist_across_restarts() {
    let dir = tempfile::tempdir().expect("dir");
    let first = DevMesh::start(dir.path()).await.expect("mesh");
    let kids_before = published_kids(&first.https_client().expect("https"), &first.issuer).await;
    first.stop().await;

    let second = DevMesh::start(dir.path()).await.expect("restarted mesh");
    let kids_after = published_kids(&second.https_client().expect("https"), &second.issuer).await;
    assert_eq!(kids_before.len(), 2, "the signing key and the next one");
    assert_eq!(kids_before, kids_after);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_signs_with_the_key_verifiers_already_hold_and_keeps_the_retired_one() {
    let mesh = TestMesh::start().await.expect("mesh");
    let http = mesh.https().expect("https");
    let before = mesh.mesh.key_rotator.current();
    let old_token = mesh.meshctl_token().await.expect("token");
    assert_eq!(kid_of(&old_token), before.signing_kid);
    let published = published_kids(&http, &mesh.mesh.issuer).await;
    assert!(
        published.contains(&before.next_kid),
        "next key published before it signs"
    );

    let rotation = mesh.mesh.key_rotator.rotate().await.expect("rotate");
    assert_eq!(rotation.signing_kid, before.next_kid);
    assert_eq!(rotation.retired_kids, vec![before.signing_kid.clone()]);
    let kids: BTreeSet<_> = published_kids(&http, &mesh.mesh.issuer)
        .await
        .into_iter()
        .collect();
    let expected: BTreeSet<_> = [
        before.signing_kid,
        rotation.signing_kid.clone(),
        rotation.next_kid.clone(),
    ]
    .into_iter()
    .collect();
    assert_eq!(kids, expected);

    let new_token = mesh.meshctl_token().await.expect("token");
    assert_eq!(kid_of(&new_token), rotation.signing_kid);
    let mut inventory =
        InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("channel"));
    let fetches = mesh.mesh.inventory_verifier.jwks_fetches();
    for token in [&old_token, &new_token] {
        inventory
            .list_items(bearer(ListItemsRequest::default(), token))
            .await
            .expect("tokens of the retired and of the new key verify");
    }
    assert_eq!(
        mesh.mesh.inventory_verifier.jwks_fetches(),
        fetches,
        "the new signing key was already known: no refetch"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_administrator_through_meshctl_may_rotate_the_signing_key() {
    let mesh = TestMesh::start().await.expect("mesh");
    let before = mesh.mesh.key_rotator.current();
    let rotate = |as_workload: &'static str, token: String| {
        let channel = mesh.auth_channel(as_workload).expect("channel");
        async move {
            AuthServiceClient::new(channel)
                .rotate_signing_key(bearer(RotateSigningKeyRequest {}, &token))
                .await
        }
    };
    let customer = mesh.user_token("alice", "auth").await.expect("alice");
    let admin = mesh.user_token("admin", "auth").await.expect("admin");

    let refused = rotate("meshctl", customer).await.expect_err("a customer");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("auth:keys"), "{refused:?}");
    let refused = rotate("orders", admin.clone())
        .await
        .expect_err("not meshctl");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = rotate("meshctl", String::new())
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(mesh.mesh.key_rotator.current(), before, "nothing rotated");

    let rotated = rotate("meshctl", admin).await.expect("admin").into_inner();
    assert_eq!(rotated.signing_kid, before.next_kid);
    assert_eq!(rotated.retired_kids, vec![before.signing_kid]);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_under_load_fails_no_call() {
    let mesh = Arc::new(TestMesh::start().await.expect("mesh"));
    let admin = mesh.user_token("admin", "auth").await.expect("admin");
    let calls = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (mesh, calls, stopped) = (mesh.clone(), calls.clone(), stopped.clone());
        workers.push(tokio::spawn(async move {
            let mut inventory =
                InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("channel"));
            let mut failures = Vec::new();
            let mut kids = BTreeSet::new();
            while !*stopped.borrow() {
                // A new token each round, so tokens of every key in turn reach the verifier.
                let token = match mesh.meshctl_token().await {
                    Ok(token) => token,
                    Err(error) => {
                        failures.push(format!("token: {error}"));
                        continue;
                    }
                };
                kids.insert(kid_of(&token));
                for _ in 0..3 {
                    calls.fetch_add(1, Ordering::Relaxed);
                    if let Err(status) = inventory
                        .list_items(bearer(ListItemsRequest::default(), &token))
                        .await
                    {
                        failures.push(format!("{status:?}"));
                    }
                }
            }
            (failures, kids)
        }));
    }
    let mut admin_client = AuthServiceClient::new(mesh.auth_channel("meshctl").expect("channel"));
    let mut signing = BTreeSet::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let rotated = admin_client
            .rotate_signing_key(bearer(RotateSigningKeyRequest {}, &admin))
            .await
            .expect("rotate")
            .into_inner();
        signing.insert(rotated.signing_kid);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.send(true).expect("stop");
    let mut failures = Vec::new();
    let mut kids = BTreeSet::new();
    for worker in workers {
        let (failed, seen) = worker.await.expect("worker");
        failures.extend(failed);
        kids.extend(seen);
    }
    assert!(calls.load(Ordering::Relaxed) > 30, "the load ran");
    assert_eq!(failures, Vec::<String>::new(), "0 failed calls");
    assert!(
        signing.is_subset(&kids),
        "tokens of both new keys were used: {kids:?}"
    );
    Arc::try_unwrap(mesh).expect("workers done").stop().await;
}
