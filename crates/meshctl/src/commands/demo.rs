//! `meshctl demo`: a whole mesh in this process, and a walk through what it allows and refuses.

use std::fmt::Display;

use mesh_proto::auth::v1::IssueServiceTokenRequest;
use mesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_proto::inventory::v1::{
    GetItemRequest, ListItemsRequest, ReservationLine, ReserveRequest,
};
use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_proto::orders::v1::{
    CancelOrderRequest, GetOrderRequest, Order, OrderLine, OrderState, PlaceOrderRequest,
};
use std::future::Future;
use std::time::Duration;

use mesh_client::Transport;
use opentelemetry::trace::{FutureExt as _, TraceContextExt as _};
use tonic::Code;

use crate::cli::DemoArgs;
use crate::{CliError, failed};
use mesh_dev::devmesh::{DevMesh, MESHCTL_DEMO_SECRET};
use mesh_dev::oauth::login_with_password;

/// Prints one step and whether it did what it should.
fn step(outcomes: &mut Vec<bool>, title: &str, expected: &str, got: impl Display, ok: bool) {
    let mark = if ok { "ok  " } else { "FAIL" };
    println!("[{mark}] {}. {title}", outcomes.len() + 1);
    println!("         expected: {expected}");
    println!("         got:      {got}");
    outcomes.push(ok);
}

fn with_token<T>(message: T, token: &str) -> Result<tonic::Request<T>, CliError> {
    Ok(auth_interceptor::BearerToken::new(token)
        .map_err(failed)?
        .request(message))
}

fn describe(result: &Result<Order, tonic::Status>) -> String {
    match result {
        Ok(order) => format!(
            "{} order {} of {}",
            order
                .state()
                .as_str_name()
                .trim_start_matches("ORDER_STATE_"),
            order.order_id,
            order.owner
        ),
        Err(status) => format!("{:?}: {}", status.code(), status.message()),
    }
}

struct Demo {
    mesh: DevMesh,
    http: reqwest::Client,
    orders: OrdersServiceClient<Transport>,
    inventory: InventoryServiceClient<Transport>,
    outcomes: Vec<bool>,
}

impl Demo {
    /// Runs `work` as the root of a new trace named `title`; returns its result and trace id.
    async fn traced<T>(&self, title: &str, work: impl Future<Output = T>) -> (T, String) {
        let cx = self.mesh.client_telemetry.start_root(title);
        let trace_id = cx.span().span_context().trace_id().to_string();
        let result = work.with_context(cx.clone()).await;
        cx.span().end();
        (result, trace_id)
    }

    /// Exports every service's spans and draws the trace.
    async fn draw(&self, trace_id: &str) {
        self.mesh.flush_traces().await;
        let sink = &self.mesh.sink;
        sink.wait_for(Duration::from_secs(2), |spans| {
            spans
                .iter()
                .any(|s| s.trace_id == trace_id && s.parent_span_id.is_empty())
        })
        .await;
        for line in sink.waterfall(trace_id).lines() {
            println!("         {line}");
        }
    }

    async fn login(&mut self, user: &str, audience: &str) -> Result<String, CliError> {
        let password = format!("{user}-demo-password");
        match login_with_password(&self.http, &self.mesh.issuer, user, &password, audience).await {
            Ok(tokens) => {
                step(
                    &mut self.outcomes,
                    &format!(
                        "{user} logs in (authorization code + PKCE S256, audience {audience})"
                    ),
                    "tokens",
                    format!(
                        "a {}-second token with scope {:?}, and a refresh token",
                        tokens.expires_in, tokens.scope
                    ),
                    tokens.refresh_token.is_some(),
                );
                Ok(tokens.access_token)
            }
            Err(error) => {
                step(
                    &mut self.outcomes,
                    &format!("{user} logs in"),
                    "tokens",
                    &error,
                    false,
                );
                Err(failed(error))
            }
        }
    }

