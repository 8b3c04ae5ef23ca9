//! The user-facing calls: login and logout, orders, inventory. Each resolves its token (from
//! `--token` or the session, refreshing and saving it), opens an mTLS channel as meshctl, calls,
//! and prints.

use std::path::PathBuf;

use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_proto::inventory::v1::{Item, ListItemsRequest, RestockRequest};
use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_proto::orders::v1::{
    CancelOrderRequest, GetOrderRequest, ListOrdersRequest, Order, OrderLine, OrderState,
    PlaceOrderRequest,
};

use crate::cli::{InventoryCommand, LoginArgs, LogoutArgs, OrdersCommand, SessionArgs, TlsArgs};
use crate::login::{self, Session};
use crate::{CliError, connect, failed};

/// An HTTPS client for `issuer`, trusting `tls_ca`; with `issuer_ip`, the issuer's host name
/// is pinned to that address.
pub(crate) fn https(
    tls_ca: &std::path::Path,
    issuer: &str,
    issuer_ip: Option<std::net::IpAddr>,
) -> Result<reqwest::Client, CliError> {
    let roots = mesh_tls::material::load_trust_bundle(tls_ca)
        .map_err(|e| CliError::Usage(format!("--tls-ca: {e}")))?;
    let mut builder =
        auth_interceptor::jwks::JwksSource::https_client_builder(roots).map_err(failed)?;
    if let Some(ip) = issuer_ip {
        let host = reqwest::Url::parse(issuer)
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
            .ok_or_else(|| CliError::Usage(format!("--issuer {issuer:?}: not an https URL")))?;
        // reqwest takes the port from the URL; the one given here is ignored.
        builder = builder.resolve(&host, std::net::SocketAddr::new(ip, 0));
    }
    builder.build().map_err(failed)
}

fn session_path(path: &Option<PathBuf>) -> PathBuf {
    path.clone().unwrap_or_else(login::default_session_path)
}

/// `meshctl login`.
pub async fn login(args: LoginArgs) -> Result<(), CliError> {
    let http = https(&args.reach.tls_ca, &args.issuer, args.reach.issuer_ip)?;
    let response = match (&args.username, &args.password) {
        (Some(username), Some(password)) => {
            login::login_with_password(&http, &args.issuer, username, password, &args.audience)
                .await
                .map_err(failed)?
        }
        _ => browser_login(&http, &args).await?,
    };
    let session = Session::from_login(&args.issuer, &args.audience, response)
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
) -> Result<crate::token::TokenResponse, CliError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pkce = login::Pkce::new();
    let state = login::Pkce::new().verifier;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8976")
        .await
        .map_err(|e| {
            failed(format!(
                "cannot listen for the login redirect on 127.0.0.1:8976: {e}"
            ))
        })?;
    println!(
        "Open this URL in a browser to log in:\n\n  {}\n",
        login::authorize_url(&args.issuer, &pkce, &state, &args.audience)
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
    let code = login::code_from_redirect(&target, &state);
    let page = if code.is_ok() {
        "Logged in. You can close this window."
    } else {
        "Login failed; see the terminal."
    };
    let _ = socket
        .write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}", page.len()).as_bytes())
        .await;
    let code = code.map_err(failed)?;
    login::exchange_code(http, &args.issuer, &code, &pkce)
        .await
        .map_err(failed)
}

/// `meshctl logout`: revoke the refresh token (and so the whole login) and forget the session.
pub async fn logout(args: LogoutArgs) -> Result<(), CliError> {
    let path = session_path(&args.session_file);
    let session = Session::load(&path).map_err(CliError::Usage)?;
    let http = https(&args.reach.tls_ca, &session.issuer, args.reach.issuer_ip)?;
    login::revoke(&http, &session.issuer, &session.refresh_token)
        .await
        .map_err(failed)?;
    std::fs::remove_file(&path).map_err(|e| failed(format!("{}: {e}", path.display())))?;
    println!("logged out; the session's tokens are revoked");
    Ok(())
}

/// The access token for `audience`: `--token`, else the session's (refreshed and saved).
async fn token_for(
    session: &SessionArgs,
    tls: &TlsArgs,
    audience: &str,
) -> Result<String, CliError> {
    if let Some(token) = &session.token {
        return Ok(token.clone());
    }
    let path = session_path(&session.session_file);
    let mut stored = Session::load(&path).map_err(CliError::Usage)?;
    let http = https(&tls.tls_ca, &stored.issuer, session.issuer_ip)?;
    let token = stored.access_token(&http, audience).await.map_err(failed)?;
    stored.save(&path).map_err(failed)?;
    Ok(token)
}

