//! Signing keys survive restarts; a rotation keeps the previous key published, and verifiers
//! pick up the new key on their own.

use jsonwebtoken::jwk::JwkSet;
use mesh_dev::devmesh::DevMesh;
use mesh_proto::inventory::v1::ListItemsRequest;
use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_test_support::{TestMesh, bearer};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_persist_across_restarts() {
    let dir = tempfile::tempdir().expect("dir");
    let first = DevMesh::start(dir.path()).await.expect("mesh");
    let kids_before = published_kids(&first.https_client().expect("https"), &first.issuer).await;
    first.stop().await;

    let second = DevMesh::start(dir.path()).await.expect("restarted mesh");
    let kids_after = published_kids(&second.https_client().expect("https"), &second.issuer).await;
    assert_eq!(kids_before.len(), 1);
    assert_eq!(kids_before, kids_after);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_publishes_current_and_previous_and_both_tokens_verify() {
    let mesh = TestMesh::start().await.expect("mesh");
    let http = mesh.https().expect("https");
    let old_token = mesh.meshctl_token().await.expect("token");
    let old_kids = published_kids(&http, &mesh.mesh.issuer).await;

    let new_kid = mesh.mesh.key_rotator.rotate().await.expect("rotate");
    let kids = published_kids(&http, &mesh.mesh.issuer).await;
    assert_eq!(kids.len(), 2);
    assert!(kids.contains(&new_kid));
    assert!(kids.contains(&old_kids[0]));

    let new_token = mesh.meshctl_token().await.expect("token");
    let mut inventory =
        InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("channel"));
    let fetches = mesh.mesh.inventory_verifier.jwks_fetches();
    inventory
        .list_items(bearer(ListItemsRequest::default(), &old_token))
        .await
        .expect("a token of the previous key still verifies");
    inventory
        .list_items(bearer(ListItemsRequest::default(), &new_token))
        .await
        .expect("the new key is picked up through one refetch");
    assert_eq!(mesh.mesh.inventory_verifier.jwks_fetches(), fetches + 1);
    mesh.stop().await;
}
