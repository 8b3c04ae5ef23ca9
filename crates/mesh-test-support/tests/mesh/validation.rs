//! Bad input is refused at the edge with INVALID_ARGUMENT naming the field, and loses nothing.

use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_proto::orders::v1::{ListOrdersRequest, OrderLine, PlaceOrderRequest};
use mesh_test_support::{TestMesh, bearer};
use tonic::Code;
use tonic_types::StatusExt;

fn line(sku: &str, quantity: u32) -> OrderLine {
    OrderLine {
        sku: sku.into(),
        quantity,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_is_invalid_argument_naming_the_field() {
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.user_token("alice", "orders").await.expect("login");
    let mut orders = OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("channel"));
    let key = "valid-key-0001";
    let many: Vec<OrderLine> = (0..51).map(|i| line(&format!("SKU-{i:03}"), 1)).collect();
    let cases: Vec<(PlaceOrderRequest, &str)> = vec![
        (
            PlaceOrderRequest {
                idempotency_key: key.into(),
                lines: vec![line("SKU-001", 0)],
            },
            "lines[0].quantity",
        ),
        (
            PlaceOrderRequest {
                idempotency_key: key.into(),
                lines: vec![line("SKU-001", 1001)],
            },
            "lines[0].quantity",
        ),
        (
            PlaceOrderRequest {
                idempotency_key: key.into(),
                lines: vec![line("sku 1", 1)],
            },
            "lines[0].sku",
        ),
        (
            PlaceOrderRequest {
                idempotency_key: key.into(),
                lines: vec![line("SKU-001", 1), line("SKU-001", 2)],
            },
            "lines[1].sku",
        ),
        (
            PlaceOrderRequest {
                idempotency_key: key.into(),
                lines: many,
            },
            "lines",
        ),
        (
            PlaceOrderRequest {
                idempotency_key: key.into(),
                lines: vec![],
            },
            "lines",
        ),
        (
            PlaceOrderRequest {
                idempotency_key: "short".into(),
                lines: vec![line("SKU-001", 1)],
            },
            "idempotency_key",
        ),
        (
            PlaceOrderRequest {
                idempotency_key: "has spaces in it".into(),
                lines: vec![line("SKU-001", 1)],
            },
            "idempotency_key",
        ),
    ];
    for (request, field) in cases {
        let status = orders
            .place_order(bearer(request, &token))
            .await
            .expect_err("invalid");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let violations = status
            .get_details_bad_request()
            .expect("BadRequest details")
            .field_violations;
        assert!(
            violations.iter().any(|v| v.field == field),
            "{field} not in {violations:?}"
        );
        assert!(status.message().contains(field));
    }
    let page = orders
        .list_orders(bearer(
            ListOrdersRequest {
                page_size: 101,
                page_token: String::new(),
            },
            &token,
        ))
        .await
        .expect_err("page size");
    assert_eq!(page.code(), Code::InvalidArgument);

    // Nothing was stored by any refused request.
    let listed = orders
        .list_orders(bearer(ListOrdersRequest::default(), &token))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.orders.is_empty());
    mesh.stop().await;
}
