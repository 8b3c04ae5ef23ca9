//! Fault tolerance in process, proven under load: a replica gone mid-load fails no order, a
//! slow replica gets less traffic, a dependency with no replica left fails fast while reads
//! answer, a client's deadline is honoured end to end, retries stay within their budget, a
//! draining service finishes the call in flight, and silent sockets cannot lock clients out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mesh_client::Transport;
use mesh_client::{BalanceStats, Balanced, Resolve};
use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_proto::inventory::v1::inventory_service_server::{
    InventoryService, InventoryServiceServer,
};
use mesh_proto::inventory::v1::{
    GetItemRequest, Item, ListItemsRequest, ListItemsResponse, ReleaseRequest, ReleaseResponse,
    ReserveRequest, ReserveResponse, RestockRequest,
};
use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_proto::orders::v1::{GetOrderRequest, OrderLine, OrderState, PlaceOrderRequest};
use mesh_test_support::chaos::{BlackHole, DelayProxy};
use mesh_test_support::{TestMesh, bearer};
use tonic::{Code, Request, Response, Status};

fn place(key: &str, sku: &str) -> PlaceOrderRequest {
    PlaceOrderRequest {
        idempotency_key: key.into(),
        lines: vec![OrderLine {
            sku: sku.into(),
            quantity: 1,
        }],
    }
}

fn orders_at(mesh: &TestMesh, addr: SocketAddr) -> OrdersServiceClient<Transport> {
    OrdersServiceClient::new(
        mesh.mesh
            .traced_channel("meshctl", "orders", &addr.to_string())
            .expect("channel"),
    )
}

/// Allowed calls to `method` in `service`'s audit log.
fn allowed(mesh: &TestMesh, service: &str, method: &str) -> usize {
    std::fs::read_to_string(mesh.mesh.audit.log(service))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(method) && l.contains("\"allow\""))
        .count()
}

