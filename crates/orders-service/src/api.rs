//! `mesh.orders.v1.OrdersService`: orders placed and cancelled on behalf of the calling user.

use std::time::Duration;

use auth_interceptor::error::refused;
use auth_interceptor::{BearerToken, Principal, TokenExchanger, User};
use mesh_client::Transport;
use mesh_proto::domain::{self, FieldViolation, RequestKey};
use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_proto::inventory::v1::{ReleaseRequest, ReservationLine, ReserveRequest};
use mesh_proto::orders::v1::orders_service_server::OrdersService;
use mesh_proto::orders::v1::{
    CancelOrderRequest, GetOrderRequest, ListOrdersRequest, ListOrdersResponse, Order, OrderLine,
    OrderState, PlaceOrderRequest,
};
use tonic::{Code, Request, Response, Status};

use crate::store::{Store, StoreError, StoredOrder};

/// The scope that lets a user read and cancel every order, not just their own.
pub const ADMIN_SCOPE: &str = "orders:admin";

/// The longest orders waits for inventory; less when the caller's deadline is nearer (the
/// mesh client carries the remaining deadline, [`mesh_client::deadline`]).
const INVENTORY_BUDGET: Duration = Duration::from_secs(5);

/// The gRPC API: a store, and the way to inventory on the caller's behalf.
#[derive(Debug, Clone)]
pub struct OrdersApi {
    store: Store,
    exchanger: TokenExchanger,
    inventory: Transport,
    placed: Option<opentelemetry::metrics::Counter<u64>>,
}

impl OrdersApi {
    /// The API over `store`, reaching inventory over `inventory` with tokens from `exchanger`.
    pub fn new(store: Store, exchanger: TokenExchanger, inventory: Transport) -> Self {
        Self {
            store,
            exchanger,
            inventory,
            placed: None,
        }
    }

    /// Also counts PlaceOrder outcomes in `mesh.orders.placed`: `confirmed`, `rejected`,
    /// `pending` (inventory did not answer in time; a retry with the same key finishes it), or
    /// the gRPC code of a refusal (`unavailable`, `invalid_argument`, ...).
    pub fn with_metrics(mut self, meter: &opentelemetry::metrics::Meter) -> Self {
        self.placed = Some(
            meter
                .u64_counter("mesh.orders.placed")
                .with_description("PlaceOrder calls, by outcome")
                .build(),
        );
        self
    }

    /// PlaceOrder: validated, stored once per idempotency key, reserved as the caller.
    async fn place(&self, request: Request<PlaceOrderRequest>) -> Result<Response<Order>, Status> {
        let user = Principal::user(&request)?;
        let body = request.into_inner();
        let key = RequestKey::parse("idempotency_key", &body.idempotency_key);
        let lines = domain::parse_lines(
            "lines",
            body.lines.iter().map(|l| (l.sku.as_str(), l.quantity)),
        );
        let (key, lines) = match (key, lines) {
            (Ok(key), Ok(lines)) => (key, lines),
            (key, lines) => {
                let mut violations: Vec<FieldViolation> = key.err().into_iter().collect();
                violations.extend(lines.err().unwrap_or_default());
                return Err(domain::invalid_argument(violations));
            }
        };
        // Act for the caller before storing anything: a token the issuer refuses leaves no order.
        let authorization = self.delegate(&user).await?;
        let order = self
            .store
            .create_or_get(user.subject(), &key, &lines)
            .await?;
        // A retry of an order that already settled returns it as it is: one reservation.
        let order = if order.state == OrderState::Pending {
            self.reserve(&authorization, order).await?
        } else {
            order
        };
        Ok(Response::new(to_proto(order)))
    }

    fn count_placed(&self, answer: &Result<Response<Order>, Status>) {
        let Some(placed) = &self.placed else {
            return;
        };
        let outcome = match answer {
            Ok(order) => match order.get_ref().state() {
                OrderState::Confirmed => "confirmed".to_owned(),
                OrderState::Rejected => "rejected".to_owned(),
                OrderState::Cancelled => "cancelled".to_owned(),
                _ => "pending".to_owned(),
            },
            Err(status) => mesh_telemetry::metrics::code_label(status.code()),
        };
        placed.add(1, &[opentelemetry::KeyValue::new("outcome", outcome)]);
    }

