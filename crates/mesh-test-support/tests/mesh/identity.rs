//! Workload identity from the mesh CA: joining with a token, renewing under load, the CA's own
//! rotation, and the keys at rest.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use auth_interceptor::audit::AuditRecord;
use mesh_dev::devmesh::{DevOptions, TRUST_DOMAIN};
use mesh_proto::identity::v1::identity_admin_client::IdentityAdminClient;
use mesh_proto::identity::v1::identity_client::IdentityClient;
use mesh_proto::identity::v1::rotate_authority_request::Step;
use mesh_proto::identity::v1::{
    CertifyRequest, CertifyResponse, CreateJoinTokenRequest, RotateAuthorityRequest,
};
use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_proto::orders::v1::{OrderLine, PlaceOrderRequest};
use mesh_service::identity::Renewed;
use mesh_test_support::{Backend, TestMesh, bearer};
use mesh_tls::certs::new_key_and_request;
use mesh_tls::client::MeshConnector;
use mesh_tls::material::parse_pem_certs;
use mesh_tls::{Reloadable, SpiffeId, Trust, TrustBundle};
use tonic::Code;

fn id(name: &str) -> SpiffeId {
    SpiffeId::workload(TRUST_DOMAIN, name).expect("id")
}

fn auth_records(mesh: &TestMesh) -> Vec<AuditRecord> {
    std::fs::read_to_string(mesh.mesh.audit.log("auth"))
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect()
}

fn has_record(mesh: &TestMesh, decision: &str, reason: &str) -> bool {
    auth_records(mesh)
        .iter()
        .any(|r| r.decision == decision && r.reason == reason)
}

/// The CA on the auth service's public listener, reached with no client certificate.
pub(crate) fn public_identity(mesh: &TestMesh) -> IdentityClient<tonic::transport::Channel> {
    let bundle = mesh
        .mesh
        .tls_files("meshctl")
        .trust_bundle()
        .expect("bundle");
    let config = mesh_tls::client::https_grpc_client_config(bundle).expect("config");
    let channel = mesh_tls::client::channel(
        &format!("localhost:{}", mesh.mesh.auth_public_addr.port()),
        config,
    )
    .expect("channel");
    IdentityClient::new(channel)
}

fn certify_with_token(token: &str, csr: Vec<u8>) -> CertifyRequest {
    CertifyRequest {
        certificate_request: csr,
        join_token: token.to_owned(),
        ..CertifyRequest::default()
    }
}

async fn join_token(mesh: &TestMesh, workload: &str) -> String {
    let admin = mesh.user_token("admin", "auth").await.expect("admin");
    IdentityAdminClient::new(mesh.auth_channel("meshctl").expect("channel"))
        .create_join_token(bearer(
            CreateJoinTokenRequest {
                workload: workload.to_owned(),
                ttl_seconds: 600,
            },
            &admin,
        ))
        .await
        .expect("join token")
        .into_inner()
        .token
}

/// One CA rotation step through `client` with `token`.
async fn rotate(
    client: &mut IdentityAdminClient<tonic::transport::Channel>,
    step: Step,
    token: &str,
) -> Result<mesh_proto::identity::v1::RotateAuthorityResponse, tonic::Status> {
    client
        .rotate_authority(bearer(RotateAuthorityRequest { step: step.into() }, token))
        .await
        .map(tonic::Response::into_inner)
}

