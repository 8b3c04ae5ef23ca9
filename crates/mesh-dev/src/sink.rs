//! An OTLP/gRPC trace receiver built on the official OpenTelemetry proto types: what the demo
//! and the tests export to, and what `meshctl trace-sink` runs on its own. It keeps the spans in
//! memory and draws a trace as a waterfall.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// A span as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// Hex trace id.
    pub trace_id: String,
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id; empty for a root.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// 1 internal, 2 server, 3 client (OTLP `SpanKind`).
    pub kind: i32,
    /// Start, nanoseconds since the epoch.
    pub start_ns: u64,
    /// End, nanoseconds since the epoch.
    pub end_ns: u64,
    /// 0 unset, 1 ok, 2 error (OTLP `StatusCode`).
    pub status: i32,
    /// Attributes, stringified.
    pub attributes: HashMap<String, String>,
    /// Event names with their attributes.
    pub events: Vec<(String, HashMap<String, String>)>,
}

/// The spans received so far.
#[derive(Debug, Clone, Default)]
pub struct TraceSink {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(values: &[KeyValue]) -> HashMap<String, String> {
    values
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for TraceSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        start_ns: span.start_time_unix_nano,
                        end_ns: span.end_time_unix_nano,
                        status: span.status.map_or(0, |s| s.code),
                        attributes: attributes(&span.attributes),
                        events: span
                            .events
                            .into_iter()
                            .map(|e| (e.name, attributes(&e.attributes)))
                            .collect(),
                    });
                }
            }
        }
        self.spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl TraceSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// The gRPC service to serve.
    pub fn service(&self) -> TraceServiceServer<Self> {
        TraceServiceServer::new(self.clone())
    }

    /// Serves OTLP/gRPC (plaintext, as collectors do) on `listener` until `shutdown`.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown,
            )
            .await
    }

    /// Every span received.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The spans of one trace, by start time.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        let mut spans: Vec<_> = self
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        spans.sort_by_key(|s| s.start_ns);
        spans
    }

    /// The services that sent spans of one trace, in the order their first span started.
    pub fn services(&self, trace_id: &str) -> Vec<String> {
        let mut services: Vec<String> = Vec::new();
        for span in self.trace(trace_id) {
            if !services.contains(&span.service) {
                services.push(span.service);
            }
        }
        services
    }

    /// Drops every span received so far and says how many there were (a benchmark's receiver
    /// counts spans without keeping them).
    pub fn drain(&self) -> usize {
        std::mem::take(&mut *self.spans.lock().unwrap_or_else(|p| p.into_inner())).len()
    }

    /// Drops the spans of one trace (a long-running sink forgets what it has shown).
    pub fn forget(&self, trace_id: &str) {
        self.spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| s.trace_id != trace_id);
    }

    /// Waits until `done` holds for the received spans, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.spans()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Draws one trace: a line per span, indented under its parent, with service, name, kind,
    /// a bar placed on the trace's time line, duration and status.
    pub fn waterfall(&self, trace_id: &str) -> String {
        const WIDTH: u64 = 32;
        let spans = self.trace(trace_id);
        let Some(start) = spans.iter().map(|s| s.start_ns).min() else {
            return format!("trace {trace_id}: no spans\n");
        };
        let end = spans.iter().map(|s| s.end_ns).max().unwrap_or(start);
        let total = (end - start).max(1);
        let ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
        let mut out = format!("trace {trace_id}  {:.2} ms\n", total as f64 / 1e6);
        // Roots (and orphans whose parent was not received) first, then depth-first.
        let mut stack: Vec<(usize, usize)> = spans
            .iter()
            .enumerate()
            .filter(|(_, s)| !ids.contains(&s.parent_span_id.as_str()))
            .map(|(i, _)| (i, 0))
            .rev()
            .collect();
        while let Some((index, depth)) = stack.pop() {
            let span = &spans[index];
            let from = (span.start_ns - start) * WIDTH / total;
            let to = ((span.end_ns - start) * WIDTH / total)
                .max(from + 1)
                .min(WIDTH);
            let bar: String = (0..WIDTH)
                .map(|i| if i >= from && i < to { '█' } else { ' ' })
                .collect();
            let kind = match span.kind {
                2 => "server",
                3 => "client",
                _ => "internal",
            };
            let status = match span.status {
                2 => format!(
                    "ERROR {}",
                    span.attributes
                        .get("rpc.grpc.status_code")
                        .cloned()
                        .unwrap_or_default()
                ),
                _ => "ok".to_owned(),
            };
            let name = format!("{:indent$}{}", "", span.name, indent = depth * 2);
            let _ = writeln!(
                out,
                "  {:<10} {:<58} {:<8} |{bar}| {:>7.2} ms  {status}",
                span.service,
                name,
                kind,
                (span.end_ns - span.start_ns) as f64 / 1e6,
            );
            let children: Vec<usize> = spans
                .iter()
                .enumerate()
                .filter(|(_, s)| s.parent_span_id == span.span_id)
                .map(|(i, _)| i)
                .collect();
            stack.extend(children.into_iter().rev().map(|i| (i, depth + 1)));
        }
        out
    }
}
