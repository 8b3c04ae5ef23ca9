//! Refusals found by testing the binaries as an outside client would: a foreign trust domain, a
//! refusal decided in a handler, a user token the issuer no longer accepts. Each must come back
//! with the right status, leave nothing behind, and end as a `deny` record in the audit chain.

use auth_interceptor::audit::AuditRecord;
use mesh_dev::devmesh::FOREIGN_ORDERS;
use mesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use mesh_proto::auth::v1::{ExchangeTokenRequest, IssueServiceTokenRequest};
use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_proto::inventory::v1::{
    GetItemRequest, ListItemsRequest, ReleaseRequest, ReservationLine, ReserveRequest,
    RestockRequest,
};
use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_proto::orders::v1::{GetOrderRequest, ListOrdersRequest, OrderLine, PlaceOrderRequest};
use mesh_test_support::forge;
use mesh_test_support::{TestMesh, bearer};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Every record of `service`'s audit chain, in order.
pub(crate) fn records(mesh: &TestMesh, service: &str) -> Vec<AuditRecord> {
    std::fs::read_to_string(mesh.mesh.audit.log(service))
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect()
}

/// The last record for `method` in `service`'s chain, as `(decision, reason)`.
fn last_decision(mesh: &TestMesh, service: &str, method: &str) -> (String, String) {
    let record = records(mesh, service)
        .into_iter()
        .rev()
        .find(|r| r.method == method)
        .unwrap_or_else(|| panic!("no record for {method} in {service}'s chain"));
    (record.decision, record.reason)
}

