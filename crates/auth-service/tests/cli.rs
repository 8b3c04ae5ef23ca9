//! The auth-service binary as operators run it: it refuses bad configuration with exit code 64
//! naming the flag, and its memory stays bounded under a flood of guesses.

use std::process::{Command, Output};

fn auth_service(env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_auth-service"));
    for key in [
        "MESH_LISTEN",
        "MESH_PUBLIC_LISTEN",
        "MESH_TLS_CERT",
        "MESH_TLS_KEY",
        "MESH_TLS_CA",
        "MESH_TLS_WATCH",
        "MESH_KEK_FILE",
        "MESH_KEK",
        "MESH_CA_CERT",
        "MESH_CA_KEY",
        "MESH_CERT_TTL",
        "MESH_JOIN_TOKENS",
        "MESH_REJOIN_TOKEN_TTL",
        "MESH_ISSUER",
        "MESH_AUTH_CONFIG",
        "MESH_DB",
        "MESH_SHUTDOWN_GRACE",
        "MESH_MAX_IN_FLIGHT",
        "OTEL_METRICS_EXPORTER",
    ] {
        command.env_remove(key);
    }
    command
        .envs(env.iter().copied())
        .output()
        .expect("run auth-service")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs the service with `env` and checks it exits 64 with `flag` in its message.
fn assert_exit_64_naming(env: &[(&str, &str)], flag: &str) {
    let output = auth_service(env);
    assert_eq!(
        output.status.code(),
        Some(64),
        "{flag}: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains(flag),
        "expected {flag} in: {}",
        stderr(&output)
    );
}

#[test]
fn missing_required_settings_exit_64() {
    let output = auth_service(&[]);
    assert_eq!(output.status.code(), Some(64));
    for flag in ["--auth-config", "--db", "--kek-file"] {
        assert!(
            stderr(&output).contains(flag),
            "{flag}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn limits_out_of_their_range_exit_64_naming_the_flag() {
    for (env, flag) in [
        (("MESH_MAX_IN_FLIGHT", "0"), "--max-in-flight"),
        (("MESH_MAX_IN_FLIGHT", "many"), "--max-in-flight"),
        (("MESH_MAX_IN_FLIGHT", "65537"), "--max-in-flight"),
        (("MESH_SHUTDOWN_GRACE", "61s"), "--shutdown-grace"),
    ] {
        assert_exit_64_naming(&[env], flag);
    }
}

#[test]
fn an_unknown_metrics_exporter_exits_64_naming_the_flag() {
    assert_exit_64_naming(
        &[("OTEL_METRICS_EXPORTER", "prometheus")],
        "--metrics-exporter",
    );
}

#[test]
fn a_database_url_of_another_kind_exits_64_naming_db() {
    for db in [
        "mysql://db/auth",
        "postgres://db:5432/",
        "postgres:///auth",
        " ",
    ] {
        assert_exit_64_naming(&[("MESH_DB", db)], "--db");
    }
}

#[test]
fn bad_keys_at_rest_and_ca_flags_exit_64_naming_the_flag() {
    let dir = tempfile::tempdir().expect("dir");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    std::fs::write(dir.path().join("short.kek"), "abcd\n").expect("write");
    std::fs::write(
        dir.path().join("good.kek"),
        format!("{}\n", "ab".repeat(32)),
    )
    .expect("write");
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../config/auth.example.toml")
        .to_string_lossy()
        .into_owned();
    let base = [
        ("MESH_TLS_CA", path("ca.pem")),
        ("MESH_DB", path("auth.db")),
        ("MESH_AUTH_CONFIG", config),
        ("MESH_PUBLIC_LISTEN", "127.0.0.1:0".into()),
        ("MESH_LISTEN", "127.0.0.1:0".into()),
    ];
    let cases: [(&[(&str, String)], &str); 5] = [
        (&[("MESH_KEK_FILE", path("short.kek"))], "--kek-file"),
        (&[("MESH_KEK", "not hex".into())], "--kek"),
        (
            &[
                ("MESH_KEK_FILE", path("good.kek")),
                ("MESH_CERT_TTL", "10s".into()),
            ],
            "--cert-ttl",
        ),
        (
            &[
                ("MESH_KEK_FILE", path("good.kek")),
                ("MESH_CA_CERT", path("ca.pem")),
            ],
            "--ca-key",
        ),
        (
            &[
                ("MESH_KEK_FILE", path("good.kek")),
                ("MESH_CA_CERT", path("missing-ca.pem")),
                ("MESH_CA_KEY", path("missing-ca.key")),
            ],
            "--ca-cert",
        ),
    ];
    for (extra, flag) in cases {
        let env: Vec<(&str, &str)> = base
            .iter()
            .chain(extra.iter())
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        assert_exit_64_naming(&env, flag);
    }
}

#[test]
fn bad_config_files_and_values_exit_64_naming_the_flag() {
    let dir = tempfile::tempdir().expect("dir");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    std::fs::write(dir.path().join("bad.toml"), "clients = 3\n").expect("write");
    std::fs::write(
        dir.path().join("scope.toml"),
        "[[clients]]\nclient_id = \"x\"\naudiences = [\"inventory\"]\nscopes = [\"orders:write\"]\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("auth.kek"),
        format!("{}\n", "ab".repeat(32)),
    )
    .expect("write");
    let base = [
        ("MESH_TLS_CERT", path("missing.pem")),
        ("MESH_TLS_KEY", path("missing.key")),
        ("MESH_TLS_CA", path("ca.pem")),
        ("MESH_DB", path("auth.db")),
        ("MESH_KEK_FILE", path("auth.kek")),
    ];
    let cases = [
        (path("nope.toml"), None, "--auth-config"),
        (path("bad.toml"), None, "--auth-config"),
        (path("scope.toml"), None, "orders:write"),
        (
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../config/auth.example.toml")
                .to_string_lossy()
                .into_owned(),
            Some("http://plain.example"),
            "--issuer",
        ),
        (
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../config/auth.example.toml")
                .to_string_lossy()
                .into_owned(),
            None,
            "--tls-cert",
        ),
        (path("bad.toml"), Some("not a url"), "--auth-config"),
    ];
    for (config, issuer, flag) in cases {
        let mut env: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.push(("MESH_AUTH_CONFIG", &config));
        env.push(("MESH_PUBLIC_LISTEN", "127.0.0.1:0"));
        env.push(("MESH_LISTEN", "127.0.0.1:0"));
        if let Some(issuer) = issuer {
            env.push(("MESH_ISSUER", issuer));
        }
        assert_exit_64_naming(&env, flag);
    }
}

/// Peak resident set of a process, bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM");
    kib * 1024
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_parallel_wrong_secrets_leave_the_processes_peak_memory_bounded() {
    let dir = tempfile::tempdir().expect("dir");
    let certs = dir.path().join("certs");
    let names: Vec<String> = mesh_tls::certs::DEFAULT_WORKLOADS
        .iter()
        .map(|n| (*n).to_owned())
        .collect();
    mesh_tls::certs::CertAuthority::generate("mesh.local")
        .expect("ca")
        .write_dir(&certs, &names, false)
        .expect("certs");
    let kek = dir.path().join("auth.kek");
    auth_interceptor::audit::write_new_key(&kek).expect("kek");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let issuer = format!("https://localhost:{port}");
    let config =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/auth.example.toml");
    let child = Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .env_clear()
        .env("MESH_TLS_CERT", certs.join("auth.pem"))
        .env("MESH_TLS_KEY", certs.join("auth.key"))
        .env("MESH_TLS_CA", certs.join("ca.pem"))
        .env("MESH_ISSUER", &issuer)
        .env("MESH_DB", dir.path().join("auth.db"))
        .env("MESH_AUTH_CONFIG", &config)
        .env("MESH_KEK_FILE", &kek)
        .env("MESH_LISTEN", "127.0.0.1:0")
        .env("MESH_PUBLIC_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start auth-service");
    let auth = Killed(child);
    let pid = auth.0.id();

    let roots = mesh_tls::material::load_trust_bundle(&certs.join("ca.pem")).expect("bundle");
    // h2 offered, so the 64 requests share one connection once the first has answered.
    let tls = mesh_tls::client::https_grpc_client_config(roots).expect("tls");
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .build()
        .expect("client");
    let discovery = format!("{issuer}/.well-known/openid-configuration");
    let mut up = false;
    for _ in 0..100 {
        if let Ok(answer) = http.get(&discovery).send().await {
            assert_eq!(answer.version(), reqwest::Version::HTTP_2);
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(up, "auth-service did not answer on {issuer}");
    let guess = |secret: &'static str| {
        let http = http.clone();
        let url = format!("{issuer}/oauth2/token");
        async move {
            http.post(url)
                .basic_auth("meshctl", Some(secret))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("audience", "inventory"),
                ])
                .send()
                .await
                .expect("send")
                .status()
                .as_u16()
        }
    };
    // One right secret first: the peak then already holds one hash and the service's warm state.
    assert_eq!(guess("meshctl-demo-secret").await, 200);
    let before = peak_rss(pid);
    let answers = futures_util::future::join_all((0..64).map(|_| guess("not-the-secret"))).await;
    let after = peak_rss(pid);
    let hashed = answers.iter().filter(|s| **s == 401).count();
    assert!(hashed <= 10, "{hashed} wrong secrets hashed: {answers:?}");
    assert!(
        answers.iter().all(|s| *s == 401 || *s == 429),
        "{answers:?}"
    );
    let grown = after.saturating_sub(before);
    eprintln!(
        "64 parallel wrong secrets: {hashed} hashed, peak RSS +{} KiB",
        grown >> 10
    );
    assert!(
        grown < 100 << 20,
        "peak RSS grew by {} MiB under 64 parallel wrong secrets",
        grown >> 20
    );
}
