//! Client-side load balancing: calls spread over every replica behind a target, the replica set
//! follows its resolver, and every replica must still present the pinned SPIFFE ID.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_client::Transport;
use mesh_client::{Balanced, Resolve};
use mesh_proto::inventory::v1::ListItemsRequest;
use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_test_support::{TestMesh, bearer};

/// A resolver whose answer the test sets.
#[derive(Default)]
struct Answer(Mutex<Vec<SocketAddr>>);

impl Answer {
    fn set(&self, addrs: &[SocketAddr]) {
        *self.0.lock().expect("lock") = addrs.to_vec();
    }
}

impl Resolve for Answer {
    fn resolve(
        &self,
        _target: &str,
    ) -> Pin<Box<dyn std::future::Future<Output = Option<Vec<SocketAddr>>> + Send + '_>> {
        let answer = self.0.lock().expect("lock").clone();
        Box::pin(async move { Some(answer) })
    }
}

/// ListItems calls that reached `log`'s service.
fn list_calls(mesh: &TestMesh, log: &str) -> usize {
    std::fs::read_to_string(mesh.mesh.audit.log(log))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("/ListItems") && l.contains("\"allow\""))
        .count()
}

fn balanced(mesh: &TestMesh, resolver: Arc<dyn Resolve>, target: &str) -> Balanced {
    let connector = mesh
        .mesh
        .connector("meshctl", "inventory")
        .expect("connector");
    Balanced::new(connector, target, resolver, Duration::from_millis(50)).expect("balanced")
}

async fn list(client: &mut InventoryServiceClient<Transport>, token: &str, times: usize) {
    for _ in 0..times {
        client
            .list_items(bearer(ListItemsRequest::default(), token))
            .await
            .expect("list");
    }
}

async fn until_replicas(balanced: &Balanced, expected: &[SocketAddr]) {
    for _ in 0..100 {
        let mut now = balanced.replicas();
        now.sort();
        let mut want = expected.to_vec();
        want.sort();
        if now == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "replicas never became {expected:?}: {:?}",
        balanced.replicas()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_every_replica_and_follow_the_replica_set() {
    let mut mesh = TestMesh::start().await.expect("mesh");
    let first = mesh.mesh.inventory_addr;
    let second = mesh
        .mesh
        .start_inventory_replica("inventory-2")
        .await
        .expect("second replica");
    let token = mesh.meshctl_token().await.expect("token");

    // A list target over both replicas, resolved by the system resolver.
    let both = balanced(
        &mesh,
        Arc::new(mesh_client::Dns),
        &format!("{first},{second}"),
    );
    let mut client = InventoryServiceClient::new(Transport::new(both));
    let (before_first, before_second) = (
        list_calls(&mesh, "inventory"),
        list_calls(&mesh, "inventory-2"),
    );
    list(&mut client, &token, 40).await;
    let (to_first, to_second) = (
        list_calls(&mesh, "inventory") - before_first,
        list_calls(&mesh, "inventory-2") - before_second,
    );
    assert_eq!(to_first + to_second, 40, "every call reached a replica");
    assert!(
        to_first >= 5 && to_second >= 5,
        "spread: {to_first} and {to_second}"
    );

    // The replica set follows the resolver: a replica joins, another leaves, no restart.
    let answer = Arc::new(Answer::default());
    answer.set(&[first]);
    let following = balanced(&mesh, answer.clone(), "inventory.mesh.test:50053");
    until_replicas(&following, &[first]).await;
    let mut client = InventoryServiceClient::new(Transport::new(following.clone()));
    let before_second = list_calls(&mesh, "inventory-2");
    list(&mut client, &token, 10).await;
    assert_eq!(
        list_calls(&mesh, "inventory-2"),
        before_second,
        "not yet a replica"
    );
    answer.set(&[first, second]);
    until_replicas(&following, &[first, second]).await;
    list(&mut client, &token, 30).await;
    assert!(
        list_calls(&mesh, "inventory-2") > before_second,
        "the new replica gets calls"
    );
    answer.set(&[second]);
    until_replicas(&following, &[second]).await;
    let before_first = list_calls(&mesh, "inventory");
    list(&mut client, &token, 10).await;
    assert_eq!(
        list_calls(&mesh, "inventory"),
        before_first,
        "the departed replica gets none"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_spiffe_id_is_never_called() {
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.meshctl_token().await.expect("token");
    // The resolver names orders where inventory is expected: the handshake refuses it.
    let answer = Arc::new(Answer::default());
    answer.set(&[mesh.mesh.orders_addr]);
    let impostor = balanced(&mesh, answer, "inventory.mesh.test:50053");
    until_replicas(&impostor, &[mesh.mesh.orders_addr]).await;
    let orders_records = std::fs::read_to_string(mesh.mesh.audit.log("orders")).unwrap_or_default();
    let refused = InventoryServiceClient::new(Transport::new(impostor))
        .list_items(bearer(ListItemsRequest::default(), &token))
        .await
        .expect_err("another workload behind the address");
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown
        ),
        "{refused:?}"
    );
    assert_eq!(
        std::fs::read_to_string(mesh.mesh.audit.log("orders")).unwrap_or_default(),
        orders_records,
        "nothing reached orders"
    );
    mesh.stop().await;
}
