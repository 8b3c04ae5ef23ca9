//! Deadlines across hops: the time a caller allows travels with every call it causes.
//!
//! A server takes the caller's `grpc-timeout` (capped by its own longest request time) as the
//! request's deadline, runs the handler inside [`scope`], and answers DEADLINE_EXCEEDED at the
//! deadline, dropping the handler's work ([`ServerDeadlineLayer`]). Every outgoing mesh call the
//! handler makes ([`ClientDeadlineLayer`]) carries what is left of that deadline less a margin
//! (for the answer's way back), and fails at once, with DEADLINE_EXCEEDED, when nothing is left;
//! a call made outside any request gets a default budget per hop. So no hop works for a caller
//! that has stopped waiting.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tonic::body::Body;
use tower::{Layer, Service};

tokio::task_local! {
    static DEADLINE: Instant;
}

/// What a client keeps for the answer's way back: an outgoing call gets its caller's remaining
/// time less this.
pub const HOP_MARGIN: Duration = Duration::from_millis(5);

/// The budget of an outgoing call made outside any request (a background task, a CLI).
pub const DEFAULT_HOP_BUDGET: Duration = Duration::from_secs(5);

/// The deadline of the request being served on this task, if any.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok()
}

/// Runs `work` with `deadline` as the request's deadline, for every call it makes.
pub async fn scope<F: Future>(deadline: Instant, work: F) -> F::Output {
    DEADLINE.scope(deadline, work).await
}

/// `grpc-timeout`: up to 8 digits and a unit, H, M, S, m (milli), u (micro), n (nano).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    // ASCII only: a header from outside may end in a multi-byte character (found by fuzzing).
    if !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `duration` as a `grpc-timeout` value, in the finest unit that fits 8 digits.
pub fn grpc_timeout_value(duration: Duration) -> String {
    let micros = duration.as_micros();
    if micros < 100_000_000 {
        return format!("{}u", micros.max(1));
    }
    let millis = duration.as_millis();
    if millis < 100_000_000 {
        return format!("{millis}m");
    }
    format!("{}S", duration.as_secs().min(99_999_999))
}

/// The deadline a request's headers ask for, capped at `longest` from now.
fn deadline_of(headers: &http::HeaderMap, longest: Duration) -> Instant {
    let asked = headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or(longest, |asked| asked.min(longest));
    Instant::now() + asked
}

fn deadline_exceeded(message: &str) -> Response<Body> {
    tonic::Status::deadline_exceeded(message.to_owned()).into_http()
}

/// Server side: the request's deadline from its `grpc-timeout`, at most `longest`; the handler
/// runs inside [`scope`] and is dropped at the deadline with DEADLINE_EXCEEDED.
///
/// It sits inside tonic's own timeout, which would answer CANCELLED at the same instant; it
/// fires first because its deadline is taken a moment earlier (`SERVER_EDGE`), and tonic polls
/// the inner future before its own timer.
#[derive(Debug, Clone, Copy)]
pub struct ServerDeadlineLayer {
    longest: Duration,
}

/// How much earlier than tonic's own timeout the server's deadline falls.
const SERVER_EDGE: Duration = Duration::from_millis(2);

impl ServerDeadlineLayer {
    /// Deadlines of at most `longest` (the server's request timeout).
    pub fn new(longest: Duration) -> Self {
        Self { longest }
    }
}

impl<S> Layer<S> for ServerDeadlineLayer {
    type Service = ServerDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerDeadline {
            inner,
            longest: self.longest,
        }
    }
}

/// The service [`ServerDeadlineLayer`] produces.
#[derive(Debug, Clone)]
pub struct ServerDeadline<S> {
    inner: S,
    longest: Duration,
}

impl<S, B> Service<Request<B>> for ServerDeadline<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let deadline = deadline_of(request.headers(), self.longest) - SERVER_EDGE;
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let work = inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, scope(deadline, work)).await {
                Ok(answer) => answer,
                Err(_) => {
                    tracing::info!("deadline exceeded: the handler's work is dropped");
                    Ok(deadline_exceeded("deadline exceeded"))
                }
            }
        })
    }
}

/// Client side: an outgoing call carries its caller's remaining time less [`HOP_MARGIN`] (or
/// [`DEFAULT_HOP_BUDGET`] outside any request) as `grpc-timeout`, never more than the call
/// itself asked for, fails at once when nothing is left, and is cut at that budget.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientDeadlineLayer;

impl<S> Layer<S> for ClientDeadlineLayer {
    type Service = ClientDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientDeadline { inner }
    }
}

/// The service [`ClientDeadlineLayer`] produces.
#[derive(Debug, Clone)]
pub struct ClientDeadline<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for ClientDeadline<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let now = Instant::now();
        let mut budget = match current() {
            Some(deadline) => deadline
                .saturating_duration_since(now)
                .saturating_sub(HOP_MARGIN),
            None => DEFAULT_HOP_BUDGET,
        };
        // A call that asked for less keeps its own timeout.
        if let Some(own) = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
        {
            budget = budget.min(own);
        }
        if budget.is_zero() {
            return Box::pin(async { Ok(deadline_exceeded("no time left for this call")) });
        }
        if let Ok(value) = http::HeaderValue::from_str(&grpc_timeout_value(budget)) {
            request.headers_mut().insert("grpc-timeout", value);
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let call = inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(now + budget, call).await {
                Ok(answer) => answer,
                Err(_) => Ok(deadline_exceeded(
                    "deadline exceeded waiting for the answer",
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_unit_and_refuse_garbage() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "123456789S", "5x", "-1S", "+5S", "1 S", "5é", "é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn written_timeouts_read_back_within_a_microsecond() {
        for duration in [
            Duration::from_micros(1),
            Duration::from_millis(50),
            Duration::from_secs(30),
            Duration::from_secs(3 * 86_400),
        ] {
            let value = grpc_timeout_value(duration);
            let back = parse_grpc_timeout(&value).expect("parses");
            assert!(
                back <= duration && duration - back < Duration::from_secs(1),
                "{value}"
            );
        }
    }

    #[tokio::test]
    async fn the_deadline_is_seen_inside_its_scope_only() {
        assert_eq!(current(), None);
        let deadline = Instant::now() + Duration::from_secs(1);
        assert_eq!(scope(deadline, async { current() }).await, Some(deadline));
        assert_eq!(current(), None);
    }
}
