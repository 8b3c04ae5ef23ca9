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

/// The interactive flow: print the URL, wait for the browser's redirect on the loopback
/// redirect URI, then exchange the code.
async fn browser_login(
    http: &reqwest::Client,
    args: &LoginArgs,
) -> Result<TokenResponse, CliError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pkce = oauth::Pkce::new();
    let state = oauth::Pkce::new().verifier;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8976")
        .await
        .map_err(|e| {
            failed(format!(
                "cannot listen for the login redirect on 127.0.0.1:8976: {e}"
            ))
        })?;
    println!(
        "Open this URL in a browser to log in:\n\n  {}\n",
        oauth::authorize_url(&args.issuer, &pkce, &state, &args.audience).map_err(failed)?
    );
    let (mut socket, _) = listener.accept().await.map_err(failed)?;
    let mut buffer = vec![0u8; 8192];
    let n = socket.read(&mut buffer).await.map_err(failed)?;
    let request = String::from_utf8_lossy(&buffer[..n]);
    let target = request
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let code = oauth::code_from_redirect(&target, &state);
    let page = if code.is_ok() {
        "Logged in. You can close this window."
    } else {
        "Login failed; see the terminal."
    };
    let _ = socket
        .write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}", page.len()).as_bytes())
        .await;
    let code = code.map_err(failed)?;
    oauth::exchange_code(http, &args.issuer, &code, &pkce)
        .await
        .map_err(failed)
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
