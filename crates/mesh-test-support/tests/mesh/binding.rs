//! Certificate-bound tokens (RFC 8705): the tokens the issuer gives workloads over mTLS name the
//! certificate that asked, and a copy sent from any other certificate is refused.

use mesh_dev::devmesh::ORDERS_OTHER_CERTIFICATE;
use mesh_proto::auth::v1::IssueServiceTokenRequest;
use mesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_proto::inventory::v1::{ListItemsRequest, ReservationLine, ReserveRequest};
use mesh_proto::orders::v1::ListOrdersRequest;
use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_test_support::{TestMesh, bearer, forge};
use serde_json::{Value, json};
use tonic::Code;

use crate::oidc::payload;
use crate::refusals::records;
use crate::user_grants::introspect;

/// `cnf.x5t#S256` of the certificate in `workload`'s files.
fn thumbprint_of(mesh: &TestMesh, workload: &str) -> String {
    let chain = mesh_tls::material::load_certs(&mesh.mesh.tls_files(workload).cert).expect("cert");
    mesh_tls::Thumbprint::of(&chain[0]).to_base64url()
}

fn reserve(id: &str) -> ReserveRequest {
    ReserveRequest {
        reservation_id: id.into(),
        lines: vec![ReservationLine {
            sku: "SKU-001".into(),
            quantity: 1,
        }],
    }
}

fn inventory(
    mesh: &TestMesh,
    as_workload: &str,
) -> InventoryServiceClient<tonic::transport::Channel> {
    InventoryServiceClient::new(mesh.inventory_channel(as_workload).expect("channel"))
}

fn assert_mismatch(status: &tonic::Status) {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("bound to another certificate"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchanged_token_replayed_from_another_certificate_is_refused_even_sixty_four_at_once() {
    let mesh = TestMesh::start().await.expect("mesh");
    let exchanged = crate::flow::exchanged_as_orders(&mesh, "alice").await;
    assert_eq!(
        payload(&exchanged)["cnf"],
        json!({ "x5t#S256": thumbprint_of(&mesh, "orders") }),
        "bound to the certificate that asked"
    );

    // Another certificate of the very workload the Reserve row admits (sa/orders, actor
    // orders, the scope): only the binding stands between it and the stock.
    let replays = (0..64).map(|n| {
        let mut other = inventory(&mesh, ORDERS_OTHER_CERTIFICATE);
        let token = exchanged.clone();
        async move {
            other
                .reserve(bearer(reserve(&format!("replay-{n:04}")), &token))
                .await
        }
    });
    for answer in futures_util::future::join_all(replays).await {
        assert_mismatch(&answer.expect_err("a copy from another certificate"));
    }
    // meshctl's certificate, which no caller rule would admit anyway, gets the same answer.
    let from_meshctl = inventory(&mesh, "meshctl")
        .reserve(bearer(reserve("replay-meshctl"), &exchanged))
        .await
        .expect_err("a copy from another workload");
    assert_mismatch(&from_meshctl);
    let mismatches = records(&mesh, "inventory")
        .into_iter()
        .filter(|r| r.decision == "deny" && r.reason == "certificate_mismatch")
        .count();
    assert_eq!(mismatches, 65, "each replay is in inventory's audit chain");

    // The token from the certificate it is bound to: accepted.
    inventory(&mesh, "orders")
        .reserve(bearer(reserve("bound-0001"), &exchanged))
        .await
        .expect("orders, with its own certificate, may reserve");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_token_replayed_from_another_workloads_certificate_is_refused() {
    let mesh = TestMesh::start().await.expect("mesh");
    let token = AuthServiceClient::new(mesh.auth_channel("orders").expect("channel"))
        .issue_service_token(IssueServiceTokenRequest {
            audience: "inventory".into(),
            scopes: vec!["inventory:read".into()],
        })
        .await
        .expect("service token")
        .into_inner()
        .access_token;
    assert_eq!(
        payload(&token)["cnf"]["x5t#S256"],
        thumbprint_of(&mesh, "orders")
    );
    // Introspection says so too (RFC 8705 §3.2), for a resource server that introspects.
    let introspected = introspect(&mesh, &token).await;
    assert_eq!(introspected["active"], true);
    assert_eq!(
        introspected["cnf"]["x5t#S256"],
        thumbprint_of(&mesh, "orders")
    );
    // ListItems names no caller: before binding, any certificate in the trust domain could
    // use a copy of orders' token here.
    let stolen = inventory(&mesh, "meshctl")
        .list_items(bearer(ListItemsRequest::default(), &token))
        .await
        .expect_err("a copy from meshctl's certificate");
    assert_mismatch(&stolen);
    inventory(&mesh, "orders")
        .list_items(bearer(ListItemsRequest::default(), &token))
        .await
        .expect("from orders' own certificate");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bound_in_a_way_the_mesh_cannot_check_is_refused() {
    let mesh = TestMesh::start().await.expect("mesh");
    let key = mesh.issuer_key().await.expect("the issuer's key");
    let mut claims = forge::claims(&mesh.mesh.issuer, "inventory", "inventory:read");
    let client = inventory(&mesh, "meshctl");
    let answer = |claims: &Value| {
        let token = key.sign(&key.header(), claims);
        let request = bearer(ListItemsRequest::default(), &token);
        let mut client = client.clone();
        async move { client.list_items(request).await }
    };
    answer(&claims).await.expect("unbound: the control");
    // DPoP's key binding, a malformed thumbprint, an empty cnf: none can be checked here.
    for cnf in [
        json!({ "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" }),
        json!({ "x5t#S256": "not base64url!" }),
        json!({ "x5t#S256": "c2hvcnQ" }),
        json!({}),
    ] {
        claims["cnf"] = cnf.clone();
        let refused = answer(&claims).await.expect_err("cannot be checked");
        assert_eq!(refused.code(), Code::Unauthenticated, "{cnf}: {refused:?}");
        assert!(refused.message().contains("cnf"), "{cnf}: {refused:?}");
    }
    // Bound to meshctl's own certificate, signed by the issuer: accepted from it.
    claims["cnf"] = json!({ "x5t#S256": thumbprint_of(&mesh, "meshctl") });
    answer(&claims)
        .await
        .expect("bound to the presented certificate");
    drop(client);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_asked_for_over_https_are_not_bound() {
    let mesh = TestMesh::start().await.expect("mesh");
    let user = mesh.user_token("alice", "orders").await.expect("login");
    assert_eq!(
        payload(&user).get("cnf"),
        None,
        "a user's token is not bound"
    );
    let introspected = introspect(&mesh, &user).await;
    assert_eq!(introspected["active"], true);
    assert_eq!(introspected.get("cnf"), None);
    // It works from any mesh certificate the row admits: it is the user's, not a workload's.
    for workload in ["meshctl", "inventory"] {
        OrdersServiceClient::new(mesh.orders_channel(workload).expect("channel"))
            .list_orders(bearer(ListOrdersRequest::default(), &user))
            .await
            .expect("an unbound token from any admitted certificate");
    }
    mesh.stop().await;
}
