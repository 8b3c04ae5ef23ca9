//! `meshctl loadgen`: keeps a running mesh busy the way its users would, so a trace UI fills with
//! traces worth reading.
//!
//! Every user logs in (authorization code + PKCE, the password form filled in by us). Then, at a
//! fixed rate, one action at a time, a user places an order, reads one, lists, cancels the
//! oldest of their open orders, or tries something the mesh must refuse: reading another user's
//! order (NOT_FOUND), calling `inventory.Reserve` directly (PERMISSION_DENIED), an order with a
//! zero quantity (INVALID_ARGUMENT). Each action is the root span of its own trace (service
//! `loadgen`), so a trace shows loadgen → orders → auth and inventory.
//!
//! A place that got no answer (UNAVAILABLE, a deadline) is retried later with the same
//! idempotency key, as a careful client does, so an outage leaves no order PENDING; when the
//! run ends those retries are drained for up to 15 s before the summary.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use mesh_client::Transport;
use mesh_proto::inventory::v1::inventory_service_client::InventoryServiceClient;
use mesh_proto::inventory::v1::{ReservationLine, ReserveRequest};
use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_proto::orders::v1::{
    CancelOrderRequest, GetOrderRequest, ListOrdersRequest, Order, OrderLine, OrderState,
    PlaceOrderRequest,
};
use mesh_telemetry::trace::Telemetry;
use opentelemetry::trace::{FutureExt as _, TraceContextExt as _};
use rand::Rng as _;
use tonic::Code;

use crate::cli::LoadgenArgs;
use mesh_dev::oauth::login_with_password;

use super::connect_balanced;
use crate::session::Session;
use crate::{CliError, failed};

const SKUS: [&str; 4] = ["SKU-001", "SKU-002", "SKU-003", "SKU-004"];
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const DRAIN: Duration = Duration::from_secs(15);

/// A place the mesh has not answered yet; retried with the same key.
#[derive(Debug, Clone)]
struct Pending {
    key: String,
    lines: Vec<OrderLine>,
}

#[derive(Debug)]
struct User {
    name: String,
    password: String,
    session: Option<Session>,
    open: VecDeque<String>,
    pending: VecDeque<Pending>,
}

/// What one action came to.
enum Outcome {
    /// What the mesh should answer (including refusals it must make).
    Expected(String),
    /// No answer from a dependency: an outage, counted but not a fault.
    Unavailable(String),
    /// Anything else: a fault worth reading.
    Unexpected(String),
}

#[derive(Debug, Default)]
struct Tally {
    actions: u64,
    confirmed: u64,
    rejected: u64,
    cancelled: u64,
    refused: u64,
    unavailable: u64,
    unexpected: u64,
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} actions: {} confirmed, {} rejected (stock), {} cancelled, {} refused as expected, \
             {} unavailable, {} unexpected",
            self.actions,
            self.confirmed,
            self.rejected,
            self.cancelled,
            self.refused,
            self.unavailable,
            self.unexpected
        )
    }
}

struct Loadgen {
    users: Vec<User>,
    issuer: String,
    http: reqwest::Client,
    orders: OrdersServiceClient<Transport>,
    inventory: InventoryServiceClient<Transport>,
    telemetry: Telemetry,
    max_open: usize,
    tally: Tally,
}

fn parse_users(raw: &[String]) -> Result<Vec<User>, CliError> {
    raw.iter()
        .map(|entry| {
            let (name, password) = entry
                .split_once(':')
                .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                .ok_or_else(|| {
                    let name = entry.split(':').next().unwrap_or_default();
                    CliError::Usage(format!("--user {name:?}: expected NAME:PASSWORD"))
                })?;
            Ok(User {
                name: name.to_owned(),
                password: password.to_owned(),
                session: None,
                open: VecDeque::new(),
                pending: VecDeque::new(),
            })
        })
        .collect()
}

fn timed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    // A token the issuer sent that could not travel in a header is sent as none: the call is
    // then refused as unauthenticated, which the summary counts as unexpected.
    if let Ok(token) = auth_interceptor::BearerToken::new(token) {
        token.attach(&mut request);
    }
    request
}

fn no_answer(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
    )
}

fn state_name(order: &Order) -> &'static str {
    match OrderState::try_from(order.state) {
        Ok(OrderState::Confirmed) => "CONFIRMED",
        Ok(OrderState::Rejected) => "REJECTED",
        Ok(OrderState::Cancelled) => "CANCELLED",
        Ok(OrderState::Pending) => "PENDING",
        _ => "?",
    }
}