    /// Reserves the order's stock in inventory as the caller (`authorization`, from
    /// [`OrdersApi::delegate`]), and records the outcome. Leaves the order PENDING when inventory
    /// cannot be reached, so a retry can finish it.
    async fn reserve(
        &self,
        authorization: &BearerToken,
        order: StoredOrder,
    ) -> Result<StoredOrder, Status> {
        let mut request = Request::new(ReserveRequest {
            reservation_id: order.reservation_id(),
            lines: order
                .lines
                .iter()
                .map(|l| ReservationLine {
                    sku: l.sku.to_string(),
                    quantity: l.quantity.get(),
                })
                .collect(),
        });
        authorization.attach(&mut request);
        request.set_timeout(INVENTORY_BUDGET);
        let outcome = InventoryServiceClient::new(self.inventory.clone())
            .reserve(request)
            .await
            .map_err(|s| dependency_failure("inventory", &s))?
            .into_inner();
        let (state, reason) = if outcome.reserved {
            (OrderState::Confirmed, String::new())
        } else {
            (OrderState::Rejected, outcome.reason)
        };
        tracing::info!(order_id = %order.order_id, state = state.as_str_name(), "reservation settled");
        let settled = self
            .store
            .transition(&order.order_id, &[OrderState::Pending], state, &reason)
            .await?
            .ok_or_else(|| Status::internal("order vanished"))?;
        if settled.state == OrderState::Cancelled && outcome.reserved {
            // Cancelled while the reservation was in flight: give the stock back.
            self.release(authorization, &settled).await?;
        }
        Ok(settled)
    }

    /// Returns the order's reserved stock (a no-op in inventory when nothing is reserved).
    async fn release(
        &self,
        authorization: &BearerToken,
        order: &StoredOrder,
    ) -> Result<(), Status> {
        let mut request = Request::new(ReleaseRequest {
            reservation_id: order.reservation_id(),
        });
        authorization.attach(&mut request);
        request.set_timeout(INVENTORY_BUDGET);
        InventoryServiceClient::new(self.inventory.clone())
            .release(request)
            .await
            .map_err(|s| dependency_failure("inventory", &s))?;
        Ok(())
    }

    /// A token for inventory on behalf of the caller (RFC 8693 exchange, actor = orders).
    ///
    /// Asked before anything is stored or reserved: the issuer is the one who knows whether the
    /// caller's token was revoked (or has expired since the edge checked it), and its refusal is
    /// the caller's UNAUTHENTICATED, not our internal error.
    async fn delegate(&self, user: &User) -> Result<BearerToken, Status> {
        self.exchanger
            .exchange(user, "inventory", &["inventory:reserve"])
            .await
            .map_err(|status| {
                if status.code() == Code::Unauthenticated {
                    tracing::warn!(subject = user.subject(), reason = status.message(), "the issuer refused to act for the caller");
                    refused(
                        Status::unauthenticated(
                            "the issuer no longer accepts this token (revoked or expired); log in again",
                        ),
                        "subject_token_refused",
                    )
                } else {
                    dependency_failure("auth", &status)
                }
            })
    }

    /// The order if the caller may see it; NOT_FOUND otherwise, so ids cannot be probed.
    async fn visible(&self, user: &User, order_id: &str) -> Result<StoredOrder, Status> {
        let not_found = || Status::not_found(format!("no order {order_id}"));
        if order_id.is_empty() || order_id.len() > 64 {
            return Err(FieldViolation::new("order_id", "must be 1 to 64 characters").into());
        }
        let order = self.store.get(order_id).await?.ok_or_else(not_found)?;
        if user.is(&order.owner) || user.has_scope(ADMIN_SCOPE) {
            Ok(order)
        } else {
            // Refused, and audited as such; the caller cannot tell it from a missing order.
            Err(refused(not_found(), "not_owner"))
        }
    }
}