    async fn place(
        &mut self,
        token: &str,
        key: &str,
        sku: &str,
        quantity: u32,
    ) -> Result<Option<Order>, CliError> {
        let request = PlaceOrderRequest {
            idempotency_key: key.into(),
            lines: vec![OrderLine {
                sku: sku.into(),
                quantity,
            }],
        };
        let mut orders = self.orders.clone();
        let request = with_token(request, token)?;
        let (result, trace_id) = self
            .traced("meshctl: place order", async move {
                orders.place_order(request).await
            })
            .await;
        let result = result.map(|r| r.into_inner());
        let ok = matches!(&result, Ok(o) if o.state() == OrderState::Confirmed);
        step(
            &mut self.outcomes,
            &format!(
                "alice orders {quantity} × {sku}: orders exchanges her token (RFC 8693, reused while fresh) and reserves in inventory"
            ),
            "CONFIRMED",
            describe(&result),
            ok,
        );
        self.draw(&trace_id).await;
        Ok(result.ok())
    }

    async fn available(&mut self, token: &str, sku: &str) -> Result<u32, CliError> {
        let item = self
            .inventory
            .get_item(with_token(GetItemRequest { sku: sku.into() }, token)?)
            .await
            .map_err(|s| failed(s.message().to_owned()))?;
        Ok(item.into_inner().available)
    }
}

/// Runs the scenario; fails (exit 1) if any step did not behave as expected.
pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    mesh_telemetry::init_with_default("warn,audit=debug");
    let dir = tempfile::tempdir().map_err(failed)?;
    // Short-lived certificates, so that the demo can show one renewed.
    let options = mesh_dev::devmesh::DevOptions {
        cert_ttl: DEMO_CERT_TTL,
        ..Default::default()
    };
    let mesh = DevMesh::start_with(dir.path(), options)
        .await
        .map_err(failed)?;
    println!("Zero-Trust Mesh demo: every hop is mTLS with a SPIFFE identity, every call a JWT.");
    println!(
        "  auth       mesh {}  public {}",
        mesh.auth_addr, mesh.issuer
    );
    println!("  orders     mesh {}", mesh.orders_addr);
    println!("  inventory  mesh {}", mesh.inventory_addr);
    println!("  traces     OTLP receiver in this process; each step's trace is drawn below it");
    println!("  (audit events, target `audit`, are printed on stderr as they happen)\n");

    let orders = mesh
        .traced_channel("meshctl", "orders", &mesh.orders_addr.to_string())
        .map_err(failed)?;
    let inventory = mesh
        .traced_channel("meshctl", "inventory", &mesh.inventory_addr.to_string())
        .map_err(failed)?;
    let mut demo = Demo {
        http: mesh.https_client().map_err(failed)?,
        mesh,
        orders: OrdersServiceClient::new(orders),
        inventory: InventoryServiceClient::new(inventory),
        outcomes: Vec::new(),
    };
    let result = scenario(&mut demo).await;
    audit_report(&mut demo);
    // What the services counted, from their own /metrics: `meshctl stat` on the demo mesh.
    let admin: Vec<String> = demo
        .mesh
        .metrics_addrs
        .values()
        .map(ToString::to_string)
        .collect();
    println!("\nmeshctl stat --totals --metrics {}", admin.join(","));
    match super::stat::snapshot(&admin, std::time::Duration::ZERO, true).await {
        Ok(table) => print!("{table}"),
        Err(error) => println!("  stat failed: {error}"),
    }
    let passed = demo.outcomes.iter().filter(|ok| **ok).count();
    println!(
        "\n{passed}/{} steps behaved as expected.",
        demo.outcomes.len()
    );

    if args.keep_running {
        let certs = demo.mesh.dir().join("certs");
        println!("\nThe mesh keeps running. In another shell:");
        println!(
            "  export MESH_TLS_CERT={}",
            certs.join("meshctl.pem").display()
        );
        println!(
            "  export MESH_TLS_KEY={}",
            certs.join("meshctl.key").display()
        );
        println!("  export MESH_TLS_CA={}", certs.join("ca.pem").display());
        println!("  export MESH_ISSUER={}", demo.mesh.issuer);
        println!("  export MESH_ORDERS_URL={}", demo.mesh.orders_addr);
        println!("  export MESH_INVENTORY_URL={}", demo.mesh.inventory_addr);
        println!("  meshctl login --username alice --password alice-demo-password");
        println!("  meshctl orders place --line SKU-001:1 && meshctl orders list");
        println!(
            "  (service token: MESH_CLIENT_SECRET={MESHCTL_DEMO_SECRET} meshctl token --client-id meshctl)"
        );
        println!("Press Ctrl-C to stop.");
        mesh_service::shutdown_signal().await;
    }
    demo.mesh.stop().await;
    result?;
    if passed == demo.outcomes.len() {
        Ok(())
    } else {
        Err(failed("some demo steps did not behave as expected"))
    }
}

