//! `meshctl demo`: a whole mesh in this process, and a walk through what it allows and refuses.

use std::fmt::Display;

use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_proto::inventory::v1::{ListItemsRequest, RestockRequest};
use tonic::Code;

use crate::cli::DemoArgs;
use crate::devmesh::{DevMesh, MESHCTL_DEMO_SECRET};
use crate::token::{ClientCredentials, client_credentials};
use crate::{CliError, failed};

/// One step's verdict.
struct Outcome {
    ok: bool,
}

fn step(number: usize, title: &str, expected: &str, got: impl Display, ok: bool) -> Outcome {
    let mark = if ok { "ok  " } else { "FAIL" };
    println!("[{mark}] {number}. {title}");
    println!("         expected: {expected}");
    println!("         got:      {got}");
    Outcome { ok }
}

fn with_token<T>(message: T, token: &str) -> Result<tonic::Request<T>, CliError> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().map_err(failed)?,
    );
    Ok(request)
}

/// Runs the scenario; fails (exit 1) if any step did not behave as expected.
pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    mesh_telemetry::init_with_default("warn,audit=info");
    let dir = tempfile::tempdir().map_err(failed)?;
    let mesh = DevMesh::start(dir.path()).await.map_err(failed)?;
    println!("Zero-Trust Mesh demo: every hop is mTLS with a SPIFFE identity, every call a JWT.");
    println!(
        "  auth       mesh {}  public {}",
        mesh.auth_addr, mesh.issuer
    );
    println!("  inventory  mesh {}", mesh.inventory_addr);
    println!("  (audit events, target `audit`, are printed on stderr as they happen)\n");

    let http = mesh.https_client().map_err(failed)?;
    let mut outcomes = Vec::new();

    // 1. A token from the auth service, with client credentials over HTTPS.
    let token = client_credentials(
        &http,
        &mesh.issuer,
        &ClientCredentials {
            client_id: "meshctl".into(),
            client_secret: MESHCTL_DEMO_SECRET.into(),
        },
        "inventory",
        &[],
    )
    .await;
    let token = match token {
        Ok(response) => {
            outcomes.push(step(
                1,
                "meshctl asks the auth service for a token (client credentials, audience inventory)",
                "a token",
                format!(
                    "a {}-second EdDSA token with scope {:?}",
                    response.expires_in, response.scope
                ),
                true,
            ));
            response.access_token
        }
        Err(error) => {
            step(1, "token", "a token", &error, false);
            mesh.stop().await;
            return Err(failed("the demo could not get a token"));
        }
    };

    let channel = mesh
        .connector("meshctl", "inventory")
        .and_then(|c| Ok(c.channel(&mesh.inventory_addr.to_string())?))
        .map_err(failed)?;
    let mut inventory = InventoryServiceClient::new(channel);

    // 2. Allowed: the right certificate and a token with inventory:read.
    let listed = inventory
        .list_items(with_token(ListItemsRequest::default(), &token)?)
        .await;
    outcomes.push(match listed {
        Ok(response) => {
            let items = response.into_inner().items;
            let summary = items
                .iter()
                .map(|i| format!("{}×{}", i.sku, i.available))
                .collect::<Vec<_>>()
                .join(", ");
            step(
                2,
                "meshctl lists the inventory with that token",
                "OK",
                format!("OK: {summary}"),
                !items.is_empty(),
            )
        }
        Err(status) => step(2, "list inventory", "OK", status_text(&status), false),
    });

    // 3. Denied: the token lacks the admin scope.
    let restock = inventory
        .restock(with_token(
            RestockRequest {
                sku: "SKU-004".into(),
                quantity: 5,
            },
            &token,
        )?)
        .await;
    outcomes.push(expect_denied(
        3,
        "meshctl tries to restock with the same token (needs inventory:admin)",
        Code::PermissionDenied,
        restock.map(|_| ()),
    ));

    // 4. Denied: no token at all, though the certificate is good.
    let anonymous = inventory
        .list_items(tonic::Request::new(ListItemsRequest::default()))
        .await;
    outcomes.push(expect_denied(
        4,
        "a call with a valid certificate but no token",
        Code::Unauthenticated,
        anonymous.map(|_| ()),
    ));

    // 5. Denied: a token for another audience.
    let wrong_secret = client_credentials(
        &http,
        &mesh.issuer,
        &ClientCredentials {
            client_id: "meshctl".into(),
            client_secret: "a wrong secret for meshctl".into(),
        },
        "inventory",
        &[],
    )
    .await;
    outcomes.push(match wrong_secret {
        Err(error) if error.status == 401 && error.error == "invalid_client" => step(
            5,
            "a token request with a wrong client secret",
            "401 invalid_client",
            format!("{} {}", error.status, error.error),
            true,
        ),
        other => step(
            5,
            "wrong secret",
            "401 invalid_client",
            format!("{other:?}"),
            false,
        ),
    });

    let passed = outcomes.iter().filter(|o| o.ok).count();
    println!("\n{passed}/{} steps behaved as expected.", outcomes.len());

    if args.keep_running {
        let certs = mesh.dir().join("certs");
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
        println!("  export MESH_ISSUER={}", mesh.issuer);
        println!("  export MESH_INVENTORY_URL={}", mesh.inventory_addr);
        println!(
            "  export MESH_TOKEN=$(MESH_CLIENT_SECRET={MESHCTL_DEMO_SECRET} meshctl token --client-id meshctl)"
        );
        println!("  meshctl inventory list");
        println!("Press Ctrl-C to stop.");
        mesh_telemetry::shutdown_signal().await;
    }
    mesh.stop().await;
    if passed == outcomes.len() {
        Ok(())
    } else {
        Err(failed("some demo steps did not behave as expected"))
    }
}

fn expect_denied(
    number: usize,
    title: &str,
    code: Code,
    result: Result<(), tonic::Status>,
) -> Outcome {
    let expected = format!("{code:?}");
    match result {
        Ok(()) => step(number, title, &expected, "OK (allowed!)", false),
        Err(status) => step(
            number,
            title,
            &expected,
            status_text(&status),
            status.code() == code,
        ),
    }
}

fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
