//! OpenTelemetry for gRPC: one tracer provider per service, and tower layers that continue the
//! caller's W3C trace context on the server and pass it on from the client.
//!
//! The layers use the OpenTelemetry API directly (a span per RPC, named `package.Service/Method`,
//! with the RPC semantic-convention attributes), so several services in one process (the demo,
//! the tests) each report under their own `service.name`. Inside a request the OTel context is
//! the current one (`Context::current()`), which the client layer reads to parent its span and
//! the auth layer reads to stamp audit records with the trace id. Log lines emitted inside a
//! request carry `trace_id` and `span_id` through a `tracing` span.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{
    FutureExt as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};
use tower::{Layer, Service};
use tracing::Instrument as _;

pub use crate::error::TelemetryError;
pub(crate) use crate::metrics::rpc_names;
use crate::metrics::{CallTimer, KnownMethods, Metrics};

/// The OTLP exporter and service name, from the OpenTelemetry environment variables.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TelemetryFlags {
    /// OTLP/gRPC collector, e.g. `http://jaeger:4317`; spans are not exported when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of this process's spans (default: the binary's service name).
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,
    /// Where metrics go besides `/metrics`: `otlp` (the OTLP endpoint above, the default) or
    /// `none` (a collector that takes traces only, such as Jaeger).
    #[arg(long, env = "OTEL_METRICS_EXPORTER", value_enum, default_value_t = MetricsExporter::Otlp)]
    pub metrics_exporter: MetricsExporter,
}

/// `OTEL_METRICS_EXPORTER`'s values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsExporter {
    /// Push over OTLP to `OTEL_EXPORTER_OTLP_ENDPOINT`, when it is set.
    #[default]
    Otlp,
    /// Do not push; Prometheus scrapes `/metrics`.
    None,
}

/// A service's tracer. Spans are batched and exported in the background (bounded queue of 2,048;
/// when it is full, spans are dropped and counted, never waited for), so an unreachable or slow
/// collector never slows a request.
#[derive(Debug, Clone)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    service: String,
    metrics: Metrics,
}

