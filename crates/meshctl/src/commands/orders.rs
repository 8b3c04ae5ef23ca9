//! `meshctl orders place|get|list|cancel`, as the logged-in user.

use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_proto::orders::v1::{
    CancelOrderRequest, GetOrderRequest, ListOrdersRequest, Order, OrderLine, OrderState,
    PlaceOrderRequest,
};

use super::{connect, status_error, token_for};
use crate::CliError;
use crate::cli::OrdersCommand;

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
pub async fn run(command: OrdersCommand) -> Result<(), CliError> {
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
                .unwrap_or_else(|| mesh_dev::oauth::Pkce::new().verifier);
            let order = client
                .place_order(token.request(PlaceOrderRequest {
                    idempotency_key: key,
                    lines,
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            print_order(&order);
        }
        OrdersCommand::Get { order_id, .. } => {
            let order = client
                .get_order(token.request(GetOrderRequest {
                    order_id: order_id.clone(),
                }))
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
                .list_orders(token.request(ListOrdersRequest {
                    page_size: *page_size,
                    page_token: page_token.clone(),
                }))
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
                .cancel_order(token.request(CancelOrderRequest {
                    order_id: order_id.clone(),
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            print_order(&order);
        }
    }
    Ok(())
}
