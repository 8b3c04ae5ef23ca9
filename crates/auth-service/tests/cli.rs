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
        "MESH_AUDIT_SEGMENT_MIB",
        "MESH_AUDIT_SEGMENT_AGE",
        "OTEL_METRICS_EXPORTER",
        "MESH_POLICY",
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
        (("MESH_AUDIT_SEGMENT_MIB", "0"), "--audit-segment-mib"),
        (("MESH_AUDIT_SEGMENT_MIB", "65537"), "--audit-segment-mib"),
        (("MESH_AUDIT_SEGMENT_AGE", "30s"), "--audit-segment-age"),
        (("MESH_AUDIT_SEGMENT_AGE", "soon"), "--audit-segment-age"),
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

#[test]
fn a_policy_file_that_is_not_valid_stops_the_start_with_exit_64_naming_the_file_and_line() {
    let dir = tempfile::tempdir().expect("dir");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let shipped = include_str!("../../../config/policy/auth.toml");
    std::fs::write(
        dir.path().join("unknown.toml"),
        "[[rule]]\nmethod = \"/mesh.auth.v1.AuthService/MintAnything\"\nauth = \"token\"\n",
    )
    .expect("write");
    let without_rotation = shipped.replace(
        "method = \"/mesh.auth.v1.AuthService/RotateSigningKey\"",
        "method = \"/mesh.auth.v1.AuthService/IssueServiceToken\"",
    );
    assert_ne!(without_rotation, shipped);
    std::fs::write(dir.path().join("twice.toml"), &without_rotation).expect("write");
    // A whole-file trial given as the enforced policy, and a trial file that does not say so.
    std::fs::write(
        dir.path().join("a-trial.toml"),
        format!("mode = \"audit\"\n{shipped}"),
    )
    .expect("write");
    std::fs::write(dir.path().join("not-a-trial.toml"), shipped).expect("write");
    std::fs::write(
        dir.path().join("trial-twice.toml"),
        format!("mode = \"audit\"\n{without_rotation}"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("auth.kek"),
        format!("{}\n", "ab".repeat(32)),
    )
    .expect("write");
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../config/auth.example.toml")
        .to_string_lossy()
        .into_owned();
    for (variable, flag, file, says) in [
        (
            "MESH_POLICY",
            "--policy",
            path("missing.toml"),
            "missing.toml".to_owned(),
        ),
        (
            "MESH_POLICY",
            "--policy",
            path("unknown.toml"),
            format!(
                "{}:2: \"/mesh.auth.v1.AuthService/MintAnything\" is not a method",
                path("unknown.toml")
            ),
        ),
        (
            "MESH_POLICY",
            "--policy",
            path("twice.toml"),
            "a second enforced row for /mesh.auth.v1.AuthService/IssueServiceToken".to_owned(),
        ),
        (
            "MESH_POLICY",
            "--policy",
            path("a-trial.toml"),
            format!(
                "{}:1: mode = \"audit\" makes the whole file a trial",
                path("a-trial.toml")
            ),
        ),
        (
            "MESH_POLICY_TRIAL",
            "--policy-trial",
            path("not-a-trial.toml"),
            "a trial file says mode = \"audit\" at its top".to_owned(),
        ),
        (
            "MESH_POLICY_TRIAL",
            "--policy-trial",
            path("trial-twice.toml"),
            format!(
                "{}:20: a second row for /mesh.auth.v1.AuthService/IssueServiceToken",
                path("trial-twice.toml")
            ),
        ),
    ] {
        let env = [
            (variable, file.as_str()),
            ("MESH_AUTH_CONFIG", config.as_str()),
            ("MESH_DB", &path("auth.db")),
            ("MESH_KEK_FILE", &path("auth.kek")),
            ("MESH_TLS_CERT", &path("missing.pem")),
            ("MESH_TLS_KEY", &path("missing.key")),
            ("MESH_TLS_CA", &path("ca.pem")),
            ("MESH_PUBLIC_LISTEN", "127.0.0.1:0"),
            ("MESH_LISTEN", "127.0.0.1:0"),
        ];
        let output = auth_service(&env);
        assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
        assert!(
            stderr(&output).contains(&format!("{flag}:")),
            "{}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(&says),
            "{says}: {}",
            stderr(&output)
        );
        assert!(
            !dir.path().join("auth.db").exists(),
            "nothing is opened before the policy is checked"
        );
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

/// The auth binary running on `127.0.0.1:<port>` (a fresh CA and database in `dir`), and an
/// HTTP/2 client for its public listener. `wrap` runs it under another program (`unshare …`),
/// which must end by exec'ing it; `env` adds settings (and `LOG_TO`: where its stderr goes).
struct Running {
    auth: Killed,
    http: reqwest::Client,
    issuer: String,
}

async fn start_auth(
    dir: &std::path::Path,
    wrap: &[&str],
    env: &[(&str, &std::path::Path)],
) -> Running {
    let certs = dir.join("certs");
    let names: Vec<String> = mesh_tls::certs::DEFAULT_WORKLOADS
        .iter()
        .map(|n| (*n).to_owned())
        .collect();
    mesh_tls::certs::CertAuthority::generate("mesh.local")
        .expect("ca")
        .write_dir(&certs, &names, false)
        .expect("certs");
    let kek = dir.join("auth.kek");
    auth_interceptor::audit::write_new_key(&kek).expect("kek");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let issuer = format!("https://localhost:{port}");
    let config =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/auth.example.toml");
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_auth-service"));
    let mut command = match wrap.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(&binary);
            command
        }
        None => Command::new(&binary),
    };
    let child = command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MESH_TLS_CERT", certs.join("auth.pem"))
        .env("MESH_TLS_KEY", certs.join("auth.key"))
        .env("MESH_TLS_CA", certs.join("ca.pem"))
        .env("MESH_ISSUER", &issuer)
        .env("MESH_DB", dir.join("auth.db"))
        .env("MESH_AUTH_CONFIG", &config)
        .env("MESH_KEK_FILE", &kek)
        .env("MESH_LISTEN", "127.0.0.1:0")
        .env("MESH_PUBLIC_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "error")
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .stdout(std::process::Stdio::null())
        .stderr(match env.iter().find(|(k, _)| *k == "LOG_TO") {
            Some((_, path)) => std::fs::File::create(path).expect("log file").into(),
            None => std::process::Stdio::null(),
        })
        .spawn()
        .expect("start auth-service");
    let auth = Killed(child);

    let roots = mesh_tls::material::load_trust_bundle(&certs.join("ca.pem")).expect("bundle");
    // h2 offered, so parallel requests share one connection once the first has answered.
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
    Running { auth, http, issuer }
}

/// A client-credentials request as `meshctl` with `secret`; the answer's status and body.
async fn client_credentials(running: &Running, secret: &str) -> (u16, String) {
    grant(running, "meshctl", secret).await
}

/// A client-credentials request as `client` with `secret`; the answer's status and body.
async fn grant(running: &Running, client: &str, secret: &str) -> (u16, String) {
    let answer = running
        .http
        .post(format!("{}/oauth2/token", running.issuer))
        .basic_auth(client, Some(secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("audience", "inventory"),
        ])
        .send()
        .await
        .expect("send");
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_parallel_wrong_secrets_leave_the_processes_peak_memory_bounded() {
    let dir = tempfile::tempdir().expect("dir");
    let running = start_auth(dir.path(), &[], &[]).await;
    let pid = running.auth.0.id();
    let guess = |secret: &'static str| {
        let running = &running;
        async move { client_credentials(running, secret).await.0 }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_generated_secrets_are_limited_like_argon2_ones_even_sixty_four_at_once() {
    let dir = tempfile::tempdir().expect("dir");
    let running = start_auth(dir.path(), &[], &[]).await;
    // The example config's stock-admin secret, generated by `meshctl hash-secret --generate`.
    let secret = "IRr2hs2icOVrJflHEVzjF0iIVcdpSCNDdaQTT3_X-h0";
    // A generated secret is checked by a keyed hash, with no hash slot: a microsecond a guess.
    // The limiter must still reserve before and count after, or guesses would run at that speed.
    assert_eq!(grant(&running, "stock-admin", secret).await.0, 200);
    let wrong = format!("{}x", &secret[1..]);
    let answers =
        futures_util::future::join_all((0..64).map(|_| grant(&running, "stock-admin", &wrong)))
            .await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        checked <= 10,
        "{checked} wrong secrets checked: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    let (status, body) = grant(&running, "stock-admin", secret).await;
    assert_eq!(status, 429, "the account's allowance is spent: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_grants_with_503_and_they_resume_when_space_returns() {
    let dir = tempfile::tempdir().expect("dir");
    // The audit log alone lives on a 1 MiB tmpfs that only the service's mount namespace sees
    // (`unshare -rm`: no privilege needed where user namespaces are allowed); the test reaches it through /proc/<pid>/root.
    let audit_dir = dir.path().join("audit");
    std::fs::create_dir(&audit_dir).expect("audit dir");
    let key = dir.path().join("audit.key");
    auth_interceptor::audit::write_new_key(&key).expect("key");
    let log = audit_dir.join("auth.jsonl");
    let mount = format!(
        "mount -t tmpfs -o size=1m tmpfs {} && exec \"$0\"",
        audit_dir.display()
    );
    let running = start_auth(
        dir.path(),
        &["unshare", "-rm", "sh", "-c", &mount],
        &[("MESH_AUDIT_LOG", &log), ("MESH_AUDIT_KEY_FILE", &key)],
    )
    .await;
    let seen = |path: &std::path::Path| {
        std::path::PathBuf::from(format!("/proc/{}/root", running.auth.0.id()))
            .join(path.strip_prefix("/").expect("absolute"))
    };
    assert_eq!(
        client_credentials(&running, "meshctl-demo-secret").await.0,
        200
    );

    // Fill the disk.
    let filler = seen(&audit_dir.join("filler"));
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 4096];
        while file.write_all(&block).is_ok() {}
    }
    // The log's last page may still hold a few records; then every grant is refused.
    let mut granted_on_a_full_disk = 0;
    let (status, body) = loop {
        let (status, body) = client_credentials(&running, "meshctl-demo-secret").await;
        if status != 200 || granted_on_a_full_disk == 20 {
            break (status, body);
        }
        granted_on_a_full_disk += 1;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("temporarily_unavailable"), "{body}");
    assert!(body.contains("audit log"), "{body}");
    for _ in 0..3 {
        assert_eq!(
            client_credentials(&running, "meshctl-demo-secret").await.0,
            503
        );
    }

    // Space returns: grants resume, and the chain is whole.
    std::fs::remove_file(&filler).expect("free");
    assert_eq!(
        client_credentials(&running, "meshctl-demo-secret").await.0,
        200
    );
    let verified = auth_interceptor::audit::verify(&seen(&log), &key).expect("the chain verifies");
    assert!(verified.records >= 2, "{verified:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_line_written_inside_a_request_carries_the_callers_trace_id() {
    let dir = tempfile::tempdir().expect("dir");
    let logs = dir.path().join("auth.log");
    let running = start_auth(
        dir.path(),
        &[],
        &[
            ("LOG_TO", &logs),
            ("MESH_LOG_FORMAT", std::path::Path::new("json")),
            ("RUST_LOG", std::path::Path::new("info")),
        ],
    )
    .await;
    // A caller's W3C trace context, and a refusal the issuer logs while handling it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer = running
        .http
        .post(format!("{}/oauth2/token", running.issuer))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .basic_auth("meshctl", Some("not-the-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status().as_u16(), 401);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let line = loop {
        let text = std::fs::read_to_string(&logs).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("\"target\":\"audit\"") && l.contains("\"deny\""))
        {
            break line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit line in: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    let spans = json["spans"].as_array().cloned().unwrap_or_default();
    assert!(
        spans.iter().any(|span| span["trace_id"] == trace_id),
        "the line logged inside the request carries the caller's trace id: {line}"
    );
}
