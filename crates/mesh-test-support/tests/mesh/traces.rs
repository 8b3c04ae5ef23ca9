//! One trace per request across every hop, continued from foreign callers, and never a reason
//! for a request to fail or wait.

use std::time::{Duration, Instant};

use auth_interceptor::audit::AuditRecord;
use mesh_dev::sink::ReceivedSpan;
use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_proto::inventory::v1::{ListItemsRequest, ReservationLine, ReserveRequest};
use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_proto::orders::v1::{OrderLine, OrderState, PlaceOrderRequest};
use mesh_test_support::{TestMesh, bearer};
use opentelemetry::trace::{FutureExt as _, TraceContextExt as _};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

fn find<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str, kind: i32) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.service == service && s.name == name && s.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} span {name} from {service} in {spans:#?}"))
}

fn place(key: &str) -> PlaceOrderRequest {
    PlaceOrderRequest {
        idempotency_key: key.into(),
        lines: vec![OrderLine {
            sku: "SKU-001".into(),
            quantity: 1,
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_order_is_one_trace_across_orders_auth_and_inventory() {
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.user_token("alice", "orders").await.expect("login");
    let addr = mesh.mesh.orders_addr.to_string();
    let mut orders = OrdersServiceClient::new(
        mesh.mesh
            .traced_channel("meshctl", "orders", &addr)
            .expect("channel"),
    );
    let cx = mesh
        .mesh
        .client_telemetry
        .start_root("test: place an order");
    let trace_id = cx.span().span_context().trace_id().to_string();
    let order = orders
        .place_order(bearer(place("traced-order-01"), &token))
        .with_context(cx.clone())
        .await
        .expect("placed")
        .into_inner();
    assert_eq!(order.state(), OrderState::Confirmed);
    cx.span().end();
    mesh.mesh.flush_traces().await;
    let sink = &mesh.mesh.sink;
    assert!(
        sink.wait_for(Duration::from_secs(5), |spans| {
            spans.iter().filter(|s| s.trace_id == trace_id).count() >= 7
        })
        .await,
        "spans: {:#?}",
        sink.spans()
    );
    let spans = sink.trace(&trace_id);

    let root = spans
        .iter()
        .find(|s| s.parent_span_id.is_empty())
        .expect("root");
    let client = find(
        &spans,
        "meshctl",
        "mesh.orders.v1.OrdersService/PlaceOrder",
        CLIENT,
    );
    let server = find(
        &spans,
        "orders",
        "mesh.orders.v1.OrdersService/PlaceOrder",
        SERVER,
    );
    let exchange_client = find(
        &spans,
        "orders",
        "mesh.auth.v1.AuthService/ExchangeToken",
        CLIENT,
    );
    let exchange_server = find(
        &spans,
        "auth",
        "mesh.auth.v1.AuthService/ExchangeToken",
        SERVER,
    );
    let reserve_client = find(
        &spans,
        "orders",
        "mesh.inventory.v1.InventoryService/Reserve",
        CLIENT,
    );
    let reserve_server = find(
        &spans,
        "inventory",
        "mesh.inventory.v1.InventoryService/Reserve",
        SERVER,
    );

    assert_eq!(client.parent_span_id, root.span_id);
    assert_eq!(server.parent_span_id, client.span_id);
    assert_eq!(exchange_client.parent_span_id, server.span_id);
    assert_eq!(exchange_server.parent_span_id, exchange_client.span_id);
    assert_eq!(reserve_client.parent_span_id, server.span_id);
    assert_eq!(reserve_server.parent_span_id, reserve_client.span_id);
    for span in [
        client,
        server,
        exchange_client,
        exchange_server,
        reserve_client,
        reserve_server,
    ] {
        assert_eq!(
            span.attributes.get("rpc.system").map(String::as_str),
            Some("grpc")
        );
        assert_eq!(
            span.attributes
                .get("rpc.grpc.status_code")
                .map(String::as_str),
            Some("0")
        );
        assert!(
            span.attributes.contains_key("rpc.service")
                && span.attributes.contains_key("rpc.method")
        );
        assert_ne!(span.status, 2, "{span:?}");
    }
    // Each authorization decision is an event on its server span.
    assert!(
        reserve_server
            .events
            .iter()
            .any(|(name, attrs)| name == "audit"
                && attrs.get("decision").map(String::as_str) == Some("allow"))
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_call_has_an_error_span_and_the_same_trace_id_as_its_audit_record() {
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.user_token("alice", "inventory").await.expect("login");
    let addr = mesh.mesh.inventory_addr.to_string();
    let mut inventory = InventoryServiceClient::new(
        mesh.mesh
            .traced_channel("meshctl", "inventory", &addr)
            .expect("channel"),
    );
    let cx = mesh
        .mesh
        .client_telemetry
        .start_root("test: denied reserve");
    let trace_id = cx.span().span_context().trace_id().to_string();
    let denied = inventory
        .reserve(bearer(
            ReserveRequest {
                reservation_id: "denied-trace-01".into(),
                lines: vec![ReservationLine {
                    sku: "SKU-001".into(),
                    quantity: 1,
                }],
            },
            &token,
        ))
        .with_context(cx.clone())
        .await
        .expect_err("denied");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    cx.span().end();
    mesh.mesh.flush_traces().await;
    let sink = &mesh.mesh.sink;
    sink.wait_for(Duration::from_secs(5), |spans| {
        spans
            .iter()
            .any(|s| s.trace_id == trace_id && s.service == "inventory")
    })
    .await;
    let spans = sink.trace(&trace_id);
    let server = find(
        &spans,
        "inventory",
        "mesh.inventory.v1.InventoryService/Reserve",
        SERVER,
    );
    assert_eq!(server.status, 2, "error status: {server:?}");
    assert_eq!(
        server
            .attributes
            .get("rpc.grpc.status_code")
            .map(String::as_str),
        Some("7")
    );
    let (_, event) = server
        .events
        .iter()
        .find(|(n, _)| n == "audit")
        .expect("audit event");
    assert_eq!(event.get("decision").map(String::as_str), Some("deny"));

    let log = std::fs::read_to_string(mesh.mesh.audit.log("inventory")).expect("audit log");
    let record: AuditRecord = log
        .lines()
        .map(|l| serde_json::from_str::<AuditRecord>(l).expect("record"))
        .find(|r| r.decision == "deny")
        .expect("deny record");
    assert_eq!(record.trace_id, trace_id);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_traceparent_is_continued_and_a_malformed_one_is_ignored() {
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.meshctl_token().await.expect("token");
    // An untraced client that sets the W3C headers itself, like any foreign caller.
    let mut inventory =
        InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("channel"));
    let foreign_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let foreign_parent = "00f067aa0ba902b7";
    let call = |traceparent: String, baggage: String| {
        let mut request = bearer(ListItemsRequest::default(), &token);
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().expect("ascii"));
        request
            .metadata_mut()
            .insert("baggage", baggage.parse().expect("ascii"));
        request
    };
    inventory
        .list_items(call(
            format!("00-{foreign_trace}-{foreign_parent}-01"),
            "user=alice".into(),
        ))
        .await
        .expect("continued");
    for (traceparent, baggage) in [
        ("00-zzzz-not-a-trace".to_owned(), "=;=;=".to_owned()),
        (
            format!("00-{}-{foreign_parent}-01", "0".repeat(32)),
            "k=v".to_owned(),
        ),
        (
            format!("ff-{foreign_trace}-{foreign_parent}-01"),
            format!("big={}", "x".repeat(8000)),
        ),
    ] {
        inventory
            .list_items(call(traceparent, baggage))
            .await
            .expect("a malformed or oversized header is ignored, not fatal");
    }
    mesh.mesh.flush_traces().await;
    let sink = &mesh.mesh.sink;
    sink.wait_for(Duration::from_secs(5), |spans| {
        spans
            .iter()
            .filter(|s| s.name.ends_with("/ListItems"))
            .count()
            >= 4
    })
    .await;
    let list: Vec<_> = sink
        .spans()
        .into_iter()
        .filter(|s| s.name.ends_with("/ListItems") && s.service == "inventory")
        .collect();
    assert_eq!(list.len(), 4, "{list:#?}");
    let continued = list
        .iter()
        .filter(|s| s.trace_id == foreign_trace)
        .collect::<Vec<_>>();
    assert_eq!(continued.len(), 1);
    assert_eq!(continued[0].parent_span_id, foreign_parent);
    assert!(
        list.iter()
            .filter(|s| s.trace_id != foreign_trace)
            .all(|s| s.parent_span_id.is_empty())
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_down_requests_succeed_and_shutdown_finishes_in_its_grace() {
    let mut mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.user_token("alice", "orders").await.expect("login");
    let orders = OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("channel"));
    // Warm up, then measure with the collector up and down.
    let timed = |key: String| {
        let request = bearer(place(&key), &token);
        let mut client = orders.clone();
        async move {
            let started = Instant::now();
            let order = client
                .place_order(request)
                .await
                .expect("placed")
                .into_inner();
            assert_eq!(order.state(), OrderState::Confirmed);
            started.elapsed()
        }
    };
    timed("warmup-order-01".into()).await;
    let mut up = Vec::new();
    for i in 0..5 {
        up.push(timed(format!("collector-up-{i:02}")).await);
    }
    mesh.mesh.stop_trace_sink().await;
    let mut down = Vec::new();
    for i in 0..5 {
        down.push(timed(format!("collector-down-{i:02}")).await);
    }
    up.sort();
    down.sort();
    // Medians; export happens off the request path, so an outage adds nothing but noise.
    assert!(
        down[2] < up[2] + Duration::from_millis(250),
        "collector down slowed requests: up {up:?}, down {down:?}"
    );
    let started = Instant::now();
    mesh.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_services_http_endpoints_get_server_spans() {
    let mesh = TestMesh::start().await.expect("mesh");
    mesh.meshctl_token().await.expect("token");
    mesh.mesh.flush_traces().await;
    let sink = &mesh.mesh.sink;
    let found = sink
        .wait_for(Duration::from_secs(5), |spans| {
            spans
                .iter()
                .any(|s| s.service == "auth" && s.name == "POST /oauth2/token")
        })
        .await;
    assert!(found, "{:#?}", sink.spans());
    let span = sink
        .spans()
        .into_iter()
        .find(|s| s.name == "POST /oauth2/token")
        .expect("span");
    assert_eq!(span.kind, SERVER);
    assert_eq!(
        span.attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    assert_eq!(
        span.attributes.get("url.path").map(String::as_str),
        Some("/oauth2/token")
    );
    mesh.stop().await;
}
