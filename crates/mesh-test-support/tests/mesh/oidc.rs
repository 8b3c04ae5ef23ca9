//! OpenID Connect, proven with a relying party we did not write (the `openidconnect` crate):
//! discovery, the JWKS, the ID token (signature, nonce, `at_hash`), PKCE and userinfo — and the
//! ways an ID token or a userinfo call can be misused.

use mesh_dev::oauth::{CLIENT_ID, REDIRECT_URI};
use mesh_proto::auth::v1::ExchangeTokenRequest;
use mesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use mesh_test_support::TestMesh;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata,
    CoreTokenResponse, CoreUserInfoClaims,
};
use openidconnect::{
    AccessTokenHash, AuthenticationContextClass, AuthorizationCode, ClientId, ClientSecret,
    CsrfToken, IssuerUrl, LogoutRequest, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PostLogoutRedirectUrl, ProviderMetadataWithLogout, RedirectUrl, Scope, TokenResponse,
};
use serde_json::Value;

use crate::refusals::records;
use crate::user_grants::authorize;

/// What a person does on the login page: opens the authorization URL, submits the form it
/// shows (with its cookie and CSRF token) with their name and password, and allows what the
/// client asks for if a consent page follows. Returns the Location the auth service redirects
/// to, and the session cookie (`name=value`) the browser keeps.
pub(crate) async fn sign_in_with_session(
    http: &reqwest::Client,
    authorize_url: &url::Url,
    user: &str,
) -> (String, String) {
    let page = mesh_dev::oauth::open_login_page(http, authorize_url.as_str())
        .await
        .expect("the login page");
    let password = format!("{user}-demo-password");
    let answer =
        mesh_dev::oauth::submit_login(http, authorize_url.as_str(), &page, user, &password)
            .await
            .expect("login");
    let cookie = mesh_dev::oauth::session_cookie(answer.headers()).expect("a session");
    let answer = if answer.status() == 200 {
        let html = answer.text().await.expect("page");
        let csrf = mesh_dev::oauth::csrf_field(&html).expect("a consent form");
        let mut form: Vec<(String, String)> = authorize_url.query_pairs().into_owned().collect();
        form.push(("csrf".into(), csrf));
        form.push(("decision".into(), "allow".into()));
        let mut action = authorize_url.clone();
        action.set_path("/oauth2/consent");
        action.set_query(None);
        http.post(action)
            .header("cookie", &cookie)
            .form(&form)
            .send()
            .await
            .expect("consent")
    } else {
        answer
    };
    assert_eq!(answer.status(), 302, "{:?}", answer.text().await);
    let location = answer.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_owned();
    (location, cookie)
}

/// The value of `name` in the query of `location`.
pub(crate) fn query_value(location: &str, name: &str) -> Option<String> {
    url::Url::parse(location)
        .expect("a URL")
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A relying party as the `openidconnect` crate builds one from discovery.
pub(crate) type RelyingParty = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// A relying party for the public `meshctl-cli` client, configured from discovery only.
async fn relying_party(mesh: &TestMesh, http: &reqwest::Client) -> RelyingParty {
    relying_party_for(mesh, http, CLIENT_ID, None, REDIRECT_URI).await
}

/// A relying party for `client_id` (with its secret, if it is confidential), its codes sent to
/// `redirect`, configured from discovery only.
pub(crate) async fn relying_party_for(
    mesh: &TestMesh,
    http: &reqwest::Client,
    client_id: &str,
    secret: Option<&str>,
    redirect: &str,
) -> RelyingParty {
    let issuer = IssuerUrl::new(mesh.mesh.issuer.clone()).expect("issuer URL");
    let metadata = CoreProviderMetadata::discover_async(issuer, http)
        .await
        .expect("OpenID Connect discovery");
    assert_eq!(
        metadata.id_token_signing_alg_values_supported(),
        &vec![CoreJwsSigningAlgorithm::EdDsa]
    );
    CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(client_id.into()),
        secret.map(|s| ClientSecret::new(s.into())),
    )
    .set_redirect_uri(RedirectUrl::new(redirect.into()).expect("redirect URI"))
}