fn authorized<T>(message: T, token: &str) -> Result<tonic::Request<T>, CliError> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| CliError::Usage("--token: not a valid header value".into()))?,
    );
    Ok(request)
}

fn status_error(status: tonic::Status) -> CliError {
    failed(format!("{:?}: {}", status.code(), status.message()))
}

fn parse_line(raw: &str) -> Result<OrderLine, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--line {raw:?}: expected SKU:QUANTITY, e.g. SKU-001:2"
        ))
    };
    let (sku, quantity) = raw.split_once(':').ok_or_else(bad)?;
    Ok(OrderLine {
        sku: sku.to_owned(),
        quantity: quantity.parse().map_err(|_| bad())?,
    })
}

fn print_order(order: &Order) {
    let state = OrderState::try_from(order.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("ORDER_STATE_")
                .to_owned()
        })
        .unwrap_or_else(|_| "?".into());
    let lines = order
        .lines
        .iter()
        .map(|l| format!("{}×{}", l.sku, l.quantity))
        .collect::<Vec<_>>()
        .join(",");
    let reason = if order.reason.is_empty() {
        String::new()
    } else {
        format!("  ({})", order.reason)
    };
    println!(
        "{}  {:<9}  {:<8}  {}  {lines}{reason}",
        order.order_id, state, order.owner, order.created_at
    );
}

/// `meshctl orders …`.
pub async fn orders(command: OrdersCommand) -> Result<(), CliError> {
    let target = match &command {
        OrdersCommand::Place { target, .. }
        | OrdersCommand::Get { target, .. }
        | OrdersCommand::List { target, .. }
        | OrdersCommand::Cancel { target, .. } => target,
    };
    let token = token_for(&target.session, &target.tls, "orders").await?;
    let mut client = OrdersServiceClient::new(connect(&target.tls, "orders", &target.addr)?);
    match &command {
        OrdersCommand::Place {
            lines,
            idempotency_key,
            ..
        } => {
            let lines = lines
                .iter()
                .map(|l| parse_line(l))
                .collect::<Result<Vec<_>, _>>()?;
            let key = idempotency_key
                .clone()
                .unwrap_or_else(|| login::Pkce::new().verifier);
            let order = client
                .place_order(authorized(
                    PlaceOrderRequest {
                        idempotency_key: key,
                        lines,
                    },
                    &token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            print_order(&order);
        }
        OrdersCommand::Get { order_id, .. } => {
            let order = client
                .get_order(authorized(
                    GetOrderRequest {
                        order_id: order_id.clone(),
                    },
                    &token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            print_order(&order);
        }
        OrdersCommand::List {
            page_size,
            page_token,
            ..
        } => {
            let page = client
                .list_orders(authorized(
                    ListOrdersRequest {
                        page_size: *page_size,
                        page_token: page_token.clone(),
                    },
                    &token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            page.orders.iter().for_each(print_order);
            if !page.next_page_token.is_empty() {
                println!("next page: --page-token {}", page.next_page_token);
            }
        }
        OrdersCommand::Cancel { order_id, .. } => {
            let order = client
                .cancel_order(authorized(
                    CancelOrderRequest {
                        order_id: order_id.clone(),
                    },
                    &token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            print_order(&order);
        }
    }
    Ok(())
}

fn print_items(items: &[Item]) {
    println!("{:<10} {:>9} {:>10}  NAME", "SKU", "AVAILABLE", "PRICE");
    for item in items {
        println!(
            "{:<10} {:>9} {:>7}.{:02}  {}",
            item.sku,
            item.available,
            item.price_cents / 100,
            item.price_cents % 100,
            item.name
        );
    }
}

/// `meshctl inventory …`.
pub async fn inventory(command: InventoryCommand) -> Result<(), CliError> {
    let target = match &command {
        InventoryCommand::List { target } | InventoryCommand::Restock { target, .. } => target,
    };
    let token = token_for(&target.session, &target.tls, "inventory").await?;
    let mut client = InventoryServiceClient::new(connect(&target.tls, "inventory", &target.addr)?);
    match &command {
        InventoryCommand::List { .. } => {
            let items = client
                .list_items(authorized(ListItemsRequest::default(), &token)?)
                .await
                .map_err(status_error)?
                .into_inner()
                .items;
            print_items(&items);
        }
        InventoryCommand::Restock { sku, quantity, .. } => {
            let item = client
                .restock(authorized(
                    RestockRequest {
                        sku: sku.clone(),
                        quantity: *quantity,
                    },
                    &token,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            print_items(&[item]);
        }
    }
    Ok(())
}
