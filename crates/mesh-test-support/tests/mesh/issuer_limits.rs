//! The issuer's doors for strangers (the token endpoint, the login form, the CA's join-token
//! door) stay bounded under guesses: reserved before the work, per account and per address,
//! in parallel as well as one after another.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::future::join_all;
use mesh_dev::devmesh::MESHCTL_DEMO_SECRET;
use mesh_dev::oauth::{self as login, CLIENT_ID, REDIRECT_URI};
use mesh_proto::identity::v1::CertifyRequest;
use mesh_test_support::TestMesh;

const GRANT: &str = "grant_type=client_credentials&audience=inventory";
/// The example config's allowances (config/auth.example.toml).
const PER_ACCOUNT: usize = 10;
const PER_ADDRESS: usize = 100;

/// An HTTPS client with one HTTP/2 connection open: until a first answer tells reqwest the
/// server speaks h2, parallel requests would each open a connection of their own.
async fn one_connection(mesh: &TestMesh) -> reqwest::Client {
    let roots = mesh
        .mesh
        .tls_files("meshctl")
        .trust_bundle()
        .expect("bundle");
    // The library's HTTPS config offers HTTP/1.1 only; offer h2 as browsers and curl do.
    let tls = mesh_tls::client::https_grpc_client_config(roots).expect("tls");
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .https_only(true)
        .build()
        .expect("client");
    let discovery = format!("{}/.well-known/openid-configuration", mesh.mesh.issuer);
    let answer = http.get(discovery).send().await.expect("discovery");
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    http
}

/// An HTTPS client whose connections leave from `source` (any 127.0.0.0/8 address works on
/// loopback), for "the same account from many addresses".
fn client_from(mesh: &TestMesh, source: IpAddr) -> reqwest::Client {
    let roots = mesh
        .mesh
        .tls_files("meshctl")
        .trust_bundle()
        .expect("bundle");
    auth_interceptor::JwksSource::https_client_builder(roots)
        .expect("builder")
        .local_address(source)
        .resolve("localhost", mesh.mesh.auth_public_addr)
        .build()
        .expect("client")
}

async fn post_secret(http: &reqwest::Client, mesh: &TestMesh, secret: &str) -> u16 {
    http.post(format!("{}/oauth2/token", mesh.mesh.issuer))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "authorization",
            format!("Basic {}", STANDARD.encode(format!("meshctl:{secret}"))),
        )
        .body(GRANT)
        .send()
        .await
        .expect("send")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_parallel_wrong_secrets_on_one_connection_buy_at_most_the_accounts_allowance_of_hashes()
 {
    let mesh = TestMesh::start().await.expect("mesh");
    let http = one_connection(&mesh).await;
    let answers = join_all((0..64).map(|_| post_secret(&http, &mesh, "guess"))).await;
    // Every hashed wrong secret is a 401; every refused one a 429 without a hash.
    let hashed = answers.iter().filter(|s| **s == 401).count();
    let refused = answers.iter().filter(|s| **s == 429).count();
    assert_eq!(hashed + refused, 64, "{answers:?}");
    assert!(
        (1..=PER_ACCOUNT).contains(&hashed),
        "{hashed} hashed: {answers:?}"
    );
    // The account is now blocked, even for its right secret; the limit is the account's, not the
    // connection's.
    assert_eq!(post_secret(&http, &mesh, MESHCTL_DEMO_SECRET).await, 429);
    mesh.stop().await;
}

