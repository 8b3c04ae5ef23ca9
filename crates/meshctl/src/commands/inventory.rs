//! `meshctl inventory list|restock`.

use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_proto::inventory::v1::{Item, ListItemsRequest, RestockRequest};

use super::{connect, status_error, token_for};
use crate::CliError;
use crate::cli::InventoryCommand;

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
pub async fn run(command: InventoryCommand) -> Result<(), CliError> {
    let target = match &command {
        InventoryCommand::List { target } | InventoryCommand::Restock { target, .. } => target,
    };
    let token = token_for(&target.session, &target.tls, "inventory").await?;
    let mut client = InventoryServiceClient::new(connect(&target.tls, "inventory", &target.addr)?);
    match &command {
        InventoryCommand::List { .. } => {
            let items = client
                .list_items(token.request(ListItemsRequest::default()))
                .await
                .map_err(status_error)?
                .into_inner()
                .items;
            print_items(&items);
        }
        InventoryCommand::Restock { sku, quantity, .. } => {
            let item = client
                .restock(token.request(RestockRequest {
                    sku: sku.clone(),
                    quantity: *quantity,
                }))
                .await
                .map_err(status_error)?
                .into_inner();
            print_items(&[item]);
        }
    }
    Ok(())
}
