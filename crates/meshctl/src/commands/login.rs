//! `meshctl login` (authorization code + PKCE, by the form or the browser) and `meshctl logout`.

use mesh_dev::oauth::{self, TokenResponse};

use super::{https, session_path};
use crate::cli::{LoginArgs, LogoutArgs};
use crate::session::Session;
use crate::{CliError, failed};

/// `meshctl login`.
pub async fn run(args: LoginArgs) -> Result<(), CliError> {
    let http = https(&args.reach.tls_ca, &args.issuer, args.reach.issuer_ip)?;
    let response = match (&args.username, &args.password) {
        (Some(username), Some(password)) => {
            oauth::login_with_password(&http, &args.issuer, username, password, &args.audience)
                .await
                .map_err(failed)?
        }
        _ => browser_login(&http, &args).await?,
    };
    let first = args.audience.split_whitespace().next().unwrap_or_default();
    let session = Session::from_login(&args.issuer, first, response)
        .ok_or_else(|| failed("the issuer returned no refresh token"))?;
    let path = session_path(&args.session_file);
    session.save(&path).map_err(failed)?;
    println!("logged in; session saved to {}", path.display());
    Ok(())
}

/// How long `meshctl login` waits for the browser to come back.
const BROWSER_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// The interactive flow (RFC 8252, OAuth 2.0 for native apps): listen on a loopback port the
/// system picks, open the sign-in page in the user's browser (and print its URL, for a browser
/// elsewhere or none at all), wait for the redirect with the code, then exchange it with the
/// PKCE verifier.
async fn browser_login(
    http: &reqwest::Client,
    args: &LoginArgs,
) -> Result<TokenResponse, CliError> {
    let pkce = oauth::Pkce::new();
    let state = oauth::Pkce::new().verifier;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| {
            failed(format!(
                "cannot listen for the sign-in redirect on 127.0.0.1: {e}"
            ))
        })?;
    let port = listener.local_addr().map_err(failed)?.port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let url = oauth::authorize_url_to(&args.issuer, &pkce, &state, &args.audience, &redirect)
        .map_err(failed)?;
    println!("Sign in in your browser. If it did not open, open this URL:\n\n  {url}\n");
    if !args.no_browser {
        open_browser(&url);
    }
    let code = tokio::time::timeout(BROWSER_WAIT, wait_for_code(&listener, &state))
        .await
        .map_err(|_| failed("no sign-in within 5 minutes; run meshctl login again"))??;
    oauth::exchange_code_to(http, &args.issuer, &code, &pkce, &redirect)
        .await
        .map_err(failed)
}

/// Starts the user's browser on `url`: `$BROWSER` if set, else the desktop's opener. A failure
/// is not an error: the URL is printed already.
fn open_browser(url: &str) {
    let opener = std::env::var("BROWSER").ok().filter(|b| !b.is_empty());
    let opener = opener.as_deref().unwrap_or(if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    });
    let started = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(error) = started {
        eprintln!("could not start a browser ({opener}: {error}); open the URL above");
    }
}

/// Answers requests on the loopback listener until one is the redirect to `/callback`; returns
/// its code (checked against `state`), or the refusal the issuer sent back.
async fn wait_for_code(
    listener: &tokio::net::TcpListener,
    state: &str,
) -> Result<String, CliError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let (mut socket, _) = listener.accept().await.map_err(failed)?;
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        // The request line is all that is needed; a request larger than 16 KiB is not ours.
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buffer[..n]),
            }
        }
        let text = String::from_utf8_lossy(&request);
        let target = text
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        if !target.starts_with("/callback") {
            // A favicon, a probe: not the redirect.
            let _ = socket
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            continue;
        }
        let code = oauth::code_from_redirect(&target, state);
        let (title, message) = if code.is_ok() {
            (
                "Signed in",
                "meshctl is signed in. You can close this window.",
            )
        } else {
            (
                "Not signed in",
                "The sign-in did not complete; see the terminal.",
            )
        };
        let page = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
             </head><body><h1>{title}</h1><p>{message}</p></body></html>"
        );
        let _ = socket
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n\
                     content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{page}",
                    page.len()
                )
                .as_bytes(),
            )
            .await;
        return code.map_err(failed);
    }
}

/// `meshctl logout`: revoke the refresh token (and so the whole login) and forget the session.
pub async fn logout(args: LogoutArgs) -> Result<(), CliError> {
    let path = session_path(&args.session_file);
    let session = Session::load(&path).map_err(CliError::Usage)?;
    let http = https(&args.reach.tls_ca, &session.issuer, args.reach.issuer_ip)?;
    oauth::revoke(&http, &session.issuer, &session.refresh_token)
        .await
        .map_err(failed)?;
    std::fs::remove_file(&path).map_err(|e| failed(format!("{}: {e}", path.display())))?;
    println!("logged out; the session's tokens are revoked");
    Ok(())
}
