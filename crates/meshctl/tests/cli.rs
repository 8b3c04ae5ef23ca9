//! meshctl as a user runs it: the real binary, real files, exit codes.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn meshctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .env_remove("MESH_CERTS_DIR")
        .env_remove("RUST_LOG")
        .output()
        .expect("run meshctl")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn certs_init_writes_a_ca_and_workload_certificates_with_spiffe_ids() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("certs");
    let output = meshctl(&[
        "certs",
        "init",
        "--out",
        out.to_str().expect("utf8"),
        "--name",
        "billing",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));

    for name in ["auth", "orders", "inventory", "meshctl", "billing"] {
        let cert = mesh_tls::material::load_certs(&out.join(format!("{name}.pem"))).expect("cert");
        let id = mesh_tls::identity::spiffe_id_of(&cert[0]).expect("spiffe id");
        assert_eq!(id.as_str(), format!("spiffe://mesh.local/sa/{name}"));
        let mode = std::fs::metadata(out.join(format!("{name}.key")))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}.key must be 0600");
        mesh_tls::material::load_key(&out.join(format!("{name}.key"))).expect("key parses");
    }
    assert!(out.join("ca.pem").exists());
}

#[test]
fn certs_init_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().to_str().expect("utf8");
    assert!(meshctl(&["certs", "init", "--out", out]).status.success());
    let before = std::fs::read(dir.path().join("ca.pem")).expect("ca");

    let again = meshctl(&["certs", "init", "--out", out]);
    assert_eq!(again.status.code(), Some(64));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(
        std::fs::read(dir.path().join("ca.pem")).expect("ca"),
        before,
        "nothing lost"
    );

    let forced = meshctl(&["certs", "init", "--out", out, "--force"]);
    assert!(forced.status.success());
    assert_ne!(
        std::fs::read(dir.path().join("ca.pem")).expect("ca"),
        before
    );
}