fn assert_denied<T: std::fmt::Debug>(what: &str, answer: Result<T, tonic::Status>) {
    let status = answer.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_trust_domain_is_denied_on_every_row_but_health() {
    let mesh = TestMesh::start().await.expect("mesh");
    let alice = mesh.user_token("alice", "orders").await.expect("alice");
    let admin = mesh.admin_token().await.expect("admin");
    let line = || ReservationLine {
        sku: "SKU-001".into(),
        quantity: 1,
    };

    // spiffe://evil.example/sa/orders, signed by the mesh CA: the chain is fine, the domain not.
    let mut orders = OrdersServiceClient::new(mesh.orders_channel(FOREIGN_ORDERS).expect("ch"));
    assert_denied(
        "ListOrders",
        orders
            .list_orders(bearer(ListOrdersRequest::default(), &alice))
            .await,
    );
    assert_denied(
        "GetOrder",
        orders
            .get_order(bearer(
                GetOrderRequest {
                    order_id: "x".into(),
                },
                &alice,
            ))
            .await,
    );
    let mut inventory =
        InventoryServiceClient::new(mesh.inventory_channel(FOREIGN_ORDERS).expect("ch"));
    assert_denied(
        "ListItems",
        inventory
            .list_items(bearer(ListItemsRequest::default(), &admin))
            .await,
    );
    assert_denied(
        "GetItem",
        inventory
            .get_item(bearer(
                GetItemRequest {
                    sku: "SKU-001".into(),
                },
                &admin,
            ))
            .await,
    );
    assert_denied(
        "Restock",
        inventory
            .restock(bearer(
                RestockRequest {
                    sku: "SKU-001".into(),
                    quantity: 5,
                },
                &admin,
            ))
            .await,
    );
    assert_denied(
        "Reserve",
        inventory
            .reserve(bearer(
                ReserveRequest {
                    reservation_id: "res_foreign".into(),
                    lines: vec![line()],
                },
                &admin,
            ))
            .await,
    );
    assert_denied(
        "Release",
        inventory
            .release(bearer(
                ReleaseRequest {
                    reservation_id: "res_foreign".into(),
                },
                &admin,
            ))
            .await,
    );
    let mut auth = AuthServiceClient::new(mesh.auth_channel(FOREIGN_ORDERS).expect("ch"));
    assert_denied(
        "IssueServiceToken",
        auth.issue_service_token(IssueServiceTokenRequest {
            audience: "inventory".into(),
            scopes: vec![],
        })
        .await,
    );
    assert_denied(
        "ExchangeToken",
        auth.exchange_token(ExchangeTokenRequest {
            subject_token: alice.clone(),
            audience: "inventory".into(),
            scopes: vec![],
        })
        .await,
    );
    for (service, method) in [
        ("orders", "/mesh.orders.v1.OrdersService/ListOrders"),
        ("inventory", "/mesh.inventory.v1.InventoryService/Restock"),
        ("auth", "/mesh.auth.v1.AuthService/ExchangeToken"),
    ] {
        assert_eq!(
            last_decision(&mesh, service, method),
            ("deny".into(), "foreign_trust_domain".into())
        );
    }

    // Health is the one public row: a foreign workload may still ask whether we are up.
    for channel in [
        mesh.orders_channel(FOREIGN_ORDERS).expect("ch"),
        mesh.inventory_channel(FOREIGN_ORDERS).expect("ch"),
        mesh.auth_channel(FOREIGN_ORDERS).expect("ch"),
    ] {
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .expect("health is public");
    }

    // The control: the same token through our own orders certificate is allowed.
    OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("ch"))
        .list_orders(bearer(ListOrdersRequest::default(), &alice))
        .await
        .expect("a mesh workload with the same token is allowed");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_decided_in_a_handler_ends_as_a_deny_record_in_the_chain() {
    let mesh = TestMesh::start().await.expect("mesh");
    let alice = mesh.user_token("alice", "orders").await.expect("alice");
    // Signed by the mesh CA, in the trust domain, registered as no client: the policy row
    // (certificate only) lets it in, the handler refuses it.
    let mut stranger = AuthServiceClient::new(mesh.auth_channel("stranger").expect("channel"));
    assert_denied(
        "IssueServiceToken",
        stranger
            .issue_service_token(IssueServiceTokenRequest {
                audience: "inventory".into(),
                scopes: vec![],
            })
            .await,
    );
    assert_denied(
        "ExchangeToken",
        stranger
            .exchange_token(ExchangeTokenRequest {
                subject_token: alice,
                audience: "inventory".into(),
                scopes: vec![],
            })
            .await,
    );
    for method in ["IssueServiceToken", "ExchangeToken"] {
        let method = format!("/mesh.auth.v1.AuthService/{method}");
        assert_eq!(
            last_decision(&mesh, "auth", &method),
            ("deny".into(), "unregistered_workload".into()),
            "{method}"
        );
    }

    // Another user's order answers NOT_FOUND, exactly like a missing one, and is audited as
    // the refusal it is.
    let placed = place(&mesh, "alice", "refusal-audit")
        .await
        .expect("placed");
    let bob = mesh.user_token("bob", "orders").await.expect("bob");
    let mut orders = OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("ch"));
    let hidden = orders
        .get_order(bearer(GetOrderRequest { order_id: placed }, &bob))
        .await
        .expect_err("not bob's");
    let missing = orders
        .get_order(bearer(
            GetOrderRequest {
                order_id: "nope".into(),
            },
            &bob,
        ))
        .await
        .expect_err("missing");
    assert_eq!(hidden.code(), Code::NotFound);
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        hidden.metadata().get("mesh-deny-reason").is_none(),
        "the audit marker must not reach the caller"
    );
    let gets: Vec<_> = records(&mesh, "orders")
        .into_iter()
        .filter(|r| r.method.ends_with("/GetOrder"))
        .map(|r| (r.decision, r.reason))
        .collect();
    assert_eq!(
        gets,
        [
            ("allow".into(), "policy".into()),
            ("deny".into(), "not_owner".into()),
            ("allow".into(), "policy".into()),
        ]
    );
    mesh.stop().await;
}

/// `user` places one order of 1 × SKU-001 under `key`; the order id.
async fn place(mesh: &TestMesh, user: &str, key: &str) -> Result<String, tonic::Status> {
    let token = mesh.user_token(user, "orders").await.expect("token");
    place_with(mesh, &token, key).await
}

async fn place_with(mesh: &TestMesh, token: &str, key: &str) -> Result<String, tonic::Status> {
    let request = PlaceOrderRequest {
        idempotency_key: key.into(),
        lines: vec![OrderLine {
            sku: "SKU-001".into(),
            quantity: 1,
        }],
    };
    OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("channel"))
        .place_order(bearer(request, token))
        .await
        .map(|r| r.into_inner().order_id)
}

