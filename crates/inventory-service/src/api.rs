//! `mesh.inventory.v1.InventoryService`: parse at the edge, then call the store.

use auth_interceptor::Principal;
use mesh_proto::domain::{self, FieldViolation, RequestKey, Sku};
use mesh_proto::inventory::v1::inventory_service_server::InventoryService;
use mesh_proto::inventory::v1::{
    GetItemRequest, Item, ListItemsRequest, ListItemsResponse, ReleaseRequest, ReleaseResponse,
    ReserveRequest, ReserveResponse, RestockRequest,
};
use tonic::{Request, Response, Status};

use crate::store::{ItemRow, Store, StoreError};

/// The gRPC API over a [`Store`]. Authorization already happened in the auth layer; handlers
/// read the [`Principal`] only to record who acted.
#[derive(Debug, Clone)]
pub struct InventoryApi {
    store: Store,
}

impl InventoryApi {
    /// The API over `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict => {
                Status::already_exists("reservation_id: already used with other lines")
            }
            StoreError::UnknownSku(sku) => Status::not_found(format!("no item {sku}")),
            other => {
                tracing::error!(error = %other, "inventory store failed");
                Status::internal("storage failure")
            }
        }
    }
}

fn item(row: ItemRow) -> Item {
    Item {
        sku: row.sku,
        name: row.name,
        available: u32::try_from(row.available).unwrap_or(0),
        price_cents: u64::try_from(row.price_cents).unwrap_or(0),
    }
}

#[tonic::async_trait]
impl InventoryService for InventoryApi {
    async fn list_items(
        &self,
        request: Request<ListItemsRequest>,
    ) -> Result<Response<ListItemsResponse>, Status> {
        let body = request.into_inner();
        let limit = domain::parse_page_size("page_size", body.page_size, 50, 100)?;
        let after = match body.page_token.as_str() {
            "" => None,
            token => Some(Sku::parse("page_token", token)?),
        };
        let rows = self.store.list_items(after.as_ref(), limit).await?;
        let next_page_token = if rows.len() == limit as usize {
            rows.last().map(|r| r.sku.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListItemsResponse {
            items: rows.into_iter().map(item).collect(),
            next_page_token,
        }))
    }

    async fn get_item(&self, request: Request<GetItemRequest>) -> Result<Response<Item>, Status> {
        let sku = Sku::parse("sku", &request.get_ref().sku)?;
        match self.store.get_item(&sku).await? {
            Some(row) => Ok(Response::new(item(row))),
            None => Err(Status::not_found(format!("no item {sku}"))),
        }
    }

    async fn reserve(
        &self,
        request: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        // The user orders acts for: who the reservation is recorded against.
        let subject = Principal::user(&request)?.subject().to_owned();
        let body = request.into_inner();
        let id = RequestKey::parse("reservation_id", &body.reservation_id);
        let lines = domain::parse_lines(
            "lines",
            body.lines.iter().map(|l| (l.sku.as_str(), l.quantity)),
        );
        let (id, lines) = match (id, lines) {
            (Ok(id), Ok(lines)) => (id, lines),
            (id, lines) => {
                let mut violations: Vec<FieldViolation> = id.err().into_iter().collect();
                violations.extend(lines.err().unwrap_or_default());
                return Err(domain::invalid_argument(violations));
            }
        };
        let outcome = self.store.reserve(id.as_str(), &lines, &subject).await?;
        tracing::info!(
            reservation_id = id.as_str(),
            reserved = outcome.reserved,
            replayed = outcome.replayed,
            "reserve"
        );
        Ok(Response::new(ReserveResponse {
            reservation_id: id.as_str().to_owned(),
            reserved: outcome.reserved,
            reason: outcome.reason,
        }))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let id = RequestKey::parse("reservation_id", &request.get_ref().reservation_id)?;
        let released = self.store.release(id.as_str()).await?;
        Ok(Response::new(ReleaseResponse { released }))
    }

    async fn restock(&self, request: Request<RestockRequest>) -> Result<Response<Item>, Status> {
        let body = request.get_ref();
        let sku = Sku::parse("sku", &body.sku);
        let quantity = if (1..=1_000_000).contains(&body.quantity) {
            Ok(body.quantity)
        } else {
            Err(FieldViolation::new(
                "quantity",
                "must be between 1 and 1000000",
            ))
        };
        match (sku, quantity) {
            (Ok(sku), Ok(quantity)) => Ok(Response::new(item(
                self.store.restock(&sku, quantity).await?,
            ))),
            (sku, quantity) => Err(domain::invalid_argument(
                sku.err().into_iter().chain(quantity.err()).collect(),
            )),
        }
    }
}