/// A relying party's sign-in as it ends: the token answer, what it asked with, where the
/// browser was sent and the session cookie it keeps.
pub(crate) struct RpLogin {
    pub(crate) tokens: CoreTokenResponse,
    pub(crate) nonce: Nonce,
    pub(crate) state: CsrfToken,
    pub(crate) location: String,
    pub(crate) cookie: String,
}

/// `user` signs in to `client` through the pages (PKCE, `openid` and `scopes`, for `audience`
/// when given), and the client redeems the code.
pub(crate) async fn rp_sign_in(
    client: &RelyingParty,
    http: &reqwest::Client,
    user: &str,
    scopes: &[&str],
    audience: Option<&str>,
) -> RpLogin {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .set_pkce_challenge(challenge);
    for scope in scopes {
        request = request.add_scope(Scope::new((*scope).into()));
    }
    if let Some(audience) = audience {
        request = request.add_extra_param("audience", audience);
    }
    let (authorize_url, state, nonce) = request.url();
    let (location, cookie) = sign_in_with_session(http, &authorize_url, user).await;
    let tokens = client
        .exchange_code(AuthorizationCode::new(
            query_value(&location, "code").expect("a code"),
        ))
        .expect("token endpoint")
        .set_pkce_verifier(verifier)
        .request_async(http)
        .await
        .expect("tokens");
    RpLogin {
        tokens,
        nonce,
        state,
        location,
        cookie,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_relying_party_signs_in_verifies_the_id_token_and_reads_userinfo() {
    let mesh = TestMesh::start().await.expect("mesh");
    let http = mesh.https().expect("https");
    let client = relying_party(&mesh, &http).await;
    let RpLogin {
        tokens,
        nonce,
        state,
        location,
        cookie,
    } = rp_sign_in(&client, &http, "alice", &["profile"], Some("orders")).await;
    assert!(location.starts_with(REDIRECT_URI), "{location}");
    assert_eq!(
        query_value(&location, "state").as_deref(),
        Some(state.secret().as_str())
    );

    // The library checks the signature against the discovered JWKS, `iss`, `aud`, `exp` and
    // the nonce; then the access-token hash as Core §3.1.3.8 says.
    let id_token = tokens.id_token().expect("an ID token for an openid login");
    let id_verifier = client.id_token_verifier();
    let claims = id_token
        .claims(&id_verifier, &nonce)
        .expect("a valid ID token");
    assert_eq!(claims.subject().as_str(), "alice");
    assert_eq!(claims.nonce().map(Nonce::secret), Some(nonce.secret()));
    assert!(claims.auth_time().is_some());
    assert_eq!(
        claims.auth_context_ref(),
        Some(&AuthenticationContextClass::new("1".into()))
    );
    let expected_hash = AccessTokenHash::from_token(
        tokens.access_token(),
        id_token.signing_alg().expect("alg"),
        id_token.signing_key(&id_verifier).expect("key"),
    )
    .expect("hash");
    assert_eq!(claims.access_token_hash(), Some(&expected_hash));
    // `sid` is the login the access token belongs to too.
    let id_payload = payload(&id_token.to_string());
    let access_payload = payload(tokens.access_token().secret());
    assert_eq!(id_payload["sid"], access_payload["sid"]);
    assert_eq!(id_payload["amr"], serde_json::json!(["pwd"]));

    let userinfo: CoreUserInfoClaims = client
        .user_info(
            tokens.access_token().clone(),
            Some(claims.subject().clone()),
        )
        .expect("userinfo endpoint")
        .request_async(&http)
        .await
        .expect("userinfo");
    assert_eq!(userinfo.subject().as_str(), "alice");
    assert_eq!(
        userinfo.preferred_username().map(|u| u.as_str()),
        Some("alice")
    );

    // The access token still works at the service it is for.
    let refreshed = client
        .exchange_refresh_token(tokens.refresh_token().expect("refresh token"))
        .expect("token endpoint")
        .request_async(&http)
        .await
        .expect("refresh");
    assert!(
        refreshed.id_token().is_none(),
        "a refresh renews the access token only"
    );
    let scopes: Vec<String> = refreshed
        .scopes()
        .expect("scope")
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert!(scopes.contains(&"openid".to_owned()), "{scopes:?}");

    // Sign-out the way the library does it (RP-Initiated Logout): from the discovered
    // end_session_endpoint, with the ID token as the hint, a registered return address, state.
    let with_logout = ProviderMetadataWithLogout::discover_async(
        IssuerUrl::new(mesh.mesh.issuer.clone()).expect("issuer URL"),
        &http,
    )
    .await
    .expect("discovery");
    let end_session = with_logout
        .additional_metadata()
        .end_session_endpoint
        .clone()
        .expect("an end_session_endpoint");
    let logout = LogoutRequest::from(end_session)
        .set_id_token_hint(id_token)
        .set_client_id(ClientId::new(CLIENT_ID.into()))
        .set_post_logout_redirect_uri(
            PostLogoutRedirectUrl::new("http://127.0.0.1:8976/signed-out".into()).expect("url"),
        )
        .set_state(CsrfToken::new("bye".into()))
        .http_get_url();
    let answer = http
        .get(logout)
        .header("cookie", &cookie)
        .send()
        .await
        .expect("end session");
    assert_eq!(answer.status(), 302);
    assert_eq!(
        answer.headers()["location"],
        "http://127.0.0.1:8976/signed-out?state=bye"
    );
    // The login's tokens are done: the refresh token is refused.
    let refused = client
        .exchange_refresh_token(refreshed.refresh_token().expect("refresh token"))
        .expect("token endpoint")
        .request_async(&http)
        .await;
    assert!(refused.is_err(), "a signed-out login's refresh token");
    mesh.stop().await;
}

/// The claims of a JWT, without checking anything (the checks are the library's, above).
pub(crate) fn payload(jwt: &str) -> Value {
    use base64::Engine;
    let part = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_carries_exactly_the_nonce_it_was_asked_for_and_another_is_refused() {
    let mesh = TestMesh::start().await.expect("mesh");
    let http = mesh.https().expect("https");
    let client = relying_party(&mesh, &http).await;
    let RpLogin { tokens, nonce, .. } = rp_sign_in(&client, &http, "bob", &[], None).await;
    let id_token = tokens.id_token().expect("ID token");
    assert_eq!(
        payload(&id_token.to_string())["nonce"],
        nonce.secret().as_str()
    );
    // A relying party that expected another nonce (a replayed or injected response) refuses it.
    let other = Nonce::new_random();
    let refused = id_token.claims(&client.id_token_verifier(), &other);
    assert!(refused.is_err(), "an ID token for another request");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openid_request_without_a_nonce_or_profile_without_openid_is_refused() {
    let mesh = TestMesh::start().await.expect("mesh");
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let request = |scope: &'static str, nonce: Option<&'static str>| {
        let mut params = vec![
            ("response_type", "code"),
            ("client_id", CLIENT_ID),
            ("redirect_uri", REDIRECT_URI),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("state", "s1"),
            ("scope", scope),
        ];
        params.extend(nonce.map(|n| ("nonce", n)));
        params
    };
    for (scope, nonce, error) in [
        ("openid", None, "invalid_request"),
        ("openid", Some("two words"), "invalid_request"),
        ("profile", None, "invalid_scope"),
    ] {
        let (status, location) = authorize(&mesh, &request(scope, nonce)).await;
        assert_eq!(status, 302, "refused by redirect, not shown a page");
        assert!(location.starts_with(REDIRECT_URI), "{location}");
        assert_eq!(
            query_value(&location, "error").as_deref(),
            Some(error),
            "scope {scope:?}, nonce {nonce:?}: {location}"
        );
        assert_eq!(query_value(&location, "state").as_deref(), Some("s1"));
    }
    mesh.stop().await;
}

/// GET /oauth2/userinfo with `token` as the bearer; status and WWW-Authenticate.
async fn userinfo(mesh: &TestMesh, token: &str) -> (u16, String) {
    let answer = mesh
        .https()
        .expect("https")
        .get(format!("{}/oauth2/userinfo", mesh.mesh.issuer))
        .bearer_auth(token)
        .send()
        .await
        .expect("send");
    let challenge = answer
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (answer.status().as_u16(), challenge)
}

/// The reasons of the issuer's refusals at the userinfo endpoint, in order.
fn userinfo_refusals(mesh: &TestMesh) -> Vec<String> {
    records(mesh, "auth")
        .into_iter()
        .filter(|r| r.method == "/oauth2/userinfo" && r.decision == "deny")
        .map(|r| r.reason)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_refuses_id_tokens_exchanged_tokens_and_tokens_without_openid() {
    let mesh = TestMesh::start().await.expect("mesh");
    let http = mesh.https().expect("https");
    let client = relying_party(&mesh, &http).await;
    let RpLogin { tokens, .. } = rp_sign_in(&client, &http, "alice", &[], Some("orders")).await;
    let id_token = tokens.id_token().expect("ID token").to_string();
    assert_eq!(userinfo(&mesh, tokens.access_token().secret()).await.0, 200);

    // An ID token is not an access token. Its audience is the client, which is no service, so
    // the verifier refuses it there; where an audience did match, its `typ` (JWT, not at+jwt)
    // is refused first (attacks::typ_other_than_at_jwt_is_unauthenticated signs exactly that).
    assert_eq!(payload(&id_token)["aud"], CLIENT_ID);
    let (status, challenge) = userinfo(&mesh, &id_token).await;
    assert_eq!(status, 401);
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    assert_eq!(
        userinfo_refusals(&mesh).last().map(String::as_str),
        Some("invalid token: wrong audience")
    );
    let header = jsonwebtoken::decode_header(&id_token).expect("header");
    assert_eq!(header.typ.as_deref(), Some("JWT"));

    // A token orders got by exchanging alice's carries her `sid` but acts for orders: it is for
    // orders' calls, not for reading who she is. Refused as a token, before its scopes matter.
    let mut auth = AuthServiceClient::new(mesh.auth_channel("orders").expect("channel"));
    let exchanged = auth
        .exchange_token(ExchangeTokenRequest {
            subject_token: tokens.access_token().secret().clone(),
            audience: "inventory".into(),
            scopes: vec![],
        })
        .await
        .expect("exchange")
        .into_inner()
        .access_token;
    let (status, _) = userinfo(&mesh, &exchanged).await;
    assert_eq!(status, 401);
    assert_eq!(
        userinfo_refusals(&mesh).last().map(String::as_str),
        Some("not_a_user_token")
    );

    // A login without `openid` gets no ID token, and its token may not read userinfo.
    let plain = mesh.login("alice", "orders").await.expect("login");
    let (status, challenge) = userinfo(&mesh, &plain.access_token).await;
    assert_eq!(status, 403);
    assert!(
        challenge.contains(r#"error="insufficient_scope""#),
        "{challenge}"
    );

    // No token at all: the bare challenge (RFC 6750 §3.1).
    let answer = http
        .get(format!("{}/oauth2/userinfo", mesh.mesh.issuer))
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status(), 401);
    assert_eq!(
        answer.headers()["www-authenticate"],
        r#"Bearer realm="mesh""#
    );
    mesh.stop().await;
}