/// Prints every service's audit records, then verifies each chain.
fn audit_report(demo: &mut Demo) {
    use auth_interceptor::audit::{AuditRecord, verify};
    println!("\nAudit records (HMAC-chained, one file per service):");
    for service in ["auth", "orders", "inventory"] {
        let path = demo.mesh.audit.log(service);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for record in text
            .lines()
            .filter_map(|l| serde_json::from_str::<AuditRecord>(l).ok())
        {
            let method = record.method.rsplit('/').next().unwrap_or_default();
            let peer = record.peer.rsplit('/').next().unwrap_or_default();
            let who = match (record.subject.as_str(), record.actor.as_str()) {
                ("", _) => "-".to_owned(),
                (subject, "") => subject.to_owned(),
                (subject, actor) => format!("{subject} via {actor}"),
            };
            println!(
                "  {:<9} #{:<3} {:<5} {:<20} {:<18} cert={:<9} {}",
                record.service, record.seq, record.decision, method, who, peer, record.reason
            );
        }
        let verdict = verify(&path, &demo.mesh.audit.key);
        let ok = verdict.is_ok();
        match verdict {
            Ok(verified) => println!(
                "  audit verify {service}: OK ({} records)",
                verified.records
            ),
            Err(error) => println!("  audit verify {service}: FAILED: {error}"),
        }
        demo.outcomes.push(ok);
    }
}

/// The certificate lifetime of the demo's mesh (an hour by default).
const DEMO_CERT_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// The serial of the certificate orders serves right now.
async fn orders_serial(demo: &Demo) -> Result<String, CliError> {
    let files = demo.mesh.tls_files("meshctl");
    let identity = mesh_tls::Reloadable::load(files.clone()).map_err(failed)?;
    let roots = files.trust_bundle().map_err(failed)?;
    let expected =
        mesh_tls::SpiffeId::workload(mesh_dev::devmesh::TRUST_DOMAIN, "orders").map_err(failed)?;
    let config = mesh_tls::client::mesh_client_config(identity, roots, expected).map_err(failed)?;
    let leaf = mesh_tls::client::peer_certificate(demo.mesh.orders_addr, config)
        .await
        .map_err(failed)?;
    Ok(mesh_tls::certs::serial_of(&leaf))
}

/// Orders' certificate, whose key never left its memory, renewed at the mesh CA while it serves.
async fn renewal(demo: &mut Demo, alice: &str) -> Result<(), CliError> {
    let first = orders_serial(demo).await?;
    let deadline = tokio::time::Instant::now() + DEMO_CERT_TTL;
    let mut now = first.clone();
    while now == first && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        now = orders_serial(demo).await?;
    }
    let placed = demo.place(alice, "demo-order-0003", "SKU-003", 1).await?;
    let renewals = demo.mesh.renewals.get("orders").map_or(0, |r| r.renewals());
    let ok = now != first && placed.is_some();
    step(
        &mut demo.outcomes,
        &format!(
            "orders renews its certificate at the mesh CA ({}s lifetime here, 1h by default)",
            DEMO_CERT_TTL.as_secs()
        ),
        "a new serial while serving, the next order CONFIRMED",
        format!(
            "serial {}… → {}… ({renewals} renewal(s)), order {}",
            &first[..first.len().min(12)],
            &now[..now.len().min(12)],
            if placed.is_some() {
                "CONFIRMED"
            } else {
                "failed"
            }
        ),
        ok,
    );
    Ok(())
}

