//! The user grants: authorization code with PKCE (S256 only), rotating refresh tokens,
//! revocation and introspection — and every way to misuse them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mesh_dev::oauth::{self as login, CLIENT_ID, Pkce, REDIRECT_URI};
use mesh_proto::auth::v1::ExchangeTokenRequest;
use mesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use mesh_test_support::TestMesh;
use serde_json::Value;

/// GET /oauth2/authorize with `params`; returns the status and the Location header.
pub(crate) async fn authorize(mesh: &TestMesh, params: &[(&str, &str)]) -> (u16, String) {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let response = mesh
        .https()
        .expect("https")
        .get(format!("{}/oauth2/authorize?{query}", mesh.mesh.issuer))
        .send()
        .await
        .expect("send");
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (response.status().as_u16(), location)
}

/// Logs in through the form and returns the code and the PKCE pair, without exchanging it.
pub(crate) async fn code_for(mesh: &TestMesh, user: &str) -> (String, Pkce) {
    let pkce = Pkce::new();
    let http = mesh.https().expect("https");
    let url = login::authorize_url(&mesh.mesh.issuer, &pkce, "s1", "orders").expect("url");
    let page = login::open_login_page(&http, &url)
        .await
        .expect("login page");
    let response = login::submit_login(&http, &url, &page, user, &format!("{user}-demo-password"))
        .await
        .expect("send");
    assert_eq!(response.status().as_u16(), 302);
    let location = response.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(location.starts_with(REDIRECT_URI), "{location}");
    (
        login::code_from_redirect(&location, "s1").expect("code"),
        pkce,
    )
}

/// POSTs a form to the token endpoint; returns status and JSON body.
pub(crate) async fn token(mesh: &TestMesh, form: &[(&str, &str)]) -> (u16, Value) {
    let response = mesh
        .https()
        .expect("https")
        .post(format!("{}/oauth2/token", mesh.mesh.issuer))
        .form(form)
        .send()
        .await
        .expect("send");
    assert_eq!(response.headers()["cache-control"], "no-store");
    (
        response.status().as_u16(),
        response.json().await.expect("json"),
    )
}

async fn redeem(mesh: &TestMesh, code: &str, verifier: &str, redirect: &str) -> (u16, Value) {
    token(
        mesh,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect),
            ("client_id", CLIENT_ID),
            ("code_verifier", verifier),
        ],
    )
    .await
}

async fn use_refresh(mesh: &TestMesh, refresh: &str) -> (u16, Value) {
    token(
        mesh,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", CLIENT_ID),
        ],
    )
    .await
}

/// Introspects `token` as the confidential `stock-admin` client.
pub(crate) async fn introspect(mesh: &TestMesh, token: &str) -> Value {
    let basic = STANDARD.encode(format!(
        "stock-admin:{}",
        mesh_dev::devmesh::STOCK_ADMIN_DEMO_SECRET
    ));
    mesh.https()
        .expect("https")
        .post(format!("{}/oauth2/introspect", mesh.mesh.issuer))
        .header("authorization", format!("Basic {basic}"))
        .form(&[("token", token)])
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json")
}