#[test]
fn certs_init_if_missing_keeps_a_complete_set_and_refuses_a_partial_one() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().to_str().expect("utf8");
    let first = meshctl(&["certs", "init", "--out", out, "--if-missing"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let before = std::fs::read(dir.path().join("ca.pem")).expect("ca");

    let second = meshctl(&["certs", "init", "--out", out, "--if-missing"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(String::from_utf8_lossy(&second.stdout).contains("kept"));
    assert_eq!(
        std::fs::read(dir.path().join("ca.pem")).expect("ca"),
        before,
        "a second start reuses the set"
    );

    std::fs::remove_file(dir.path().join("orders.key")).expect("remove");
    let partial = meshctl(&["certs", "init", "--out", out, "--if-missing"]);
    assert_eq!(partial.status.code(), Some(64));
    assert!(
        stderr(&partial).contains("orders.key"),
        "{}",
        stderr(&partial)
    );
    assert_eq!(
        std::fs::read(dir.path().join("ca.pem")).expect("ca"),
        before,
        "nothing replaced"
    );
}

#[test]
fn bad_flags_exit_64_naming_the_flag() {
    let missing = meshctl(&["certs", "init"]);
    assert_eq!(missing.status.code(), Some(64));
    assert!(stderr(&missing).contains("--out"), "{}", stderr(&missing));

    let dir = tempfile::tempdir().expect("dir");
    let bad_name = meshctl(&[
        "certs",
        "init",
        "--out",
        dir.path().to_str().expect("utf8"),
        "--name",
        "Bad Name",
    ]);
    assert_eq!(bad_name.status.code(), Some(64));
    assert!(
        stderr(&bad_name).contains("--name"),
        "{}",
        stderr(&bad_name)
    );

    for (args, flag) in [
        (&["stat"][..], "--metrics"),
        (
            &["stat", "--metrics", "127.0.0.1:9", "--interval", "0s"][..],
            "--interval",
        ),
    ] {
        let refused = meshctl(args);
        assert_eq!(refused.status.code(), Some(64), "{args:?}");
        assert!(stderr(&refused).contains(flag), "{}", stderr(&refused));
    }

    let unknown = meshctl(&["frobnicate"]);
    assert_eq!(unknown.status.code(), Some(64));

    let help = meshctl(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
}

#[test]
fn the_demo_runs_every_step_as_expected_and_exits_0() {
    let output = meshctl(&["demo"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", stderr(&output));
    assert!(stdout.contains("steps behaved as expected"), "{stdout}");
    assert!(!stdout.contains("FAIL"));
    // It ends with `meshctl stat` over its own services' metrics.
    assert!(
        stdout.contains("OrdersService/PlaceOrder") && stdout.contains("not_owner:1"),
        "{stdout}"
    );
}

/// Runs meshctl against a running dev mesh, as a user would in a shell.
fn meshctl_in(
    mesh: &mesh_dev::devmesh::DevMesh,
    session: &std::path::Path,
    args: &[&str],
) -> Output {
    let certs = mesh.dir().join("certs");
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .env("MESH_ISSUER", &mesh.issuer)
        .env("MESH_TLS_CA", certs.join("ca.pem"))
        .env("MESH_TLS_CERT", certs.join("meshctl.pem"))
        .env("MESH_TLS_KEY", certs.join("meshctl.key"))
        .env("MESH_ORDERS_URL", mesh.orders_addr.to_string())
        .env("MESH_INVENTORY_URL", mesh.inventory_addr.to_string())
        .env("MESH_AUTH_URL", mesh.auth_addr.to_string())
        .env("MESH_SESSION_FILE", session)
        .env_remove("MESH_TOKEN")
        .env_remove("RUST_LOG")
        .output()
        .expect("run meshctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_logs_in_orders_cancels_and_logs_out_with_the_cli() {
    let dir = tempfile::tempdir().expect("dir");
    let mesh = mesh_dev::devmesh::DevMesh::start(dir.path())
        .await
        .expect("mesh");
    let session = dir.path().join("alice/session.json");
    let run = |args: &'static [&'static str]| {
        let output = meshctl_in(&mesh, &session, args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (output, stdout)
    };

    let (output, _) = run(&[
        "login",
        "--username",
        "alice",
        "--password",
        "wrong-password",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("invalid username or password"));
    assert!(!session.exists(), "a failed login stores nothing");

    let (output, _) = run(&[
        "login",
        "--username",
        "alice",
        "--password",
        "alice-demo-password",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let mode = std::fs::metadata(&session)
        .expect("session")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the session file holds tokens: owner only"
    );

    let (output, placed) = run(&[
        "orders",
        "place",
        "--line",
        "SKU-002:2",
        "--line",
        "SKU-003:1",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(placed.contains("CONFIRMED"), "{placed}");
    let order_id = placed
        .split_whitespace()
        .next()
        .expect("order id")
        .to_owned();

    let (output, listed) = run(&["orders", "list"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(listed.contains(&order_id));

    // The inventory token comes from the same login, through a refresh for audience inventory.
    let (output, items) = run(&["inventory", "list"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        items
            .lines()
            .any(|l| l.starts_with("SKU-002") && l.contains(" 23 ")),
        "{items}"
    );

    let cancel = meshctl_in(&mesh, &session, &["orders", "cancel", &order_id]);
    assert!(
        String::from_utf8_lossy(&cancel.stdout).contains("CANCELLED"),
        "{}",
        stderr(&cancel)
    );

    let (output, _) = run(&["orders", "place", "--line", "SKU-002:0"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("lines[0].quantity"),
        "{}",
        stderr(&output)
    );
    let (output, _) = run(&["orders", "place", "--line", "SKU-002"]);
    assert_eq!(
        output.status.code(),
        Some(64),
        "a malformed --line is a usage error"
    );

    let (output, _) = run(&["logout"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!session.exists());
    let (output, _) = run(&["orders", "list"]);
    assert_eq!(
        output.status.code(),
        Some(64),
        "no session: run meshctl login first"
    );
    assert!(stderr(&output).contains("meshctl login"));
    mesh.stop().await;
}

#[test]
fn audit_verify_says_ok_or_names_the_first_broken_record() {
    use auth_interceptor::audit::{AuditLog, Decision};
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("audit.key");
    auth_interceptor::audit::write_new_key(&key).expect("key");
    let log_path = dir.path().join("inventory.jsonl");
    let log = AuditLog::open("inventory", &log_path, &key).expect("open");
    for reason in ["policy", "missing_scope", "policy"] {
        log.append(&Decision {
            decision: "allow",
            reason,
            method: "/x/Y",
            ..Decision::default()
        })
        .expect("append");
    }
    let file = log_path.to_str().expect("utf8");
    let key_arg = key.to_str().expect("utf8");

    let ok = meshctl(&["audit", "verify", file, "--key-file", key_arg]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("audit verify: OK (3 records)"));

    let text = std::fs::read_to_string(&log_path).expect("read");
    std::fs::write(&log_path, text.replacen("missing_scope", "policy", 1)).expect("tamper");
    let broken = meshctl(&["audit", "verify", file, "--key-file", key_arg]);
    assert_eq!(broken.status.code(), Some(1));
    let out = String::from_utf8_lossy(&broken.stdout);
    assert!(
        out.contains("FAILED") && out.contains("line 2") && out.contains("altered"),
        "{out}"
    );

    let no_key = meshctl(&["audit", "verify", file, "--key-file", "/nonexistent/key"]);
    assert_eq!(no_key.status.code(), Some(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_ip_reaches_an_issuer_whose_host_name_only_resolves_elsewhere() {
    // As from the host against the compose stack: the issuer is `https://auth:<port>` (a name
    // only the compose network resolves) and auth is reachable on loopback.
    let dir = tempfile::tempdir().expect("dir");
    let mesh = mesh_dev::devmesh::DevMesh::start(dir.path())
        .await
        .expect("mesh");
    let port = mesh
        .issuer
        .rsplit(':')
        .next()
        .expect("issuer port")
        .to_owned();
    let issuer = format!("https://auth:{port}");
    let session = dir.path().join("session.json");
    let login = |ip: &str| {
        let certs = mesh.dir().join("certs");
        Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(["login", "--username", "alice", "--password"])
            .arg("alice-demo-password")
            .env("MESH_ISSUER", &issuer)
            .env("MESH_ISSUER_IP", ip)
            .env("MESH_TLS_CA", certs.join("ca.pem"))
            .env("MESH_SESSION_FILE", &session)
            .env_remove("RUST_LOG")
            .output()
            .expect("run meshctl")
    };

    let elsewhere = login("127.0.0.2");
    assert_eq!(elsewhere.status.code(), Some(1), "{}", stderr(&elsewhere));
    assert!(!session.exists());

    let pinned = login("127.0.0.1");
    assert!(pinned.status.success(), "{}", stderr(&pinned));
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&session).expect("session")).expect("json");
    assert_eq!(
        stored["issuer"],
        issuer.as_str(),
        "the issuer's name is kept"
    );

    let bad = login("auth");
    assert_eq!(bad.status.code(), Some(64));
    assert!(stderr(&bad).contains("--issuer-ip"), "{}", stderr(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_places_reads_cancels_and_is_refused_where_it_must_be() {
    let dir = tempfile::tempdir().expect("dir");
    let mesh = mesh_dev::devmesh::DevMesh::start(dir.path())
        .await
        .expect("mesh");
    let certs = mesh.dir().join("certs");
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshctl"));
    command
        .args([
            "loadgen",
            "--rate",
            "25",
            "--duration",
            "4",
            "--max-open",
            "2",
        ])
        .env(
            "MESH_LOADGEN_USERS",
            "alice:alice-demo-password,bob:bob-demo-password",
        )
        .env("MESH_ISSUER", &mesh.issuer)
        .env("MESH_TLS_CA", certs.join("ca.pem"))
        .env("MESH_TLS_CERT", certs.join("meshctl.pem"))
        .env("MESH_TLS_KEY", certs.join("meshctl.key"))
        .env("MESH_ORDERS_URL", mesh.orders_addr.to_string())
        .env("MESH_INVENTORY_URL", mesh.inventory_addr.to_string())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("RUST_LOG");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", stderr(&output));
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("loadgen summary:"))
        .expect("a summary line");
    assert!(summary.contains(" 0 unexpected"), "{stdout}");
    assert!(summary.ends_with("; 0 pending"), "{summary}");
    for seen in ["CONFIRMED", "CANCELLED"] {
        assert!(stdout.contains(seen), "{seen} never happened:\n{stdout}");
    }
    assert!(
        !summary.contains(" 0 refused as expected"),
        "refused attempts are part of the load: {summary}"
    );

    // A user is NAME:PASSWORD (the password may hold ':'); anything else is exit 64 naming
    // --user, and the message never repeats the password.
    for user in ["alice", ":pw-secret", "alice:"] {
        let bad = meshctl(&[
            "loadgen",
            "--user",
            "bob:pw:b",
            "--user",
            user,
            "--issuer",
            "https://x",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--tls-ca",
            "a",
        ]);
        assert_eq!(bad.status.code(), Some(64), "{user}: {}", stderr(&bad));
        assert!(stderr(&bad).contains("--user"), "{}", stderr(&bad));
        assert!(!stderr(&bad).contains("pw"), "{}", stderr(&bad));
    }
}

/// Serves `body` as `/metrics` to every request, like a service's admin listener.
async fn metrics_server(body: String) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_adds_up_replicas_interpolates_quantiles_and_counts_denials_by_reason() {
    // Two replicas of orders, as their exporters write them: 8 and 4 GetOrder calls of which
    // 2 and 1 were denied for a missing token; half the durations under 10 ms, all under 100 ms.
    let replica = |ok: u32, denied: u32| {
        let (service, method) = ("mesh.orders.v1.OrdersService", "GetOrder");
        let labels = format!("rpc_service=\"{service}\",rpc_method=\"{method}\"");
        let mut text = format!(
            "target_info{{service_name=\"orders\"}} 1\n\
             rpc_server_call_duration_seconds_count{{{labels},rpc_grpc_status_code=\"0\"}} {ok}\n\
             rpc_server_call_duration_seconds_count{{{labels},rpc_grpc_status_code=\"16\"}} {denied}\n\
             mesh_authz_decisions_total{{{labels},decision=\"deny\",reason=\"missing_token\"}} {denied}\n\
             mesh_authz_decisions_total{{{labels},decision=\"allow\",reason=\"policy\"}} {ok}\n\
             mesh_authz_decisions_total{{{labels},decision=\"would_deny\",reason=\"missing_scope\"}} {denied}\n"
        );
        for (le, count) in [("0.001", 0), ("0.01", 25), ("0.1", 50), ("+Inf", 50)] {
            text.push_str(&format!(
                "rpc_server_call_duration_seconds_bucket{{{labels},le=\"{le}\"}} {count}\n"
            ));
        }
        text
    };
    let first = metrics_server(replica(6, 2)).await;
    let second = metrics_server(replica(3, 1)).await;
    let targets = format!("{first},{second}");
    let output =
        tokio::task::spawn_blocking(move || meshctl(&["stat", "--metrics", &targets, "--totals"]))
            .await
            .expect("join");
    assert!(output.status.success(), "{}", stderr(&output));
    let table = String::from_utf8_lossy(&output.stdout);
    let row = table
        .lines()
        .find(|line| line.contains("OrdersService/GetOrder"))
        .unwrap_or_else(|| panic!("no GetOrder row:\n{table}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    // SERVICE METHOD CALLS SUCCESS P50 ms P99 ms DENIED
    assert_eq!(
        columns,
        [
            "orders",
            "OrdersService/GetOrder",
            "12",
            "75.00%",
            "10",
            "ms",
            "98",
            "ms",
            "missing_token:3",
            "would_deny(missing_scope):3"
        ],
        "{table}"
    );

    let gone = meshctl(&["stat", "--metrics", "127.0.0.1:9", "--totals"]);
    assert_eq!(gone.status.code(), Some(1), "{}", stderr(&gone));
    assert!(stderr(&gone).contains("127.0.0.1:9"), "{}", stderr(&gone));
}

#[test]
fn audit_keygen_writes_a_hex_key_once_and_a_verify_with_it_works() {
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("audit.key");
    let key_arg = key.to_str().expect("utf8");
    let written = meshctl(&["audit", "keygen", "--out", key_arg]);
    assert!(written.status.success(), "{}", stderr(&written));
    let text = std::fs::read_to_string(&key).expect("key");
    assert_eq!(text.trim_end().len(), 64, "32 bytes as hex: {text:?}");

    // Never replaced: a new key would orphan the chain the old one signed.
    let again = meshctl(&["audit", "keygen", "--out", key_arg]);
    assert_eq!(again.status.code(), Some(64));
    assert!(stderr(&again).contains("--out"), "{}", stderr(&again));
    assert_eq!(std::fs::read_to_string(&key).expect("key"), text);

    // The key opens a log whose chain verifies with it.
    use auth_interceptor::audit::{AuditLog, Decision};
    let log_path = dir.path().join("audit.jsonl");
    let log = AuditLog::open("orders", &log_path, &key).expect("open");
    log.append(&Decision {
        decision: "deny",
        reason: "policy",
        ..Decision::default()
    })
    .expect("append");
    let ok = meshctl(&[
        "audit",
        "verify",
        log_path.to_str().expect("utf8"),
        "--key-file",
        key_arg,
    ]);
    assert!(ok.status.success(), "{}", stderr(&ok));

    // A key too short to be safe is refused with how to make a good one.
    std::fs::write(&key, "abcd\n").expect("short");
    let short = meshctl(&[
        "audit",
        "verify",
        log_path.to_str().expect("utf8"),
        "--key-file",
        key_arg,
    ]);
    assert_eq!(short.status.code(), Some(64));
    assert!(
        stderr(&short).contains("meshctl audit keygen"),
        "{}",
        stderr(&short)
    );
}

/// Logs `user` in with the demo password, for audience `auth`, into `session`.
fn login_for_auth(mesh: &mesh_dev::devmesh::DevMesh, user: &str, session: &std::path::Path) {
    let password = format!("{user}-demo-password");
    let args = [
        "login",
        "--username",
        user,
        "--password",
        &password,
        "--audience",
        "auth",
    ];
    let output = meshctl_in(mesh, session, &args);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_is_for_an_admin_session_and_prints_the_new_key_ids() {
    let dir = tempfile::tempdir().expect("dir");
    let mesh = mesh_dev::devmesh::DevMesh::start(dir.path())
        .await
        .expect("mesh");
    let before = mesh.key_rotator.current();
    let login = |user: &str, session: &std::path::Path| login_for_auth(&mesh, user, session);
    let alice = dir.path().join("alice.json");
    login("alice", &alice);
    let refused = meshctl_in(&mesh, &alice, &["keys", "rotate"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("auth:keys"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        mesh.key_rotator.current(),
        before,
        "a customer rotates nothing"
    );

    let admin = dir.path().join("admin.json");
    login("admin", &admin);
    let rotated = meshctl_in(&mesh, &admin, &["keys", "rotate"]);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    let stdout = String::from_utf8_lossy(&rotated.stdout);
    assert!(
        stdout.contains(&format!("signing   {}", before.next_kid)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("retired   {}", before.signing_kid)),
        "{stdout}"
    );
    mesh.stop().await;
}

#[test]
fn certs_init_with_join_tokens_writes_no_key_for_online_workloads() {
    let dir = tempfile::tempdir().expect("dir");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let (orders, inventory) = (
        format!("orders={}", path("orders.join")),
        format!("inventory={}", path("inventory.join")),
    );
    let args = [
        "certs",
        "init",
        "--out",
        &path("certs"),
        "--ca-key",
        &path("ca.key"),
        "--join",
        &orders,
        "--join",
        &inventory,
        "--join-list",
        &path("join-tokens"),
        "--if-missing",
    ];
    let output = meshctl(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let mut certs: Vec<String> = std::fs::read_dir(dir.path().join("certs"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    certs.sort();
    assert_eq!(
        certs,
        ["ca.pem", "meshctl.key", "meshctl.pem"],
        "no key for auth, orders, inventory"
    );
    let list = std::fs::read_to_string(dir.path().join("join-tokens")).expect("list");
    for (name, file) in [("orders", "orders.join"), ("inventory", "inventory.join")] {
        let token = std::fs::read_to_string(dir.path().join(file)).expect("token");
        let mode = std::fs::metadata(dir.path().join(file))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
        let line = format!(
            "{} spiffe://mesh.local/sa/{name} ",
            auth_service::join::token_hash(&token)
        );
        assert!(list.contains(&line), "{list}");
    }
    let key_mode = std::fs::metadata(dir.path().join("ca.key"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    // A second run keeps the set; --join without --join-list is a usage error.
    let again = meshctl(&args);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("kept"));
    let bad = meshctl(&["certs", "init", "--out", &path("other"), "--join", &orders]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(stderr(&bad).contains("--join-list"), "{}", stderr(&bad));
    let bad = meshctl(&[
        "certs",
        "init",
        "--out",
        &path("other"),
        "--join",
        "Bad Name=x",
    ]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(stderr(&bad).contains("--join"), "{}", stderr(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_and_ca_rotation_are_for_an_admin_session() {
    let dir = tempfile::tempdir().expect("dir");
    let mesh = mesh_dev::devmesh::DevMesh::start(dir.path())
        .await
        .expect("mesh");
    let login = |user: &str, session: &std::path::Path| login_for_auth(&mesh, user, session);
    let alice = dir.path().join("alice.json");
    login("alice", &alice);
    let refused = meshctl_in(
        &mesh,
        &alice,
        &["identity", "join-token", "--workload", "reports"],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("auth:keys"),
        "{}",
        stderr(&refused)
    );

    let admin = dir.path().join("admin.json");
    login("admin", &admin);
    let file = dir.path().join("reports.join");
    let created = meshctl_in(
        &mesh,
        &admin,
        &[
            "identity",
            "join-token",
            "--workload",
            "reports",
            "--ttl",
            "10m",
            "--out",
            &file.to_string_lossy(),
        ],
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let token = std::fs::read_to_string(&file).expect("token");
    assert!(token.starts_with("ztm-join-"), "{token}");
    assert_eq!(
        std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    let too_long = meshctl_in(
        &mesh,
        &admin,
        &[
            "identity",
            "join-token",
            "--workload",
            "reports",
            "--ttl",
            "2d",
        ],
    );
    assert_eq!(too_long.status.code(), Some(64));
    assert!(stderr(&too_long).contains("--ttl"), "{}", stderr(&too_long));

    let bundle = dir.path().join("bundle.pem");
    let added = meshctl_in(
        &mesh,
        &admin,
        &[
            "ca",
            "rotate",
            "add",
            "--bundle-out",
            &bundle.to_string_lossy(),
        ],
    );
    assert!(added.status.success(), "{}", stderr(&added));
    let stdout = String::from_utf8_lossy(&added.stdout);
    assert!(
        stdout.contains("current") && stdout.contains("next"),
        "{stdout}"
    );
    let pem = std::fs::read_to_string(&bundle).expect("bundle");
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2, "{pem}");
    let shown = meshctl_in(
        &mesh,
        &admin,
        &[
            "certs",
            "show",
            "--addr",
            &mesh.orders_addr.to_string(),
            "--workload",
            "orders",
        ],
    );
    assert!(shown.status.success(), "{}", stderr(&shown));
    let line = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        line.contains("spiffe://mesh.local/sa/orders serial "),
        "{line}"
    );
    let left: u64 = line
        .split_whitespace()
        .next_back()
        .and_then(|s| s.trim_end_matches('s').parse().ok())
        .expect("seconds");
    assert!(
        left > 3000 && left <= 3600,
        "a one-hour certificate from the CA: {line}"
    );
    let early = meshctl_in(&mesh, &admin, &["ca", "rotate", "activate"]);
    assert_eq!(early.status.code(), Some(1));
    assert!(stderr(&early).contains("too early"), "{}", stderr(&early));
    mesh.stop().await;
}

#[test]
fn hash_secret_generate_prints_a_random_secret_and_a_hash_the_auth_config_accepts() {
    let first = meshctl(&["hash-secret", "--generate"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let text = String::from_utf8(first.stdout).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    let &[secret, hash] = lines.as_slice() else {
        panic!("two lines expected: {text:?}")
    };
    assert_eq!(secret.len(), 43, "256 bits, base64url");
    let config = format!(
        "[[clients]]\nclient_id = \"job\"\nsecret_hash = \"{hash}\"\ngrant_types = [\"client_credentials\"]\naudiences = [\"inventory\"]\n"
    );
    let config = auth_service::settings::AuthConfig::parse(&config).expect("the config takes it");
    let registry = auth_service::clients::Registry::new(&config.clients);
    assert!(matches!(
        registry.authenticate_generated("job", secret),
        Some(Some(_))
    ));
    assert!(matches!(
        registry.authenticate_generated("job", "guess"),
        Some(None)
    ));
    let second = meshctl(&["hash-secret", "--generate"]);
    let second = String::from_utf8(second.stdout).expect("utf8");
    assert_ne!(
        second.lines().next(),
        Some(secret),
        "a new secret each time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_opens_the_browser_on_a_loopback_port_of_its_own_and_saves_the_session() {
    let dir = tempfile::tempdir().expect("dir");
    let mesh = mesh_dev::devmesh::DevMesh::start(dir.path())
        .await
        .expect("mesh");
    // The "browser": a script that writes down the URL it was asked to open.
    let opened = dir.path().join("opened-url");
    let script = dir.path().join("browser.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nprintf %s \"$1\" > {}\n", opened.display()),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let session = dir.path().join("alice/session.json");
    let certs = mesh.dir().join("certs");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("login")
        .env("BROWSER", &script)
        .env("MESH_ISSUER", &mesh.issuer)
        .env("MESH_TLS_CA", certs.join("ca.pem"))
        .env("MESH_SESSION_FILE", &session)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("meshctl login");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let url = loop {
        if let Ok(url) = std::fs::read_to_string(&opened)
            && !url.is_empty()
        {
            break url;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no browser was opened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // RFC 8252: the redirect is a loopback address on the port meshctl got from the system.
    let redirect = url::Url::parse(&url)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .map(|(_, v)| v.into_owned())
        .expect("a redirect_uri");
    let callback = url::Url::parse(&redirect).expect("redirect URL");
    assert_eq!(callback.host_str(), Some("127.0.0.1"));
    assert_ne!(
        callback.port(),
        Some(8976),
        "a port of its own, not the registered one"
    );

    // The person signs in on the page; the browser follows the redirect back to meshctl.
    let http = mesh.https_client().expect("https");
    let page = mesh_dev::oauth::open_login_page(&http, &url)
        .await
        .expect("page");
    let answer = mesh_dev::oauth::submit_login(&http, &url, &page, "alice", "alice-demo-password")
        .await
        .expect("login");
    assert_eq!(answer.status(), 302);
    let location =
        url::Url::parse(answer.headers()["location"].to_str().expect("ascii")).expect("location");
    assert_eq!(location.port(), callback.port());
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", location.port().expect("port")))
        .await
        .expect("meshctl listens");
    let target = format!(
        "{}?{}",
        location.path(),
        location.query().unwrap_or_default()
    );
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        format!("GET {target} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").as_bytes(),
    )
    .await
    .expect("send");
    let mut reply = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut reply)
        .await
        .expect("reply");
    assert!(reply.contains("meshctl is signed in"), "{reply}");

    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("meshctl exits");
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains(&url), "the URL is printed too: {printed}");
    assert!(session.exists(), "the session is saved");
    let listed = meshctl_in(&mesh, &session, &["orders", "list"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
}

#[test]
fn policy_check_accepts_the_shipped_files_and_names_what_is_wrong_in_others() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/policy");
    for service in ["auth", "orders", "inventory"] {
        let file = shipped.join(format!("{service}.toml"));
        let output = meshctl(&[
            "policy",
            "check",
            file.to_str().expect("utf8"),
            "--service",
            service,
        ]);
        assert!(output.status.success(), "{service}: {}", stderr(&output));
    }
    let dir = tempfile::tempdir().expect("dir");
    let text = std::fs::read_to_string(shipped.join("inventory.toml")).expect("read");
    // A file missing a method: CI fails on it, naming the method.
    let missing = dir.path().join("missing.toml");
    let without_restock = text.replace(
        "[[rule]]\nmethod = \"/mesh.inventory.v1.InventoryService/Restock\"\nauth = \"token\"\nscopes = [\"inventory:admin\"]\n",
        "",
    );
    assert_ne!(without_restock, text);
    std::fs::write(&missing, without_restock).expect("write");
    // A caller from another trust domain, on its line.
    let foreign = dir.path().join("foreign.toml");
    std::fs::write(
        &foreign,
        text.replacen(
            "callers = [\"sa/orders\"]",
            "callers = [\"spiffe://evil.example/sa/orders\"]",
            1,
        ),
    )
    .expect("write");
    let line = text
        .lines()
        .position(|l| l == "callers = [\"sa/orders\"]")
        .expect("a callers line")
        + 1;
    for (file, says) in [
        (
            &missing,
            "no row for /mesh.inventory.v1.InventoryService/Restock".to_owned(),
        ),
        (
            &foreign,
            format!(
                "foreign.toml:{line}: \"spiffe://evil.example/sa/orders\" is outside the trust domain"
            ),
        ),
    ] {
        let output = meshctl(&[
            "policy",
            "check",
            file.to_str().expect("utf8"),
            "--service",
            "inventory",
        ]);
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(
            stderr(&output).contains(&says),
            "{says}: {}",
            stderr(&output)
        );
    }

    // A whole-file trial: checked with --trial, refused without it, and refused with --trial
    // when it does not say mode = "audit" or misses a method.
    let trial = dir.path().join("trial.toml");
    std::fs::write(&trial, format!("mode = \"audit\"\n{text}")).expect("write");
    let missing_trial = dir.path().join("missing-trial.toml");
    std::fs::write(
        &missing_trial,
        format!(
            "mode = \"audit\"\n{}",
            std::fs::read_to_string(&missing).expect("read")
        ),
    )
    .expect("write");
    let check = |file: &std::path::Path, trial: bool| {
        let mut args = vec![
            "policy",
            "check",
            file.to_str().expect("utf8"),
            "--service",
            "inventory",
        ];
        if trial {
            args.push("--trial");
        }
        meshctl(&args)
    };
    let accepted = check(&trial, true);
    assert!(accepted.status.success(), "{}", stderr(&accepted));
    assert!(String::from_utf8_lossy(&accepted.stdout).contains("a valid trial file for inventory"));
    for (file, as_trial, says) in [
        (
            &trial,
            false,
            "trial.toml:1: mode = \"audit\" makes the whole file a trial",
        ),
        (
            &missing,
            true,
            "a trial file says mode = \"audit\" at its top",
        ),
        (
            &missing_trial,
            true,
            "no row for /mesh.inventory.v1.InventoryService/Restock",
        ),
    ] {
        let output = check(file, as_trial);
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(
            stderr(&output).contains(says),
            "{says}: {}",
            stderr(&output)
        );
    }
}

/// A JWT-shaped string with `claims` (explain reads claims; it verifies nothing).
fn unsigned_token(claims: &serde_json::Value) -> String {
    use base64::Engine;
    let encode = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.c2ln",
        encode(&serde_json::json!({"alg": "EdDSA", "typ": "at+jwt"})),
        encode(claims)
    )
}

#[test]
fn policy_explain_says_which_rule_decides_and_why_and_diff_who_loses_what() {
    let explain = |service: &str, method: &str, caller: &str, claims: serde_json::Value| {
        let token = unsigned_token(&claims);
        meshctl(&[
            "policy",
            "explain",
            "--service",
            service,
            "--method",
            method,
            "--caller",
            caller,
            "--token",
            &token,
        ])
    };
    let alice = serde_json::json!({"sub": "alice", "scope": "orders:read orders:write"});
    let allowed = explain("orders", "ListOrders", "sa/meshctl", alice.clone());
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    let said = String::from_utf8_lossy(&allowed.stdout).into_owned();
    assert!(
        said.contains("rule:    auth = token; scopes: orders:read"),
        "{said}"
    );
    assert!(
        said.contains("allow:   spiffe://mesh.local/sa/meshctl with alice's token"),
        "{said}"
    );
    let reader = serde_json::json!({"sub": "carol", "scope": "inventory:read"});
    let refused = explain(
        "orders",
        "/mesh.orders.v1.OrdersService/ListOrders",
        "sa/meshctl",
        reader,
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("missing scope orders:read"),
        "{}",
        stderr(&refused)
    );
    // Reserve is orders' alone, acting for a user: meshctl's certificate is not enough.
    let acting = serde_json::json!({
        "sub": "alice", "scope": "inventory:reserve", "act": {"sub": "orders"},
        "cnf": {"x5t#S256": "Y2VydGlmaWNhdGUtdGh1bWJwcmludC0zMi1ieXRlcyE"},
    });
    let refused = explain("inventory", "Reserve", "sa/meshctl", acting.clone());
    assert!(
        stderr(&refused).contains("caller_not_allowed"),
        "{}",
        stderr(&refused)
    );
    let allowed = explain("inventory", "Reserve", "sa/orders", acting);
    assert!(allowed.status.success());
    // A bound token: the certificate it must come with is named.
    assert!(
        String::from_utf8_lossy(&allowed.stdout).contains("bound:   only over a connection presenting the certificate with x5t#S256 Y2VydGlmaWNhdGUtdGh1bWJwcmludC0zMi1ieXRlcyE"),
        "{}",
        String::from_utf8_lossy(&allowed.stdout)
    );

    let dir = tempfile::tempdir().expect("dir");
    let shipped =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/policy/orders.toml");
    // A whole-file trial beside the shipped policy: listing tried with orders:admin.
    let trial = dir.path().join("orders-trial.toml");
    std::fs::write(
        &trial,
        format!(
            "mode = \"audit\"\n{}",
            std::fs::read_to_string(&shipped).expect("read").replacen(
                "method = \"/mesh.orders.v1.OrdersService/ListOrders\"\nauth = \"token\"\nscopes = [\"orders:read\"]",
                "method = \"/mesh.orders.v1.OrdersService/ListOrders\"\nauth = \"token\"\nscopes = [\"orders:admin\"]",
                1,
            )
        ),
    )
    .expect("write");
    let tried = meshctl(&[
        "policy",
        "explain",
        "--service",
        "orders",
        "--method",
        "ListOrders",
        "--caller",
        "sa/meshctl",
        "--token",
        &unsigned_token(&serde_json::json!({"sub": "alice", "scope": "orders:read"})),
        "--trial",
        trial.to_str().expect("utf8"),
    ]);
    assert!(
        tried.status.success(),
        "the trial refuses nothing: {}",
        stderr(&tried)
    );
    let said = String::from_utf8_lossy(&tried.stdout).into_owned();
    assert!(
        said.contains("the trial would refuse it: recorded as would_deny missing_scope"),
        "{said}"
    );
    let text = std::fs::read_to_string(&shipped).expect("read");
    let tightened = dir.path().join("orders.toml");
    std::fs::write(
        &tightened,
        text.replacen(
            "method = \"/mesh.orders.v1.OrdersService/ListOrders\"\nauth = \"token\"\nscopes = [\"orders:read\"]",
            "method = \"/mesh.orders.v1.OrdersService/ListOrders\"\nauth = \"token\"\nscopes = [\"orders:admin\"]",
            1,
        ),
    )
    .expect("write");
    let diff = meshctl(&[
        "policy",
        "diff",
        shipped.to_str().expect("utf8"),
        tightened.to_str().expect("utf8"),
        "--service",
        "orders",
    ]);
    assert!(diff.status.success(), "{}", stderr(&diff));
    let said = String::from_utf8_lossy(&diff.stdout).into_owned();
    assert!(
        said.contains("/mesh.orders.v1.OrdersService/ListOrders\n"),
        "{said}"
    );
    assert!(
        said.contains("lose it: tokens without orders:admin"),
        "{said}"
    );
    assert!(
        !said.contains("GetOrder"),
        "an unchanged method is not listed: {said}"
    );
}
