//! Replicas on one database, on each backend: orders and inventory ×2 sell the stock exactly
//! once, two auth replicas spend a code exactly once, and a revocation written by one auth
//! replica reaches the verifiers following the other.
//!
//! Every test runs on SQLite (replicas open the same file) and on PostgreSQL (a real server
//! started for the test; skipped, loudly, only where PostgreSQL is not installed and `CI` is
//! not set).

use std::net::SocketAddr;

use mesh_dev::devmesh::DevOptions;
use mesh_dev::oauth::{CLIENT_ID, REDIRECT_URI};
use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_proto::orders::v1::{ListOrdersRequest, OrderLine, OrderState, PlaceOrderRequest};
use mesh_test_support::{Backend, TestMesh, bearer};

/// Two tests of `scenario`: `$sqlite` on SQLite, and `$postgres` on PostgreSQL, ignored (and so
/// counted in the summary line) where PostgreSQL is not installed.
macro_rules! on_both_backends {
    ($scenario:ident, $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            $scenario(Backend::Sqlite).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(
            not(mesh_postgres),
            ignore = "PostgreSQL is not installed: apt-get install postgresql (or set MESH_PG_BIN)"
        )]
        async fn $postgres() {
            $scenario(Backend::Postgres).await;
        }
    };
}

async fn mesh_on(backend: Backend) -> TestMesh {
    TestMesh::start_on(backend, DevOptions::default())
        .await
        .expect("mesh")
}

/// Allowed calls to `method` in `service`'s audit log.
fn allowed_calls(mesh: &TestMesh, service: &str, method: &str) -> usize {
    std::fs::read_to_string(mesh.mesh.audit.log(service))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(method) && l.contains("\"allow\""))
        .count()
}