fn describe(lines: &[OrderLine]) -> String {
    lines
        .iter()
        .map(|l| format!("{}×{}", l.sku, l.quantity))
        .collect::<Vec<_>>()
        .join(",")
}

fn random_lines() -> Vec<OrderLine> {
    let mut rng = rand::rng();
    let first = rng.random_range(0..SKUS.len());
    let count = rng.random_range(1..=2);
    (0..count)
        .map(|i| OrderLine {
            sku: SKUS[(first + i) % SKUS.len()].to_owned(),
            quantity: rng.random_range(1..=3),
        })
        .collect()
}

impl Loadgen {
    /// A token for `audience` for user `index`, logging in again when the session is gone
    /// (first use, a revoked or expired refresh token).
    async fn token(&mut self, index: usize, audience: &str) -> Result<String, String> {
        let user = &mut self.users[index];
        if user.session.is_none() {
            let response = login_with_password(
                &self.http,
                &self.issuer,
                &user.name,
                &user.password,
                "orders inventory",
            )
            .await
            .map_err(|e| format!("login: {e}"))?;
            user.session = Session::from_login(&self.issuer, "orders", response);
        }
        let Some(session) = user.session.as_mut() else {
            return Err("login: the issuer returned no refresh token".into());
        };
        match session.access_token(&self.http, audience).await {
            Ok(token) => Ok(token),
            Err(error) => {
                user.session = None;
                Err(format!("refresh: {error}"))
            }
        }
    }

    /// Picks and runs one action for user `index`, as the root of a new trace.
    async fn act(&mut self, index: usize) {
        let roll = rand::rng().random_range(0..100);
        let user = &self.users[index];
        let action = if !user.pending.is_empty() || user.open.len() < self.max_open && roll < 40 {
            "place"
        } else if user.open.len() >= self.max_open || roll < 55 {
            "cancel"
        } else if roll < 68 {
            "get"
        } else if roll < 78 {
            "list"
        } else if roll < 86 {
            "peek"
        } else if roll < 93 {
            "reserve"
        } else {
            "invalid"
        };
        let others_open = self
            .users
            .iter()
            .enumerate()
            .any(|(other, u)| other != index && !u.open.is_empty());
        let action = match action {
            "cancel" | "get" if user.open.is_empty() => "list",
            "peek" if !others_open => "list",
            chosen => chosen,
        };
        self.perform(index, action).await;
    }

    /// Runs `action` for user `index` as the root of a new trace, and prints what came of it.
    async fn perform(&mut self, index: usize, action: &str) {
        let cx = self.telemetry.start_root(&format!("loadgen: {action}"));
        let started = Instant::now();
        let (detail, outcome) = self.run(index, action).with_context(cx.clone()).await;
        cx.span().end();
        self.tally.actions += 1;
        let (label, text) = match outcome {
            Outcome::Expected(text) => ("", text),
            Outcome::Unavailable(text) => {
                self.tally.unavailable += 1;
                ("", text)
            }
            Outcome::Unexpected(text) => {
                self.tally.unexpected += 1;
                ("UNEXPECTED ", text)
            }
        };
        println!(
            "{:<6} {action:<8} {detail:<24} {label}{text}  ({:.1} ms, trace {})",
            self.users[index].name,
            started.elapsed().as_secs_f64() * 1e3,
            cx.span().span_context().trace_id()
        );
    }

    async fn run(&mut self, index: usize, action: &str) -> (String, Outcome) {
        // The direct call to inventory carries a real inventory token, so what refuses it is
        // the caller's certificate, not the audience.
        let audience = if action == "reserve" {
            "inventory"
        } else {
            "orders"
        };
        let token = match self.token(index, audience).await {
            Ok(token) => token,
            Err(error) => return (String::new(), Outcome::Unavailable(error)),
        };
        match action {
            "place" => self.place(index, &token).await,
            "cancel" => self.cancel(index, &token).await,
            "get" => self.get(index, &token).await,
            "peek" => self.peek(index, &token).await,
            "reserve" => self.reserve_directly(&token).await,
            "invalid" => self.invalid(&token).await,
            _ => self.list(&token).await,
        }
    }

