//! Transport identity: no certificate, a foreign CA, plaintext, a silent peer or the wrong
//! server never reach a handler.

use std::time::Duration;

use mesh_proto::inventory::v1::ListItemsRequest;
use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_test_support::{TRUST_DOMAIN, TestMesh, bearer};
use mesh_tls::certs::CertAuthority;
use mesh_tls::client::MeshConnector;
use mesh_tls::server::{AcceptOptions, TlsListener};
use mesh_tls::{Reloadable, SpiffeId, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::capture::Capture;

async fn list_with(channel: tonic::transport::Channel, token: &str) -> Result<(), tonic::Status> {
    InventoryServiceClient::new(channel)
        .list_items(bearer(ListItemsRequest::default(), token))
        .await
        .map(|_| ())
}

/// In TLS 1.3 the client finishes its side before the server has judged the client
/// certificate, so the refusal reaches the client as a transport failure of its first request:
/// the server's fatal alert (UNKNOWN "transport error"), or the closed connection (CANCELLED,
/// UNAVAILABLE), depending on timing. Never a gRPC answer: no handler ran.
fn assert_handshake_refused(status: &tonic::Status) {
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled
        ),
        "{status:?}"
    );
    assert!(
        status.metadata().is_empty(),
        "a server answered: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_fails_the_handshake_and_no_handler_runs() {
    let mesh = TestMesh::start().await.expect("mesh");
    let capture = Capture::start(&mesh).await;
    let token = mesh.meshctl_token().await.expect("token");
    let roots = mesh
        .mesh
        .tls_files("meshctl")
        .trust_bundle()
        .expect("roots");
    let anonymous = MeshConnector::without_client_certificate(
        roots,
        SpiffeId::workload(TRUST_DOMAIN, "inventory").expect("id"),
    )
    .expect("connector");
    let channel = anonymous
        .channel(&capture.addr.to_string())
        .expect("channel");

    let status = list_with(channel, &token)
        .await
        .expect_err("handshake must fail");
    assert_handshake_refused(&status);
    assert!(capture.seen().is_empty());
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_a_foreign_ca_fails_the_handshake() {
    let mesh = TestMesh::start().await.expect("mesh");
    let capture = Capture::start(&mesh).await;
    let token = mesh.meshctl_token().await.expect("token");
    // Same trust domain, same workload name, different CA.
    let foreign_dir = tempfile::tempdir().expect("dir");
    CertAuthority::generate(TRUST_DOMAIN)
        .expect("ca")
        .write_dir(foreign_dir.path(), &["meshctl".to_owned()], false)
        .expect("write");
    let foreign = Reloadable::load(TlsFiles::in_dir(foreign_dir.path(), "meshctl")).expect("cert");
    let real_roots = mesh
        .mesh
        .tls_files("meshctl")
        .trust_bundle()
        .expect("roots");
    let connector = MeshConnector::new(
        foreign,
        real_roots,
        SpiffeId::workload(TRUST_DOMAIN, "inventory").expect("id"),
    )
    .expect("connector");

    let status = list_with(
        connector
            .channel(&capture.addr.to_string())
            .expect("channel"),
        &token,
    )
    .await
    .expect_err("handshake must fail");
    assert_handshake_refused(&status);
    assert!(capture.seen().is_empty());
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_the_mesh_port_is_refused() {
    let mesh = TestMesh::start().await.expect("mesh");
    let capture = Capture::start(&mesh).await;
    let token = mesh.meshctl_token().await.expect("token");

    // gRPC over h2c.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", capture.addr))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let status = list_with(channel, &token)
        .await
        .expect_err("plaintext refused");
    assert_ne!(status.code(), tonic::Code::Ok);

    // Plain HTTP/1.1: the server never answers in HTTP.
    let mut tcp = tokio::net::TcpStream::connect(capture.addr)
        .await
        .expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "answered plaintext: {answer:?}"
    );

    assert!(capture.seen().is_empty());
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_refuses_a_server_with_another_spiffe_id() {
    let mesh = TestMesh::start().await.expect("mesh");
    let token = mesh.meshctl_token().await.expect("token");
    // The inventory address, but we expect to be talking to orders.
    let impostor = mesh
        .mesh
        .connector("meshctl", "orders")
        .expect("connector")
        .channel(&mesh.mesh.inventory_addr.to_string())
        .expect("channel");
    let status = list_with(impostor, &token)
        .await
        .expect_err("wrong server identity");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    mesh.stop().await;
}

/// A mesh listener with inventory's certificate on a fresh loopback port, accepting with
/// `options`: its address and its stream of established connections.
async fn inventory_listener(
    mesh: &TestMesh,
    options: AcceptOptions,
) -> (
    std::net::SocketAddr,
    tonic::codegen::tokio_stream::wrappers::ReceiverStream<
        std::io::Result<mesh_tls::server::MeshStream>,
    >,
) {
    let files = mesh.mesh.tls_files("inventory");
    let roots = files.trust_bundle().expect("roots");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let listener = TlsListener::mesh(tcp, Reloadable::load(files).expect("cert"), roots)
        .expect("listener")
        .with_options(options);
    let addr = listener.local_addr().expect("addr");
    (addr, listener.incoming())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_and_a_slow_sender_are_dropped_after_their_timeouts() {
    let mesh = TestMesh::start().await.expect("mesh");
    let (addr, _incoming) = inventory_listener(
        &mesh,
        AcceptOptions {
            first_byte_timeout: Duration::from_millis(300),
            handshake_timeout: Duration::from_millis(600),
            ..AcceptOptions::default()
        },
    )
    .await;

    // Silent: never a byte. Slow: the first byte of a ClientHello, then nothing.
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(&[0x16]).await.expect("one byte");
    for (name, stream) in [("silent", &mut silent), ("slow", &mut slow)] {
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the server must close the connection, not wait forever");
        assert_eq!(read.unwrap_or(0), 0, "{name}: closed without data");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{name}: closed after {:?}",
            started.elapsed()
        );
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_is_served_to_new_connections_without_restart() {
    let mesh = TestMesh::start().await.expect("mesh");
    // A server whose certificate slot we hold, serving grpc.health.v1.
    let dir = tempfile::tempdir().expect("dir");
    let certs = mesh.dir().join("certs");
    let files = TlsFiles {
        cert: dir.path().join("server.pem"),
        key: dir.path().join("server.key"),
        ca: certs.join("ca.pem"),
    };
    std::fs::copy(certs.join("inventory.pem"), &files.cert).expect("copy");
    std::fs::copy(certs.join("inventory.key"), &files.key).expect("copy");
    let slot = Reloadable::load(files.clone()).expect("slot");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let listener =
        TlsListener::mesh(tcp, slot.clone(), files.trust_bundle().expect("roots")).expect("tls");
    let addr = listener.local_addr().expect("addr").to_string();
    let (_health, service) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(listener.incoming()),
    );
    let check = |workload: &'static str| {
        let channel = mesh
            .mesh
            .connector("meshctl", workload)
            .expect("connector")
            .channel(&addr)
            .expect("channel");
        async move {
            tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .map(|_| ())
        }
    };
    check("inventory")
        .await
        .expect("serves the inventory certificate");

    // Renew on disk with another workload's certificate, then reload: new connections see it.
    std::fs::copy(certs.join("stranger.pem"), &files.cert).expect("copy");
    std::fs::copy(certs.join("stranger.key"), &files.key).expect("copy");
    slot.reload().expect("reload");
    check("stranger").await.expect("serves the new certificate");
    check("inventory")
        .await
        .expect_err("the old identity is gone");

    // A broken file leaves the current certificate in service.
    std::fs::write(&files.key, "not a key").expect("write");
    assert!(slot.reload().is_err());
    check("stranger").await.expect("still serving");
    mesh.stop().await;
}

/// Replaces a file the way cert-manager and Kubernetes secret volumes do: write aside, rename.
fn replace(path: &std::path::Path, contents: &[u8]) {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, contents).expect("write");
    std::fs::rename(&aside, path).expect("rename");
}

/// Polls `condition` every 20 ms for up to 5 s.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    for _ in 0..250 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within 5 s: {what}");
}

