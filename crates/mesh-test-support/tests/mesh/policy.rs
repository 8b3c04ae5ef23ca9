//! Policy as data: a service enforces the policy file it is given (`--policy`), the same
//! checks as the shipped one, and the shipped files are the policy the other tests prove.

use std::collections::BTreeMap;

use mesh_proto::orders::v1::ListOrdersRequest;
use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_test_support::{TestMesh, bearer};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_enforces_the_policy_file_it_is_given() {
    let dir = tempfile::tempdir().expect("dir");
    let shipped = orders_service::SHIPPED_POLICY;
    // Tightened: listing orders needs orders:admin instead of orders:read.
    let listing = "method = \"/mesh.orders.v1.OrdersService/ListOrders\"\nauth = \"token\"\nscopes = [\"orders:read\"]";
    assert!(shipped.contains(listing), "the shipped rule");
    let tightened = shipped.replace(
        listing,
        "method = \"/mesh.orders.v1.OrdersService/ListOrders\"\nauth = \"token\"\nscopes = [\"orders:admin\"]",
    );
    let file = dir.path().join("orders.toml");
    std::fs::write(&file, tightened).expect("write");
    let mesh = TestMesh::start_with(mesh_dev::devmesh::DevOptions {
        policies: BTreeMap::from([("orders".to_owned(), file)]),
        ..Default::default()
    })
    .await
    .expect("mesh");
    let mut orders = OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("channel"));
    let alice = mesh.user_token("alice", "orders").await.expect("token");
    let refused = orders
        .list_orders(bearer(ListOrdersRequest::default(), &alice))
        .await
        .expect_err("a customer may not list any more");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("orders:admin"), "{refused:?}");
    let admin = mesh.user_token("admin", "orders").await.expect("token");
    orders
        .list_orders(bearer(ListOrdersRequest::default(), &admin))
        .await
        .expect("an administrator may");
    mesh.stop().await;
}
