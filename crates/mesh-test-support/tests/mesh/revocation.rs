//! Revocation reaches the verifiers: the issuer pushes every revoked token and login over
//! `WatchRevocations`, each service refuses them within two seconds (cached tokens included), and
//! a verifier that lost the stream catches up on reconnect.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use auth_interceptor::revocation::spawn_feed;
use auth_interceptor::{RevocationList, VerifiedToken};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use mesh_proto::auth::v1::revocation::Target;
use mesh_proto::auth::v1::{ExchangeTokenRequest, WatchRevocationsRequest};
use mesh_proto::inventory::v1::ListItemsRequest;
use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_proto::orders::v1::ListOrdersRequest;
use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_test_support::{TestMesh, bearer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::Code;

/// The `jti` of a JWT, read without verifying (the test holds tokens it just received).
fn jti_of(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("payload");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("json");
    claims["jti"].as_str().expect("jti").to_owned()
}

fn by_id(jti: String) -> VerifiedToken {
    VerifiedToken {
        subject: "alice".into(),
        client_id: "meshctl-cli".into(),
        scopes: vec![],
        token_id: jti,
        actor: None,
        expires_at: u64::MAX,
        session: None,
        certificate: None,
    }
}

async fn revoke(mesh: &TestMesh, token: &str) {
    mesh_dev::oauth::revoke(&mesh.https().expect("https"), &mesh.mesh.issuer, token)
        .await
        .expect("revoke");
}

async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_at_the_issuer_is_refused_mesh_wide_within_two_seconds() {
    let mesh = TestMesh::start().await.expect("mesh");
    let for_orders = mesh.login("alice", "orders").await.expect("login");
    let for_inventory = mesh.user_token("alice", "inventory").await.expect("login");
    let mut orders = OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("channel"));
    let inventory =
        InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("channel"));
    let inventory_from_orders =
        InventoryServiceClient::new(mesh.inventory_channel("orders").expect("channel"));
    // A token orders got by exchange before the login was revoked: it carries the login's sid.
    let exchanged = AuthServiceClient::new(mesh.auth_channel("orders").expect("channel"))
        .exchange_token(ExchangeTokenRequest {
            subject_token: for_orders.access_token.clone(),
            audience: "inventory".into(),
            scopes: vec!["inventory:read".into()],
        })
        .await
        .expect("exchange")
        .into_inner()
        .access_token;

    // Each token works, and is now in its verifier's cache.
    let orders_call = |orders: &mut OrdersServiceClient<_>| {
        let request = bearer(ListOrdersRequest::default(), &for_orders.access_token);
        let mut orders = orders.clone();
        async move { orders.list_orders(request).await.map(|_| ()) }
    };
    orders_call(&mut orders).await.expect("orders before");
    let inventory_call = |client: &InventoryServiceClient<_>, token: &str| {
        let request = bearer(ListItemsRequest::default(), token);
        let mut client = client.clone();
        async move { client.list_items(request).await.map(|_| ()) }
    };
    inventory_call(&inventory, &for_inventory)
        .await
        .expect("inventory before");
    inventory_call(&inventory_from_orders, &exchanged)
        .await
        .expect("exchanged before");

    // The login (its refresh token: the whole family) and one access token are revoked.
    let refresh = for_orders.refresh_token.clone().expect("refresh token");
    revoke(&mesh, &refresh).await;
    revoke(&mesh, &for_inventory).await;
    let revoked_at = Instant::now();

    let mut pending = vec!["orders", "inventory", "exchanged"];
    while !pending.is_empty() {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(2),
            "still accepted after 2 s: {pending:?}"
        );
        let mut still = Vec::new();
        for which in pending {
            let outcome = match which {
                "orders" => orders_call(&mut orders).await,
                "inventory" => inventory_call(&inventory, &for_inventory).await,
                _ => inventory_call(&inventory_from_orders, &exchanged).await,
            };
            match outcome {
                Ok(()) => still.push(which),
                Err(status) => {
                    assert_eq!(status.code(), Code::Unauthenticated, "{which}: {status:?}");
                    assert!(status.message().contains("revoked"), "{which}: {status:?}");
                }
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A fresh login of the same user is unaffected.
    let fresh = mesh.user_token("alice", "inventory").await.expect("login");
    inventory_call(&inventory, &fresh)
        .await
        .expect("a new login works");
    mesh.stop().await;
}

/// A TCP relay to `target` that can be cut (every connection dropped, new ones refused) and
/// restored: a network partition between one verifier and the issuer.
async fn relay(target: SocketAddr) -> (SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (open, watch_open) = watch::channel(true);
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let mut watch_open = watch_open.clone();
            if !*watch_open.borrow_and_update() {
                continue;
            }
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = watch_open.wait_for(|open| !*open) => {}
                }
            });
        }
    });
    (addr, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_that_lost_the_stream_keeps_serving_and_catches_up_on_reconnect() {
    let mesh = TestMesh::start().await.expect("mesh");
    let (relay_addr, open) = relay(mesh.mesh.auth_addr).await;
    let channel = mesh
        .mesh
        .connector("inventory", "auth")
        .expect("connector")
        .channel(&relay_addr.to_string())
        .expect("channel");
    let list = RevocationList::new();
    let (_feed, status) = spawn_feed(mesh_client::transport(channel), list.clone());
    let wait = Duration::from_secs(5);

    let first = mesh.user_token("alice", "inventory").await.expect("login");
    revoke(&mesh, &first).await;
    eventually("first revocation", wait, || {
        list.is_revoked(&by_id(jti_of(&first)))
    })
    .await;
    assert!(status.connected());
    let sequence_before = list.last_sequence();

    // Partition: the stream breaks, and the verifier says so.
    open.send(false).expect("cut");
    eventually("stream reported down", wait, || !status.connected()).await;
    let second = mesh.user_token("bob", "inventory").await.expect("login");
    revoke(&mesh, &second).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !list.is_revoked(&by_id(jti_of(&second))),
        "the partition really hid it"
    );
    assert!(status.disconnects() >= 1);

    // Healed: the reconnect asks for what came after the last sequence it applied.
    open.send(true).expect("heal");
    eventually("missed revocation fetched", Duration::from_secs(8), || {
        list.is_revoked(&by_id(jti_of(&second)))
    })
    .await;
    assert!(status.connected());
    assert!(list.last_sequence() > sequence_before);
    assert_eq!(
        status.received(),
        2,
        "resumed after the last applied sequence: nothing sent twice"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_streams_end_with_their_clients_and_one_identity_holds_at_most_its_cap() {
    const CAP: usize = auth_service::revocations::MAX_STREAMS_PER_IDENTITY;
    let mesh = TestMesh::start().await.expect("mesh");
    let mut auth = AuthServiceClient::new(mesh.auth_channel("meshctl").expect("channel"));
    let open = |auth: &mut AuthServiceClient<tonic::transport::Channel>| {
        let mut auth = auth.clone();
        async move {
            auth.watch_revocations(WatchRevocationsRequest { after_sequence: 0 })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    // 5,000 streams opened and cancelled, a cap's worth at a time. Each round can only open its
    // streams once the server has ended the last round's: a stream whose client left frees its
    // place.
    let mut opened = 0;
    while opened < 5_000 {
        let mut streams = Vec::with_capacity(CAP);
        let deadline = Instant::now() + Duration::from_secs(5);
        while streams.len() < CAP {
            match open(&mut auth).await {
                Ok(stream) => streams.push(stream),
                Err(status) if status.code() == Code::ResourceExhausted => {
                    assert!(
                        Instant::now() < deadline,
                        "cancelled streams still held at the issuer after 5 s: {status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(status) => panic!("{status:?}"),
            }
        }
        if opened == 0 {
            let refused = open(&mut auth).await.expect_err("past the cap");
            assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        }
        opened += streams.len();
        drop(streams);
    }

    // The streams that stay still get every new revocation at once.
    let mut stream = loop {
        match open(&mut auth).await {
            Ok(stream) => break stream,
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let login = mesh.login("alice", "orders").await.expect("login");
    revoke(&mesh, &login.access_token).await;
    let jti = jti_of(&login.access_token);
    let delivered = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let revocation = stream.message().await.expect("stream").expect("open");
            if revocation.target == Some(Target::TokenId(jti.clone())) {
                break;
            }
        }
    })
    .await;
    assert!(
        delivered.is_ok(),
        "the revocation reached the stream within 2 s"
    );
    mesh.stop().await;
}