fn leaf_id(response: &CertifyResponse) -> Option<SpiffeId> {
    let chain = parse_pem_certs(&response.certificate_chain_pem).expect("pem");
    mesh_tls::identity::spiffe_id_of(&chain[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_and_inventory_serve_certificates_from_the_mesh_ca_with_keys_only_in_memory() {
    let mesh = TestMesh::start().await.expect("mesh");
    // The served certificate is the CA's, for the right identity: the connector pins it.
    mesh.orders_channel("meshctl").expect("channel");
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        mesh.orders_channel("meshctl").expect("channel"),
    );
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("orders answers as spiffe://mesh.local/sa/orders");
    for name in ["orders", "inventory"] {
        let renewal = &mesh.mesh.renewals[name];
        assert_eq!(renewal.problem(), None, "{name}");
    }
    // Nothing but the rejoin tokens was written for them: no key, no certificate.
    let identity_dir = mesh.dir().join("identity");
    let mut files: Vec<String> = std::fs::read_dir(&identity_dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["inventory.join", "orders.join"]);
    for file in &files {
        let token = std::fs::read_to_string(identity_dir.join(file)).expect("token");
        assert!(token.starts_with("ztm-join-"), "{file}: {token}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(identity_dir.join(file))
                .expect("meta")
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{file} is private");
    }
    assert!(has_record(&mesh, "allow", "certified"));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_is_single_use_bound_to_one_identity_and_expires() {
    let mesh = TestMesh::start().await.expect("mesh");
    let mut ca = public_identity(&mesh);
    let token = join_token(&mesh, "reports").await;

    let (_, csr) = new_key_and_request(None).expect("csr");
    let first = ca
        .certify(certify_with_token(&token, csr))
        .await
        .expect("the first use is certified")
        .into_inner();
    assert_eq!(leaf_id(&first), Some(id("reports")));
    assert_eq!(first.spiffe_id, id("reports").to_string());
    assert!(first.trust_bundle_pem.contains("BEGIN CERTIFICATE"));

    let (_, csr) = new_key_and_request(None).expect("csr");
    let reused = ca
        .certify(certify_with_token(&token, csr))
        .await
        .expect_err("single use");
    assert_eq!(reused.code(), Code::Unauthenticated, "{reused:?}");
    assert!(reused.message().contains("already used"), "{reused:?}");

    // An expired token (its expiry moved into the past in the CA's database).
    let expiring = join_token(&mesh, "reports").await;
    let pool = mesh.auth_db().await.expect("db");
    sqlx::query("UPDATE join_tokens SET expires_at = 1 WHERE hash = $1")
        .bind(auth_service::join::token_hash(&expiring))
        .execute(&pool)
        .await
        .expect("expire");
    let (_, csr) = new_key_and_request(None).expect("csr");
    let expired = ca
        .certify(certify_with_token(&expiring, csr))
        .await
        .expect_err("expired");
    assert_eq!(expired.code(), Code::Unauthenticated, "{expired:?}");
    assert!(expired.message().contains("expired"), "{expired:?}");

    // Unknown and missing tokens.
    let (_, csr) = new_key_and_request(None).expect("csr");
    let unknown = ca
        .certify(certify_with_token("ztm-join-guessed", csr.clone()))
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::Unauthenticated, "{unknown:?}");
    let missing = ca
        .certify(certify_with_token("", csr))
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    assert!(missing.message().contains("join_token"), "{missing:?}");
    let empty = ca
        .certify(certify_with_token(&token, Vec::new()))
        .await
        .expect_err("no request");
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");
    assert!(
        empty.message().starts_with("certificate_request"),
        "{empty:?}"
    );

    for reason in [
        "join_token_reused",
        "join_token_expired",
        "join_token_unknown",
    ] {
        assert!(has_record(&mesh, "deny", reason), "{reason} audited");
    }
    mesh.stop().await;
}

/// Joins as `workload` with a join token on the public listener, asking for a rejoin token.
async fn join_with_rejoin(mesh: &TestMesh, token: &str) -> (Arc<Reloadable>, CertifyResponse) {
    let (key, csr) = new_key_and_request(None).expect("csr");
    let joined = public_identity(mesh)
        .certify(CertifyRequest {
            rejoin: true,
            ..certify_with_token(token, csr)
        })
        .await
        .expect("joined")
        .into_inner();
    let chain = parse_pem_certs(&joined.certificate_chain_pem).expect("pem");
    (Reloadable::in_memory(chain, key).expect("identity"), joined)
}

/// Live rejoin tokens of `workload` in the CA's database.
async fn live_rejoin_tokens(mesh: &TestMesh, workload: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM join_tokens WHERE spiffe_id = $1 AND used_at IS NULL \
         AND issued_with IS NOT NULL",
    )
    .bind(id(workload).to_string())
    .fetch_one(&mesh.auth_db().await.expect("db"))
    .await
    .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_withdraws_the_rejoin_token_of_the_certificate_it_presents() {
    let mesh = TestMesh::start().await.expect("mesh");
    let (identity, joined) = join_with_rejoin(&mesh, &join_token(&mesh, "reports").await).await;
    let (_, billing) = join_with_rejoin(&mesh, &join_token(&mesh, "billing").await).await;
    let trust = mesh
        .mesh
        .tls_files("meshctl")
        .trust_bundle()
        .expect("trust");
    let connector = MeshConnector::new(identity.clone(), trust, id("auth")).expect("connector");
    let mut ca = IdentityClient::new(
        connector
            .channel(&mesh.mesh.auth_addr.to_string())
            .expect("channel"),
    );

    // Five renewals, each with the certificate the last one gave, naming no token to replace
    // (and the last one naming billing's): the server withdraws each predecessor itself.
    let mut tokens = vec![joined.rejoin_token];
    for round in 0..5 {
        let (key, csr) = new_key_and_request(None).expect("csr");
        let renewed = ca
            .certify(CertifyRequest {
                certificate_request: csr,
                rejoin: true,
                replaces_rejoin_token: if round == 4 {
                    billing.rejoin_token.clone()
                } else {
                    String::new()
                },
                ..CertifyRequest::default()
            })
            .await
            .expect("renewed")
            .into_inner();
        identity
            .install(
                parse_pem_certs(&renewed.certificate_chain_pem).expect("pem"),
                key,
            )
            .expect("install");
        tokens.push(renewed.rejoin_token);
    }
    assert_eq!(live_rejoin_tokens(&mesh, "reports").await, 1);

    // A caller asking again and again over one connection still holds one: the last it got.
    for _ in 0..10 {
        let (_, csr) = new_key_and_request(None).expect("csr");
        let renewed_token = ca
            .certify(CertifyRequest {
                certificate_request: csr,
                rejoin: true,
                ..CertifyRequest::default()
            })
            .await
            .expect("renewed")
            .into_inner()
            .rejoin_token;
        tokens.push(renewed_token);
    }
    assert_eq!(live_rejoin_tokens(&mesh, "reports").await, 1);

    let (last, withdrawn) = tokens.split_last().expect("tokens");
    for token in withdrawn {
        let (_, csr) = new_key_and_request(None).expect("csr");
        let refused = public_identity(&mesh)
            .certify(certify_with_token(token, csr))
            .await
            .expect_err("a withdrawn rejoin token");
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    }
    // Another workload's token is not the caller's to withdraw.
    assert_eq!(live_rejoin_tokens(&mesh, "billing").await, 1);
    let (_, rejoined) = join_with_rejoin(&mesh, &billing.rejoin_token).await;
    assert_eq!(leaf_id(&rejoined), Some(id("billing")));
    let (_, rejoined) = join_with_rejoin(&mesh, last).await;
    assert_eq!(leaf_id(&rejoined), Some(id("reports")));

    // Replicas share their workload's ID: each holds its own, up to the cap.
    let admin = mesh.user_token("admin", "auth").await.expect("admin");
    let mut admin_client = IdentityAdminClient::new(mesh.auth_channel("meshctl").expect("channel"));
    for _ in 0..auth_service::join::MAX_LIVE_REJOIN_TOKENS + 3 {
        let token = admin_client
            .create_join_token(bearer(
                CreateJoinTokenRequest {
                    workload: "reports".into(),
                    ttl_seconds: 600,
                },
                &admin,
            ))
            .await
            .expect("join token")
            .into_inner()
            .token;
        join_with_rejoin(&mesh, &token).await;
    }
    assert_eq!(
        live_rejoin_tokens(&mesh, "reports").await,
        i64::from(auth_service::join::MAX_LIVE_REJOIN_TOKENS)
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_request_for_another_identity_is_refused_and_audited() {
    let mesh = TestMesh::start().await.expect("mesh");

    // With a join token for `reports`, a request naming auth is refused, and burns the token.
    let token = join_token(&mesh, "reports").await;
    let (_, csr) = new_key_and_request(Some(&id("auth"))).expect("csr");
    let refused = public_identity(&mesh)
        .certify(certify_with_token(&token, csr))
        .await
        .expect_err("other identity");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("spiffe://mesh.local/sa/auth"),
        "{refused:?}"
    );

    // Renewing over mTLS as orders: a request naming inventory is refused; one naming nothing
    // gets orders, never anything else.
    let mut as_orders = IdentityClient::new(mesh.auth_channel("orders").expect("channel"));
    let (_, csr) = new_key_and_request(Some(&id("inventory"))).expect("csr");
    let refused = as_orders
        .certify(CertifyRequest {
            certificate_request: csr,
            ..CertifyRequest::default()
        })
        .await
        .expect_err("other identity");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let (_, csr) = new_key_and_request(None).expect("csr");
    let renewed = as_orders
        .certify(CertifyRequest {
            certificate_request: csr,
            ..CertifyRequest::default()
        })
        .await
        .expect("renewal")
        .into_inner();
    assert_eq!(leaf_id(&renewed), Some(id("orders")));

    // A token presented beside a certificate is a mistake, said as such.
    let (_, csr) = new_key_and_request(None).expect("csr");
    let both = as_orders
        .certify(certify_with_token("ztm-join-x", csr))
        .await
        .expect_err("both");
    assert_eq!(both.code(), Code::InvalidArgument, "{both:?}");

    // Garbage is INVALID_ARGUMENT naming the field, not a panic.
    let garbage = as_orders
        .certify(CertifyRequest {
            certificate_request: b"not a csr".to_vec(),
            ..CertifyRequest::default()
        })
        .await
        .expect_err("garbage");
    assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");
    assert!(
        garbage.message().starts_with("certificate_request"),
        "{garbage:?}"
    );

    let denied: Vec<_> = auth_records(&mesh)
        .into_iter()
        .filter(|r| r.reason == "csr_other_identity")
        .collect();
    assert_eq!(denied.len(), 2, "both refusals audited: {denied:?}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_administrator_through_meshctl_may_create_join_tokens_or_rotate_the_ca() {
    let mesh = TestMesh::start().await.expect("mesh");
    let alice = mesh.user_token("alice", "auth").await.expect("alice");
    let admin = mesh.user_token("admin", "auth").await.expect("admin");
    let request = || CreateJoinTokenRequest {
        workload: "orders".into(),
        ttl_seconds: 0,
    };
    let mut via_meshctl = IdentityAdminClient::new(mesh.auth_channel("meshctl").expect("channel"));
    let refused = via_meshctl
        .create_join_token(bearer(request(), &alice))
        .await
        .expect_err("alice is no admin");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = rotate(&mut via_meshctl, Step::Add, &alice)
        .await
        .expect_err("alice is no admin");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let mut via_orders = IdentityAdminClient::new(mesh.auth_channel("orders").expect("channel"));
    let refused = via_orders
        .create_join_token(bearer(request(), &admin))
        .await
        .expect_err("not through meshctl");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // No token at all is UNAUTHENTICATED; a bad workload name is INVALID_ARGUMENT.
    let refused = via_meshctl
        .create_join_token(request())
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let refused = via_meshctl
        .create_join_token(bearer(
            CreateJoinTokenRequest {
                workload: "Not/A/Name".into(),
                ttl_seconds: 0,
            },
            &admin,
        ))
        .await
        .expect_err("bad name");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().starts_with("workload"), "{refused:?}");
    // Activating with no new CA, or too early, is FAILED_PRECONDITION with the reason.
    let refused = rotate(&mut via_meshctl, Step::Activate, &admin)
        .await
        .expect_err("nothing to activate");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    rotate(&mut via_meshctl, Step::Add, &admin)
        .await
        .expect("add");
    let refused = rotate(&mut via_meshctl, Step::Activate, &admin)
        .await
        .expect_err("too early");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("too early"), "{refused:?}");
    mesh.stop().await;
}

/// A client that renews its own certificate at the CA, as a service does: meshctl's identity,
/// kept fresh by the same renewal loop.
struct RenewingClient {
    identity: Arc<Reloadable>,
    trust: TrustBundle,
    _renewal: mesh_service::identity::TaskGuard,
    status: Arc<mesh_service::identity::RenewalStatus>,
}

impl RenewingClient {
    /// Starts from meshctl's file certificate, trades it at once for one of the CA's lifetime,
    /// and renews from then on.
    async fn start(mesh: &TestMesh) -> Self {
        let files = mesh.mesh.tls_files("meshctl");
        let identity = Reloadable::load(files.clone()).expect("identity");
        let trust = files.trust_bundle().expect("trust");
        let auth_addr = mesh.mesh.auth_addr.to_string();
        let connector =
            MeshConnector::new(identity.clone(), trust.clone(), id("auth")).expect("connector");
        let (first, _) = mesh_service::identity::certify(
            mesh_client::transport(connector.channel(&auth_addr).expect("channel")),
            "",
            "",
        )
        .await
        .expect("first certificate");
        identity
            .install(parse_pem_certs(&first.chain_pem).expect("pem"), first.key)
            .expect("install");
        let renew = move || {
            let channel = connector.channel(&auth_addr);
            async move {
                let channel = channel.map_err(|e| e.to_string())?;
                let (renewed, _): (Renewed, _) =
                    mesh_service::identity::certify(mesh_client::transport(channel), "", "")
                        .await
                        .map_err(|s| s.message().to_owned())?;
                Ok(renewed)
            }
        };
        let (renewal, status) =
            mesh_service::identity::spawn_renewal(identity.clone(), trust.clone(), renew, None);
        Self {
            identity,
            trust,
            _renewal: renewal,
            status,
        }
    }

    fn admin(&self, mesh: &TestMesh) -> IdentityAdminClient<tonic::transport::Channel> {
        let channel = MeshConnector::new(self.identity.clone(), self.trust.clone(), id("auth"))
            .expect("connector")
            .channel(&mesh.mesh.auth_addr.to_string())
            .expect("channel");
        IdentityAdminClient::new(channel)
    }

    fn orders(&self, mesh: &TestMesh) -> OrdersServiceClient<tonic::transport::Channel> {
        // A new connection each time: every call handshakes with the certificates of the moment.
        let channel = MeshConnector::new(self.identity.clone(), self.trust.clone(), id("orders"))
            .expect("connector")
            .channel(&mesh.mesh.orders_addr.to_string())
            .expect("channel");
        OrdersServiceClient::new(channel)
    }
}

/// PlaceOrder from two workers through `client` until [`Load::finish`]; every failed call is
/// kept.
struct Load {
    calls: Arc<AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(mesh: &Arc<TestMesh>, client: &Arc<RenewingClient>, token: &str) -> Self {
        let calls = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let workers = (0..2)
            .map(|worker| {
                let (mesh, client, token, calls, stopped) = (
                    mesh.clone(),
                    client.clone(),
                    token.to_owned(),
                    calls.clone(),
                    stopped.clone(),
                );
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    let mut n = 0u64;
                    while !*stopped.borrow() {
                        n += 1;
                        calls.fetch_add(1, Ordering::Relaxed);
                        let placed = client
                            .orders(&mesh)
                            .place_order(bearer(
                                PlaceOrderRequest {
                                    idempotency_key: format!("renewal-{worker}-{n:06}"),
                                    lines: vec![OrderLine {
                                        sku: "SKU-001".into(),
                                        quantity: 1,
                                    }],
                                },
                                &token,
                            ))
                            .await;
                        if let Err(status) = placed {
                            failures.push(format!("{status:?}"));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    failures
                })
            })
            .collect();
        Self {
            calls,
            stop,
            workers,
        }
    }

    /// Stops the workers and asserts that the load ran and no call failed.
    async fn finish(self) {
        self.stop.send(true).expect("stop");
        let mut failures = Vec::new();
        for worker in self.workers {
            failures.extend(worker.await.expect("worker"));
        }
        assert!(self.calls.load(Ordering::Relaxed) > 50, "the load ran");
        assert_eq!(failures, Vec::<String>::new(), "0 failed calls");
    }
}

async fn served_serial(
    client: &RenewingClient,
    addr: std::net::SocketAddr,
    expect: &str,
) -> String {
    // Handshake and read the server's certificate.
    let config = mesh_tls::client::mesh_client_config(
        client.identity.clone(),
        client.trust.clone(),
        id(expect),
    )
    .expect("config");
    mesh_tls::client::peer_certificate(addr, config)
        .await
        .map(|der| mesh_tls::certs::serial_of(&der))
        .expect("handshake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_renew_their_certificates_under_load_with_no_failed_call() {
    let mesh = Arc::new(
        TestMesh::start_with(DevOptions {
            cert_ttl: Duration::from_secs(3),
            ..Default::default()
        })
        .await
        .expect("mesh"),
    );
    let client = Arc::new(RenewingClient::start(&mesh).await);
    let token = mesh.user_token("alice", "orders").await.expect("alice");
    let load = Load::start(&mesh, &client, &token);
    let mut serials = BTreeSet::new();
    for _ in 0..16 {
        serials.insert(served_serial(&client, mesh.mesh.orders_addr, "orders").await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    load.finish().await;
    for (name, renewal) in &mesh.mesh.renewals {
        assert!(
            renewal.renewals() >= 3,
            "{name} renewed {} times",
            renewal.renewals()
        );
        assert_eq!(renewal.failures(), 0, "{name}");
    }
    assert!(
        serials.len() >= 3,
        "orders served {} certificates",
        serials.len()
    );
    assert!(client.status.renewals() >= 3);
    // orders' exchanged tokens are bound to its certificate: each renewal makes it exchange
    // alice's token again (a token bound to the old certificate is not sent once the new one is
    // served), where an unbound token would have been reused for the whole run.
    let orders_renewals = mesh.mesh.renewals["orders"].renewals();
    let exchanges = crate::refusals::records(&mesh, "auth")
        .into_iter()
        .filter(|r| r.reason == "token_exchange")
        .count();
    assert!(
        exchanges as u64 >= orders_renewals,
        "{exchanges} exchanges for {orders_renewals} renewals of orders"
    );
    Arc::try_unwrap(mesh).expect("workers done").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_rotates_add_activate_retire_under_load_with_no_failed_call() {
    let ttl = Duration::from_secs(3);
    let mesh = Arc::new(
        TestMesh::start_with(DevOptions {
            cert_ttl: ttl,
            ..Default::default()
        })
        .await
        .expect("mesh"),
    );
    let client = Arc::new(RenewingClient::start(&mesh).await);
    let old_ca = std::fs::read_to_string(mesh.dir().join("certs/ca.pem")).expect("ca");
    let token = mesh.user_token("alice", "orders").await.expect("alice");
    let admin = mesh.user_token("admin", "auth").await.expect("admin");
    let load = Load::start(&mesh, &client, &token);
    let step = |step: Step| {
        let mut client = client.admin(&mesh);
        let admin = admin.clone();
        async move { rotate(&mut client, step, &admin).await.expect("step") }
    };
    let states = |r: &mesh_proto::identity::v1::RotateAuthorityResponse| {
        r.authorities
            .iter()
            .map(|a| a.state.clone())
            .collect::<Vec<_>>()
    };

    let added = step(Step::Add).await;
    assert_eq!(states(&added), ["current", "next"]);
    let new_ca = added.authorities[1].serial.clone();
    // The runbook's waits: one certificate lifetime after each step (the CA refuses sooner).
    tokio::time::sleep(ttl + Duration::from_millis(1200)).await;
    let activated = step(Step::Activate).await;
    assert_eq!(states(&activated), ["previous", "current"]);
    tokio::time::sleep(ttl + Duration::from_millis(1200)).await;
    let retired = step(Step::Retire).await;
    assert_eq!(states(&retired), ["current"]);
    assert_eq!(retired.authorities[0].serial, new_ca);
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.finish().await;

    // Everyone now holds a certificate of the new CA and trusts it alone.
    let new_bundle = Trust::from_pem(&retired.trust_bundle_pem).expect("bundle");
    assert_eq!(new_bundle.len(), 1);
    assert_eq!(client.trust.len(), 1, "the client's bundle followed");
    for (name, addr) in [
        ("orders", mesh.mesh.orders_addr),
        ("inventory", mesh.mesh.inventory_addr),
        ("auth", mesh.mesh.auth_addr),
    ] {
        let config = mesh_tls::client::mesh_client_config(
            client.identity.clone(),
            new_bundle.clone(),
            id(name),
        )
        .expect("config");
        mesh_tls::client::peer_certificate(addr, config)
            .await
            .unwrap_or_else(|e| panic!("{name} serves a certificate of the new CA: {e}"));
    }
    // A certificate of the old CA is no longer accepted anywhere.
    let old_files = mesh.mesh.tls_files("meshctl");
    let old_trust =
        Trust::from_pem(&format!("{old_ca}{}", retired.trust_bundle_pem)).expect("both");
    let config = mesh_tls::client::mesh_client_config(
        Reloadable::load(old_files).expect("old cert"),
        old_trust,
        id("orders"),
    )
    .expect("config");
    let mut orders = OrdersServiceClient::new(
        mesh_tls::client::channel(&mesh.mesh.orders_addr.to_string(), config).expect("channel"),
    );
    orders
        .place_order(bearer(
            PlaceOrderRequest {
                idempotency_key: "old-ca-0001".into(),
                lines: vec![OrderLine {
                    sku: "SKU-001".into(),
                    quantity: 1,
                }],
            },
            &token,
        ))
        .await
        .expect_err("the old CA's certificate is refused");
    for reason in ["ca_added", "ca_activated", "ca_retired"] {
        assert!(has_record(&mesh, "allow", reason), "{reason} audited");
    }
    Arc::try_unwrap(mesh).expect("workers done").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_cannot_renew_before_expiry_reports_not_serving_and_rejoins_when_the_ca_is_back()
 {
    let mut mesh = TestMesh::start_with(DevOptions {
        cert_ttl: Duration::from_secs(4),
        ..Default::default()
    })
    .await
    .expect("mesh");
    // A connection made now outlives the certificate it was made with.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        mesh.orders_channel("meshctl").expect("channel"),
    );
    let check = tonic_health::pb::HealthCheckRequest::default();
    let serving = health
        .check(check.clone())
        .await
        .expect("health")
        .into_inner();
    assert_eq!(serving.status, 1, "SERVING");
    mesh.mesh.stop_service("auth").await;
    let renewal = mesh.mesh.renewals["orders"].clone();
    let mut problem = None;
    for _ in 0..100 {
        problem = renewal.problem();
        if problem.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let problem = problem.expect("orders says why within 5 s");
    assert!(problem.contains("cannot be renewed"), "{problem}");
    assert!(renewal.failures() > 0);
    let status = health
        .check(check.clone())
        .await
        .expect("health")
        .into_inner();
    assert_eq!(status.status, 2, "NOT_SERVING");

    // The CA comes back after the certificate expired: an expired certificate proves nothing
    // over mTLS, so orders joins again with its rejoin token, and serves again.
    while !renewal
        .problem()
        .is_some_and(|p| p.contains("expires in 0s"))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past its not-after for certain: only the rejoin token can get orders a certificate now.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let token_before =
        std::fs::read_to_string(mesh.dir().join("identity/orders.join")).expect("rejoin token");
    mesh.mesh.restart_auth().await.expect("auth back");
    for _ in 0..600 {
        if renewal.problem().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(renewal.problem(), None, "renewed after the CA came back");
    let token_after =
        std::fs::read_to_string(mesh.dir().join("identity/orders.join")).expect("rejoin token");
    assert_ne!(
        token_before, token_after,
        "the rejoin token was spent and replaced"
    );
    let status = health.check(check).await.expect("health").into_inner();
    assert_eq!(status.status, 1, "SERVING again");
    tonic_health::pb::health_client::HealthClient::new(
        mesh.orders_channel("meshctl").expect("channel"),
    )
    .check(tonic_health::pb::HealthCheckRequest::default())
    .await
    .expect("a new connection handshakes with the new certificate");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_alone_holds_no_usable_private_key_and_a_wrong_kek_stops_the_start() {
    let mesh = TestMesh::start().await.expect("mesh");
    let ca_key = std::fs::read_to_string(mesh.dir().join("auth-secrets/ca.key")).expect("key");
    mesh.mesh.key_rotator.rotate().await.expect("a few keys");
    let pool = mesh.auth_db().await.expect("db");
    let plain: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT pkcs8 FROM signing_keys")
        .fetch_all(&pool)
        .await
        .expect("keys");
    assert!(plain.len() >= 3);
    assert!(
        plain.iter().all(|(k,)| k.is_empty()),
        "no plaintext signing key"
    );
    // Nothing of the CA key appears in what the database stores, in any line of its PEM body:
    // the SQLite file and its WAL, or every stored key and certificate column on PostgreSQL.
    let (bytes, wal) = match mesh.backend() {
        Backend::Sqlite => {
            let db_path = mesh.dir().join("auth.db");
            let wal = std::fs::read(db_path.with_extension("db-wal")).unwrap_or_default();
            (std::fs::read(&db_path).expect("db file"), wal)
        }
        Backend::Postgres => {
            let mut stored = Vec::new();
            for query in [
                "SELECT sealed_key FROM authorities",
                "SELECT CAST(cert_pem AS BYTEA) FROM authorities",
                "SELECT sealed FROM signing_keys",
                "SELECT pkcs8 FROM signing_keys",
            ] {
                let rows: Vec<(Vec<u8>,)> =
                    sqlx::query_as(query).fetch_all(&pool).await.expect(query);
                stored.extend(rows.into_iter().flat_map(|(b,)| b));
            }
            (stored, Vec::new())
        }
    };
    pool.close().await;
    for line in ca_key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
    {
        for file in [&bytes, &wal] {
            assert!(
                !file.windows(line.len()).any(|w| w == line.as_bytes()),
                "CA key material in the database"
            );
        }
    }
    assert!(!bytes.windows(11).any(|w| w == b"PRIVATE KEY"));
    // Nor the key's raw bytes (its DER, in 24-byte pieces), the form a careless store would use.
    let der = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        ca_key
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>(),
    )
    .expect("PEM body");
    assert!(der.len() > 64, "a real key");
    for piece in der.chunks_exact(24) {
        for file in [&bytes, &wal] {
            assert!(
                !file.windows(piece.len()).any(|w| w == piece),
                "raw CA key bytes in the database"
            );
        }
    }
    let settings = |kek: &std::path::Path| {
        auth_service::Args {
            listen: "127.0.0.1:0".parse().expect("addr"),
            public_listen: "127.0.0.1:0".parse().expect("addr"),
            tls: mesh_service::TlsFlags {
                tls_cert: None,
                tls_key: None,
                tls_ca: Some(mesh.dir().join("certs/ca.pem")),
                trust_domain: TRUST_DOMAIN.into(),
                tls_watch: mesh_service::config::WatchInterval(None),
            },
            audit: mesh_service::AuditFlags::default(),
            telemetry: mesh_telemetry::trace::TelemetryFlags::default(),
            issuer: None,
            auth_config: mesh.dir().join("auth.toml"),
            db: mesh.mesh.db_url("auth"),
            signing_key_rotation: Duration::from_secs(86_400),
            kek_file: Some(kek.to_owned()),
            kek: None,
            ca_cert: None,
            ca_key: None,
            cert_ttl: Duration::from_secs(3600),
            join_tokens: None,
            rejoin_token_ttl: Duration::from_secs(86_400),
            server: mesh_service::ServerFlags {
                admin_listen: Some("127.0.0.1:0".parse().expect("address")),
                shutdown_grace: Duration::from_secs(5),
                ..mesh_service::ServerFlags::default()
            },
        }
        .into_settings()
        .expect("settings")
    };
    let wrong = mesh.dir().join("wrong.kek");
    auth_interceptor::audit::write_new_key(&wrong).expect("kek");
    let pool = mesh.auth_db().await.expect("db");
    let keys_before: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM signing_keys")
        .fetch_one(&pool)
        .await
        .expect("count");
    let error = auth_service::Application::build(settings(&wrong))
        .await
        .expect_err("a wrong KEK is a start-up error");
    assert!(error.is_config(), "exit 64: {error}");
    assert!(error.to_string().contains("--kek-file"), "{error}");
    assert!(error.to_string().contains("key-encryption key"), "{error}");
    let keys_after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM signing_keys")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(keys_before, keys_after, "no new key was made");
    pool.close().await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plaintext_health_listener_answers_health_and_nothing_else() {
    let mesh = TestMesh::start().await.expect("mesh");
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.mesh.orders_health_addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("plaintext connection");
    let status = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health")
        .into_inner();
    assert_eq!(status.status, 1, "SERVING");
    // The API is not there, with or without a token: only the mesh port serves it.
    let token = mesh.user_token("alice", "orders").await.expect("alice");
    let refused = OrdersServiceClient::new(channel)
        .list_orders(bearer(
            mesh_proto::orders::v1::ListOrdersRequest::default(),
            &token,
        ))
        .await
        .expect_err("no API in plaintext");
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    mesh.stop().await;
}