    async fn place(&mut self, index: usize, token: &str) -> (String, Outcome) {
        let user = &mut self.users[index];
        let (retry, order) = match user.pending.pop_front() {
            Some(pending) => (true, pending),
            None => (
                false,
                Pending {
                    key: mesh_dev::oauth::Pkce::new().verifier,
                    lines: random_lines(),
                },
            ),
        };
        let detail = format!(
            "{}{}",
            if retry { "retry " } else { "" },
            describe(&order.lines)
        );
        let request = PlaceOrderRequest {
            idempotency_key: order.key.clone(),
            lines: order.lines.clone(),
        };
        let outcome = match self.orders.place_order(timed(request, token)).await {
            Ok(answer) => {
                let placed = answer.into_inner();
                let state = state_name(&placed);
                match state {
                    "CONFIRMED" => {
                        self.tally.confirmed += 1;
                        user.open.push_back(placed.order_id.clone());
                    }
                    "REJECTED" => self.tally.rejected += 1,
                    // Still in flight at orders (its call to inventory failed): ask again.
                    _ => user.pending.push_back(order),
                }
                Outcome::Expected(format!("{state} {}", placed.order_id))
            }
            Err(status) if no_answer(&status) => {
                user.pending.push_back(order);
                Outcome::Unavailable(format!(
                    "{:?}: {} (will retry with the same key)",
                    status.code(),
                    status.message()
                ))
            }
            Err(status) => {
                Outcome::Unexpected(format!("{:?}: {}", status.code(), status.message()))
            }
        };
        (detail, outcome)
    }

    async fn cancel(&mut self, index: usize, token: &str) -> (String, Outcome) {
        let user = &mut self.users[index];
        let Some(order_id) = user.open.pop_front() else {
            return self.list(token).await;
        };
        let request = CancelOrderRequest {
            order_id: order_id.clone(),
        };
        let outcome = match self.orders.cancel_order(timed(request, token)).await {
            Ok(answer) if answer.get_ref().state == OrderState::Cancelled as i32 => {
                self.tally.cancelled += 1;
                Outcome::Expected("CANCELLED".into())
            }
            Ok(answer) => Outcome::Unexpected(format!("answered {}", state_name(answer.get_ref()))),
            Err(status) if no_answer(&status) => {
                user.open.push_front(order_id.clone());
                Outcome::Unavailable(format!("{:?}: {}", status.code(), status.message()))
            }
            Err(status) => {
                Outcome::Unexpected(format!("{:?}: {}", status.code(), status.message()))
            }
        };
        (order_id, outcome)
    }

    async fn get(&mut self, index: usize, token: &str) -> (String, Outcome) {
        let Some(order_id) = self.users[index].open.back().cloned() else {
            return self.list(token).await;
        };
        let request = GetOrderRequest {
            order_id: order_id.clone(),
        };
        let outcome = match self.orders.get_order(timed(request, token)).await {
            Ok(answer) => Outcome::Expected(state_name(answer.get_ref()).to_owned()),
            Err(status) => self.failure(status),
        };
        (order_id, outcome)
    }

    async fn list(&mut self, token: &str) -> (String, Outcome) {
        let request = ListOrdersRequest {
            page_size: 10,
            page_token: String::new(),
        };
        let outcome = match self.orders.list_orders(timed(request, token)).await {
            Ok(answer) => Outcome::Expected(format!("{} orders", answer.get_ref().orders.len())),
            Err(status) => self.failure(status),
        };
        ("own orders".into(), outcome)
    }

    /// Another user's order: must look exactly like a missing one.
    async fn peek(&mut self, index: usize, token: &str) -> (String, Outcome) {
        let theirs = self
            .users
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .find_map(|(_, user)| user.open.back().map(|id| (user.name.clone(), id.clone())));
        let Some((owner, order_id)) = theirs else {
            return self.list(token).await;
        };
        let request = GetOrderRequest { order_id };
        let outcome = match self.orders.get_order(timed(request, token)).await {
            Err(status) if status.code() == Code::NotFound => {
                self.tally.refused += 1;
                Outcome::Expected("NotFound, as it must be".into())
            }
            Ok(_) => Outcome::Unexpected("another user's order was shown".into()),
            Err(status) => self.failure(status),
        };
        (format!("{owner}'s order"), outcome)
    }