/// How a failed call to a dependency is reported: honestly, as the dependency's unavailability
/// when it could not be reached, as an internal error when it refused us.
fn dependency_failure(dependency: &str, status: &Status) -> Status {
    match status.code() {
        // Out of time (the caller's deadline, or our own budget for inventory): say so, and
        // how to finish the order.
        Code::DeadlineExceeded => Status::deadline_exceeded(format!(
            "{dependency} did not answer in time; retry with the same idempotency key"
        )),
        Code::Unavailable | Code::Cancelled | Code::Unknown => Status::unavailable(format!(
            "{dependency} is unavailable; retry with the same idempotency key"
        )),
        Code::InvalidArgument | Code::AlreadyExists => {
            Status::invalid_argument(format!("{dependency}: {}", status.message()))
        }
        _ => {
            tracing::error!(dependency, code = ?status.code(), message = status.message(), "dependency refused the call");
            Status::internal(format!("{dependency} refused the call"))
        }
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::KeyReused => Status::already_exists(
                "idempotency_key: already used for an order with other lines",
            ),
            other => {
                tracing::error!(error = %other, "orders store failed");
                Status::internal("storage failure")
            }
        }
    }
}

fn to_proto(order: StoredOrder) -> Order {
    Order {
        order_id: order.order_id,
        owner: order.owner,
        lines: order
            .lines
            .into_iter()
            .map(|l| OrderLine {
                sku: l.sku.to_string(),
                quantity: l.quantity.get(),
            })
            .collect(),
        state: order.state as i32,
        reason: order.reason,
        created_at: order.created_at,
    }
}

#[tonic::async_trait]
impl OrdersService for OrdersApi {
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let answer = self.place(request).await;
        self.count_placed(&answer);
        answer
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let user = Principal::user(&request)?;
        let order = self.visible(&user, &request.get_ref().order_id).await?;
        Ok(Response::new(to_proto(order)))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let user = Principal::user(&request)?;
        let body = request.get_ref();
        let limit = domain::parse_page_size("page_size", body.page_size, 20, 100)?;
        let before = match body.page_token.as_str() {
            "" => None,
            token => Some(token.parse::<i64>().map_err(|_| {
                FieldViolation::new("page_token", "not a token from a previous response")
            })?),
        };
        let owner = (!user.has_scope(ADMIN_SCOPE)).then(|| user.subject());
        let orders = self.store.list(owner, before, limit).await?;
        let next_page_token = match orders.last() {
            Some(last) if orders.len() == limit as usize => last.seq.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(ListOrdersResponse {
            orders: orders.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let user = Principal::user(&request)?;
        let order = self.visible(&user, &request.get_ref().order_id).await?;
        if order.state == OrderState::Rejected {
            return Err(Status::failed_precondition(
                "a rejected order holds no stock to cancel",
            ));
        }
        let authorization = self.delegate(&user).await?;
        // Cancelled first, released after. A retried PlaceOrder racing this cancel then either
        // finds the order cancelled before it confirms (and gives back what it reserved) or its
        // reservation is already made when the release below runs: either way a cancelled order
        // holds no stock. Releasing the other way round let a reservation land in between.
        let order = self
            .store
            .transition(
                &order.order_id,
                &[OrderState::Pending, OrderState::Confirmed],
                OrderState::Cancelled,
                "",
            )
            .await?
            .ok_or_else(|| Status::internal("order vanished"))?;
        if order.state != OrderState::Cancelled {
            return Err(Status::failed_precondition(
                "a rejected order holds no stock to cancel",
            ));
        }
        // Also for an order cancelled before: a cancel whose release failed is finished by the
        // next one (a release of nothing is a no-op at inventory).
        self.release(&authorization, &order).await?;
        tracing::info!(order_id = %order.order_id, by = user.subject(), "order cancelled");
        Ok(Response::new(to_proto(order)))
    }
}