async fn login_from(mesh: &TestMesh, source: IpAddr, user: &str, password: &str) -> LoginOutcome {
    let http = client_from(mesh, source);
    match login::login_with_password(&http, &mesh.mesh.issuer, user, password, "orders").await {
        Ok(_) => LoginOutcome::SignedIn,
        Err(login::LoginError::BadCredentials) => LoginOutcome::Wrong,
        Err(login::LoginError::Refused(answer)) if answer == "HTTP 429" => LoginOutcome::Limited,
        Err(other) => panic!("unexpected login answer: {other}"),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum LoginOutcome {
    SignedIn,
    Wrong,
    Limited,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_guessed_from_five_addresses_is_limited_and_neighbours_behind_one_address_are_not()
 {
    let mesh = TestMesh::start().await.expect("mesh");
    // 20 wrong passwords for alice, 4 from each of 5 addresses: the account's allowance (10)
    // holds across addresses.
    let mut outcomes = Vec::new();
    for round in 0..4 {
        for host in 2..=6u8 {
            let source = IpAddr::from([127, 0, 0, host]);
            outcomes.push((
                round,
                host,
                login_from(&mesh, source, "alice", "guess").await,
            ));
        }
    }
    let wrong = outcomes
        .iter()
        .filter(|(_, _, o)| *o == LoginOutcome::Wrong)
        .count();
    assert_eq!(wrong, PER_ACCOUNT, "{outcomes:?}");
    assert!(
        outcomes[PER_ACCOUNT..]
            .iter()
            .all(|(_, _, o)| *o == LoginOutcome::Limited),
        "{outcomes:?}"
    );
    // Even the right password, from a fresh address, waits out the window.
    let fresh = IpAddr::from([127, 0, 0, 7]);
    assert_eq!(
        login_from(&mesh, fresh, "alice", "alice-demo-password").await,
        LoginOutcome::Limited
    );
    // Behind one address (a NAT), alice's lock-out does not reach bob: the address has used 4 of
    // its 100.
    assert_eq!(
        login_from(
            &mesh,
            IpAddr::from([127, 0, 0, 2]),
            "bob",
            "bob-demo-password"
        )
        .await,
        LoginOutcome::SignedIn
    );
    // Ten wrong passwords for carol from one more address lock carol, not the address.
    let nat = IpAddr::from([127, 0, 0, 8]);
    for _ in 0..PER_ACCOUNT {
        assert_eq!(
            login_from(&mesh, nat, "carol", "guess").await,
            LoginOutcome::Wrong
        );
    }
    assert_eq!(
        login_from(&mesh, nat, "bob", "bob-demo-password").await,
        LoginOutcome::SignedIn
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_codes_from_one_address_are_limited_in_parallel_and_add_no_record_past_the_allowance()
 {
    let mesh = TestMesh::start().await.expect("mesh");
    let http = one_connection(&mesh).await;
    let verifier = "v".repeat(43);
    let form = [
        ("grant_type", "authorization_code"),
        ("code", "made-up"),
        ("redirect_uri", REDIRECT_URI),
        ("client_id", CLIENT_ID),
        ("code_verifier", verifier.as_str()),
    ];
    let send = || async {
        http.post(format!("{}/oauth2/token", mesh.mesh.issuer))
            .form(&form)
            .send()
            .await
            .expect("send")
            .status()
            .as_u16()
    };
    let answers = join_all((0..PER_ADDRESS + 50).map(|_| send())).await;
    let refused_grant = answers.iter().filter(|s| **s == 400).count();
    let limited = answers.iter().filter(|s| **s == 429).count();
    assert_eq!(refused_grant, PER_ADDRESS, "{answers:?}");
    assert_eq!(limited, 50, "{answers:?}");
    assert_eq!(send().await, 429);
    assert_eq!(
        audit_records(&mesh, "code_unknown"),
        PER_ADDRESS,
        "one record per checked guess, none after"
    );
    mesh.stop().await;
}

/// How many of the issuer's audit records give `reason`.
fn audit_records(mesh: &TestMesh, reason: &str) -> usize {
    std::fs::read_to_string(mesh.mesh.audit.log("auth"))
        .expect("audit log")
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line).expect("record")["reason"] == reason
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_join_tokens_at_the_public_door_are_limited_per_address() {
    let mesh = TestMesh::start().await.expect("mesh");
    let public = crate::identity::public_identity(&mesh);
    let certify = |token: &'static str| {
        let mut client = public.clone();
        async move {
            client
                .certify(CertifyRequest {
                    certificate_request: b"not looked at before the token".to_vec(),
                    join_token: token.to_owned(),
                    ..CertifyRequest::default()
                })
                .await
                .expect_err("a made-up token")
                .code()
        }
    };
    let answers =
        join_all((0..PER_ADDRESS + 20).map(|n| certify(if n % 2 == 0 { "made-up" } else { "" })))
            .await;
    let unauthenticated = answers
        .iter()
        .filter(|c| **c == tonic::Code::Unauthenticated)
        .count();
    let exhausted = answers
        .iter()
        .filter(|c| **c == tonic::Code::ResourceExhausted)
        .count();
    assert_eq!(unauthenticated, PER_ADDRESS, "{answers:?}");
    assert_eq!(exhausted, 20, "{answers:?}");
    mesh.stop().await;
}