    /// The user's token straight at inventory, skipping orders: the caller's certificate is
    /// not orders', so the policy refuses it.
    async fn reserve_directly(&mut self, token: &str) -> (String, Outcome) {
        let request = ReserveRequest {
            reservation_id: "res_loadgen_direct".into(),
            lines: vec![ReservationLine {
                sku: SKUS[0].into(),
                quantity: 1,
            }],
        };
        let outcome = match self.inventory.reserve(timed(request, token)).await {
            Err(status) if status.code() == Code::PermissionDenied => {
                self.tally.refused += 1;
                Outcome::Expected("PermissionDenied, as it must be".into())
            }
            Ok(_) => Outcome::Unexpected("inventory reserved for a direct caller".into()),
            Err(status) => self.failure(status),
        };
        ("inventory.Reserve".into(), outcome)
    }

    async fn invalid(&mut self, token: &str) -> (String, Outcome) {
        let request = PlaceOrderRequest {
            idempotency_key: mesh_dev::oauth::Pkce::new().verifier,
            lines: vec![OrderLine {
                sku: SKUS[1].into(),
                quantity: 0,
            }],
        };
        let outcome = match self.orders.place_order(timed(request, token)).await {
            Err(status) if status.code() == Code::InvalidArgument => {
                self.tally.refused += 1;
                Outcome::Expected("InvalidArgument, as it must be".into())
            }
            Ok(_) => Outcome::Unexpected("an order of zero was accepted".into()),
            Err(status) => self.failure(status),
        };
        ("SKU-002×0".into(), outcome)
    }

    fn failure(&self, status: tonic::Status) -> Outcome {
        let text = format!("{:?}: {}", status.code(), status.message());
        if no_answer(&status) {
            Outcome::Unavailable(text)
        } else {
            Outcome::Unexpected(text)
        }
    }

    fn pending(&self) -> usize {
        self.users.iter().map(|u| u.pending.len()).sum()
    }
}

/// `meshctl loadgen`.
pub async fn run(args: LoadgenArgs) -> Result<(), CliError> {
    if !(args.rate > 0.0 && args.rate <= 1000.0) {
        return Err(CliError::Usage(format!(
            "--rate {}: expected actions per second in (0, 1000]",
            args.rate
        )));
    }
    let users = parse_users(&args.users)?;
    let telemetry =
        Telemetry::new(&args.telemetry, "loadgen").map_err(|e| CliError::Usage(e.to_string()))?;
    // Balanced: the load spreads over every replica behind each name, as a service's would.
    let orders = connect_balanced(
        &args.tls,
        "orders",
        &args.orders_addr,
        "--orders-addr",
        &telemetry,
    )?;
    let inventory = connect_balanced(
        &args.tls,
        "inventory",
        &args.inventory_addr,
        "--inventory-addr",
        &telemetry,
    )?;
    let mut load = Loadgen {
        users,
        http: super::https(super::ca_file(&args.tls)?, &args.issuer, args.issuer_ip)?,
        issuer: args.issuer,
        orders: OrdersServiceClient::new(orders),
        inventory: InventoryServiceClient::new(inventory),
        telemetry,
        max_open: args.max_open.max(1),
        tally: Tally::default(),
    };
    println!(
        "loadgen: {} users, {} actions/s{}; Ctrl-C or SIGTERM to stop",
        load.users.len(),
        args.rate,
        args.duration
            .map(|s| format!(", for {s} s"))
            .unwrap_or_default()
    );

    let stop = async {
        match args.duration {
            Some(seconds) => {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(seconds)) => {}
                    () = mesh_service::shutdown_signal() => {}
                }
            }
            None => mesh_service::shutdown_signal().await,
        }
    };
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_report = Instant::now() + Duration::from_secs(30);
    let mut turn = 0usize;
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticker.tick() => {}
        }
        load.act(turn % load.users.len()).await;
        turn += 1;
        if Instant::now() >= next_report {
            println!("loadgen: {}; {} pending", load.tally, load.pending());
            next_report += Duration::from_secs(30);
        }
    }

    // Finish what an outage left open: every pending place is asked again with its key.
    let deadline = Instant::now() + DRAIN;
    while load.pending() > 0 && Instant::now() < deadline {
        for index in 0..load.users.len() {
            if !load.users[index].pending.is_empty() {
                load.perform(index, "place").await;
            }
        }
        if load.pending() > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let pending = load.pending();
    println!("loadgen summary: {}; {pending} pending", load.tally);
    load.telemetry.shutdown(Duration::from_secs(3)).await;
    if pending > 0 {
        return Err(failed(format!(
            "{pending} orders are still PENDING after {} s of retries",
            DRAIN.as_secs()
        )));
    }
    Ok(())
}
