//! The sign-in pages in a real browser: Debian's Chromium, headless, driven over WebDriver
//! (chromedriver) by fantoccini. PKCE sign-in to a code and tokens, a wrong password shown as
//! an error, single sign-on into a second client with consent asked once, and sign-out after
//! which the next authorization asks for the password again. The pages' screenshots are taken
//! here (`MESH_SCREENSHOTS_DIR=docs/screenshots` writes them where the README shows them).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use mesh_dev::oauth::Pkce;
use mesh_test_support::TestMesh;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::oidc::{payload, query_value};

/// chromedriver on a free loopback port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (apt-get install chromium-driver)");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "chromedriver did not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// A headless Chromium session. The auth service's certificate is from the mesh CA, which the
/// browser does not know: the session accepts it (WebDriver's `acceptInsecureCerts`), and
/// everything else (cookies, `Secure`, `__Host-`, CSP) is the browser's own.
async fn browser(driver: &Driver) -> Client {
    let capabilities = json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=720,860", "--lang=en-US", "--no-first-run",
            ],
        },
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!("an object")
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// A relying party's loopback callback (RFC 8252: any port): answers every request with a small
/// page and passes on the request target of each `/callback` and `/signed-out`.
struct Callback {
    base: String,
    received: mpsc::UnboundedReceiver<String>,
}

async fn callback() -> Callback {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 2048];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let target = text.split(' ').nth(1).unwrap_or_default().to_owned();
                if target.starts_with("/callback") || target.starts_with("/signed-out") {
                    let _ = tx.send(target);
                }
                let body = "<!doctype html><title>Relying party</title><p>Back at the application.";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    Callback { base, received }
}

impl Callback {
    /// The next request the browser brought back here.
    async fn next(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(15), self.received.recv())
            .await
            .expect("the browser came back to the client")
            .expect("the callback server runs")
    }
}

/// An OpenID Connect authorization request of `client`, redirected to `redirect`.
fn authorize_url(
    mesh: &TestMesh,
    client: &str,
    redirect: &str,
    audience: &str,
    pkce: &Pkce,
) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", client),
            ("redirect_uri", redirect),
            ("code_challenge", pkce.challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("state", "st-1"),
            ("scope", "openid profile"),
            ("nonce", "n-browser-1"),
            ("audience", audience),
        ])
        .finish();
    format!("{}/oauth2/authorize?{query}", mesh.mesh.issuer)
}

/// Where the screenshots go: `MESH_SCREENSHOTS_DIR`, else the mesh's temporary directory.
async fn screenshot(mesh: &TestMesh, browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = std::env::var_os("MESH_SCREENSHOTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| mesh.dir().to_path_buf());
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

/// Types into the field `id` as a person would.
async fn type_into(browser: &Client, id: &str, text: &str) {
    browser
        .find(Locator::Id(id))
        .await
        .expect("field")
        .send_keys(text)
        .await
        .expect("type");
}

async fn submit(browser: &Client, label: &str) {
    browser
        .find(Locator::XPath(&format!(
            "//button[normalize-space()='{label}']"
        )))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
}

/// Redeems a code for the public meshctl-cli client.
async fn redeem(mesh: &TestMesh, target: &str, redirect: &str, pkce: &Pkce) -> Value {
    let code = query_value(&format!("http://x{target}"), "code").expect("a code");
    assert_eq!(
        query_value(&format!("http://x{target}"), "state").as_deref(),
        Some("st-1")
    );
    let answer = mesh
        .https()
        .expect("https")
        .post(format!("{}/oauth2/token", mesh.mesh.issuer))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect),
            ("client_id", "meshctl-cli"),
            ("code_verifier", &pkce.verifier),
        ])
        .send()
        .await
        .expect("token endpoint");
    assert_eq!(answer.status(), 200);
    answer.json().await.expect("json")
}

/// What every browser test stands on: a mesh, chromedriver, a Chromium session and a client's
/// loopback callback.
struct Scene {
    mesh: TestMesh,
    browser: Client,
    rp: Callback,
    redirect: String,
    _driver: Driver,
}

impl Scene {
    async fn start() -> Self {
        let mesh = TestMesh::start().await.expect("mesh");
        let driver = start_driver().await;
        let browser = browser(&driver).await;
        let rp = callback().await;
        let redirect = format!("{}/callback", rp.base);
        Self {
            mesh,
            browser,
            rp,
            redirect,
            _driver: driver,
        }
    }

    /// Opens `client`'s authorization request for `audience` in the browser.
    async fn authorize(&self, client: &str, audience: &str, pkce: &Pkce) {
        let url = authorize_url(&self.mesh, client, &self.redirect, audience, pkce);
        self.browser.goto(&url).await.expect("authorize");
    }