async fn fifty_orders_over_two_orders_and_two_inventory_replicas(backend: Backend) {
    let mut mesh = mesh_on(backend).await;
    assert_eq!(mesh.backend(), backend);
    let second_inventory = mesh
        .mesh
        .start_inventory_replica("inventory-2")
        .await
        .expect("inventory-2");
    let inventories = format!("{},{second_inventory}", mesh.mesh.inventory_addr);
    let mut orders: Vec<SocketAddr> = Vec::new();
    for name in ["orders-a", "orders-b"] {
        orders.push(
            mesh.mesh
                .start_orders_replica(name, &inventories)
                .await
                .expect("orders replica"),
        );
    }
    let token = mesh.user_token("alice", "orders").await.expect("login");
    let calls = (0..50).map(|i| {
        let addr = orders[i % 2].to_string();
        let channel = mesh
            .mesh
            .traced_channel("meshctl", "orders", &addr)
            .expect("channel");
        let request = bearer(
            PlaceOrderRequest {
                idempotency_key: format!("replicas-{i:04}"),
                lines: vec![OrderLine {
                    sku: "SKU-004".into(),
                    quantity: 1,
                }],
            },
            &token,
        );
        async move { OrdersServiceClient::new(channel).place_order(request).await }
    });
    let results = futures_util::future::join_all(calls).await;
    let (mut confirmed, mut rejected) = (0, 0);
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
    assert_eq!((confirmed, rejected), (10, 40), "{backend:?}");

    // The shared database agrees: no stock left, ten reservations, fifty orders.
    let inventory = mesh.db("inventory").await.expect("db");
    let (available,): (i64,) = sqlx::query_as("SELECT available FROM items WHERE sku = $1")
        .bind("SKU-004")
        .fetch_one(&inventory)
        .await
        .expect("stock");
    let (reserved,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM reservations WHERE reserved = 1")
            .fetch_one(&inventory)
            .await
            .expect("reservations");
    assert_eq!((available, reserved), (0, 10), "{backend:?}");
    let orders_db = mesh.db("orders").await.expect("db");
    let (stored,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders")
        .fetch_one(&orders_db)
        .await
        .expect("orders");
    assert_eq!(stored, 50);

    // Both orders replicas took calls, and both inventory replicas got reservations.
    for (service, method) in [
        ("orders-a", "/PlaceOrder"),
        ("orders-b", "/PlaceOrder"),
        ("inventory", "/Reserve"),
        ("inventory-2", "/Reserve"),
    ] {
        let calls = allowed_calls(&mesh, service, method);
        assert!(calls > 0, "{service} took no {method} ({backend:?})");
    }
    inventory.close().await;
    orders_db.close().await;
    mesh.stop().await;
}

on_both_backends!(
    fifty_orders_over_two_orders_and_two_inventory_replicas,
    fifty_orders_over_two_orders_and_two_inventory_replicas_on_sqlite_confirm_exactly_ten,
    fifty_orders_over_two_orders_and_two_inventory_replicas_on_postgres_confirm_exactly_ten
);

/// POSTs the code exchange to the token endpoint of the auth replica at `public`.
async fn redeem_at(
    mesh: &TestMesh,
    public: SocketAddr,
    code: &str,
    verifier: &str,
) -> (u16, serde_json::Value) {
    let response = mesh
        .https()
        .expect("https")
        .post(format!("https://localhost:{}/oauth2/token", public.port()))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
            ("client_id", CLIENT_ID),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .expect("send");
    (
        response.status().as_u16(),
        response.json().await.expect("json"),
    )
}

async fn a_code_redeemed_at_two_auth_replicas_at_once_is_spent_once(backend: Backend) {
    let mut mesh = mesh_on(backend).await;
    let (_, second) = mesh
        .mesh
        .start_auth_replica("auth-2")
        .await
        .expect("auth-2");
    let first = mesh.mesh.auth_public_addr;
    for round in 0..5 {
        let (code, pkce) = crate::user_grants::code_for(&mesh, "alice").await;
        let (a, b) = tokio::join!(
            redeem_at(&mesh, first, &code, &pkce.verifier),
            redeem_at(&mesh, second, &code, &pkce.verifier)
        );
        let mut statuses = [a.0, b.0];
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            [200, 400],
            "round {round} ({backend:?}): {a:?} {b:?}"
        );
        let refused = if a.0 == 400 { &a.1 } else { &b.1 };
        assert_eq!(refused["error"], "invalid_grant", "{refused}");
    }
    mesh.stop().await;
}

on_both_backends!(
    a_code_redeemed_at_two_auth_replicas_at_once_is_spent_once,
    a_code_redeemed_at_two_auth_replicas_at_once_is_spent_once_on_sqlite,
    a_code_redeemed_at_two_auth_replicas_at_once_is_spent_once_on_postgres
);

async fn a_revocation_at_one_auth_replica_reaches_verifiers_following_the_other(backend: Backend) {
    let mut mesh = mesh_on(backend).await;
    let (_, second) = mesh
        .mesh
        .start_auth_replica("auth-2")
        .await
        .expect("auth-2");
    let token = mesh.user_token("alice", "orders").await.expect("login");
    let mut orders = OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("channel"));
    let list = || bearer(ListOrdersRequest::default(), &token);
    orders.list_orders(list()).await.expect("valid before");
    // Revoked through the second replica; orders follows the first one's revocation stream.
    mesh_dev::oauth::revoke(
        &mesh.https().expect("https"),
        &format!("https://localhost:{}", second.port()),
        &token,
    )
    .await
    .expect("revoke");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match orders.list_orders(list()).await {
            Err(status) if status.code() == tonic::Code::Unauthenticated => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "still accepted 2 s after the revocation ({backend:?}): {other:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    mesh.stop().await;
}

on_both_backends!(
    a_revocation_at_one_auth_replica_reaches_verifiers_following_the_other,
    a_revocation_at_one_auth_replica_reaches_verifiers_following_the_other_on_sqlite,
    a_revocation_at_one_auth_replica_reaches_verifiers_following_the_other_on_postgres
);

/// Fifty logins signed out at once, half through each auth replica: every one of their access
/// tokens is refused at orders 2 s later. On PostgreSQL the revocation log's sequence numbers are
/// assigned at INSERT and seen at COMMIT; unless appends are serialized, a lower number that
/// commits after a higher one is skipped by every follower for good.
async fn fifty_sessions_signed_out_at_once_are_all_refused_two_seconds_later(backend: Backend) {
    let mut mesh = mesh_on(backend).await;
    let (_, second) = mesh
        .mesh
        .start_auth_replica("auth-2")
        .await
        .expect("auth-2");
    let mut sessions = Vec::new();
    for n in 0..50 {
        let user = if n % 2 == 0 { "alice" } else { "bob" };
        sessions.push(mesh.login(user, "orders").await.expect("login"));
    }
    let https = mesh.https().expect("https");
    let issuers = [
        mesh.mesh.issuer.clone(),
        format!("https://localhost:{}", second.port()),
    ];
    futures_util::future::join_all(sessions.iter().enumerate().map(|(n, session)| {
        let (https, issuer) = (https.clone(), issuers[n % 2].clone());
        let refresh = session.refresh_token.clone().expect("a refresh token");
        async move {
            mesh_dev::oauth::revoke(&https, &issuer, &refresh)
                .await
                .expect("sign out");
        }
    }))
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut orders = OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("channel"));
    let mut still_accepted = 0;
    for session in &sessions {
        let answer = orders
            .list_orders(bearer(ListOrdersRequest::default(), &session.access_token))
            .await;
        if !matches!(&answer, Err(status) if status.code() == tonic::Code::Unauthenticated) {
            still_accepted += 1;
        }
    }
    assert_eq!(
        still_accepted, 0,
        "{still_accepted} of 50 signed-out sessions still accepted ({backend:?})"
    );
    mesh.stop().await;
}