impl Telemetry {
    /// A tracer for `flags.service_name` (or `default_service`), exporting to
    /// `flags.otlp_endpoint` when set. Must be called inside a Tokio runtime.
    pub fn new(flags: &TelemetryFlags, default_service: &str) -> Result<Self, TelemetryError> {
        let service = flags
            .service_name
            .clone()
            .unwrap_or_else(|| default_service.to_owned());
        let resource = Resource::builder()
            .with_service_name(service.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let metrics_endpoint = match flags.metrics_exporter {
            MetricsExporter::Otlp => flags.otlp_endpoint.as_deref(),
            MetricsExporter::None => None,
        };
        let metrics = Metrics::new(resource.clone(), metrics_endpoint)?;
        let mut builder = SdkTracerProvider::builder().with_resource(resource);
        if let Some(endpoint) = &flags.otlp_endpoint {
            use opentelemetry_otlp::WithExportConfig as _;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(Duration::from_secs(3))
                .build()
                .map_err(|source| TelemetryError::Exporter {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            let config = BatchConfigBuilder::default()
                .with_max_queue_size(2048)
                .with_scheduled_delay(Duration::from_millis(200))
                .build();
            builder = builder.with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(config)
                    .build(),
            );
        }
        let provider = builder.build();
        let tracer = provider.tracer("mesh");
        Ok(Self {
            provider,
            tracer,
            service,
            metrics,
        })
    }

    /// The service's metrics (its meter, and their Prometheus rendering).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The `service.name`.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The server layer: continue the caller's trace, one server span per RPC, and its
    /// duration in `rpc.server.call.duration` (methods outside `known` labelled `_OTHER`).
    pub fn server_layer(&self, known: KnownMethods) -> ServerTraceLayer {
        ServerTraceLayer {
            tracer: self.tracer.clone(),
            http: false,
            metrics: Some((self.metrics.clone(), known)),
        }
    }

    /// The same for plain HTTP endpoints (the auth service's OAuth2 side): spans named
    /// `METHOD /path` with the HTTP semantic-convention attributes, error on 5xx.
    pub fn http_server_layer(&self) -> ServerTraceLayer {
        ServerTraceLayer {
            tracer: self.tracer.clone(),
            http: true,
            metrics: None,
        }
    }

    /// The client layer for calls to `peer` (its address, for `server.address`).
    /// Its duration goes to `rpc.client.call.duration`.
    pub fn client_layer(&self, peer: &str) -> ClientTraceLayer {
        ClientTraceLayer {
            tracer: self.tracer.clone(),
            peer: peer.to_owned(),
            metrics: self.metrics.clone(),
        }
    }

    /// Starts an internal span that roots a new trace (a demo step, a client's operation) and
    /// returns its context; run the work with `FutureExt::with_context`, then end the span with
    /// `cx.span().end()`.
    pub fn start_root(&self, name: &str) -> Context {
        let span = self
            .tracer
            .span_builder(name.to_owned())
            .with_kind(SpanKind::Internal)
            .start_with_context(&self.tracer, &Context::new());
        Context::new().with_span(span)
    }

    /// Exports what is queued, waiting at most `grace`.
    pub async fn flush(&self, grace: Duration) {
        let provider = self.provider.clone();
        let flush = tokio::task::spawn_blocking(move || provider.force_flush());
        let _ = tokio::time::timeout(grace, flush).await;
    }

    /// Flushes and stops exporting, waiting at most `grace` (an unreachable collector cannot
    /// hold shutdown up).
    pub async fn shutdown(&self, grace: Duration) {
        let provider = self.provider.clone();
        let stop = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(grace));
        let _ = tokio::time::timeout(grace + Duration::from_millis(500), stop).await;
        self.metrics.shutdown(grace).await;
    }
}

fn propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The gRPC status code in a response's headers: what a trailers-only answer (every error)
/// carries; `None` when the status is still to come in the trailers. The one reader of
/// `grpc-status` in the mesh (the auth layer and the balancer use it too); an unreadable value
/// is `Unknown`, as tonic reads it.
pub fn status_in_headers(headers: &HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|value| tonic::Code::from_bytes(value.as_bytes()))
}

/// The gRPC status of a response: from its headers (errors are trailers-only responses), else
/// OK (a streamed success reports its status in the trailers).
fn grpc_status(headers: &HeaderMap) -> (i64, Option<String>) {
    let code = status_in_headers(headers).map_or(0, |code| i64::from(code as i32));
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode);
    (code, message)
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

