//! The business flow: a user's order reserved in inventory on their behalf, every hop
//! authenticated twice, and the ways it must not be abused.

use mesh_proto::auth::v1::ExchangeTokenRequest;
use mesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_proto::inventory::v1::{
    GetItemRequest, ListItemsRequest, ReservationLine, ReserveRequest,
};
use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_proto::orders::v1::{
    CancelOrderRequest, GetOrderRequest, ListOrdersRequest, OrderLine, OrderState,
    PlaceOrderRequest,
};
use mesh_test_support::chaos::DelayProxy;
use mesh_test_support::{TestMesh, bearer};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

fn place(key: &str, sku: &str, quantity: u32) -> PlaceOrderRequest {
    PlaceOrderRequest {
        idempotency_key: key.into(),
        lines: vec![OrderLine {
            sku: sku.into(),
            quantity,
        }],
    }
}

async fn available(mesh: &TestMesh, sku: &str) -> u32 {
    let token = mesh.meshctl_token().await.expect("token");
    InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("channel"))
        .get_item(bearer(GetItemRequest { sku: sku.into() }, &token))
        .await
        .expect("get item")
        .into_inner()
        .available
}

fn orders(mesh: &TestMesh) -> OrdersServiceClient<Channel> {
    OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("channel"))
}

/// An exchanged token (sub = `user`, act = orders, aud = inventory), obtained the way orders
/// obtains it: with orders' certificate.
pub(crate) async fn exchanged_as_orders(mesh: &TestMesh, user: &str) -> String {
    let user_token = mesh.user_token(user, "orders").await.expect("login");
    AuthServiceClient::new(mesh.auth_channel("orders").expect("channel"))
        .exchange_token(ExchangeTokenRequest {
            subject_token: user_token,
            audience: "inventory".into(),
            scopes: vec!["inventory:reserve".into()],
        })
        .await
        .expect("orders may exchange its user's token")
        .into_inner()
        .access_token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_logs_in_places_an_order_that_reserves_stock_and_cancels_it() {
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh
        .user_token("alice", "orders")
        .await
        .expect("alice logs in");
    assert_eq!(available(&mesh, "SKU-002").await, 25);

    let order = orders(&mesh)
        .place_order(bearer(place("alice-order-0001", "SKU-002", 3), &token))
        .await
        .expect("placed")
        .into_inner();
    assert_eq!(order.state(), OrderState::Confirmed, "{order:?}");
    assert_eq!(order.owner, "alice");
    assert_eq!(available(&mesh, "SKU-002").await, 22);

    let cancelled = orders(&mesh)
        .cancel_order(bearer(
            CancelOrderRequest {
                order_id: order.order_id.clone(),
            },
            &token,
        ))
        .await
        .expect("cancelled")
        .into_inner();
    assert_eq!(cancelled.state(), OrderState::Cancelled);
    assert_eq!(available(&mesh, "SKU-002").await, 25, "stock restored");

    // Cancelling again changes nothing and restores nothing twice.
    orders(&mesh)
        .cancel_order(bearer(
            CancelOrderRequest {
                order_id: order.order_id,
            },
            &token,
        ))
        .await
        .expect("idempotent cancel");
    assert_eq!(available(&mesh, "SKU-002").await, 25);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bob_cannot_read_or_cancel_alices_order_but_admin_can() {
    let mesh = TestMesh::start().await.expect("mesh");
    let alice = mesh.user_token("alice", "orders").await.expect("alice");
    let bob = mesh.user_token("bob", "orders").await.expect("bob");
    let admin = mesh.user_token("admin", "orders").await.expect("admin");
    let order = orders(&mesh)
        .place_order(bearer(place("alice-order-0002", "SKU-001", 1), &alice))
        .await
        .expect("placed")
        .into_inner();
    let id = || GetOrderRequest {
        order_id: order.order_id.clone(),
    };

    let read = orders(&mesh)
        .get_order(bearer(id(), &bob))
        .await
        .expect_err("bob");
    assert_eq!(read.code(), Code::NotFound);
    let unknown = orders(&mesh)
        .get_order(bearer(
            GetOrderRequest {
                order_id: "no-such-order".into(),
            },
            &bob,
        ))
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(
        read.message().replace(&order.order_id, "ID"),
        unknown.message().replace("no-such-order", "ID"),
        "another user's order must look exactly like a missing one"
    );
    let cancel = orders(&mesh)
        .cancel_order(bearer(
            CancelOrderRequest {
                order_id: order.order_id.clone(),
            },
            &bob,
        ))
        .await
        .expect_err("bob");
    assert_eq!(cancel.code(), Code::NotFound);
    let bobs = orders(&mesh)
        .list_orders(bearer(ListOrdersRequest::default(), &bob))
        .await
        .expect("list")
        .into_inner();
    assert!(bobs.orders.is_empty());

    let seen = orders(&mesh)
        .get_order(bearer(id(), &admin))
        .await
        .expect("admin reads");
    assert_eq!(seen.into_inner().owner, "alice");
    let all = orders(&mesh)
        .list_orders(bearer(ListOrdersRequest::default(), &admin))
        .await
        .expect("admin lists")
        .into_inner();
    assert_eq!(all.orders.len(), 1);
    let cancelled = orders(&mesh)
        .cancel_order(bearer(
            CancelOrderRequest {
                order_id: order.order_id.clone(),
            },
            &admin,
        ))
        .await
        .expect("admin cancels")
        .into_inner();
    assert_eq!(cancelled.state(), OrderState::Cancelled);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confused_deputy_attempts_are_denied() {
    let mesh = TestMesh::start().await.expect("mesh");
    let mut inventory =
        InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("channel"));

    // A token for orders presented to inventory.
    let for_orders = mesh.user_token("alice", "orders").await.expect("login");
    let wrong_audience = inventory
        .list_items(bearer(ListItemsRequest::default(), &for_orders))
        .await
        .expect_err("audience orders");
    assert_eq!(wrong_audience.code(), Code::Unauthenticated);
    assert!(wrong_audience.message().contains("audience"));

    // A real exchanged token (act = orders), presented with meshctl's certificate.
    let exchanged = exchanged_as_orders(&mesh, "alice").await;
    let reserve = || ReserveRequest {
        reservation_id: "deputy-test-0001".into(),
        lines: vec![ReservationLine {
            sku: "SKU-001".into(),
            quantity: 1,
        }],
    };
    let stolen = inventory
        .reserve(bearer(reserve(), &exchanged))
        .await
        .expect_err("meshctl's certificate may not reserve");
    // Refused before the caller rule is even asked: the token is bound to orders' certificate.
    assert_eq!(stolen.code(), Code::Unauthenticated);
    assert!(
        stolen.message().contains("another certificate"),
        "{stolen:?}"
    );

    // meshctl may not exchange a user's token either: it is not addressed to meshctl.
    let exchange = AuthServiceClient::new(mesh.auth_channel("meshctl").expect("channel"))
        .exchange_token(ExchangeTokenRequest {
            subject_token: for_orders.clone(),
            audience: "inventory".into(),
            scopes: vec![],
        })
        .await
        .expect_err("not addressed to meshctl");
    assert_eq!(exchange.code(), Code::PermissionDenied);

    // A user's own inventory token has no reserve scope and no actor.
    let own = mesh.user_token("admin", "inventory").await.expect("login");
    let direct = InventoryServiceClient::new(mesh.inventory_channel("orders").expect("channel"))
        .reserve(bearer(reserve(), &own))
        .await
        .expect_err("no act, no scope");
    assert_eq!(direct.code(), Code::PermissionDenied);

    // Control: the same exchanged token from orders' certificate is accepted.
    InventoryServiceClient::new(mesh.inventory_channel("orders").expect("channel"))
        .reserve(bearer(reserve(), &exchanged))
        .await
        .expect("orders, acting for alice, may reserve");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_order_is_idempotent_and_reserve_replays_deduct_once() {
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.user_token("alice", "orders").await.expect("login");
    let first = orders(&mesh)
        .place_order(bearer(place("alice-retry-0001", "SKU-003", 5), &token))
        .await
        .expect("placed")
        .into_inner();
    let second = orders(&mesh)
        .place_order(bearer(place("alice-retry-0001", "SKU-003", 5), &token))
        .await
        .expect("retried")
        .into_inner();
    assert_eq!(first, second, "same key, same order");
    assert_eq!(available(&mesh, "SKU-003").await, 195, "reserved once");
    let listed = orders(&mesh)
        .list_orders(bearer(ListOrdersRequest::default(), &token))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.orders.len(), 1);
    let other_lines = orders(&mesh)
        .place_order(bearer(place("alice-retry-0001", "SKU-003", 6), &token))
        .await
        .expect_err("same key, other lines");
    assert_eq!(other_lines.code(), Code::AlreadyExists);

    // Reserve replayed directly, as orders would on a retry.
    let exchanged = exchanged_as_orders(&mesh, "alice").await;
    let mut inventory =
        InventoryServiceClient::new(mesh.inventory_channel("orders").expect("channel"));
    let request = |quantity| ReserveRequest {
        reservation_id: "replay-test-0001".into(),
        lines: vec![ReservationLine {
            sku: "SKU-001".into(),
            quantity,
        }],
    };
    for _ in 0..3 {
        let answer = inventory
            .reserve(bearer(request(4), &exchanged))
            .await
            .expect("reserve")
            .into_inner();
        assert!(answer.reserved);
    }
    assert_eq!(available(&mesh, "SKU-001").await, 96, "deducted once");
    let conflict = inventory
        .reserve(bearer(request(5), &exchanged))
        .await
        .expect_err("same id, other lines");
    assert_eq!(conflict.code(), Code::AlreadyExists);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_parallel_orders_against_stock_ten_confirm_exactly_ten() {
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.user_token("alice", "orders").await.expect("login");
    assert_eq!(available(&mesh, "SKU-004").await, 10);
    let calls = (0..50).map(|i| {
        let mut client = orders(&mesh);
        let request = bearer(place(&format!("parallel-{i:04}"), "SKU-004", 1), &token);
        async move { client.place_order(request).await }
    });
    let results = futures_util::future::join_all(calls).await;
    let mut confirmed = 0;
    let mut rejected = 0;
    for result in results {
        match result
            .expect("every order gets an answer")
            .into_inner()
            .state()
        {
            OrderState::Confirmed => confirmed += 1,
            OrderState::Rejected => rejected += 1,
            other => panic!("unexpected state {other:?}"),
        }
    }
    assert_eq!((confirmed, rejected), (10, 40));
    assert_eq!(available(&mesh, "SKU-004").await, 0);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_down_means_unavailable_reads_keep_working_and_a_retry_recovers() {
    let mut mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.user_token("alice", "orders").await.expect("login");
    let placed = orders(&mesh)
        .place_order(bearer(place("before-outage-01", "SKU-001", 2), &token))
        .await
        .expect("placed")
        .into_inner();

    mesh.mesh.stop_inventory().await;
    let started = std::time::Instant::now();
    let refused = orders(&mesh)
        .place_order(bearer(place("during-outage-01", "SKU-001", 1), &token))
        .await
        .expect_err("inventory is down");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "fails fast"
    );

    // Reads keep working, and the half-done order is there, PENDING.
    let listed = orders(&mesh)
        .list_orders(bearer(ListOrdersRequest::default(), &token))
        .await
        .expect("reads work without inventory")
        .into_inner();
    assert_eq!(listed.orders.len(), 2);
    assert_eq!(listed.orders[0].state(), OrderState::Pending);
    orders(&mesh)
        .get_order(bearer(
            GetOrderRequest {
                order_id: placed.order_id,
            },
            &token,
        ))
        .await
        .expect("get works without inventory");

    // Inventory comes back; a retry with the same key finishes the same order. Orders probes
    // the ejected replica again within its ejection period (at most 4 s), so a client that
    // retries, as the hint says, gets through within a few seconds.
    mesh.mesh.restart_inventory().await.expect("restart");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
    let retried = loop {
        match orders(&mesh)
            .place_order(bearer(place("during-outage-01", "SKU-001", 1), &token))
            .await
        {
            Ok(order) => break order.into_inner(),
            Err(status) if status.code() == Code::Unavailable => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "not recovered: {status:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(status) => panic!("recovered with {status:?}"),
        }
    };
    assert_eq!(retried.order_id, listed.orders[0].order_id);
    assert_eq!(retried.state(), OrderState::Confirmed);
    assert_eq!(available(&mesh, "SKU-001").await, 97);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_a_retried_order_never_leaves_a_cancelled_order_holding_stock() {
    const ORDERS: usize = 20;
    let mut mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.user_token("alice", "orders").await.expect("login");
    let before = available(&mesh, "SKU-002").await;

    // Orders placed while inventory is down stay PENDING: each is finished by a retry.
    mesh.mesh.stop_inventory().await;
    let keys: Vec<String> = (0..ORDERS).map(|i| format!("raced-{i:04}")).collect();
    for key in &keys {
        orders(&mesh)
            .place_order(bearer(place(key, "SKU-002", 1), &token))
            .await
            .expect_err("inventory is down");
    }
    mesh.mesh.restart_inventory().await.expect("restart");
    let pending: Vec<String> = orders(&mesh)
        .list_orders(bearer(ListOrdersRequest::default(), &token))
        .await
        .expect("list")
        .into_inner()
        .orders
        .into_iter()
        .filter(|o| o.state() == OrderState::Pending)
        .map(|o| o.order_id)
        .collect();
    assert_eq!(pending.len(), ORDERS);

    // A second orders replica whose path to inventory is slow: inventory's answers to a retry's
    // Reserve and to a cancel's Release come back together, in any order.
    let slow = DelayProxy::start(mesh.mesh.inventory_addr, Duration::from_millis(100))
        .await
        .expect("proxy");
    let replica = mesh
        .mesh
        .start_orders_replica("orders-slow", &slow.addr.to_string())
        .await
        .expect("orders-slow");
    let at_replica = || {
        OrdersServiceClient::new(
            mesh.mesh
                .traced_channel("meshctl", "orders", &replica.to_string())
                .expect("channel"),
        )
    };
    let races = keys.iter().zip(&pending).map(|(key, id)| {
        let (mut retry, mut cancel) = (at_replica(), at_replica());
        let place_request = bearer(place(key, "SKU-002", 1), &token);
        let cancel_request = bearer(
            CancelOrderRequest {
                order_id: id.clone(),
            },
            &token,
        );
        async move {
            let (placed, cancelled) = tokio::join!(
                retry.place_order(place_request),
                cancel.cancel_order(cancel_request)
            );
            (placed, cancelled.map(|r| r.into_inner()))
        }
    });
    for (placed, cancelled) in futures_util::future::join_all(races).await {
        if let Err(status) = placed {
            panic!("the retry is answered: {status:?}");
        }
        let cancelled = cancelled.expect("a cancel of a pending order is answered");
        assert_eq!(cancelled.state(), OrderState::Cancelled);
    }

    // Every order ended cancelled, and the stock they moved is all back.
    for id in &pending {
        let order = orders(&mesh)
            .get_order(bearer(
                GetOrderRequest {
                    order_id: id.clone(),
                },
                &token,
            ))
            .await
            .expect("get")
            .into_inner();
        assert_eq!(order.state(), OrderState::Cancelled, "{id}");
    }
    assert_eq!(
        available(&mesh, "SKU-002").await,
        before,
        "stock held by cancelled orders"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchanged_token_is_reused_only_for_the_login_that_got_it() {
    use auth_interceptor::audit::AuditRecord;
    let mesh = TestMesh::start().await.expect("mesh");
    let alice = mesh.user_token("alice", "orders").await.expect("alice");
    let bob = mesh.user_token("bob", "orders").await.expect("bob");
    let alice_again = mesh
        .user_token("alice", "orders")
        .await
        .expect("alice again");
    let placed = [
        ("reuse-00001", &alice),
        ("reuse-00002", &bob),
        ("reuse-00003", &alice),
        ("reuse-00004", &alice_again),
        ("reuse-00005", &bob),
    ];
    for (key, token) in placed {
        let order = orders(&mesh)
            .place_order(bearer(place(key, "SKU-002", 1), token))
            .await
            .expect("placed")
            .into_inner();
        assert_eq!(order.state(), OrderState::Confirmed, "{order:?}");
    }
    // Each reservation was made as the user who ordered, never with another login's token.
    let reserved: Vec<(String, String)> = std::fs::read_to_string(mesh.mesh.audit.log("inventory"))
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str::<AuditRecord>(l).expect("record"))
        .filter(|r| r.method.ends_with("/Reserve"))
        .map(|r| (r.decision, r.subject))
        .collect();
    let expected =
        ["alice", "bob", "alice", "alice", "bob"].map(|s| ("allow".to_owned(), s.to_owned()));
    assert_eq!(reserved, expected);
    // Three logins, three exchanges: the second order of a login reused its exchanged token.
    let exchanges = std::fs::read_to_string(mesh.mesh.audit.log("auth"))
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str::<AuditRecord>(l).expect("record"))
        .filter(|r| r.reason == "token_exchange")
        .count();
    assert_eq!(exchanges, 3);
    mesh.stop().await;
}