/// Waits until the watcher has refused a change since it had refused `before`.
async fn refused_since(status: &mesh_tls::watch::WatchStatus, before: u64, what: &str) {
    eventually(what, || {
        let refused = status.refusals() > before;
        async move { refused }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_watch_follows_renewed_files_and_keeps_serving_through_a_broken_or_mismatched_one() {
    let mesh = TestMesh::start().await.expect("mesh");
    let dir = tempfile::tempdir().expect("dir");
    let certs = mesh.dir().join("certs");
    let read = |name: &str| std::fs::read(certs.join(name)).expect("read");
    let files = TlsFiles {
        cert: dir.path().join("server.pem"),
        key: dir.path().join("server.key"),
        ca: dir.path().join("ca.pem"),
    };
    replace(&files.cert, &read("inventory.pem"));
    replace(&files.key, &read("inventory.key"));
    replace(&files.ca, &read("ca.pem"));
    let slot = Reloadable::load(files.clone()).expect("slot");
    let trust = files.trust_bundle().expect("roots");
    let (_watch, status) =
        mesh_tls::watch::spawn_file_watch(slot.clone(), trust.clone(), Duration::from_millis(25))
            .expect("watch");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let listener = TlsListener::mesh(tcp, slot.clone(), trust).expect("tls");
    let addr = listener.local_addr().expect("addr").to_string();
    let (_health, service) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(listener.incoming()),
    );
    let check = |connector: MeshConnector| {
        let channel = connector.channel(&addr).expect("channel");
        async move {
            tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .map(|_| ())
        }
    };
    let as_meshctl =
        |expect: &'static str| mesh.mesh.connector("meshctl", expect).expect("connector");
    check(as_meshctl("inventory"))
        .await
        .expect("serves inventory");

    // Renewed files are served to new connections, with no call to the slot.
    replace(&files.cert, &read("stranger.pem"));
    replace(&files.key, &read("stranger.key"));
    eventually("the renewed certificate is served", || {
        let probe = check(as_meshctl("stranger"));
        async move { probe.await.is_ok() }
    })
    .await;

    // A broken key file is refused; the certificate in service stays.
    let refusals = status.refusals();
    replace(&files.key, b"not a key");
    refused_since(&status, refusals, "the broken key is refused").await;
    check(as_meshctl("stranger")).await.expect("still serving");
    assert!(status.last_refusal().is_some());

    // A certificate that is not the key's is refused too; once the pair matches it is served.
    let refusals = status.refusals();
    replace(&files.cert, &read("inventory.pem"));
    replace(&files.key, &read("stranger.key"));
    refused_since(&status, refusals, "the mismatched pair is refused").await;
    check(as_meshctl("stranger")).await.expect("still serving");
    replace(&files.key, &read("inventory.key"));
    eventually("the matching pair is served", || {
        let probe = check(as_meshctl("inventory"));
        async move { probe.await.is_ok() }
    })
    .await;

    // A client certified by a second CA is refused until the bundle file names that CA too.
    let second = CertAuthority::generate(TRUST_DOMAIN).expect("second CA");
    let issued = second.issue("meshctl").expect("cert");
    let client_dir = tempfile::tempdir().expect("dir");
    CertAuthority::write_issued(client_dir.path(), "meshctl", &issued).expect("write");
    let both = format!(
        "{}{}",
        String::from_utf8(read("ca.pem")).expect("pem"),
        second.cert_pem()
    );
    std::fs::write(client_dir.path().join("ca.pem"), &both).expect("write");
    let client_files = TlsFiles::in_dir(client_dir.path(), "meshctl");
    let second_ca_client = || {
        MeshConnector::new(
            Reloadable::load(client_files.clone()).expect("client cert"),
            client_files.trust_bundle().expect("bundle"),
            SpiffeId::workload(TRUST_DOMAIN, "inventory").expect("id"),
        )
        .expect("connector")
    };
    let refused = check(second_ca_client()).await.expect_err("unknown CA");
    assert_handshake_refused(&refused);
    replace(&files.ca, both.as_bytes());
    eventually("the second CA is trusted", || {
        let probe = check(second_ca_client());
        async move { probe.await.is_ok() }
    })
    .await;
    check(as_meshctl("inventory"))
        .await
        .expect("the first CA still is");

    // An empty bundle file is refused: the mesh never ends up trusting nothing.
    let refusals = status.refusals();
    replace(&files.ca, b"");
    refused_since(&status, refusals, "the empty bundle is refused").await;
    check(second_ca_client())
        .await
        .expect("the bundle in service stays");
    mesh.stop().await;
}

/// `openssl s_client` (a TLS stack we did not write) to `addr`, offering only `version`
/// (`-tls1_2`, `-tls1_3`), with the meshctl certificate when `with_cert`: whether the handshake
/// completed, and what it printed.
async fn openssl_handshake(
    mesh: &TestMesh,
    addr: std::net::SocketAddr,
    version: &str,
    with_cert: bool,
) -> (bool, String) {
    let files = mesh.mesh.tls_files("meshctl");
    // `timeout`: a hung handshake ends the test instead of hanging it.
    let mut command = std::process::Command::new("timeout");
    command
        .args(["10", "openssl", "s_client", "-brief", version, "-connect"])
        .arg(addr.to_string())
        .args(["-servername", "localhost", "-CAfile"])
        .arg(&files.ca);
    if with_cert {
        command
            .arg("-cert")
            .arg(&files.cert)
            .arg("-key")
            .arg(&files.key);
    }
    let output = tokio::task::spawn_blocking(move || {
        command
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl runs")
    })
    .await
    .expect("task");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (text.contains("CONNECTION ESTABLISHED"), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_2_client_hello_is_refused_on_the_mesh_and_public_listeners() {
    let mesh = TestMesh::start().await.expect("mesh");
    for (addr, with_cert) in [
        (mesh.mesh.inventory_addr, true),
        (mesh.mesh.auth_addr, true),
        (mesh.mesh.auth_public_addr, false),
    ] {
        let (established, text) = openssl_handshake(&mesh, addr, "-tls1_3", with_cert).await;
        assert!(established, "TLS 1.3 to {addr}: {text}");
        let (established, text) = openssl_handshake(&mesh, addr, "-tls1_2", with_cert).await;
        assert!(!established, "TLS 1.2 to {addr} was accepted: {text}");
        assert!(text.contains("protocol version"), "{addr}: {text}");
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_held_per_source_are_capped_and_a_closed_one_frees_its_place() {
    let mesh = TestMesh::start().await.expect("mesh");
    let (addr, mut incoming) = inventory_listener(
        &mesh,
        AcceptOptions {
            max_connections_per_source: 3,
            ..AcceptOptions::default()
        },
    )
    .await;
    // The server side holds each connection until its client closes it.
    tokio::spawn(async move {
        use tonic::codegen::tokio_stream::StreamExt as _;
        while let Some(Ok(mut stream)) = incoming.next().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    let client = mesh.mesh.tls_files("meshctl");
    let config = || {
        mesh_tls::client::mesh_client_config(
            Reloadable::load(client.clone()).expect("cert"),
            client.trust_bundle().expect("roots"),
            SpiffeId::workload(TRUST_DOMAIN, "inventory").expect("id"),
        )
        .expect("config")
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            mesh_tls::client::connect(addr, config())
                .await
                .expect("within the cap"),
        );
    }
    // The fourth from the same address is closed before its handshake.
    assert!(
        mesh_tls::client::connect(addr, config()).await.is_err(),
        "a fourth connection from one source"
    );
    // One closes: its place is free again.
    let mut first = held.remove(0);
    first.shutdown().await.expect("close");
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        match mesh_tls::client::connect(addr, config()).await {
            Ok(stream) => {
                held.push(stream);
                break;
            }
            Err(error) => assert!(
                std::time::Instant::now() < deadline,
                "the closed connection's place was not freed: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mesh.stop().await;
}