/// A token orders got for itself is bound to the certificate it asked with (RFC 8705): a copy
/// sent from meshctl's certificate is refused, on a method that names no caller.
async fn replayed_token(demo: &mut Demo) -> Result<(), CliError> {
    let as_orders = demo
        .mesh
        .traced_channel("orders", "auth", &demo.mesh.auth_addr.to_string())
        .map_err(failed)?;
    let copy = AuthServiceClient::new(as_orders)
        .issue_service_token(IssueServiceTokenRequest {
            audience: "inventory".into(),
            scopes: vec!["inventory:read".into()],
        })
        .await
        .map_err(failed)?
        .into_inner()
        .access_token;
    let mut inventory = demo.inventory.clone();
    let request = with_token(ListItemsRequest::default(), &copy)?;
    let (replayed, trace) = demo
        .traced("meshctl: replay a copy of orders' token", async move {
            inventory.list_items(request).await
        })
        .await;
    let got = match &replayed {
        Ok(_) => "OK (allowed!)".to_owned(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    };
    let ok = matches!(&replayed, Err(s) if s.code() == Code::Unauthenticated
        && s.message().contains("another certificate"));
    step(
        &mut demo.outcomes,
        "meshctl sends inventory a copy of orders' own token (bound to orders' certificate)",
        "Unauthenticated (certificate_mismatch)",
        got,
        ok,
    );
    demo.draw(&trace).await;
    Ok(())
}

async fn scenario(demo: &mut Demo) -> Result<(), CliError> {
    let alice = demo.login("alice", "orders").await?;
    let alice_inventory = login_with_password(
        &demo.http,
        &demo.mesh.issuer,
        "alice",
        "alice-demo-password",
        "inventory",
    )
    .await
    .map_err(failed)?
    .access_token;
    let before = demo.available(&alice_inventory, "SKU-001").await?;
    let first = demo.place(&alice, "demo-order-0001", "SKU-001", 2).await?;
    demo.place(&alice, "demo-order-0002", "SKU-003", 1).await?;

    let bob = demo.login("bob", "orders").await?;
    if let Some(first) = &first {
        let mut orders = demo.orders.clone();
        let request = with_token(
            GetOrderRequest {
                order_id: first.order_id.clone(),
            },
            &bob,
        )?;
        let (peek, peek_trace) = demo
            .traced("meshctl: bob reads alice's order", async move {
                orders.get_order(request).await
            })
            .await;
        let peek = peek.map(|r| r.into_inner());
        let ok = matches!(&peek, Err(s) if s.code() == Code::NotFound);
        step(
            &mut demo.outcomes,
            "bob asks for alice's order",
            "NotFound (ids cannot be probed)",
            describe(&peek),
            ok,
        );
        demo.draw(&peek_trace).await;
    }

    // meshctl's own certificate, alice's own inventory token: not the orders workload, no actor.
    let mut inventory = demo.inventory.clone();
    let request = with_token(
        ReserveRequest {
            reservation_id: "demo-direct-0001".into(),
            lines: vec![ReservationLine {
                sku: "SKU-001".into(),
                quantity: 1,
            }],
        },
        &alice_inventory,
    )?;
    let (direct, direct_trace) = demo
        .traced("meshctl: reserve directly", async move {
            inventory.reserve(request).await
        })
        .await;
    let got = match &direct {
        Ok(_) => "OK (allowed!)".to_owned(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    };
    let ok = matches!(&direct, Err(s) if s.code() == Code::PermissionDenied);
    step(
        &mut demo.outcomes,
        "meshctl calls inventory.Reserve directly with alice's token",
        "PermissionDenied",
        got,
        ok,
    );
    demo.draw(&direct_trace).await;
    replayed_token(demo).await?;

    if let Some(first) = first {
        let mut orders = demo.orders.clone();
        let request = with_token(
            CancelOrderRequest {
                order_id: first.order_id,
            },
            &alice,
        )?;
        let (cancelled, cancel_trace) = demo
            .traced("meshctl: cancel order", async move {
                orders.cancel_order(request).await
            })
            .await;
        let cancelled = cancelled.map(|r| r.into_inner());
        let after = demo.available(&alice_inventory, "SKU-001").await?;
        let ok =
            matches!(&cancelled, Ok(o) if o.state() == OrderState::Cancelled) && after == before;
        step(
            &mut demo.outcomes,
            "alice cancels her first order; inventory releases the reservation",
            &format!("CANCELLED, SKU-001 back to {before}"),
            format!("{}, SKU-001 at {after}", describe(&cancelled)),
            ok,
        );
        demo.draw(&cancel_trace).await;
    }
    renewal(demo, &alice).await
}
