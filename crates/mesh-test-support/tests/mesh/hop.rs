//! The secured hop working: the right certificate and token reach the handler, which sees a
//! typed `Principal`; anything less is refused with the right status.

use auth_interceptor::{AttachTokenLayer, ServiceTokenSource};
use mesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use mesh_proto::auth::v1::{ExchangeTokenRequest, IssueServiceTokenRequest};
use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_proto::inventory::v1::{GetItemRequest, ListItemsRequest, ReserveRequest, RestockRequest};
use mesh_test_support::{TestMesh, bearer};
use tonic::Code;
use tonic_types::StatusExt;

use crate::capture::Capture;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_and_certificate_reach_the_handler_with_the_expected_principal() {
    let mesh = TestMesh::start().await.expect("mesh");
    let capture = Capture::start(&mesh).await;
    let token = mesh.meshctl_token().await.expect("token");
    let mut client = InventoryServiceClient::new(capture.channel(&mesh, "meshctl"));

    client
        .list_items(bearer(ListItemsRequest::default(), &token))
        .await
        .expect("allowed");

    let seen = capture.seen();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(seen.method, "ListItems");
    assert_eq!(seen.subject, "meshctl");
    assert_eq!(seen.client_id, "meshctl");
    assert_eq!(seen.scopes, ["inventory:read"]);
    assert_eq!(seen.peer.as_deref(), Some("spiffe://mesh.local/sa/meshctl"));
    assert!(!seen.token_id.is_empty());
    assert!(
        !seen.saw_authorization_header,
        "the handler must never see the raw token"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_refusals_are_permission_denied_and_never_run_the_handler() {
    let mesh = TestMesh::start().await.expect("mesh");
    let capture = Capture::start(&mesh).await;
    let token = mesh.meshctl_token().await.expect("token");
    let mut client = InventoryServiceClient::new(capture.channel(&mesh, "meshctl"));

    // Valid token, but the scope the method needs is missing.
    let missing_scope = client
        .restock(bearer(RestockRequest::default(), &token))
        .await
        .expect_err("denied");
    assert_eq!(missing_scope.code(), Code::PermissionDenied);
    assert!(
        missing_scope
            .message()
            .contains("missing scope inventory:admin")
    );

    // Valid token and scope, but the caller's SPIFFE ID is not the one the rule names.
    let wrong_caller = client
        .reserve(bearer(ReserveRequest::default(), &token))
        .await
        .expect_err("denied");
    assert_eq!(wrong_caller.code(), Code::PermissionDenied);
    assert!(wrong_caller.message().contains("caller identity"));

    // A method that has no row in the policy table.
    let unlisted = client
        .get_item(bearer(GetItemRequest::default(), &token))
        .await
        .expect_err("denied");
    assert_eq!(unlisted.code(), Code::PermissionDenied);
    assert!(unlisted.message().contains("not allowed by policy"));

    assert!(
        capture.seen().is_empty(),
        "no handler may run: {:?}",
        capture.seen()
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_token_source_gets_and_attaches_service_tokens() {
    let mesh = TestMesh::start().await.expect("mesh");
    let source = ServiceTokenSource::new(
        mesh_client::transport(mesh.auth_channel("orders").expect("auth channel")),
        mesh.identity("orders").expect("identity"),
        "inventory",
        vec!["inventory:read".into()],
    );
    let channel = tower::ServiceBuilder::new()
        .layer(AttachTokenLayer::new(source.clone()))
        .service(mesh.inventory_channel("orders").expect("channel"));
    let mut inventory = InventoryServiceClient::new(channel);

    let first = inventory
        .list_items(ListItemsRequest::default())
        .await
        .expect("orders may read inventory")
        .into_inner();
    assert_eq!(first.items.len(), 4);
    let header = source.token().await.expect("cached");
    inventory
        .get_item(GetItemRequest {
            sku: "SKU-001".into(),
        })
        .await
        .expect("second call reuses the cached token");
    assert_eq!(
        source.token().await.expect("cached"),
        header,
        "a fresh token must be reused, not refetched"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_tokens_need_a_registered_workload_and_an_allowed_audience() {
    let mesh = TestMesh::start().await.expect("mesh");

    // Signed by the mesh CA, registered nowhere.
    let mut stranger = AuthServiceClient::new(mesh.auth_channel("stranger").expect("channel"));
    let refused = stranger
        .issue_service_token(IssueServiceTokenRequest {
            audience: "inventory".into(),
            scopes: vec![],
        })
        .await
        .expect_err("unregistered");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // Registered, but not for this audience, or not for this scope.
    let mut orders = AuthServiceClient::new(mesh.auth_channel("orders").expect("channel"));
    let audience = orders
        .issue_service_token(IssueServiceTokenRequest {
            audience: "auth".into(),
            scopes: vec![],
        })
        .await
        .expect_err("audience");
    assert_eq!(audience.code(), Code::PermissionDenied);
    let scope = orders
        .issue_service_token(IssueServiceTokenRequest {
            audience: "inventory".into(),
            scopes: vec!["inventory:admin".into()],
        })
        .await
        .expect_err("scope");
    assert_eq!(scope.code(), Code::PermissionDenied);

    // The happy path narrows to what was asked.
    let granted = orders
        .issue_service_token(IssueServiceTokenRequest {
            audience: "inventory".into(),
            scopes: vec!["inventory:read".into()],
        })
        .await
        .expect("granted")
        .into_inner();
    assert_eq!(granted.scopes, ["inventory:read"]);
    assert_eq!(granted.expires_in, 300);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanging_a_token_not_addressed_to_the_caller_is_permission_denied() {
    let mesh = TestMesh::start().await.expect("mesh");
    // meshctl's token is addressed to inventory, not to orders.
    let token = mesh.meshctl_token().await.expect("token");
    let mut orders = AuthServiceClient::new(mesh.auth_channel("orders").expect("channel"));
    let refused = orders
        .exchange_token(ExchangeTokenRequest {
            subject_token: token.clone(),
            audience: "inventory".into(),
            scopes: vec![],
        })
        .await
        .expect_err("not addressed to orders");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(!refused.message().contains(&token), "never echo the token");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_serves_reads_and_admin_restocks_and_validates_input() {
    let mesh = TestMesh::start().await.expect("mesh");
    let read = mesh.meshctl_token().await.expect("token");
    let admin = mesh.admin_token().await.expect("token");
    let mut inventory =
        InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("channel"));

    let page = inventory
        .list_items(bearer(
            ListItemsRequest {
                page_size: 3,
                page_token: String::new(),
            },
            &read,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.items.len(), 3);
    assert_eq!(page.next_page_token, "SKU-003");
    let rest = inventory
        .list_items(bearer(
            ListItemsRequest {
                page_size: 3,
                page_token: page.next_page_token,
            },
            &read,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(rest.items.len(), 1);
    assert!(rest.next_page_token.is_empty());

    let denied = inventory
        .restock(bearer(
            RestockRequest {
                sku: "SKU-004".into(),
                quantity: 5,
            },
            &read,
        ))
        .await
        .expect_err("read token cannot restock");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let restocked = inventory
        .restock(bearer(
            RestockRequest {
                sku: "SKU-004".into(),
                quantity: 5,
            },
            &admin,
        ))
        .await
        .expect("admin restocks")
        .into_inner();
    assert_eq!(restocked.available, 15);

    let invalid = inventory
        .get_item(bearer(
            GetItemRequest {
                sku: "not a sku".into(),
            },
            &read,
        ))
        .await
        .expect_err("invalid");
    assert_eq!(invalid.code(), Code::InvalidArgument);
    let violations = invalid
        .get_details_bad_request()
        .expect("details")
        .field_violations;
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, "sku");

    let missing = inventory
        .get_item(bearer(
            GetItemRequest {
                sku: "SKU-999".into(),
            },
            &read,
        ))
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_is_an_explicit_row_for_mesh_workloads_and_lists_only_the_served_api() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mesh = TestMesh::start().await.expect("mesh");
    // A certificate is enough (no token): reflection is for workloads of the mesh.
    let mut client = ServerReflectionClient::new(mesh.orders_channel("meshctl").expect("channel"));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .expect("reflection allowed")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected answer {answer:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["mesh.orders.v1.OrdersService"]);
    mesh.stop().await;
}

/// One reflection request on `channel`, answered with the first response, or the status that
/// ended the stream instead.
async fn reflect(
    channel: tonic::transport::Channel,
    request: tonic_reflection::pb::v1::server_reflection_request::MessageRequest,
) -> Result<tonic_reflection::pb::v1::server_reflection_response::MessageResponse, tonic::Status> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    Ok(ServerReflectionClient::new(channel)
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .expect("reflection allowed")
        .into_inner()
        .message()
        .await?
        .expect("one message")
        .message_response
        .expect("a response"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_describes_no_symbol_or_file_of_another_service() {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest::{
        FileByFilename, FileContainingSymbol,
    };
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let mesh = TestMesh::start().await.expect("mesh");
    let servers = [
        (
            "orders",
            mesh.orders_channel("meshctl").expect("channel"),
            "mesh.orders.v1.OrdersService",
            "mesh/orders/v1/orders.proto",
        ),
        (
            "auth",
            mesh.auth_channel("meshctl").expect("channel"),
            "mesh.auth.v1.AuthService",
            "mesh/auth/v1/auth.proto",
        ),
        (
            "inventory",
            mesh.inventory_channel("meshctl").expect("channel"),
            "mesh.inventory.v1.InventoryService",
            "mesh/inventory/v1/inventory.proto",
        ),
    ];
    for (server, channel, own_service, own_file) in &servers {
        // Its own API is described, by symbol and by file name...
        for request in [
            FileContainingSymbol((*own_service).to_owned()),
            FileByFilename((*own_file).to_owned()),
        ] {
            match reflect(channel.clone(), request).await {
                Ok(MessageResponse::FileDescriptorResponse(files)) => {
                    assert_eq!(files.file_descriptor_proto.len(), 1, "{server}")
                }
                other => panic!("{server}: its own API not described: {other:?}"),
            }
        }
        // ...and every other service's is not, by either route.
        for (_, _, other_service, other_file) in servers.iter().filter(|s| s.0 != *server) {
            for request in [
                FileContainingSymbol((*other_service).to_owned()),
                FileByFilename((*other_file).to_owned()),
            ] {
                // tonic-reflection ends the stream with NOT_FOUND; an error message in the
                // stream would do as well.
                match reflect(channel.clone(), request.clone()).await {
                    Err(status) => {
                        assert_eq!(status.code(), Code::NotFound, "{server}: {request:?}")
                    }
                    Ok(MessageResponse::ErrorResponse(error)) => {
                        assert_eq!(
                            error.error_code,
                            Code::NotFound as i32,
                            "{server}: {request:?}"
                        )
                    }
                    other => panic!("{server} describes {request:?}: {other:?}"),
                }
            }
        }
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_appended_to_the_service_audit_chain() {
    use auth_interceptor::audit::{AuditRecord, verify};
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.meshctl_token().await.expect("token");
    let mut inventory =
        InventoryServiceClient::new(mesh.inventory_channel("meshctl").expect("channel"));
    inventory
        .list_items(bearer(ListItemsRequest::default(), &token))
        .await
        .expect("allowed");
    inventory
        .restock(bearer(
            RestockRequest {
                sku: "SKU-001".into(),
                quantity: 1,
            },
            &token,
        ))
        .await
        .expect_err("denied");

    let path = mesh.mesh.audit.log("inventory");
    let records: Vec<AuditRecord> = std::fs::read_to_string(&path)
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(
        (
            records[0].decision.as_str(),
            records[0].method.as_str(),
            records[0].subject.as_str()
        ),
        (
            "allow",
            "/mesh.inventory.v1.InventoryService/ListItems",
            "meshctl"
        )
    );
    assert_eq!(
        (
            records[1].decision.as_str(),
            records[1].reason.as_str(),
            records[1].peer.as_str()
        ),
        ("deny", "missing_scope", "spiffe://mesh.local/sa/meshctl")
    );
    assert!(
        !std::fs::read_to_string(&path)
            .expect("log")
            .contains(&token),
        "never the token"
    );
    assert_eq!(
        verify(&path, &mesh.mesh.audit.key)
            .expect("chain verifies")
            .records,
        2
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_records_of_a_delegated_call_name_the_user_and_the_service_acting_for_them() {
    use auth_interceptor::audit::AuditRecord;
    use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
    use mesh_proto::orders::v1::{OrderLine, PlaceOrderRequest};
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.user_token("alice", "orders").await.expect("login");
    OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("channel"))
        .place_order(bearer(
            PlaceOrderRequest {
                idempotency_key: "actor-0001".into(),
                lines: vec![OrderLine {
                    sku: "SKU-001".into(),
                    quantity: 1,
                }],
            },
            &token,
        ))
        .await
        .expect("placed");
    let records = |service: &str| -> Vec<AuditRecord> {
        std::fs::read_to_string(mesh.mesh.audit.log(service))
            .expect("audit log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("record"))
            .collect()
    };
    let by_method = |records: &[AuditRecord], method: &str| -> AuditRecord {
        records
            .iter()
            .find(|r| r.method.ends_with(method) && r.decision == "allow")
            .unwrap_or_else(|| panic!("no allow record for {method}: {records:?}"))
            .clone()
    };
    // At orders, alice acts for herself; at inventory, orders acts on her behalf.
    let placed = by_method(&records("orders"), "/PlaceOrder");
    assert_eq!(
        (placed.subject.as_str(), placed.actor.as_str()),
        ("alice", "")
    );
    let reserved = by_method(&records("inventory"), "/Reserve");
    assert_eq!(
        (
            reserved.subject.as_str(),
            reserved.actor.as_str(),
            reserved.peer.as_str()
        ),
        ("alice", "orders", "spiffe://mesh.local/sa/orders")
    );
    mesh.stop().await;
}