on_both_backends!(
    fifty_sessions_signed_out_at_once_are_all_refused_two_seconds_later,
    fifty_sessions_signed_out_at_once_are_all_refused_two_seconds_later_on_sqlite,
    fifty_sessions_signed_out_at_once_are_all_refused_two_seconds_later_on_postgres
);

/// A "database" that accepts the TCP connection and never says a word (a black-holed port, a
/// proxy without a backend) ends the start within the documented 10 s wait, as exit 64 naming
/// `--db`: sqlx's connect has no timeout of its own, and hung there for ever before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_accepts_and_never_answers_stops_the_start_within_the_wait() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let url = mesh_service::DbUrl::Postgres(format!("postgres://mesh@{addr}/inventory"));
    let started = std::time::Instant::now();
    let opened = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        mesh_service::Db::open(&url, &inventory_service::store::MIGRATIONS),
    )
    .await
    .expect("the start ends within the wait, not never");
    let error = opened.expect_err("nobody answers");
    assert!(error.is_config(), "exit 64: {error}");
    let message = error.to_string();
    assert!(message.starts_with("--db: "), "{message}");
    assert!(message.contains("no answer within 10 s"), "{message}");
    assert!(started.elapsed() < std::time::Duration::from_secs(12));
    silent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mesh_postgres),
    ignore = "PostgreSQL is not installed: apt-get install postgresql (or set MESH_PG_BIN)"
)]
async fn a_database_that_does_not_exist_stops_the_start_with_exit_64_naming_db() {
    let server = mesh_test_support::postgres::PgServer::start(&[])
        .await
        .expect("postgres");
    let url = mesh_service::DbUrl::Postgres(server.url("missing"));
    let error = mesh_service::Db::open(&url, &inventory_service::store::MIGRATIONS)
        .await
        .expect_err("no such database");
    assert!(error.is_config(), "exit 64: {error}");
    let message = error.to_string();
    assert!(message.starts_with("--db: "), "{message}");
    assert!(
        message.contains("does not exist"),
        "the server's own reason: {message}"
    );
}