fn finish(cx: &Context, code: i64, message: Option<String>) {
    let span = cx.span();
    span.set_attribute(KeyValue::new("rpc.grpc.status_code", code));
    if code != 0 {
        span.set_status(Status::error(message.unwrap_or_default()));
    }
    span.end();
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// See [`Telemetry::server_layer`].
#[derive(Debug, Clone)]
pub struct ServerTraceLayer {
    tracer: SdkTracer,
    http: bool,
    metrics: Option<(Metrics, KnownMethods)>,
}

impl<S> Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace {
            inner,
            tracer: self.tracer.clone(),
            http: self.http,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`ServerTraceLayer`] produces.
#[derive(Debug, Clone)]
pub struct ServerTrace<S> {
    inner: S,
    tracer: SdkTracer,
    http: bool,
    metrics: Option<(Metrics, KnownMethods)>,
}

impl<S, B, R> Service<Request<B>> for ServerTrace<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let timer = self
            .metrics
            .as_ref()
            .map(|(metrics, known)| CallTimer::server(metrics, known, request.uri().path()));
        // A malformed or oversized traceparent/baggage is ignored: the request starts a trace.
        let parent = propagator().extract(&HeaderExtractor(request.headers()));
        let (name, mut attributes) = if self.http {
            let path = request.uri().path().to_owned();
            (
                format!("{} {path}", request.method()),
                vec![
                    KeyValue::new("http.request.method", request.method().to_string()),
                    KeyValue::new("url.path", path),
                ],
            )
        } else {
            // A served method's names were made once (`KnownMethods`); any other path is named
            // as it came, since span names are not metric labels.
            let path = request.uri().path();
            let (service, method) = self
                .metrics
                .as_ref()
                .and_then(|(_, known)| known.known(path))
                .unwrap_or_else(|| {
                    let (service, method) = rpc_names(path);
                    (service.into(), method.into())
                });
            (
                format!("{}/{}", service.as_str(), method.as_str()),
                vec![
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", service),
                    KeyValue::new("rpc.method", method),
                ],
            )
        };
        if let Some(host) = request.uri().host() {
            attributes.push(KeyValue::new("server.address", host.to_owned()));
        }
        let span = self
            .tracer
            .span_builder(name.clone())
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let cx = parent.with_span(span);
        let span_context = cx.span().span_context().clone();
        let http = self.http;
        let log_span = tracing::info_span!(
            "rpc",
            rpc = %name,
            trace_id = %span_context.trace_id(),
            span_id = %span_context.span_id(),
        );
        Box::pin(async move {
            let result = inner
                .call(request)
                .with_context(cx.clone())
                .instrument(log_span)
                .await;
            match &result {
                Ok(response) if http => {
                    let status = response.status();
                    let span = cx.span();
                    span.set_attribute(KeyValue::new(
                        "http.response.status_code",
                        i64::from(status.as_u16()),
                    ));
                    if status.is_server_error() {
                        span.set_status(Status::error(status.to_string()));
                    }
                    span.end();
                }
                Ok(response) => {
                    let (code, message) = grpc_status(response.headers());
                    if let Some(timer) = timer {
                        timer.finish(code);
                    }
                    finish(&cx, code, message);
                }
                Err(_) => {
                    if let Some(timer) = timer {
                        timer.finish(2);
                    }
                    finish(&cx, 2, Some("server error".into()));
                }
            }
            result
        })
    }
}

/// See [`Telemetry::client_layer`].
#[derive(Debug, Clone)]
pub struct ClientTraceLayer {
    tracer: SdkTracer,
    peer: String,
    metrics: Metrics,
}

impl<S> Layer<S> for ClientTraceLayer {
    type Service = ClientTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTrace {
            inner,
            tracer: self.tracer.clone(),
            peer: self.peer.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`ClientTraceLayer`] produces.
#[derive(Debug, Clone)]
pub struct ClientTrace<S> {
    inner: S,
    tracer: SdkTracer,
    peer: String,
    metrics: Metrics,
}

impl<S, B, R> Service<Request<B>> for ClientTrace<S>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let parent = Context::current();
        let timer = CallTimer::client(&self.metrics, request.uri().path(), &self.peer);
        let (service, method) = rpc_names(request.uri().path());
        let span = self
            .tracer
            .span_builder(format!("{service}/{method}"))
            .with_kind(SpanKind::Client)
            .with_attributes(vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", service),
                KeyValue::new("rpc.method", method),
                KeyValue::new("server.address", self.peer.clone()),
            ])
            .start_with_context(&self.tracer, &parent);
        let cx = parent.with_span(span);
        propagator().inject_context(&cx, &mut HeaderInjector(request.headers_mut()));
        Box::pin(async move {
            let result = inner.call(request).await;
            match &result {
                Ok(response) => {
                    let (code, message) = grpc_status(response.headers());
                    timer.finish(code);
                    finish(&cx, code, message);
                }
                // Unreachable peer: UNAVAILABLE.
                Err(_) => {
                    timer.finish(14);
                    finish(&cx, 14, Some("transport error".into()));
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_statuses_are_read_from_paths_and_headers() {
        assert_eq!(
            rpc_names("/shop.v1.Shop/Buy"),
            ("shop.v1.Shop".into(), "Buy".into())
        );
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers).0, 0);
        headers.insert("grpc-status", http::HeaderValue::from_static("7"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("permission%20denied"),
        );
        assert_eq!(grpc_status(&headers), (7, Some("permission denied".into())));
    }
}
