//! Metrics, scraped from the services' admin listeners as Prometheus would: after a known
//! scenario the counters equal what happened, label sets stay bounded whatever callers send, and
//! the endpoint answers under load.

use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_proto::inventory::v1::{ListItemsRequest, RestockRequest};
use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_proto::orders::v1::{OrderLine, PlaceOrderRequest};
use mesh_telemetry::prom::Samples;
use mesh_test_support::{TestMesh, bearer, forge};
use tonic::Code;

const INVENTORY: &str = "mesh.inventory.v1.InventoryService";

/// How much `name` (restricted to `labels`) grew from `before` to `after`.
fn grew(before: &Samples, after: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.sum(name, labels) - before.sum(name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_known_scenario_the_scraped_counters_equal_what_happened() {
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.meshctl_token().await.expect("token");
    let inventory = InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("ch"));
    let before = mesh.scrape("inventory").await.expect("scrape");
    // 5 allowed (one token: 1 cache miss, then hits), 3 without a token, 2 without the scope.
    for _ in 0..5 {
        inventory
            .clone()
            .list_items(bearer(ListItemsRequest::default(), &token))
            .await
            .expect("listed");
    }
    for _ in 0..3 {
        let refused = inventory
            .clone()
            .list_items(ListItemsRequest::default())
            .await
            .expect_err("no token");
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
    for _ in 0..2 {
        let refused = inventory
            .clone()
            .restock(bearer(
                RestockRequest {
                    sku: "SKU-001".into(),
                    quantity: 1,
                },
                &token,
            ))
            .await
            .expect_err("no admin scope");
        assert_eq!(refused.code(), Code::PermissionDenied);
    }
    let after = mesh.scrape("inventory").await.expect("scrape");
    let decisions = "mesh_authz_decisions_total";
    let list = [("rpc_service", INVENTORY), ("rpc_method", "ListItems")];
    let restock = [("rpc_service", INVENTORY), ("rpc_method", "Restock")];
    assert_eq!(
        grew(
            &before,
            &after,
            decisions,
            &[list[0], list[1], ("decision", "allow")]
        ),
        5.0
    );
    assert_eq!(
        grew(
            &before,
            &after,
            decisions,
            &[
                list[0],
                list[1],
                ("decision", "deny"),
                ("reason", "missing_token")
            ]
        ),
        3.0
    );
    assert_eq!(
        grew(
            &before,
            &after,
            decisions,
            &[
                restock[0],
                restock[1],
                ("decision", "deny"),
                ("reason", "missing_scope")
            ]
        ),
        2.0
    );
    // The RPC histogram counts the same calls by status code (16 UNAUTHENTICATED, 7
    // PERMISSION_DENIED).
    let calls = "rpc_server_call_duration_seconds_count";
    for (labels, code, n) in [(list, "0", 5.0), (list, "16", 3.0), (restock, "7", 2.0)] {
        let with_code = [labels[0], labels[1], ("rpc_grpc_status_code", code)];
        assert_eq!(
            grew(&before, &after, calls, &with_code),
            n,
            "{labels:?} {code}"
        );
    }
    // 7 verifications of one token: the first checked its signature, 6 came from the cache.
    let verifications = "mesh_token_verifications_total";
    assert_eq!(
        grew(&before, &after, verifications, &[("cache", "miss")]),
        1.0
    );
    assert_eq!(
        grew(&before, &after, verifications, &[("cache", "hit")]),
        6.0
    );
    // Every decision is one audit record, and none failed.
    let records = "mesh_audit_records_total";
    assert_eq!(
        grew(&before, &after, records, &[("outcome", "appended")]),
        10.0
    );
    assert_eq!(after.sum(records, &[("outcome", "failed")]), 0.0);
    // The served certificate has most of its hour ahead; the revocation stream is up.
    let remaining = after.sum("mesh_certificate_remaining_seconds", &[]);
    assert!(remaining > 600.0 && remaining <= 3600.0, "{remaining}");
    assert_eq!(after.sum("mesh_revocation_stream_up", &[]), 1.0);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_order_outcomes_and_token_grants_are_counted() {
    let mesh = TestMesh::start().await.expect("mesh");
    let auth_before = mesh.scrape("auth").await.expect("scrape");
    let token = mesh.user_token("alice", "orders").await.expect("login");
    let orders = OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("channel"));
    let place = |key: &str, quantity: u32| PlaceOrderRequest {
        idempotency_key: key.into(),
        lines: vec![OrderLine {
            sku: "SKU-003".into(),
            quantity,
        }],
    };
    let before = mesh.scrape("orders").await.expect("scrape");
    for (key, quantity) in [
        ("metrics-00001", 1),
        ("metrics-00002", 1),
        ("metrics-00003", 1_000),
    ] {
        orders
            .clone()
            .place_order(bearer(place(key, quantity), &token))
            .await
            .expect("answered");
    }
    let invalid = orders
        .clone()
        .place_order(bearer(place("x", 1), &token))
        .await
        .expect_err("short key");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    let after = mesh.scrape("orders").await.expect("scrape");
    let placed = "mesh_orders_placed_total";
    for (outcome, n) in [
        ("confirmed", 2.0),
        ("rejected", 1.0),
        ("invalid_argument", 1.0),
    ] {
        assert_eq!(
            grew(&before, &after, placed, &[("outcome", outcome)]),
            n,
            "{outcome}"
        );
    }
    // Orders' own calls: 3 reservations at inventory, all with one exchanged token: the same
    // login asked for the same audience and scopes, so the token got for the first is reused.
    let client = "rpc_client_call_duration_seconds_count";
    assert_eq!(
        grew(
            &before,
            &after,
            client,
            &[("rpc_method", "Reserve"), ("rpc_grpc_status_code", "0")]
        ),
        3.0
    );
    assert_eq!(
        grew(
            &before,
            &after,
            client,
            &[
                ("rpc_method", "ExchangeToken"),
                ("rpc_grpc_status_code", "0")
            ]
        ),
        1.0
    );
    // The login above was one authorization-code grant at the token endpoint.
    let auth_after = mesh.scrape("auth").await.expect("scrape");
    assert_eq!(
        grew(
            &auth_before,
            &auth_after,
            "mesh_tokens_issued_total",
            &[("grant_type", "authorization_code"), ("outcome", "issued")]
        ),
        1.0
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_sets_stay_bounded_under_a_thousand_users_and_made_up_methods() {
    let mesh = TestMesh::start().await.expect("mesh");
    let key = mesh.issuer_key().await.expect("issuer key");
    let channel = mesh.inventory_channel("meshctl").expect("channel");
    let inventory = InventoryServiceClient::new(channel.clone());
    let before = mesh.scrape("inventory").await.expect("scrape");
    // The endpoint is scraped throughout: it keeps answering while the calls run.
    let scrapes = {
        let addr = mesh.mesh.metrics_addrs["inventory"];
        let http = mesh_service::admin::scrape_client().expect("client");
        tokio::spawn(async move {
            let mut answered = 0;
            for _ in 0..20 {
                let text = http
                    .get(format!("http://{addr}/metrics"))
                    .send()
                    .await
                    .expect("scrape answers under load")
                    .text()
                    .await
                    .expect("body");
                assert!(text.contains("mesh_certificate_remaining_seconds"));
                answered += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            answered
        })
    };
    // 1,000 users, each with its own real token, 8 calls at a time.
    let users: Vec<String> = (0..1_000)
        .map(|i| {
            let mut claims = forge::claims(&mesh.mesh.issuer, "inventory", "inventory:read");
            claims["sub"] = serde_json::json!(format!("user-{i:04}"));
            key.sign(&key.header(), &claims)
        })
        .collect();
    for chunk in users.chunks(8) {
        let calls = chunk.iter().map(|token| {
            let mut inventory = inventory.clone();
            let token = token.clone();
            async move {
                inventory
                    .list_items(bearer(ListItemsRequest::default(), &token))
                    .await
            }
        });
        for answer in futures_util::future::join_all(calls).await {
            answer.expect("a real user's token is accepted");
        }
    }
    // 200 made-up method paths, spoken by hand.
    let mut grpc = tonic::client::Grpc::new(channel);
    for i in 0..200 {
        grpc.ready().await.expect("ready");
        let path = format!("/mesh.inventory.v1.InventoryService/Made{i}Up")
            .parse()
            .expect("path");
        let refused = grpc
            .unary::<_, ListItemsRequest, _>(
                tonic::Request::new(ListItemsRequest::default()),
                path,
                tonic_prost::ProstCodec::<ListItemsRequest, ListItemsRequest>::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    assert_eq!(scrapes.await.expect("scrapes"), 20);
    let after = mesh.scrape("inventory").await.expect("scrape");
    assert_eq!(
        grew(
            &before,
            &after,
            "mesh_authz_decisions_total",
            &[("rpc_method", "ListItems"), ("decision", "allow")]
        ),
        1_000.0
    );
    assert_eq!(
        grew(
            &before,
            &after,
            "mesh_authz_decisions_total",
            &[("rpc_method", "_OTHER"), ("reason", "method_not_in_policy")]
        ),
        200.0
    );
    // No user and no made-up method became a label: the series are the same few as before.
    for sample in &after.0 {
        for value in sample.labels.values() {
            assert!(
                !value.starts_with("user-") && !value.contains("Up"),
                "{sample:?}"
            );
        }
    }
    let series = |samples: &Samples, name: &str| samples.select(name, &[]).count();
    for name in [
        "mesh_authz_decisions_total",
        "rpc_server_call_duration_seconds_count",
    ] {
        let added = series(&after, name) - series(&before, name).min(series(&after, name));
        assert!(added <= 4, "{name}: {added} new series");
    }
    assert!(after.0.len() < 1_000, "{} series in all", after.0.len());
    mesh.stop().await;
}
