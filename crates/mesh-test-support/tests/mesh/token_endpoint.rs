//! The OAuth2 token endpoint answers exactly as RFC 6749 §5 says, and what it issues verifies
//! against its own published keys.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mesh_dev::devmesh::MESHCTL_DEMO_SECRET;
use mesh_test_support::TestMesh;
use serde_json::{Value, json};

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

/// POSTs a form to the token endpoint, optionally with Basic credentials.
async fn post(mesh: &TestMesh, basic: Option<(&str, &str)>, form: &str) -> Answer {
    let mut request = mesh
        .https()
        .expect("https")
        .post(format!("{}/oauth2/token", mesh.mesh.issuer))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned());
    if let Some((id, secret)) = basic {
        request = request.header(
            "authorization",
            format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))),
        );
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.expect("json body");
    Answer {
        status,
        headers,
        body,
    }
}

fn assert_error(answer: &Answer, status: u16, error: &str) {
    assert_eq!(answer.status, status, "{:?}", answer.body);
    assert_eq!(answer.body["error"], error, "{:?}", answer.body);
    assert_eq!(answer.headers["cache-control"], "no-store");
}

const GRANT: &str = "grant_type=client_credentials&audience=inventory";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_and_unknown_client_answer_identically_with_401_invalid_client() {
    let mesh = TestMesh::start().await.expect("mesh");
    let wrong_secret = post(&mesh, Some(("meshctl", "not-the-secret")), GRANT).await;
    let unknown = post(&mesh, Some(("nobody", "not-the-secret")), GRANT).await;
    let no_credentials = post(&mesh, None, GRANT).await;
    for answer in [&wrong_secret, &unknown, &no_credentials] {
        assert_error(answer, 401, "invalid_client");
        assert!(
            answer.headers["www-authenticate"]
                .to_str()
                .expect("ascii")
                .starts_with("Basic")
        );
    }
    assert_eq!(wrong_secret.body, unknown.body);
    assert_eq!(wrong_secret.body, no_credentials.body);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_grant_is_unsupported_grant_type() {
    let mesh = TestMesh::start().await.expect("mesh");
    let answer = post(
        &mesh,
        Some(("meshctl", MESHCTL_DEMO_SECRET)),
        "grant_type=password&username=alice&password=x",
    )
    .await;
    assert_error(&answer, 400, "unsupported_grant_type");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_client_authentication_methods_is_invalid_request() {
    let mesh = TestMesh::start().await.expect("mesh");
    let form = format!("{GRANT}&client_id=meshctl&client_secret={MESHCTL_DEMO_SECRET}");
    let answer = post(&mesh, Some(("meshctl", MESHCTL_DEMO_SECRET)), &form).await;
    assert_error(&answer, 400, "invalid_request");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_invalid_request() {
    let mesh = TestMesh::start().await.expect("mesh");
    let creds = Some(("meshctl", MESHCTL_DEMO_SECRET));
    for form in [
        "audience=inventory", // no grant_type
        "grant_type=client_credentials&grant_type=client_credentials&audience=x", // repeated
        "grant_type=client_credentials", // no audience
    ] {
        assert_error(&post(&mesh, creds, form).await, 400, "invalid_request");
    }
    let not_a_form = mesh
        .https()
        .expect("https")
        .post(format!("{}/oauth2/token", mesh.mesh.issuer))
        .json(&serde_json::json!({ "grant_type": "client_credentials" }))
        .send()
        .await
        .expect("send");
    assert_eq!(not_a_form.status().as_u16(), 400);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_or_audience_the_client_may_not_have_is_refused() {
    let mesh = TestMesh::start().await.expect("mesh");
    let creds = Some(("meshctl", MESHCTL_DEMO_SECRET));
    let scope = post(&mesh, creds, &format!("{GRANT}&scope=inventory:admin")).await;
    assert_error(&scope, 400, "invalid_scope");
    let target = post(
        &mesh,
        creds,
        "grant_type=client_credentials&audience=orders",
    )
    .await;
    assert_error(&target, 400, "invalid_target");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_post_works_and_the_issued_token_verifies_with_the_jwks() {
    let mesh = TestMesh::start().await.expect("mesh");
    let form = format!("{GRANT}&client_id=meshctl&client_secret={MESHCTL_DEMO_SECRET}");
    let answer = post(&mesh, None, &form).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.headers["cache-control"], "no-store");
    assert_eq!(answer.body["token_type"], "Bearer");
    assert_eq!(answer.body["expires_in"], 300);
    assert_eq!(answer.body["scope"], "inventory:read");
    let token = answer.body["access_token"].as_str().expect("token");

    // Discovery, then the JWKS it names.
    let http = mesh.https().expect("https");
    let discovery: Value = http
        .get(format!(
            "{}/.well-known/openid-configuration",
            mesh.mesh.issuer
        ))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    assert_eq!(discovery["issuer"], mesh.mesh.issuer.as_str());
    assert_discovery_advertises_only_what_is_served(&http, &discovery).await;
    let jwks: JwkSet = http
        .get(discovery["jwks_uri"].as_str().expect("jwks_uri"))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");

    let header = jsonwebtoken::decode_header(token).expect("header");
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, Algorithm::EdDSA);
    let jwk = jwks
        .find(header.kid.as_deref().expect("kid"))
        .expect("kid published");
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["inventory"]);
    validation.set_issuer(&[&mesh.mesh.issuer]);
    let claims = jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_jwk(jwk).expect("key"),
        &validation,
    )
    .expect("verifies")
    .claims;
    for claim in [
        "iss",
        "aud",
        "sub",
        "client_id",
        "scope",
        "exp",
        "iat",
        "nbf",
        "jti",
    ] {
        assert!(
            claims.get(claim).is_some(),
            "claim {claim} missing: {claims}"
        );
    }
    assert_eq!(claims["sub"], "meshctl");
    assert_eq!(
        claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"),
        300
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_client_authentication_is_rate_limited() {
    let mesh = TestMesh::start().await.expect("mesh");
    // The example config allows 10 failures a minute per address.
    for _ in 0..10 {
        let answer = post(&mesh, Some(("meshctl", "guess")), GRANT).await;
        assert_error(&answer, 401, "invalid_client");
    }
    let limited = post(&mesh, Some(("meshctl", "guess")), GRANT).await;
    assert_eq!(limited.status, 429);
    assert!(limited.headers.contains_key("retry-after"));
    // While limited, even the right secret is not checked.
    let right = post(&mesh, Some(("meshctl", MESHCTL_DEMO_SECRET)), GRANT).await;
    assert_eq!(right.status, 429);
    mesh.stop().await;
}

/// The fields OpenID Connect Discovery 1.0 §3 requires, each with what is really served, and
/// every endpoint the document names answers.
async fn assert_discovery_advertises_only_what_is_served(
    http: &reqwest::Client,
    discovery: &Value,
) {
    let fields = discovery.as_object().expect("an object");
    for field in [
        "issuer",
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
    ] {
        assert!(fields.contains_key(field), "{field} is required");
    }
    assert_eq!(
        discovery["id_token_signing_alg_values_supported"],
        json!(["EdDSA"])
    );
    assert_eq!(discovery["response_types_supported"], json!(["code"]));
    assert_eq!(discovery["subject_types_supported"], json!(["public"]));
    // Absent, these would mean "supported" (request_uri) to a strict client.
    for field in [
        "request_uri_parameter_supported",
        "request_parameter_supported",
        "claims_parameter_supported",
    ] {
        assert_eq!(discovery[field], json!(false), "{field}");
    }
    for (field, url) in fields
        .iter()
        .filter(|(k, _)| k.ends_with("_endpoint") || *k == "jwks_uri")
    {
        let url = url.as_str().expect("a URL");
        let status = http.get(url).send().await.expect(url).status();
        assert!(
            status != reqwest::StatusCode::NOT_FOUND,
            "{field} {url} is not served ({status})"
        );
    }
}