async fn stock(mesh: &TestMesh, sku: &str) -> i64 {
    let db = mesh.db("inventory").await.expect("db");
    let (available,): (i64,) = sqlx::query_as("SELECT available FROM items WHERE sku = $1")
        .bind(sku)
        .fetch_one(&db)
        .await
        .expect("stock");
    db.close().await;
    available
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inventory_replica_stopped_mid_load_fails_no_order_and_sells_each_unit_once() {
    let mut mesh = TestMesh::start().await.expect("mesh");
    let second = mesh
        .mesh
        .start_inventory_replica("inventory-2")
        .await
        .expect("inventory-2");
    let both = format!("{},{second}", mesh.mesh.inventory_addr);
    let orders = mesh
        .mesh
        .start_orders_replica("orders-a", &both)
        .await
        .expect("orders-a");
    let token = mesh.user_token("alice", "orders").await.expect("login");
    let before = stock(&mesh, "SKU-003").await;
    let placed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let client = orders_at(&mesh, orders);
            let (token, placed) = (token.clone(), placed.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for i in 0..15 {
                    let request =
                        bearer(place(&format!("chaos-{worker}-{i:03}"), "SKU-003"), &token);
                    match client.clone().place_order(request).await {
                        Ok(order) if order.get_ref().state() == OrderState::Confirmed => {
                            placed.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.push(format!("{other:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                failures
            })
        })
        .collect();
    // A third of the way in, the second replica goes away.
    while placed.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    mesh.mesh.stop_service("inventory-2").await;
    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.expect("worker"));
    }
    assert_eq!(failures, Vec::<String>::new(), "no failed order");
    assert_eq!(placed.load(Ordering::Relaxed), 60);
    assert!(
        allowed(&mesh, "inventory-2", "/Reserve") > 0,
        "both replicas served"
    );
    assert_eq!(
        stock(&mesh, "SKU-003").await,
        before - 60,
        "each unit sold once"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_gets_a_smaller_share_and_calls_stay_within_their_deadline() {
    let mut mesh = TestMesh::start().await.expect("mesh");
    let second = mesh
        .mesh
        .start_inventory_replica("inventory-2")
        .await
        .expect("inventory-2");
    // inventory-2 answers 150 ms late; the balancer sees it only as more calls in flight.
    let slow = DelayProxy::start(second, Duration::from_millis(150))
        .await
        .expect("proxy");
    let answer = Arc::new(FixedAnswer(vec![mesh.mesh.inventory_addr, slow.addr]));
    let balanced = Balanced::new(
        mesh.mesh
            .connector("meshctl", "inventory")
            .expect("connector"),
        "inventory.mesh.test:50053",
        answer,
        Duration::from_secs(1),
    )
    .expect("balanced");
    let token = mesh.meshctl_token().await.expect("token");
    let (fast_before, slow_before) = (
        allowed(&mesh, "inventory", "/ListItems"),
        allowed(&mesh, "inventory-2", "/ListItems"),
    );
    let workers: Vec<_> = (0..6)
        .map(|_| {
            let client = InventoryServiceClient::new(Transport::new(balanced.clone()));
            let token = token.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for _ in 0..20 {
                    let mut request = bearer(ListItemsRequest::default(), &token);
                    request.set_timeout(Duration::from_secs(2));
                    let started = Instant::now();
                    client.clone().list_items(request).await.expect("answered");
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.expect("worker"));
    }
    let fast = allowed(&mesh, "inventory", "/ListItems") - fast_before;
    let slow_calls = allowed(&mesh, "inventory-2", "/ListItems") - slow_before;
    assert_eq!(fast + slow_calls, 120);
    assert!(
        slow_calls * 3 < fast,
        "the slow replica got {slow_calls} of 120 calls, the fast one {fast}"
    );
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100 - 1];
    assert!(
        p99 < Duration::from_secs(2),
        "p99 {p99:?} within the deadline"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_inventory_replica_down_place_order_fails_fast_and_reads_answer() {
    let mut mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.user_token("alice", "orders").await.expect("login");
    let orders = orders_at(&mesh, mesh.mesh.orders_addr);
    let kept = orders
        .clone()
        .place_order(bearer(place("before-down-001", "SKU-001"), &token))
        .await
        .expect("placed")
        .into_inner();
    mesh.mesh.stop_inventory().await;
    // The first call finds the replica gone and ejects it; from then on no call waits on it.
    let first = orders
        .clone()
        .place_order(bearer(place("while-down-0001", "SKU-001"), &token))
        .await
        .expect_err("inventory is down");
    assert_eq!(first.code(), Code::Unavailable, "{first:?}");
    for i in 0..5 {
        let started = Instant::now();
        let refused = orders
            .clone()
            .place_order(bearer(
                place(&format!("while-down-{i:04}"), "SKU-001"),
                &token,
            ))
            .await
            .expect_err("inventory is down");
        let took = started.elapsed();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("retry with the same idempotency key"),
            "{refused:?}"
        );
        assert!(took < Duration::from_millis(100), "failed fast: {took:?}");
    }
    let read = orders
        .clone()
        .get_order(bearer(
            GetOrderRequest {
                order_id: kept.order_id.clone(),
            },
            &token,
        ))
        .await
        .expect("reads answer");
    assert_eq!(read.get_ref().state(), OrderState::Confirmed);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_ms_deadline_set_by_the_client_is_honoured_end_to_end() {
    let mut mesh = TestMesh::start().await.expect("mesh");
    // Orders reaches "inventory" at an address that accepts and never answers.
    let hung = BlackHole::start().await.expect("black hole");
    let orders = mesh
        .mesh
        .start_orders_replica("orders-a", &hung.addr.to_string())
        .await
        .expect("orders-a");
    let token = mesh.user_token("alice", "orders").await.expect("login");
    // Spoken by hand over HTTP/2: a tonic client would end the call on its own timer at the
    // same instant (CANCELLED), hiding the server's answer this test is about.
    let (send, _connection, _) = raw_h2(&mesh, orders, "orders").await;
    let mut send = send.ready().await.expect("ready");
    let mut request = grpc_request("/mesh.orders.v1.OrdersService/PlaceOrder");
    let headers = request.headers_mut();
    headers.insert("grpc-timeout", "50m".parse().expect("header"));
    headers.insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let message = prost::Message::encode_to_vec(&place("deadline-00001", "SKU-001"));
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("size").to_be_bytes());
    frame.extend_from_slice(&message);
    let started = Instant::now();
    let (response, mut body) = send.send_request(request, false).expect("sent");
    body.send_data(bytes::Bytes::from(frame), true)
        .expect("body");
    let response = response.await.expect("answered");
    let took = started.elapsed();
    // A trailers-only answer carries its status in the headers.
    let status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().expect("ascii").to_owned());
    assert_eq!(
        status.as_deref(),
        Some("4"),
        "DEADLINE_EXCEEDED: {:?}",
        response.headers()
    );
    assert!(
        took < Duration::from_millis(250),
        "answered at the deadline: {took:?}"
    );

    // Orders' own server span for the call ended with the deadline, not after it.
    mesh.mesh.flush_traces().await;
    let spans = mesh.mesh.sink.spans();
    let server = spans
        .iter()
        .filter(|s| s.service == "orders" && s.kind == 2 && s.name.contains("PlaceOrder"))
        .filter(|s| s.attributes.get("rpc.grpc.status_code").map(String::as_str) == Some("4"))
        .max_by_key(|s| s.start_ns)
        .expect("orders' server span with DEADLINE_EXCEEDED");
    let ran = Duration::from_nanos(server.end_ns - server.start_ns);
    assert!(
        ran < Duration::from_millis(150),
        "orders worked on for {ran:?}"
    );
    drop(hung);
    mesh.stop().await;
}

/// A resolver with a fixed answer.
struct FixedAnswer(Vec<SocketAddr>);

impl Resolve for FixedAnswer {
    fn resolve(
        &self,
        _target: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Vec<SocketAddr>>> + Send + '_>>
    {
        let answer = self.0.clone();
        Box::pin(async move { Some(answer) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_their_budget_under_a_dependency_that_always_fails() {
    let mesh = TestMesh::start().await.expect("mesh");
    // A real mTLS server with inventory's certificate, failing every call.
    let failing = Refusing {
        calls: Arc::default(),
        overloaded: false,
    };
    let addr = inventory_stub(&mesh, failing.clone()).await;
    let balanced = Balanced::new(
        mesh.mesh
            .connector("meshctl", "inventory")
            .expect("connector"),
        "inventory.mesh.test:50053",
        Arc::new(FixedAnswer(vec![addr])),
        Duration::from_secs(1),
    )
    .expect("balanced");
    let stats = balanced.stats();
    let client = InventoryServiceClient::new(Transport::new(balanced));
    let calls = 200u64;
    for _ in 0..calls {
        let refused = client
            .clone()
            .list_items(ListItemsRequest::default())
            .await
            .expect_err("always unavailable");
        assert_eq!(refused.code(), Code::Unavailable);
    }
    let reached = failing.calls.load(Ordering::Relaxed);
    let retries = BalanceStats::get(&stats.retries);
    // Without a budget each call would be tried 3 times (600). The budget allows 20 % of the
    // calls plus 1 a second over 10 s: at most 40 + 10 here.
    assert_eq!(reached, calls + retries);
    assert!(
        retries <= calls / 5 + 10,
        "{retries} retries for {calls} calls"
    );
    assert!(retries > 0, "some retries were made");
    assert!(BalanceStats::get(&stats.budget_exhausted) > 0);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_orders_replica_finishes_the_place_order_in_flight() {
    let mut mesh = TestMesh::start().await.expect("mesh");
    // Orders-a reaches inventory through a proxy that makes each reservation take 400 ms.
    let slow = DelayProxy::start(mesh.mesh.inventory_addr, Duration::from_millis(400))
        .await
        .expect("proxy");
    let orders = mesh
        .mesh
        .start_orders_replica("orders-a", &slow.addr.to_string())
        .await
        .expect("orders-a");
    let token = mesh.user_token("alice", "orders").await.expect("login");
    let in_flight = {
        let client = orders_at(&mesh, orders);
        let request = bearer(place("drain-000001", "SKU-002"), &token);
        tokio::spawn(async move { client.clone().place_order(request).await })
    };
    // Wait until orders-a holds the call (it was allowed at the edge), then stop it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while allowed(&mesh, "orders-a", "/PlaceOrder") == 0 {
        assert!(Instant::now() < deadline, "the call never reached orders-a");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    mesh.mesh.stop_service("orders-a").await;
    let drained = started.elapsed();
    let order = in_flight
        .await
        .expect("task")
        .expect("the call in flight completes")
        .into_inner();
    assert_eq!(order.state(), OrderState::Confirmed);
    assert!(
        drained < Duration::from_secs(5),
        "drained within the grace: {drained:?}"
    );
    // Stopped: nothing answers there any more.
    let after = orders_at(&mesh, orders)
        .place_order(bearer(place("drain-000002", "SKU-002"), &token))
        .await
        .expect_err("stopped");
    assert_eq!(after.code(), Code::Unavailable, "{after:?}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_silent_connections_do_not_keep_a_real_client_out() {
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.meshctl_token().await.expect("token");
    let mut silent = Vec::new();
    for _ in 0..500 {
        silent.push(
            tokio::net::TcpStream::connect(mesh.mesh.inventory_addr)
                .await
                .expect("connect"),
        );
    }
    // A new client: its own connection, a full handshake, a call.
    let started = Instant::now();
    InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("channel"))
        .list_items(bearer(ListItemsRequest::default(), &token))
        .await
        .expect("served");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "a real client waited {took:?}"
    );
    drop(silent);
    mesh.stop().await;
}

/// A raw HTTP/2 connection over mTLS, as meshctl, to `workload` at `addr`: for speaking the
/// protocol by hand. Returns the sender, the connection's task, and the stream limit the server
/// announced.
async fn raw_h2(
    mesh: &TestMesh,
    addr: SocketAddr,
    workload: &str,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
    usize,
) {
    let (send, connection, streams) = raw_h2_held(mesh, addr, workload).await;
    (send, tokio::spawn(connection), streams)
}

/// Like [`raw_h2`], with the connection not yet driven: what the caller queues is written when
/// it first polls the connection, all at once.
async fn raw_h2_held(
    mesh: &TestMesh,
    addr: SocketAddr,
    workload: &str,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    impl std::future::Future<Output = Result<(), h2::Error>> + Send + Unpin + 'static,
    usize,
) {
    let files = mesh.mesh.tls_files("meshctl");
    let config = mesh_tls::client::mesh_client_config(
        mesh_tls::Reloadable::load(files.clone()).expect("cert"),
        files.trust_bundle().expect("roots"),
        mesh_tls::identity::SpiffeId::workload(mesh_test_support::TRUST_DOMAIN, workload)
            .expect("id"),
    )
    .expect("config");
    let tls = mesh_tls::client::connect(addr, config).await.expect("tls");
    let (send, mut connection) = h2::client::handshake(tls).await.expect("h2");
    // The server's SETTINGS come before its answer to a PING.
    let mut ping = connection.ping_pong().expect("ping");
    tokio::select! {
        closed = &mut connection => panic!("the server closed at once: {closed:?}"),
        pong = ping.ping(h2::Ping::opaque()) => {
            pong.expect("pong");
        }
    }
    let streams = connection.max_concurrent_send_streams();
    (send, connection, streams)
}

fn grpc_request(path: &str) -> http::Request<()> {
    http::Request::post(format!("https://inventory{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request")
}

/// A new client can still be served within a second.
async fn still_serves(mesh: &TestMesh) {
    let token = mesh.meshctl_token().await.expect("token");
    let started = Instant::now();
    InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("channel"))
        .list_items(bearer(ListItemsRequest::default(), &token))
        .await
        .expect("served");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_ends_its_connection_and_others_are_still_served() {
    let mesh = TestMesh::start().await.expect("mesh");
    let (send, connection, _) = raw_h2(&mesh, mesh.mesh.inventory_addr, "inventory").await;
    let mut sent = 0;
    for _ in 0..20_000 {
        let Ok(mut ready) = send.clone().ready().await else {
            break;
        };
        match ready.send_request(
            grpc_request("/mesh.inventory.v1.InventoryService/ListItems"),
            false,
        ) {
            Ok((_response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => break,
        }
    }
    // The server sends GOAWAY (ENHANCE_YOUR_CALM) and closes: the client sees the connection
    // end, with the reason or with the socket closed under it.
    let ended = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the server ends a flooding connection")
        .expect("task");
    assert!(sent < 20_000, "the server let {sent} resets through");
    if let Err(error) = ended {
        assert!(
            error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || error.is_io(),
            "{error:?}"
        );
    }
    still_serves(&mesh).await;
    mesh.stop().await;
}

/// A ListItems call with `token` and a header of `padding` bytes over a raw HTTP/2 stream: the
/// response's HTTP status and its grpc-status (from the trailers, or the headers of a
/// trailers-only answer), or the stream error the server answered with.
async fn padded_call(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    token: &str,
    padding: usize,
) -> Result<(u16, String), h2::Error> {
    let mut request = grpc_request("/mesh.inventory.v1.InventoryService/ListItems");
    let headers = request.headers_mut();
    headers.insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    headers.insert("x-padding", "a".repeat(padding).parse().expect("header"));
    let ready = send.clone().ready().await?;
    *send = ready;
    let (response, mut stream) = send.send_request(request, false)?;
    // An empty ListItemsRequest: one uncompressed gRPC frame of length 0.
    stream.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)?;
    let response = response.await?;
    let status = response.status().as_u16();
    let in_headers = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await?;
    let grpc_status = in_headers
        .or_else(|| {
            trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.to_str().unwrap_or_default().to_owned())
        })
        .unwrap_or_default();
    Ok((status, grpc_status))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifteen_streams_reset_before_the_server_accepts_them_end_the_connection() {
    let mesh = TestMesh::start().await.expect("mesh");
    // Held: nothing is written until the connection is polled below, so the server reads the
    // whole burst at once whatever the machine's load.
    let (send, connection, _) = raw_h2_held(&mesh, mesh.mesh.inventory_addr, "inventory").await;
    // Fifteen requests each cancelled at once, written in one burst: more than our 10 pending
    // resets, fewer than h2's default of 20.
    for _ in 0..15 {
        let mut ready = send.clone().ready().await.expect("ready");
        let (_response, mut stream) = ready
            .send_request(
                grpc_request("/mesh.inventory.v1.InventoryService/ListItems"),
                false,
            )
            .expect("request");
        stream.send_reset(h2::Reason::CANCEL);
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the server ends the connection");
    let error = ended.expect_err("ended by the server");
    assert!(
        error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || error.is_io(),
        "{error:?}"
    );
    still_serves(&mesh).await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_limit_is_advertised_and_an_oversized_header_list_is_refused() {
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.meshctl_token().await.expect("token");
    let (mut send, connection, streams) =
        raw_h2(&mesh, mesh.mesh.inventory_addr, "inventory").await;
    assert_eq!(streams, 128, "the stream limit the server announces");
    // The same authorized call is served with 1 KiB of headers...
    let served = padded_call(&mut send, &token, 1024).await;
    assert_eq!(served.expect("served"), (200, "0".to_owned()));
    // ...and refused with 14 KiB: within hyper's own default (16 KiB), past ours (12 KiB).
    let refused = padded_call(&mut send, &token, 14 * 1024).await;
    assert_eq!(
        refused.expect("an answer").0,
        431,
        "a 14 KiB header list was served"
    );
    drop(connection);
    still_serves(&mesh).await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_at_its_in_flight_limit_sheds_the_next_call_at_once_and_still_answers_health() {
    let mut mesh = TestMesh::start().await.expect("mesh");
    // Orders-a runs at most 4 calls; its inventory accepts and never answers, so 4 PlaceOrders
    // hold every slot until their deadline.
    let hung = BlackHole::start().await.expect("black hole");
    let orders = mesh
        .mesh
        .start_orders_replica_with("orders-a", &hung.addr.to_string(), |args| {
            args.mesh.server.max_in_flight = 4;
        })
        .await
        .expect("orders-a");
    let token = mesh.user_token("alice", "orders").await.expect("login");
    let client = orders_at(&mesh, orders);
    let held: Vec<_> = (0..4)
        .map(|i| {
            let mut request = bearer(place(&format!("held-{i:08}"), "SKU-001"), &token);
            // Long enough that the server's answer, not the client's own timer, ends the call.
            request.set_timeout(Duration::from_secs(10));
            let client = client.clone();
            tokio::spawn(async move { client.clone().place_order(request).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    while allowed(&mesh, "orders-a", "/PlaceOrder") < 4 {
        assert!(
            Instant::now() < deadline,
            "the 4 calls never reached orders-a"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The fifth call is refused at once, not queued behind the four.
    for i in 0..3 {
        let started = Instant::now();
        let shed = client
            .clone()
            .get_order(bearer(
                GetOrderRequest {
                    order_id: format!("shed-{i}"),
                },
                &token,
            ))
            .await
            .expect_err("over the limit");
        let took = started.elapsed();
        assert_eq!(shed.code(), Code::Unavailable, "{shed:?}");
        assert!(shed.message().contains("overloaded"), "{shed:?}");
        assert!(took < Duration::from_millis(200), "shed at once: {took:?}");
    }
    // Shed before authentication: the refused calls left no audit record.
    assert_eq!(allowed(&mesh, "orders-a", "/GetOrder"), 0);
    // Health is never shed.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        mesh.mesh
            .traced_channel("meshctl", "orders", &orders.to_string())
            .expect("channel"),
    );
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health answers while the server sheds")
        .into_inner();
    assert_eq!(serving.status, 1, "SERVING");
    // The held calls end on their own (the connect timeout or their deadline), never shed.
    for call in held {
        let refused = call
            .await
            .expect("task")
            .expect_err("inventory never answers");
        assert!(
            matches!(refused.code(), Code::DeadlineExceeded | Code::Unavailable)
                && !refused.message().contains("overloaded"),
            "{refused:?}"
        );
    }
    // The slots are free again: the next call is served (and finds no such order).
    let served = client
        .clone()
        .get_order(bearer(
            GetOrderRequest {
                order_id: "after-the-load".into(),
            },
            &token,
        ))
        .await
        .expect_err("no such order");
    assert_eq!(served.code(), Code::NotFound, "{served:?}");
    drop(hung);
    mesh.stop().await;
}

/// An inventory that answers every call as the load shedder does (UNAVAILABLE, marked
/// overloaded) or as a handler whose dependency is down (UNAVAILABLE, unmarked), counting calls.
#[derive(Clone)]
struct Refusing {
    calls: Arc<AtomicU64>,
    overloaded: bool,
}

impl Refusing {
    fn refuse<T>(&self) -> Result<Response<T>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut status = Status::unavailable("refused");
        if self.overloaded {
            status.metadata_mut().insert(
                mesh_service::shed::OVERLOADED_HEADER,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        Err(status)
    }
}

#[tonic::async_trait]
impl InventoryService for Refusing {
    async fn list_items(
        &self,
        _: Request<ListItemsRequest>,
    ) -> Result<Response<ListItemsResponse>, Status> {
        self.refuse()
    }
    async fn get_item(&self, _: Request<GetItemRequest>) -> Result<Response<Item>, Status> {
        self.refuse()
    }
    async fn reserve(
        &self,
        _: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        self.refuse()
    }
    async fn release(
        &self,
        _: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        self.refuse()
    }
    async fn restock(&self, _: Request<RestockRequest>) -> Result<Response<Item>, Status> {
        self.refuse()
    }
}

/// Serves `service` with inventory's certificate on a loopback port.
async fn inventory_stub<S: InventoryService>(mesh: &TestMesh, service: S) -> SocketAddr {
    let files = mesh.mesh.tls_files("inventory");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let listener = mesh_tls::server::TlsListener::mesh(
        tcp,
        mesh_tls::Reloadable::load(files.clone()).expect("cert"),
        files.trust_bundle().expect("roots"),
    )
    .expect("listener");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(InventoryServiceServer::new(service))
            .serve_with_incoming(listener.incoming()),
    );
    addr
}

/// 100 ListItems over a refusing stub and the real inventory: the stub's share of first tries,
/// the ejections the balancer made, and the calls that failed.
async fn share_of_a_refusing_replica(mesh: &TestMesh, overloaded: bool) -> (u64, u64, u64) {
    let calls = Arc::new(AtomicU64::new(0));
    let stub = inventory_stub(
        mesh,
        Refusing {
            calls: calls.clone(),
            overloaded,
        },
    )
    .await;
    let balanced = Balanced::new(
        mesh.mesh
            .connector("meshctl", "inventory")
            .expect("connector"),
        "inventory.mesh.test:50053",
        Arc::new(FixedAnswer(vec![stub, mesh.mesh.inventory_addr])),
        Duration::from_secs(60),
    )
    .expect("balanced");
    let stats = balanced.stats();
    let client = InventoryServiceClient::new(Transport::new(balanced));
    let token = mesh.meshctl_token().await.expect("token");
    let mut failed = 0;
    for _ in 0..100 {
        // A refused first try is retried on the real replica while the budget allows.
        let listed = client
            .clone()
            .list_items(bearer(ListItemsRequest::default(), &token))
            .await;
        failed += u64::from(listed.is_err());
    }
    let first_tries = calls.load(Ordering::Relaxed);
    (first_tries, BalanceStats::get(&stats.ejections), failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_keeps_answering_overloaded_is_ejected_and_one_whose_dependency_failed_is_not()
 {
    let mesh = TestMesh::start().await.expect("mesh");
    // Overloaded 5 times in a row: ejected for 250 ms, then 500 ms, ...; 100 calls take less
    // than that, so it sees the 5 that eject it and few more.
    let (overloaded_share, ejections, failed) = share_of_a_refusing_replica(&mesh, true).await;
    assert!(ejections >= 1, "ejected");
    assert_eq!(
        failed, 0,
        "each refused try was retried on the other replica"
    );
    assert!(
        overloaded_share <= 15,
        "an overloaded replica got {overloaded_share} of 100 calls"
    );
    // UNAVAILABLE from the handler is the handler's answer about its own dependency: the
    // replica keeps its share (about half; it would still answer reads).
    let (unmarked_share, ejections, _) = share_of_a_refusing_replica(&mesh, false).await;
    assert_eq!(ejections, 0, "not ejected");
    assert!(
        unmarked_share >= 25,
        "a replica with a failed dependency got only {unmarked_share} of 100 calls"
    );
    mesh.stop().await;
}