fn redirect_error(location: &str) -> String {
    let query = location.split_once('?').map(|(_, q)| q).unwrap_or_default();
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "error")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_refuses_a_missing_or_plain_challenge_and_unregistered_redirects() {
    let mesh = TestMesh::start().await.expect("mesh");
    let pkce = Pkce::new();
    let base = [
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT_URI),
        ("state", "xyz"),
    ];

    let (status, location) = authorize(&mesh, &base).await;
    assert_eq!(
        (status, redirect_error(&location).as_str()),
        (302, "invalid_request")
    );

    let mut plain = base.to_vec();
    plain.extend([
        ("code_challenge", pkce.verifier.as_str()),
        ("code_challenge_method", "plain"),
    ]);
    let (status, location) = authorize(&mesh, &plain).await;
    assert_eq!(
        (status, redirect_error(&location).as_str()),
        (302, "invalid_request")
    );

    let mut no_method = base.to_vec();
    no_method.push(("code_challenge", pkce.challenge.as_str()));
    let (status, location) = authorize(&mesh, &no_method).await;
    assert_eq!(
        (status, redirect_error(&location).as_str()),
        (302, "invalid_request")
    );

    // A redirect URI that is not registered exactly is never redirected to.
    for evil in [
        "http://127.0.0.1:8976/callback/../evil",
        "https://evil.example/callback",
        "http://127.0.0.1:8976/callback?x=1",
    ] {
        let mut request = base.to_vec();
        request[2] = ("redirect_uri", evil);
        request.extend([
            ("code_challenge", pkce.challenge.as_str()),
            ("code_challenge_method", "S256"),
        ]);
        let (status, location) = authorize(&mesh, &request).await;
        assert_eq!(status, 400, "{evil}");
        assert!(location.is_empty(), "redirected to {location}");
    }

    // The well-formed request shows the login page.
    let mut good = base.to_vec();
    good.extend([
        ("code_challenge", pkce.challenge.as_str()),
        ("code_challenge_method", "S256"),
    ]);
    assert_eq!(authorize(&mesh, &good).await.0, 200);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_verifier_or_redirect_uri_is_invalid_grant() {
    let mesh = TestMesh::start().await.expect("mesh");
    let (code, _) = code_for(&mesh, "alice").await;
    let (status, body) = redeem(&mesh, &code, &Pkce::new().verifier, REDIRECT_URI).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    let (code, pkce) = code_for(&mesh, "alice").await;
    let (status, body) = redeem(&mesh, &code, &pkce.verifier, "http://127.0.0.1:8976/other").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_code_is_invalid_grant_and_revokes_what_it_issued() {
    let mesh = TestMesh::start().await.expect("mesh");
    let (code, pkce) = code_for(&mesh, "alice").await;
    let (status, first) = redeem(&mesh, &code, &pkce.verifier, REDIRECT_URI).await;
    assert_eq!(status, 200, "{first}");
    let access = first["access_token"].as_str().expect("access");
    let refresh = first["refresh_token"].as_str().expect("refresh");
    assert_eq!(introspect(&mesh, access).await["active"], true);

    let (status, again) = redeem(&mesh, &code, &pkce.verifier, REDIRECT_URI).await;
    assert_eq!(
        (status, again["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // Everything the code bought is revoked, and orders can no longer act with it.
    assert_eq!(introspect(&mesh, access).await["active"], false);
    let exchange = AuthServiceClient::new(mesh.auth_channel("orders").expect("channel"))
        .exchange_token(ExchangeTokenRequest {
            subject_token: access.to_owned(),
            audience: "inventory".into(),
            scopes: vec![],
        })
        .await
        .expect_err("a revoked token is not exchanged");
    assert_eq!(exchange.code(), tonic::Code::Unauthenticated);
    assert_eq!(introspect(&mesh, refresh).await["active"], false);
    let (status, body) = use_refresh(&mesh, refresh).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_code_is_invalid_grant() {
    let mesh = TestMesh::start().await.expect("mesh");
    let (code, pkce) = code_for(&mesh, "alice").await;
    // Codes live 60 s; move this one's expiry into the past instead of waiting.
    let db = mesh.auth_db().await.expect("db");
    sqlx::query("UPDATE auth_codes SET expires_at = 1")
        .execute(&db)
        .await
        .expect("expire");
    let (status, body) = redeem(&mesh, &code, &pkce.verifier, REDIRECT_URI).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_rotate_and_reuse_revokes_the_family() {
    let mesh = TestMesh::start().await.expect("mesh");
    let login = mesh.login("alice", "orders").await.expect("login");
    let first = login.refresh_token.expect("refresh token");

    let (status, rotated) = use_refresh(&mesh, &first).await;
    assert_eq!(status, 200, "{rotated}");
    let second = rotated["refresh_token"]
        .as_str()
        .expect("next refresh")
        .to_owned();
    assert_ne!(first, second);

    // The old one again: theft is assumed, the whole family goes.
    let (status, body) = use_refresh(&mesh, &first).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, body) = use_refresh(&mesh, &second).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    mesh.stop().await;
}

/// POSTs a refresh with extra form fields (audience, scope).
async fn refresh_asking(mesh: &TestMesh, refresh: &str, extra: &[(&str, &str)]) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh),
        ("client_id", CLIENT_ID),
    ];
    form.extend_from_slice(extra);
    token(mesh, &form).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_may_narrow_the_login_but_never_widen_it_or_change_its_audience() {
    let mesh = TestMesh::start().await.expect("mesh");
    // The administrator signs in for orders only; the client could also give them `auth:keys`.
    let login = mesh.login("admin", "orders").await.expect("login");
    let refresh = login.refresh_token.expect("refresh token");

    let (status, body) = refresh_asking(&mesh, &refresh, &[("audience", "auth")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target")),
        "{body}"
    );
    for wider in ["auth:keys", "orders:read inventory:admin"] {
        let (status, body) = refresh_asking(&mesh, &refresh, &[("scope", wider)]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_scope")),
            "{wider}: {body}"
        );
    }

    // The refused requests did not use the token up: it still narrows, then renews the rest.
    let (status, narrow) = refresh_asking(&mesh, &refresh, &[("scope", "orders:read")]).await;
    assert_eq!(status, 200, "{narrow}");
    assert_eq!(narrow["scope"], "orders:read");
    let next = narrow["refresh_token"].as_str().expect("next refresh");
    let (status, renewed) = use_refresh(&mesh, next).await;
    assert_eq!(status, 200, "{renewed}");
    let access = renewed["access_token"].as_str().expect("access");
    let active = introspect(&mesh, access).await;
    assert_eq!(active["aud"], "orders", "{active}");
    let scopes: Vec<&str> = active["scope"]
        .as_str()
        .expect("scope")
        .split(' ')
        .collect();
    assert!(!scopes.contains(&"auth:keys"), "{active}");
    assert!(scopes.iter().all(|s| s.starts_with("orders:")), "{active}");

    // A login for two audiences (RFC 8707-style) refreshes into either, and no third.
    let both = mesh
        .login("alice", "orders inventory")
        .await
        .expect("login");
    let access = introspect(&mesh, &both.access_token).await;
    assert_eq!(access["aud"], "orders", "{access}");
    let refresh = both.refresh_token.expect("refresh token");
    let (status, body) = refresh_asking(&mesh, &refresh, &[("audience", "inventory")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "inventory:read", "{body}");
    let next = body["refresh_token"].as_str().expect("next");
    let (status, body) = refresh_asking(&mesh, next, &[("audience", "auth")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target")),
        "{body}"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_never_get_a_refresh_token_and_wrong_passwords_are_refused() {
    let mesh = TestMesh::start().await.expect("mesh");
    let basic = STANDARD.encode("meshctl:meshctl-demo-secret");
    let response: Value = mesh
        .https()
        .expect("https")
        .post(format!("{}/oauth2/token", mesh.mesh.issuer))
        .header("authorization", format!("Basic {basic}"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("audience", "inventory"),
        ])
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(response.get("access_token").is_some());
    assert!(response.get("refresh_token").is_none());

    let wrong = login::login_with_password(
        &mesh.https().expect("https"),
        &mesh.mesh.issuer,
        "alice",
        "wrong",
        "orders",
    )
    .await;
    assert!(
        matches!(wrong, Err(login::LoginError::BadCredentials)),
        "{wrong:?}"
    );
    let nobody = login::login_with_password(
        &mesh.https().expect("https"),
        &mesh.mesh.issuer,
        "nobody",
        "wrong",
        "orders",
    )
    .await;
    assert!(
        matches!(nobody, Err(login::LoginError::BadCredentials)),
        "{nobody:?}"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_the_refresh_family_and_introspection_needs_a_confidential_client() {
    let mesh = TestMesh::start().await.expect("mesh");
    let http = mesh.https().expect("https");
    let login = mesh.login("bob", "orders").await.expect("login");
    let refresh = login.refresh_token.expect("refresh");
    let access = login.access_token;

    let claims = introspect(&mesh, &access).await;
    assert_eq!(claims["active"], true);
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["aud"], "orders");

    login::revoke(&http, &mesh.mesh.issuer, &refresh)
        .await
        .expect("revoke");
    let (status, body) = use_refresh(&mesh, &refresh).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(introspect(&mesh, &access).await["active"], false);
    assert_eq!(introspect(&mesh, "not-a-token").await["active"], false);

    // A public client may not introspect.
    let public = http
        .post(format!("{}/oauth2/introspect", mesh.mesh.issuer))
        .form(&[("token", access.as_str()), ("client_id", CLIENT_ID)])
        .send()
        .await
        .expect("send");
    assert_eq!(public.status().as_u16(), 401);
    mesh.stop().await;
}

/// A user whose token may only read orders cannot be made a writer through the exchange: orders
/// holds `inventory:reserve`, but its registration's `acts_for` gives it that scope only for users
/// whose token may write orders. The token is signed by the issuer's own key, as a login of a
/// read-only user would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_users_token_is_not_exchanged_for_a_reservation() {
    let mesh = TestMesh::start().await.expect("mesh");
    let key = mesh.issuer_key().await.expect("issuer key");
    let token_with = |scope: &str| {
        let claims = mesh_test_support::forge::claims(&mesh.mesh.issuer, "orders", scope);
        key.sign(&key.header(), &claims)
    };
    let mut as_orders = AuthServiceClient::new(mesh.auth_channel("orders").expect("channel"));
    let exchange = |subject: String, scopes: &[&str]| ExchangeTokenRequest {
        subject_token: subject,
        audience: "inventory".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    };
    let read_only = token_with("orders:read");
    let refused = as_orders
        .exchange_token(exchange(read_only.clone(), &["inventory:reserve"]))
        .await
        .expect_err("a reader is not made a writer");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // Asking for nothing in particular gives only what the user's token lets orders do.
    let narrowed = as_orders
        .exchange_token(exchange(read_only, &[]))
        .await
        .expect("reads may be delegated")
        .into_inner();
    assert_eq!(narrowed.scopes, vec!["inventory:read".to_owned()]);
    // A user who may write orders lets orders reserve for them.
    let writer = as_orders
        .exchange_token(exchange(
            token_with("orders:read orders:write"),
            &["inventory:reserve"],
        ))
        .await
        .expect("a writer's order may reserve")
        .into_inner();
    assert_eq!(writer.scopes, vec!["inventory:reserve".to_owned()]);
    mesh.stop().await;
}