/// Rows in orders' database, and SKU-001's available stock in inventory's.
async fn stored_state(mesh: &TestMesh) -> (i64, i64) {
    let orders = mesh.db("orders").await.expect("db");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&orders)
        .await
        .expect("count");
    orders.close().await;
    let inventory = mesh.db("inventory").await.expect("db");
    let available: i64 = sqlx::query_scalar("SELECT available FROM items WHERE sku = 'SKU-001'")
        .fetch_one(&inventory)
        .await
        .expect("stock");
    inventory.close().await;
    (count, available)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_user_token_places_nothing_and_is_unauthenticated() {
    let mesh = TestMesh::start().await.expect("mesh");
    let login = mesh.login("alice", "orders").await.expect("login");
    mesh_dev::oauth::revoke(
        &mesh.https().expect("https"),
        &mesh.mesh.issuer,
        &login.access_token,
    )
    .await
    .expect("revoke");
    // The revocation is pushed to orders' verifier; wait for it (the bound is the subject of
    // `revocation::a_token_revoked_at_the_issuer_is_refused_mesh_wide_within_two_seconds`).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while mesh.mesh.orders_verifier.revocations().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "revocation not pushed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before = stored_state(&mesh).await;

    let status = place_with(&mesh, &login.access_token, "revoked-1")
        .await
        .expect_err("a revoked token places nothing");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    assert_eq!(
        stored_state(&mesh).await,
        before,
        "no order row, no stock moved"
    );
    assert_eq!(
        last_decision(&mesh, "orders", "/mesh.orders.v1.OrdersService/PlaceOrder"),
        ("deny".into(), "revoked".into())
    );

    // The same user with a fresh login is served: the refusal was the token, not alice.
    place(&mesh, "alice", "revoked-2")
        .await
        .expect("a fresh token places");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_before_the_exchange_places_nothing_and_is_unauthenticated() {
    let mesh = TestMesh::start().await.expect("mesh");
    let key = mesh.issuer_key().await.expect("issuer key");
    // Expired 5 s ago: inside the edge's 30 s clock-skew leeway, so orders lets it in, but
    // there is no lifetime left to give an exchanged token.
    let mut claims = forge::claims(&mesh.mesh.issuer, "orders", "orders:write orders:read");
    let now = forge::now();
    claims["sub"] = "alice".into();
    claims["client_id"] = "meshctl-cli".into();
    claims["iat"] = (now - 300).into();
    claims["nbf"] = (now - 300).into();
    claims["exp"] = (now - 5).into();
    let token = key.sign(&key.header(), &claims);
    let before = stored_state(&mesh).await;

    let status = place_with(&mesh, &token, "expired-1")
        .await
        .expect_err("an expired token places nothing");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("log in again"), "{status:?}");
    assert_eq!(
        stored_state(&mesh).await,
        before,
        "no order row, no stock moved"
    );
    assert_eq!(
        last_decision(&mesh, "auth", "/mesh.auth.v1.AuthService/ExchangeToken"),
        ("deny".into(), "subject_token_expired".into())
    );
    assert_eq!(
        last_decision(&mesh, "orders", "/mesh.orders.v1.OrdersService/PlaceOrder"),
        ("deny".into(), "subject_token_refused".into())
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuers_logins_grants_and_refusals_are_in_the_same_chain() {
    let mesh = TestMesh::start().await.expect("mesh");
    mesh.login("alice", "orders").await.expect("login");
    let wrong = mesh_dev::oauth::login_with_password(
        &mesh.https().expect("https"),
        &mesh.mesh.issuer,
        "alice",
        "not-her-password",
        "orders",
    )
    .await;
    assert!(wrong.is_err(), "a wrong password logs nobody in");
    let issued: Vec<(String, String, String)> = records(&mesh, "auth")
        .into_iter()
        .map(|r| (r.decision, r.reason, r.subject))
        .collect();
    for expected in [
        ("allow", "login", "alice"),
        ("allow", "user_token", "alice"),
        ("deny", "bad_credentials", "alice"),
    ] {
        let expected = (expected.0.into(), expected.1.into(), expected.2.into());
        assert!(issued.contains(&expected), "{expected:?} not in {issued:?}");
    }
    let key = &mesh.mesh.audit.key;
    auth_interceptor::audit::verify(&mesh.mesh.audit.log("auth"), key).expect("the chain verifies");
    mesh.stop().await;
}
