//! The session at the issuer, driven over HTTP as a browser would (cookie, forms, redirects):
//! single sign-on, `prompt` and `max_age`, consent, CSRF and cross-site forms, fixation, a second
//! person in the same browser, and RP-initiated sign-out reaching the services.

use mesh_dev::oauth::{Pkce, REDIRECT_URI, csrf_field, session_cookie};
use mesh_proto::orders::v1::ListOrdersRequest;
use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_test_support::{TestMesh, bearer, forge};
use serde_json::{Value, json};
use tonic::Code;

use crate::oidc::{payload, query_value};
use crate::user_grants::token;

const STOREFRONT_REDIRECT: &str = "http://127.0.0.1:8977/callback";

/// A browser: one cookie jar (the issuer's session cookie), no redirects followed.
struct Browser {
    http: reqwest::Client,
    issuer: String,
    cookie: Option<String>,
}

/// An answer as the test reads it.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    location: String,
    set_cookie: Vec<String>,
    body: String,
}

impl Browser {
    fn new(mesh: &TestMesh) -> Self {
        Self {
            http: mesh.https().expect("https"),
            issuer: mesh.mesh.issuer.clone(),
            cookie: None,
        }
    }

    async fn read(&mut self, response: reqwest::Response) -> Answer {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let set_cookie: Vec<String> = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        if let Some(cookie) = session_cookie(response.headers()) {
            self.cookie = Some(cookie);
        } else if set_cookie.iter().any(|c| c.contains("Max-Age=0")) {
            self.cookie = None;
        }
        let body = response.text().await.expect("body");
        Answer {
            status,
            headers,
            location,
            set_cookie,
            body,
        }
    }

    async fn get(&mut self, url: &str) -> Answer {
        let mut request = self.http.get(url);
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.expect("get");
        self.read(response).await
    }

    /// Posts `form` to `path` as our own page would (same origin).
    async fn post(&mut self, path: &str, form: &[(String, String)]) -> Answer {
        self.post_from(path, form, &self.issuer.clone()).await
    }

    async fn post_from(&mut self, path: &str, form: &[(String, String)], origin: &str) -> Answer {
        let origin = url::Url::parse(origin)
            .expect("origin")
            .origin()
            .ascii_serialization();
        let mut request = self
            .http
            .post(format!("{}{path}", self.issuer))
            .header("origin", origin)
            .form(form);
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        let response = request.send().await.expect("post");
        self.read(response).await
    }
}

