//! A test server behind the real auth layer whose handlers record the `Principal` they see.

use std::sync::{Arc, Mutex};

use auth_interceptor::jwks::JwksSource;
use auth_interceptor::{AuthLayer, Policy, Principal, Rule, TokenVerifier, VerifierConfig};
use mesh_proto::inventory::v1::inventory_service_server::{
    InventoryService, InventoryServiceServer,
};
use mesh_proto::inventory::v1::{
    GetItemRequest, Item, ListItemsRequest, ListItemsResponse, ReleaseRequest, ReleaseResponse,
    ReserveRequest, ReserveResponse, RestockRequest,
};
use mesh_test_support::{TRUST_DOMAIN, TestMesh};
use mesh_tls::server::{ServerLimits, TlsListener, grpc_server};
use mesh_tls::{Reloadable, SpiffeId};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

/// What a handler saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) method: &'static str,
    pub(crate) subject: String,
    pub(crate) client_id: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) peer: Option<String>,
    pub(crate) token_id: String,
    pub(crate) saw_authorization_header: bool,
}

#[derive(Debug, Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    fn record<T>(&self, method: &'static str, request: &Request<T>) {
        // Handlers read the caller the one way they can: `Principal::user` / `::workload`.
        let user = Principal::user(request).ok();
        let seen = Seen {
            method,
            subject: user
                .as_ref()
                .map(|u| u.subject().to_owned())
                .unwrap_or_default(),
            client_id: user
                .as_ref()
                .map(|u| u.client_id().to_owned())
                .unwrap_or_default(),
            scopes: user
                .as_ref()
                .map(|u| u.scopes().to_vec())
                .unwrap_or_default(),
            peer: Principal::workload(request).ok().map(|s| s.to_string()),
            token_id: user
                .as_ref()
                .map(|u| u.token_id().to_owned())
                .unwrap_or_default(),
            saw_authorization_header: request.metadata().get("authorization").is_some(),
        };
        self.seen.lock().expect("lock").push(seen);
    }
}

#[tonic::async_trait]
impl InventoryService for Recorder {
    async fn list_items(
        &self,
        request: Request<ListItemsRequest>,
    ) -> Result<Response<ListItemsResponse>, Status> {
        self.record("ListItems", &request);
        Ok(Response::new(ListItemsResponse::default()))
    }
    async fn get_item(&self, request: Request<GetItemRequest>) -> Result<Response<Item>, Status> {
        self.record("GetItem", &request);
        Ok(Response::new(Item::default()))
    }
    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        self.record("Reserve", &request);
        Ok(Response::new(ReserveResponse::default()))
    }
    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        self.record("Release", &request);
        Ok(Response::new(ReleaseResponse::default()))
    }
    async fn restock(&self, request: Request<RestockRequest>) -> Result<Response<Item>, Status> {
        self.record("Restock", &request);
        Ok(Response::new(Item::default()))
    }
}

/// The capture server's policy: ListItems needs `inventory:read`; Reserve additionally needs the
/// caller to be the orders workload; Restock needs `inventory:admin`; GetItem and Release have
/// no row at all.
pub(crate) fn policy() -> Policy {
    let orders = SpiffeId::workload(TRUST_DOMAIN, "orders").expect("spiffe id");
    use mesh_proto::inventory::v1::rpc::inventory_service as rpc;
    Policy::new(TRUST_DOMAIN)
        .with_health()
        .allow(rpc::LIST_ITEMS, Rule::token().scope("inventory:read"))
        .allow(
            rpc::RESERVE,
            Rule::token().scope("inventory:read").callers([orders]),
        )
        .allow(rpc::RESTOCK, Rule::token().scope("inventory:admin"))
}

/// A running capture server, posing as the inventory workload.
pub(crate) struct Capture {
    pub(crate) addr: std::net::SocketAddr,
    recorder: Recorder,
    stop: Option<oneshot::Sender<()>>,
}

impl Capture {
    pub(crate) async fn start(mesh: &TestMesh) -> Capture {
        let files = mesh.mesh.tls_files("inventory");
        let roots = files.trust_bundle().expect("roots");
        let identity = Reloadable::load(files).expect("identity");
        let http = JwksSource::https_client(roots.clone()).expect("https client");
        let verifier = TokenVerifier::discover(
            VerifierConfig::new(mesh.mesh.issuer.clone(), "inventory"),
            JwksSource::new(mesh.mesh.issuer.clone(), http),
            std::time::Duration::from_secs(5),
        )
        .await
        .expect("discovery");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let listener = TlsListener::mesh(tcp, identity, roots).expect("listener");
        let addr = listener.local_addr().expect("addr");
        let recorder = Recorder::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = grpc_server(&ServerLimits::default())
            .layer(AuthLayer::new(verifier, policy()))
            .add_service(InventoryServiceServer::new(recorder.clone()))
            .serve_with_incoming_shutdown(listener.incoming(), async {
                let _ = stopped.await;
            });
        tokio::spawn(server);
        Capture {
            addr,
            recorder,
            stop: Some(stop),
        }
    }

    /// A channel presenting `as_workload`'s certificate.
    pub(crate) fn channel(&self, mesh: &TestMesh, as_workload: &str) -> tonic::transport::Channel {
        mesh.mesh
            .connector(as_workload, "inventory")
            .expect("connector")
            .channel(&self.addr.to_string())
            .expect("channel")
    }

    /// Everything the handlers saw so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.recorder.seen.lock().expect("lock").clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
