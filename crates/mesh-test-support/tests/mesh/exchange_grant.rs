//! Token exchange on the token endpoint (RFC 8693): a client outside the mesh (the storefront,
//! which has a secret and no certificate) acts for a signed-in user with the same rules as the
//! mesh's `ExchangeToken` — and every way to misuse it is refused with RFC 8693's error.

use mesh_dev::devmesh::{STOCK_ADMIN_DEMO_SECRET, STOREFRONT_DEMO_SECRET};
use mesh_test_support::TestMesh;
use openidconnect::{OAuth2TokenResponse, TokenResponse};
use serde_json::Value;

use crate::oidc::{payload, relying_party_for, rp_sign_in};
use crate::refusals::records;
use crate::user_grants::introspect;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// `user` signs in to the storefront (a confidential OpenID Connect client); returns the
/// storefront's access token (audience `storefront`) and refresh token.
async fn storefront_login(mesh: &TestMesh, user: &str) -> (String, String) {
    let http = mesh.https().expect("https");
    let client = relying_party_for(
        mesh,
        &http,
        "storefront",
        Some(STOREFRONT_DEMO_SECRET),
        "http://127.0.0.1:8977/callback",
    )
    .await;
    let login = rp_sign_in(
        &client,
        &http,
        user,
        &["storefront:shop"],
        Some("storefront"),
    )
    .await;
    let claims = login
        .tokens
        .id_token()
        .expect("an ID token")
        .claims(&client.id_token_verifier(), &login.nonce)
        .expect("a valid ID token");
    assert_eq!(
        claims.subject().as_str(),
        user,
        "the storefront knows who signed in"
    );
    (
        login.tokens.access_token().secret().clone(),
        login
            .tokens
            .refresh_token()
            .expect("refresh")
            .secret()
            .clone(),
    )
}

/// POSTs a token-exchange form as `client` (HTTP Basic); status and JSON body.
async fn exchange(mesh: &TestMesh, client: (&str, &str), form: &[(&str, &str)]) -> (u16, Value) {
    let answer = mesh
        .https()
        .expect("https")
        .post(format!("{}/oauth2/token", mesh.mesh.issuer))
        .basic_auth(client.0, Some(client.1))
        .form(form)
        .send()
        .await
        .expect("send");
    assert_eq!(answer.headers()["cache-control"], "no-store");
    (answer.status().as_u16(), answer.json().await.expect("json"))
}

fn storefront() -> (&'static str, &'static str) {
    ("storefront", STOREFRONT_DEMO_SECRET)
}

/// The reason of the issuer's last `deny` record.
fn last_refusal(mesh: &TestMesh) -> String {
    records(mesh, "auth")
        .into_iter()
        .rev()
        .find(|r| r.decision == "deny")
        .map(|r| r.reason)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_outside_the_mesh_acts_for_a_signed_in_user_by_token_exchange() {
    let mesh = TestMesh::start().await.expect("mesh");
    let (subject, _) = storefront_login(&mesh, "alice").await;
    let (status, body) = exchange(
        &mesh,
        storefront(),
        &[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", &subject),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", "orders"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(body["token_type"], "Bearer");
    assert!(body.get("refresh_token").is_none());
    let token = body["access_token"].as_str().expect("token");
    let claims = payload(token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "orders");
    assert_eq!(claims["act"]["sub"], "storefront");
    assert_eq!(claims["scope"], "orders:read orders:write");
    assert_eq!(claims["sid"], payload(&subject)["sid"], "the same login");
    assert!(claims["exp"].as_u64() <= payload(&subject)["exp"].as_u64());

    // The issuer's chain records it like the mesh door's, with this door as the method.
    let granted = records(&mesh, "auth")
        .iter()
        .filter(|r| r.reason == "token_exchange" && r.method == "/oauth2/token")
        .count();
    assert_eq!(granted, 1);

    // An active token to the issuer's own introspection.
    let introspected = introspect(&mesh, token).await;
    assert_eq!(introspected["active"], true, "{introspected}");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_refuses_what_the_mesh_door_refuses_with_rfc_8693_errors() {
    let mesh = TestMesh::start().await.expect("mesh");
    let (subject, refresh) = storefront_login(&mesh, "alice").await;
    let grant = |extra: Vec<(&'static str, String)>| {
        let mut form: Vec<(&'static str, String)> = vec![
            ("grant_type", TOKEN_EXCHANGE.into()),
            ("subject_token", subject.clone()),
            ("subject_token_type", ACCESS_TOKEN.into()),
            ("audience", "orders".into()),
        ];
        for (key, value) in extra {
            form.retain(|(k, _)| *k != key);
            if !value.is_empty() {
                form.push((key, value));
            }
        }
        form
    };
    let send = async |client: (&str, &str), form: Vec<(&'static str, String)>| {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        exchange(&mesh, client, &form).await
    };

    // Malformed requests: the subject token type, a second actor, a resource URI.
    for (extra, error) in [
        (
            vec![("subject_token_type", String::new())],
            "invalid_request",
        ),
        (
            vec![(
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:id_token".into(),
            )],
            "invalid_request",
        ),
        (vec![("actor_token", subject.clone())], "invalid_request"),
        (
            vec![(
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:refresh_token".into(),
            )],
            "invalid_request",
        ),
        (
            vec![("resource", "https://orders.mesh.local".into())],
            "invalid_target",
        ),
        (vec![("audience", String::new())], "invalid_request"),
    ] {
        let (status, body) = send(storefront(), grant(extra.clone())).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(error)),
            "{extra:?}: {body}"
        );
    }

    // What the storefront may not get: another audience, a scope it does not hold.
    let (status, body) = send(storefront(), grant(vec![("audience", "inventory".into())])).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );
    assert_eq!(last_refusal(&mesh), "audience_not_allowed");
    let (status, body) = send(storefront(), grant(vec![("scope", "orders:admin".into())])).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );

    // A token not addressed to the storefront (alice's meshctl token for orders).
    let other = mesh.user_token("alice", "orders").await.expect("token");
    let (status, body) = send(storefront(), grant(vec![("subject_token", other)])).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert_eq!(last_refusal(&mesh), "subject_token_not_for_caller");

    // An exchanged token is not exchanged again (delegation is one step deep): a token the
    // storefront got for itself by exchange is still addressed to it, and still refused.
    let (status, body) = send(storefront(), grant(vec![("audience", "storefront".into())])).await;
    assert_eq!(status, 200, "{body}");
    let exchanged = body["access_token"].as_str().expect("token").to_owned();
    let (status, body) = send(
        storefront(),
        grant(vec![
            ("subject_token", exchanged),
            ("audience", "orders".into()),
        ]),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert_eq!(last_refusal(&mesh), "subject_token_already_exchanged");

    // A client that is not registered for the grant.
    let (status, body) = send(("stock-admin", STOCK_ADMIN_DEMO_SECRET), grant(vec![])).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client"))
    );

    // A signed-out login: its token is not exchanged any more.
    let revoked = mesh
        .https()
        .expect("https")
        .post(format!("{}/oauth2/revoke", mesh.mesh.issuer))
        .basic_auth("storefront", Some(STOREFRONT_DEMO_SECRET))
        .form(&[("token", refresh.as_str())])
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status(), 200);
    let (status, body) = send(storefront(), grant(vec![])).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert_eq!(last_refusal(&mesh), "subject_token_revoked");
    mesh.stop().await;
}