    async fn stop(self) {
        self.browser.close().await.expect("close");
        self.mesh.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mesh_browser),
    ignore = "Chromium is not installed: apt-get install chromium chromium-driver"
)]
async fn a_person_signs_in_with_pkce_in_a_real_browser_and_a_wrong_password_shows_an_error() {
    let mut scene = Scene::start().await;
    let (mesh, browser) = (&scene.mesh, &scene.browser);
    let pkce = Pkce::new();
    scene.authorize("meshctl-cli", "orders", &pkce).await;

    // The page a person sees: titled, the first field focused, every field labelled.
    assert_eq!(
        browser.title().await.expect("title"),
        "Sign in · Zero-Trust Mesh"
    );
    let focused = browser.active_element().await.expect("focus");
    assert_eq!(
        focused.attr("id").await.expect("id").as_deref(),
        Some("username")
    );
    for field in ["username", "password"] {
        browser
            .find(Locator::Css(&format!("label[for='{field}']")))
            .await
            .unwrap_or_else(|_| panic!("a label for {field}"));
    }
    let html = browser.source().await.expect("source");
    assert!(
        html.contains("meshctl-cli") && html.contains("orders"),
        "who asks, for what"
    );
    screenshot(mesh, browser, "login").await;

    // A wrong password: the form again, with one sentence, and no code sent anywhere.
    type_into(browser, "username", "alice").await;
    type_into(browser, "password", "not-her-password").await;
    submit(browser, "Sign in").await;
    let error = browser
        .wait()
        .for_element(Locator::Css("p.error"))
        .await
        .expect("an error");
    assert_eq!(
        error.text().await.expect("text"),
        "The username or password is not right. Check them and try again."
    );
    assert_eq!(
        browser.current_url().await.expect("url").path(),
        "/oauth2/authorize"
    );
    screenshot(mesh, browser, "error").await;
    assert!(
        scene.rp.received.try_recv().is_err(),
        "no redirect to the client"
    );
    // The name is kept, and the focus is on the password, still to be typed.
    let focused = browser.active_element().await.expect("focus");
    assert_eq!(
        focused.attr("id").await.expect("id").as_deref(),
        Some("password")
    );
    let username = browser.find(Locator::Id("username")).await.expect("field");
    assert_eq!(
        username.prop("value").await.expect("value").as_deref(),
        Some("alice")
    );

    // The right one: back at the client with a code that the PKCE verifier redeems.
    type_into(browser, "password", "alice-demo-password").await;
    submit(browser, "Sign in").await;
    let target = scene.rp.next().await;
    let tokens = redeem(mesh, &target, &scene.redirect, &pkce).await;
    let id_token = payload(tokens["id_token"].as_str().expect("an ID token"));
    assert_eq!(
        (id_token["sub"].as_str(), id_token["nonce"].as_str()),
        (Some("alice"), Some("n-browser-1"))
    );
    scene.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mesh_browser),
    ignore = "Chromium is not installed: apt-get install chromium chromium-driver"
)]
async fn single_sign_on_asks_consent_once_and_after_sign_out_the_password_again() {
    let mut scene = Scene::start().await;

    // Signed in to the first client with the password.
    let pkce = Pkce::new();
    scene.authorize("meshctl-cli", "orders", &pkce).await;
    type_into(&scene.browser, "username", "alice").await;
    type_into(&scene.browser, "password", "alice-demo-password").await;
    submit(&scene.browser, "Sign in").await;
    let target = scene.rp.next().await;
    let tokens = redeem(&scene.mesh, &target, &scene.redirect, &pkce).await;
    let id_token = tokens["id_token"].as_str().expect("ID token").to_owned();

    // The storefront in the same browser: no password, consent once.
    scene
        .authorize("storefront", "storefront", &Pkce::new())
        .await;
    let (mesh, browser) = (&scene.mesh, &scene.browser);
    assert_eq!(
        browser.title().await.expect("title"),
        "Allow access? · Zero-Trust Mesh"
    );
    assert!(
        browser.find(Locator::Id("password")).await.is_err(),
        "no password asked"
    );
    screenshot(mesh, browser, "consent").await;
    submit(browser, "Allow").await;
    let target = scene.rp.next().await;
    assert!(target.contains("code="), "{target}");
    // Asked once: the next time the browser goes straight back with a code.
    scene
        .authorize("storefront", "storefront", &Pkce::new())
        .await;
    assert!(scene.rp.next().await.contains("code="));

    // Signing out with the first client's ID token: the signed-out page.
    let (mesh, browser) = (&scene.mesh, &scene.browser);
    let logout = format!(
        "{}/oauth2/logout?{}",
        mesh.mesh.issuer,
        form_urlencoded::Serializer::new(String::new())
            .append_pair("id_token_hint", &id_token)
            .finish()
    );
    browser.goto(&logout).await.expect("logout");
    assert_eq!(
        browser.title().await.expect("title"),
        "You are signed out · Zero-Trust Mesh"
    );
    let text = browser
        .find(Locator::Css("main"))
        .await
        .expect("main")
        .text()
        .await
        .expect("text");
    assert!(text.contains("The 2 applications"), "{text}");
    screenshot(mesh, browser, "signed-out").await;
    // The next authorization asks for the password again.
    scene.authorize("meshctl-cli", "orders", &Pkce::new()).await;
    scene
        .browser
        .find(Locator::Id("password"))
        .await
        .expect("the password is asked again");
    scene.stop().await;
}