/// An authorization request of `client` (OpenID Connect, a fresh nonce) and its PKCE pair.
fn authorize_request(
    issuer: &str,
    client: &str,
    redirect: &str,
    audience: &str,
    extra: &[(&str, &str)],
) -> (String, Vec<(String, String)>, Pkce) {
    let pkce = Pkce::new();
    let mut params: Vec<(String, String)> = [
        ("response_type", "code"),
        ("client_id", client),
        ("redirect_uri", redirect),
        ("code_challenge", pkce.challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", "st"),
        ("scope", "openid"),
        ("nonce", "n-0S6_WzA2Mj"),
        ("audience", audience),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (key, value) in extra {
        params.retain(|(k, _)| k != key);
        params.push(((*key).to_owned(), (*value).to_owned()));
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    (format!("{issuer}/oauth2/authorize?{query}"), params, pkce)
}

fn meshctl_request(
    mesh: &TestMesh,
    extra: &[(&str, &str)],
) -> (String, Vec<(String, String)>, Pkce) {
    authorize_request(
        &mesh.mesh.issuer,
        "meshctl-cli",
        REDIRECT_URI,
        "orders",
        extra,
    )
}

fn storefront_request(
    mesh: &TestMesh,
    extra: &[(&str, &str)],
) -> (String, Vec<(String, String)>, Pkce) {
    authorize_request(
        &mesh.mesh.issuer,
        "storefront",
        STOREFRONT_REDIRECT,
        "storefront",
        extra,
    )
}

/// The login form of `page` filled in: its carried fields, its CSRF token, the credentials.
fn filled(
    params: &[(String, String)],
    page: &Answer,
    user: &str,
    password: &str,
) -> Vec<(String, String)> {
    let mut form = params.to_vec();
    form.push(("csrf".into(), csrf_field(&page.body).expect("a csrf field")));
    form.push(("username".into(), user.into()));
    form.push(("password".into(), password.into()));
    form
}

/// Signs `user` in through the form of `url`; the answer to the form.
async fn sign_in(
    browser: &mut Browser,
    url: &str,
    params: &[(String, String)],
    user: &str,
) -> Answer {
    let page = browser.get(url).await;
    assert_eq!(page.status, 200, "the login page");
    let form = filled(params, &page, user, &format!("{user}-demo-password"));
    browser.post("/oauth2/authorize", &form).await
}

/// Redeems the code of a redirect to the public meshctl-cli client: the token answer.
async fn redeem(mesh: &TestMesh, location: &str, pkce: &Pkce) -> Value {
    let code = query_value(location, "code").unwrap_or_else(|| panic!("no code in {location}"));
    let (status, body) = token(
        mesh,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
            ("client_id", "meshctl-cli"),
            ("code_verifier", &pkce.verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Whether the refresh token of `tokens` still buys a token.
async fn refresh_works(mesh: &TestMesh, tokens: &Value) -> bool {
    let refresh = tokens["refresh_token"].as_str().expect("refresh token");
    let (status, _) = token(
        mesh,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", "meshctl-cli"),
        ],
    )
    .await;
    status == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_signs_in_without_the_password_until_prompt_or_max_age_ask_again() {
    let mesh = TestMesh::start().await.expect("mesh");
    let mut browser = Browser::new(&mesh);
    // prompt=none with no session: an answer, not a page.
    let (url, _, _) = meshctl_request(&mesh, &[("prompt", "none")]);
    let answer = browser.get(&url).await;
    assert_eq!(answer.status, 302);
    assert_eq!(
        query_value(&answer.location, "error").as_deref(),
        Some("login_required")
    );

    let (url, params, pkce) = meshctl_request(&mesh, &[]);
    let answer = sign_in(&mut browser, &url, &params, "alice").await;
    assert_eq!(answer.status, 302, "{}", answer.body);
    let first = redeem(&mesh, &answer.location, &pkce).await;
    let first_auth_time =
        payload(first["id_token"].as_str().expect("id token"))["auth_time"].clone();

    // The storefront, another client, in the same browser: no password. It needs consent once.
    let (url, params, _) = storefront_request(&mesh, &[]);
    let page = browser.get(&url).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Allow access?"), "the consent page");
    assert!(
        !page.body.contains("type=\"password\""),
        "no password asked"
    );
    let mut form = params.clone();
    form.push(("csrf".into(), csrf_field(&page.body).expect("csrf")));
    form.push(("decision".into(), "allow".into()));
    let answer = browser.post("/oauth2/consent", &form).await;
    assert_eq!(answer.status, 302, "{}", answer.body);
    assert!(answer.location.starts_with(STOREFRONT_REDIRECT));
    assert!(query_value(&answer.location, "code").is_some());
    // Consent is remembered: the next time is a redirect with a code, nothing shown.
    let (url, _, _) = storefront_request(&mesh, &[("prompt", "none")]);
    let answer = browser.get(&url).await;
    assert_eq!(answer.status, 302);
    assert!(
        query_value(&answer.location, "code").is_some(),
        "{}",
        answer.location
    );
    // prompt=consent asks again.
    let (url, _, _) = storefront_request(&mesh, &[("prompt", "consent")]);
    assert!(browser.get(&url).await.body.contains("Allow access?"));

    // meshctl-cli again by the session: its ID token tells when the password was typed.
    let (url, _, pkce) = meshctl_request(&mesh, &[]);
    let answer = browser.get(&url).await;
    assert_eq!(answer.status, 302, "single sign-on");
    let again = redeem(&mesh, &answer.location, &pkce).await;
    let id_token = payload(again["id_token"].as_str().expect("id token"));
    assert_eq!(id_token["auth_time"], first_auth_time);
    assert_eq!(id_token["sub"], "alice");

    // prompt=login, or a max_age the sign-in is older than, ask for the password again.
    let (url, _, _) = meshctl_request(&mesh, &[("prompt", "login")]);
    assert!(browser.get(&url).await.body.contains("type=\"password\""));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (url, _, _) = meshctl_request(&mesh, &[("max_age", "0")]);
    assert!(browser.get(&url).await.body.contains("type=\"password\""));
    let (url, _, _) = meshctl_request(&mesh, &[("max_age", "3600")]);
    assert_eq!(browser.get(&url).await.status, 302);
    // prompt=none with a session, and consent never given to this user: consent_required.
    let mut other = Browser::new(&mesh);
    let (url, params, _) = meshctl_request(&mesh, &[]);
    assert_eq!(sign_in(&mut other, &url, &params, "bob").await.status, 302);
    let (url, _, _) = storefront_request(&mesh, &[("prompt", "none")]);
    let answer = other.get(&url).await;
    assert_eq!(
        query_value(&answer.location, "error").as_deref(),
        Some("consent_required")
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_host_only_secure_http_only_lax_and_new_at_every_sign_in() {
    let mesh = TestMesh::start().await.expect("mesh");
    let mut browser = Browser::new(&mesh);
    // A value planted before the sign-in (fixation): well-formed, so it is used for the form.
    let planted = format!("__Host-mesh-session={}", "A".repeat(43));
    browser.cookie = Some(planted.clone());
    let (url, params, _) = meshctl_request(&mesh, &[]);
    // The page cannot be framed (clickjacking) or cached, and runs nothing.
    let page = browser.get(&url).await;
    assert_eq!(page.headers["x-frame-options"], "DENY");
    let csp = page.headers["content-security-policy"]
        .to_str()
        .expect("ascii");
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"));
    assert!(
        !csp.contains("script-src") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(page.headers["cache-control"], "no-store");
    let answer = sign_in(&mut browser, &url, &params, "alice").await;
    assert_eq!(answer.status, 302);
    let set = answer
        .set_cookie
        .iter()
        .find(|c| c.starts_with("__Host-mesh-session="))
        .expect("a session cookie");
    for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.to_ascii_lowercase().contains("domain="), "{set}");
    let session = browser.cookie.clone().expect("cookie");
    assert_ne!(session, planted, "a new value at sign-in");
    // The planted value names no session: whoever planted it is not signed in.
    let mut attacker = Browser::new(&mesh);
    attacker.cookie = Some(planted);
    let (url, _, _) = meshctl_request(&mesh, &[("prompt", "none")]);
    let answer = attacker.get(&url).await;
    assert_eq!(
        query_value(&answer.location, "error").as_deref(),
        Some("login_required")
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_without_their_csrf_token_from_another_session_reused_or_cross_site_are_refused() {
    let mesh = TestMesh::start().await.expect("mesh");
    let mut browser = Browser::new(&mesh);
    let (url, params, _) = meshctl_request(&mesh, &[]);
    let page = browser.get(&url).await;
    let good = filled(&params, &page, "alice", "alice-demo-password");

    // No token.
    let mut missing = good.clone();
    missing.retain(|(k, _)| k != "csrf");
    let answer = browser.post("/oauth2/authorize", &missing).await;
    assert_eq!((answer.status, answer.location.as_str()), (400, ""));
    // The token of another browser's session.
    let mut other = Browser::new(&mesh);
    let other_page = other.get(&url).await;
    let mut foreign = good.clone();
    foreign.retain(|(k, _)| k != "csrf");
    foreign.push(("csrf".into(), csrf_field(&other_page.body).expect("csrf")));
    let answer = browser.post("/oauth2/authorize", &foreign).await;
    assert_eq!((answer.status, answer.location.as_str()), (400, ""));
    // Everything right but sent from another site: refused, though cookie and token match.
    let answer = browser
        .post_from("/oauth2/authorize", &good, "https://evil.example")
        .await;
    assert_eq!((answer.status, answer.location.as_str()), (403, ""));
    // The same form from our page: signed in.
    let answer = browser.post("/oauth2/authorize", &good).await;
    assert_eq!(answer.status, 302, "{}", answer.body);
    // The form of before the sign-in, submitted again: its token belonged to the old cookie.
    let answer = browser.post("/oauth2/authorize", &good).await;
    assert_eq!((answer.status, answer.location.as_str()), (400, ""));
    // A consent form posted cross-site with the session's own token.
    let (url, params, _) = storefront_request(&mesh, &[]);
    let page = browser.get(&url).await;
    let mut form = params.clone();
    form.push(("csrf".into(), csrf_field(&page.body).expect("csrf")));
    form.push(("decision".into(), "allow".into()));
    let answer = browser
        .post_from("/oauth2/consent", &form, "https://evil.example")
        .await;
    assert_eq!((answer.status, answer.location.as_str()), (403, ""));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_person_signing_in_in_the_same_browser_ends_the_first_ones_session_and_logins() {
    let mesh = TestMesh::start().await.expect("mesh");
    let mut browser = Browser::new(&mesh);
    let (url, params, pkce) = meshctl_request(&mesh, &[]);
    let answer = sign_in(&mut browser, &url, &params, "alice").await;
    let alice = redeem(&mesh, &answer.location, &pkce).await;
    let alice_cookie = browser.cookie.clone().expect("cookie");

    // Bob signs in with alice's session cookie in the browser.
    let (url, params, pkce) = meshctl_request(&mesh, &[("prompt", "login")]);
    let answer = sign_in(&mut browser, &url, &params, "bob").await;
    assert_eq!(answer.status, 302);
    let bob = redeem(&mesh, &answer.location, &pkce).await;
    assert_eq!(
        payload(bob["access_token"].as_str().expect("token"))["sub"],
        "bob"
    );
    assert_ne!(browser.cookie.as_deref(), Some(alice_cookie.as_str()));
    // Alice's cookie names nothing now, and her login in that browser is over.
    let mut old = Browser::new(&mesh);
    old.cookie = Some(alice_cookie);
    let (url, _, _) = meshctl_request(&mesh, &[("prompt", "none")]);
    assert_eq!(
        query_value(&old.get(&url).await.location, "error").as_deref(),
        Some("login_required")
    );
    assert!(
        !refresh_works(&mesh, &alice).await,
        "alice's refresh token was revoked"
    );
    // Bob's session does SSO as bob.
    let (url, _, pkce) = meshctl_request(&mesh, &[]);
    let answer = browser.get(&url).await;
    let again = redeem(&mesh, &answer.location, &pkce).await;
    assert_eq!(
        payload(again["access_token"].as_str().expect("token"))["sub"],
        "bob"
    );
    mesh.stop().await;
}

/// GET /oauth2/logout with `params`.
async fn logout(browser: &mut Browser, params: &[(&str, &str)]) -> Answer {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let url = format!("{}/oauth2/logout?{query}", browser.issuer);
    browser.get(&url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_ends_the_session_revokes_its_logins_mesh_wide_and_returns_only_where_registered()
 {
    let mesh = TestMesh::start().await.expect("mesh");
    let mut browser = Browser::new(&mesh);
    let (url, params, pkce) = meshctl_request(&mesh, &[]);
    let answer = sign_in(&mut browser, &url, &params, "alice").await;
    let tokens = redeem(&mesh, &answer.location, &pkce).await;
    let id_token = tokens["id_token"].as_str().expect("id token").to_owned();
    let access = tokens["access_token"].as_str().expect("access").to_owned();
    let mut orders = OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("channel"));
    orders
        .list_orders(bearer(ListOrdersRequest::default(), &access))
        .await
        .expect("alice's token works before she signs out");

    // Refused, nothing ended: a hint another issuer signed; a return address not registered;
    // a hint of another session (bob's, from another browser).
    let foreign = forge::SigningKey::foreign("k1").expect("key");
    let mut claims = payload(&id_token);
    claims["iss"] = json!("https://evil.example");
    let forged = foreign.sign(&json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1"}), &claims);
    let answer = logout(&mut browser, &[("id_token_hint", &forged)]).await;
    assert_eq!((answer.status, answer.location.as_str()), (400, ""));
    let answer = logout(
        &mut browser,
        &[
            ("id_token_hint", &id_token),
            ("post_logout_redirect_uri", "https://evil.example/"),
        ],
    )
    .await;
    assert_eq!((answer.status, answer.location.as_str()), (400, ""));
    let mut bobs = Browser::new(&mesh);
    let (url, params, pkce) = meshctl_request(&mesh, &[]);
    let answer = sign_in(&mut bobs, &url, &params, "bob").await;
    let bob = redeem(&mesh, &answer.location, &pkce).await;
    let answer = logout(
        &mut browser,
        &[(
            "id_token_hint",
            bob["id_token"].as_str().expect("bob's id token"),
        )],
    )
    .await;
    assert_eq!((answer.status, answer.location.as_str()), (400, ""));
    let (url, _, _) = meshctl_request(&mesh, &[("prompt", "none")]);
    assert_eq!(browser.get(&url).await.status, 302);
    assert!(
        query_value(&browser.get(&url).await.location, "code").is_some(),
        "still signed in"
    );

    // Without a hint the person is asked; the answer comes from our page with the token.
    let answer = logout(&mut browser, &[]).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("Sign out?"));

    // With her own hint and a registered address: signed out at once, sent back with state.
    let answer = logout(
        &mut browser,
        &[
            ("id_token_hint", &id_token),
            (
                "post_logout_redirect_uri",
                "http://127.0.0.1:8976/signed-out",
            ),
            ("state", "bye"),
        ],
    )
    .await;
    assert_eq!(answer.status, 302);
    assert_eq!(
        answer.location,
        "http://127.0.0.1:8976/signed-out?state=bye"
    );
    assert!(answer.set_cookie.iter().any(|c| c.contains("Max-Age=0")));
    // Every token of the session is refused at orders within 2 s (the revocation push).
    let signed_out = std::time::Instant::now();
    let deadline = signed_out + std::time::Duration::from_secs(2);
    loop {
        match orders
            .list_orders(bearer(ListOrdersRequest::default(), &access))
            .await
        {
            Err(status) if status.code() == Code::Unauthenticated => {
                eprintln!(
                    "refused at orders {:?} after the sign-out",
                    signed_out.elapsed()
                );
                break;
            }
            answer => assert!(
                std::time::Instant::now() < deadline,
                "still accepted 2 s after sign-out: {answer:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        !refresh_works(&mesh, &tokens).await,
        "the refresh token was revoked"
    );
    // The next authorization asks for the password again (the old cookie too names nothing).
    let (url, _, _) = meshctl_request(&mesh, &[]);
    assert!(browser.get(&url).await.body.contains("type=\"password\""));
    // Bob's session, in his browser, is untouched.
    let (url, _, _) = meshctl_request(&mesh, &[("prompt", "none")]);
    assert!(query_value(&bobs.get(&url).await.location, "code").is_some());
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_sign_out_without_a_hint_needs_the_sessions_token_from_our_page() {
    let mesh = TestMesh::start().await.expect("mesh");
    let mut browser = Browser::new(&mesh);
    let (url, params, _) = meshctl_request(&mesh, &[]);
    assert_eq!(
        sign_in(&mut browser, &url, &params, "alice").await.status,
        302
    );
    let page = logout(&mut browser, &[]).await;
    let csrf = csrf_field(&page.body).expect("csrf");
    let confirm = vec![
        ("confirm".to_owned(), "yes".to_owned()),
        ("csrf".to_owned(), csrf),
    ];
    // Cross-site, or without the token: nothing ends.
    let answer = browser
        .post_from("/oauth2/logout", &confirm, "https://evil.example")
        .await;
    assert_eq!(answer.status, 403);
    let answer = browser.post("/oauth2/logout", &confirm[..1]).await;
    assert_eq!(answer.status, 400);
    let (probe, _, _) = meshctl_request(&mesh, &[("prompt", "none")]);
    assert!(query_value(&browser.get(&probe).await.location, "code").is_some());
    // From our page: signed out, and told so.
    let answer = browser.post("/oauth2/logout", &confirm).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.body.contains("You are signed out"),
        "{}",
        answer.body
    );
    assert_eq!(
        query_value(&browser.get(&probe).await.location, "error").as_deref(),
        Some("login_required")
    );
    mesh.stop().await;
}

/// A client's back-channel logout endpoint: passes on the `logout_token` of every POST.
async fn backchannel_endpoint() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let uri = format!(
        "http://{}/backchannel",
        listener.local_addr().expect("addr")
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            let token = form_urlencoded::parse(body.as_bytes())
                                .find(|(k, _)| k == "logout_token")
                                .map(|(_, v)| v.into_owned())
                                .unwrap_or_default();
                            let _ = tx.send(token);
                            break;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (uri, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_back_channel_is_told_of_the_sign_out_by_a_signed_logout_token() {
    let (endpoint, mut received) = backchannel_endpoint().await;
    let client = format!(
        "[[clients]]\nclient_id = \"backchannel-rp\"\ngrant_types = [\"authorization_code\"]\n\
         redirect_uris = [\"http://127.0.0.1:9/callback\"]\n\
         backchannel_logout_uri = \"{endpoint}\"\naudiences = [\"orders\"]\n\
         scopes = [\"orders:read\"]\n"
    );
    let mesh = TestMesh::start_with(mesh_dev::devmesh::DevOptions {
        auth_config: Some(format!(
            "{}\n{client}",
            mesh_dev::devmesh::EXAMPLE_AUTH_CONFIG
        )),
        ..Default::default()
    })
    .await
    .expect("mesh");
    let mut browser = Browser::new(&mesh);
    let redirect = "http://127.0.0.1:9/callback";
    let (url, params, pkce) =
        authorize_request(&mesh.mesh.issuer, "backchannel-rp", redirect, "orders", &[]);
    let answer = sign_in(&mut browser, &url, &params, "alice").await;
    assert_eq!(answer.status, 302, "{}", answer.body);
    let code = query_value(&answer.location, "code").expect("code");
    let (status, tokens) = token(
        &mesh,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect),
            ("client_id", "backchannel-rp"),
            ("code_verifier", &pkce.verifier),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let id_token = tokens["id_token"].as_str().expect("id token").to_owned();

    let answer = logout(&mut browser, &[("id_token_hint", &id_token)]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let logout_token = tokio::time::timeout(std::time::Duration::from_secs(10), received.recv())
        .await
        .expect("the client is told within 10 s")
        .expect("a logout token");

    // Signed by the issuer's key, typed logout+jwt, for this client, about this login.
    let header = jsonwebtoken::decode_header(&logout_token).expect("header");
    assert_eq!(header.typ.as_deref(), Some("logout+jwt"));
    let jwks: jsonwebtoken::jwk::JwkSet = mesh
        .https()
        .expect("https")
        .get(format!("{}/oauth2/jwks", mesh.mesh.issuer))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    let key = jsonwebtoken::DecodingKey::from_jwk(
        jwks.find(header.kid.as_deref().expect("kid"))
            .expect("a published key"),
    )
    .expect("key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["backchannel-rp"]);
    validation.set_issuer(&[mesh.mesh.issuer.as_str()]);
    let claims = jsonwebtoken::decode::<Value>(&logout_token, &key, &validation)
        .expect("a valid logout token")
        .claims;
    assert_eq!(claims["sid"], payload(&id_token)["sid"]);
    assert_eq!(claims["sub"], "alice");
    assert!(claims["events"]["http://schemas.openid.net/event/backchannel-logout"].is_object());
    assert!(
        claims.get("nonce").is_none(),
        "a logout token never carries a nonce"
    );
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_when_idle_and_at_its_lifetime_however_much_it_is_used() {
    let config = mesh_dev::devmesh::EXAMPLE_AUTH_CONFIG
        .replace("session_idle_secs = 1800", "session_idle_secs = 3")
        .replace("session_lifetime_secs = 28800", "session_lifetime_secs = 6");
    assert!(
        config.contains("session_idle_secs = 3"),
        "the example sets the timeouts"
    );
    let mesh = TestMesh::start_with(mesh_dev::devmesh::DevOptions {
        auth_config: Some(config),
        ..Default::default()
    })
    .await
    .expect("mesh");
    let (probe, _, _) = meshctl_request(&mesh, &[("prompt", "none")]);
    let signed_in = async |browser: &mut Browser| {
        query_value(&browser.get(&probe).await.location, "code").is_some()
    };
    // The idle one signs in first: whatever the other's sign-in costs only adds to its idling.
    let mut idle = Browser::new(&mesh);
    let mut used = Browser::new(&mesh);
    let mut used_since = std::time::Instant::now();
    for browser in [&mut idle, &mut used] {
        let (url, params, _) = meshctl_request(&mesh, &[]);
        used_since = std::time::Instant::now();
        let answer = sign_in(browser, &url, &params, "alice").await;
        assert!(
            answer.set_cookie.iter().any(|c| c.contains("Max-Age=6")),
            "{:?}",
            answer.set_cookie
        );
    }
    // Used every second (well within the 3 s idle timeout): alive until its 6 s lifetime. Left
    // alone for 4 s: over. (Times are whole seconds; 4 s of real time are at least 4 of them.)
    for _ in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
        assert!(signed_in(&mut used).await, "a session in use is alive");
    }
    assert!(!signed_in(&mut idle).await, "idle for 4 s: ended");
    // Past 6 s after its sign-in, under 3 s after its last use: over, used or not.
    let lifetime = std::time::Duration::from_millis(6200);
    tokio::time::sleep(lifetime.saturating_sub(used_since.elapsed())).await;
    assert!(
        !signed_in(&mut used).await,
        "6 s after the sign-in: ended, used or not"
    );
    mesh.stop().await;
}