async fn a_key_rotated_twice_at_one_auth_replica_is_published_by_the_other(backend: Backend) {
    let mut mesh = mesh_on(backend).await;
    let (_, second) = mesh
        .mesh
        .start_auth_replica("auth-2")
        .await
        .expect("auth-2");
    // Two forced rotations back to back at the first replica: the key that signs after the
    // second was made by the first, seconds ago.
    mesh.mesh.key_rotator.rotate().await.expect("rotation 1");
    let signing = mesh
        .mesh
        .key_rotator
        .rotate()
        .await
        .expect("rotation 2")
        .signing_kid;
    let https = mesh.https().expect("https");
    let jwks_of_second = || async {
        let jwks: serde_json::Value = https
            .get(format!(
                "https://localhost:{}{}",
                second.port(),
                auth_service::http::JWKS_PATH
            ))
            .send()
            .await
            .expect("jwks")
            .json()
            .await
            .expect("json");
        jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .filter_map(|k| k["kid"].as_str().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(4);
    while !jwks_of_second().await.contains(&signing) {
        assert!(
            std::time::Instant::now() < deadline,
            "auth-2 does not publish {signing} ({backend:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    mesh.stop().await;
}

on_both_backends!(
    a_key_rotated_twice_at_one_auth_replica_is_published_by_the_other,
    a_key_rotated_twice_at_one_auth_replica_is_published_by_the_other_on_sqlite,
    a_key_rotated_twice_at_one_auth_replica_is_published_by_the_other_on_postgres
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mesh_postgres),
    ignore = "PostgreSQL is not installed: apt-get install postgresql (or set MESH_PG_BIN)"
)]
async fn the_database_is_reached_over_tls_verified_against_the_mesh_ca_and_nothing_else() {
    use mesh_tls::certs::CertAuthority;
    let dir = tempfile::tempdir().expect("dir");
    // What `meshctl certs server` writes: a certificate from the mesh CA, chain included.
    let ca = CertAuthority::generate("mesh.local").expect("ca");
    let mut issued = ca.issue("postgres").expect("server certificate");
    issued.cert_pem.push_str(ca.cert_pem());
    CertAuthority::write_issued(dir.path(), "postgres", &issued).expect("write");
    let (mesh_ca, other_ca) = (dir.path().join("ca.pem"), dir.path().join("other.pem"));
    std::fs::write(&mesh_ca, ca.cert_pem()).expect("ca.pem");
    let other = CertAuthority::generate("mesh.local").expect("another CA");
    std::fs::write(&other_ca, other.cert_pem()).expect("other.pem");
    let server = mesh_test_support::postgres::PgServer::start_with_tls(
        &["inventory"],
        &dir.path().join("postgres.pem"),
        &dir.path().join("postgres.key"),
    )
    .await
    .expect("postgres with TLS");
    let open = |query: String| {
        let url = mesh_service::DbUrl::Postgres(format!("{}?{query}", server.url("inventory")));
        async move { mesh_service::Db::open(&url, &inventory_service::store::MIGRATIONS).await }
    };
    open(format!(
        "sslmode=verify-full&sslrootcert={}",
        mesh_ca.display()
    ))
    .await
    .expect("verify-full against the mesh CA");
    // A server whose certificate another CA signed (an on-path attacker's) is refused, at
    // once: waiting for the server (10 s) cannot mend a certificate.
    let refused = std::time::Instant::now();
    let error = open(format!(
        "sslmode=verify-full&sslrootcert={}",
        other_ca.display()
    ))
    .await
    .expect_err("a certificate from another CA");
    assert!(error.to_string().starts_with("--db: "), "{error}");
    assert!(
        refused.elapsed() < std::time::Duration::from_secs(5),
        "a TLS refusal is not retried: {:?}",
        refused.elapsed()
    );
    // And the server takes no connection without TLS.
    let error = open("sslmode=disable".to_owned())
        .await
        .expect_err("plaintext");
    assert!(error.to_string().contains("no encryption"), "{error}");
}
