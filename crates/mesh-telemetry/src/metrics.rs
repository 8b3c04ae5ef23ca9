//! Metrics: one OpenTelemetry meter provider per service, beside its tracer provider, read two
//! ways: pushed over OTLP (when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, every 10 s) and rendered
//! in the Prometheus text format for a scrape of the service's admin listener.
//!
//! Label sets are bounded by construction: a method is named only when the server's policy has
//! a row for it (anything else is `_OTHER`, as the RPC semantic conventions say), and no user,
//! token or order id is ever a label. The RPC duration histograms are recorded by the trace
//! layers ([`crate::trace`]), so a call is measured where it is traced.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};
use opentelemetry::{KeyValue, StringValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use crate::error::TelemetryError;

/// The histogram buckets of call durations, in seconds: 0.5 ms to 30 s (the longest request).
const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The label value of a method the server does not serve.
pub const OTHER: &str = "_OTHER";

/// A service's meter provider and its Prometheus registry; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    meter: Meter,
    rpc: RpcInstruments,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A meter provider for `resource`, pushing to `otlp_endpoint` when one is set.
    pub(crate) fn new(
        resource: Resource,
        otlp_endpoint: Option<&str>,
    ) -> Result<Self, TelemetryError> {
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            // `otel_scope_*` labels on every series add nothing: there is one scope, `mesh`.
            .scope_info_enabled(false)
            .build()
            .map_err(|e| TelemetryError::Metrics(e.to_string()))?;
        let mut builder = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(prometheus);
        if let Some(endpoint) = otlp_endpoint {
            use opentelemetry_otlp::WithExportConfig as _;
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.to_owned())
                .with_timeout(Duration::from_secs(3))
                .build()
                .map_err(|source| TelemetryError::Exporter {
                    endpoint: endpoint.to_owned(),
                    source,
                })?;
            builder = builder.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(Duration::from_secs(10))
                    .build(),
            );
        }
        let provider = builder.build();
        let meter = provider.meter("mesh");
        let rpc = RpcInstruments::new(&meter);
        Ok(Self {
            provider,
            registry,
            meter,
            rpc,
        })
    }

    /// The meter services and layers make their instruments with.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// Every metric now, in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        use prometheus::Encoder as _;
        let mut text = Vec::new();
        if let Err(error) =
            prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut text)
        {
            tracing::warn!(%error, "metrics not rendered");
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Pushes what is pending and stops, waiting at most `grace`.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        let provider = self.provider.clone();
        let stop = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(grace));
        let _ = tokio::time::timeout(grace + Duration::from_millis(500), stop).await;
    }

    pub(crate) fn rpc(&self) -> &RpcInstruments {
        &self.rpc
    }
}

/// The RPC duration histograms of the OpenTelemetry RPC semantic conventions.
#[derive(Clone, Debug)]
pub(crate) struct RpcInstruments {
    server: Histogram<f64>,
    client: Histogram<f64>,
}

impl RpcInstruments {
    fn new(meter: &Meter) -> Self {
        Self {
            server: meter
                .f64_histogram("rpc.server.call.duration")
                .with_description("Duration of calls this server answered")
                .with_unit("s")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            client: meter
                .f64_histogram("rpc.client.call.duration")
                .with_description("Duration of calls this service made, retries included")
                .with_unit("s")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
        }
    }
}

/// A gRPC code as a label value: `unavailable`, `deadline_exceeded`, ...
pub fn code_label(code: tonic::Code) -> String {
    let mut label = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            label.push('_');
        }
        label.push(c.to_ascii_lowercase());
    }
    label
}

/// The methods a server serves: the only ones named in its labels. Their label values are made
/// once, here; a call of a known method labels its metrics without allocating.
#[derive(Clone, Debug, Default)]
pub struct KnownMethods(Option<Arc<HashMap<String, RpcLabels>>>);

/// `rpc.service` and `rpc.method` of one method, as label values.
pub type RpcLabels = (StringValue, StringValue);

impl KnownMethods {
    /// Exactly these full paths (`/pkg.Service/Method`).
    pub fn new(paths: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let labels = paths
            .into_iter()
            .map(|path| {
                let path = path.into();
                let (service, method) = rpc_names(&path);
                let labels = (
                    StringValue::from(Arc::<str>::from(service)),
                    StringValue::from(Arc::<str>::from(method)),
                );
                (path, labels)
            })
            .collect();
        Self(Some(Arc::new(labels)))
    }

    /// Any path (a client's own calls: their names come from our code, never from a peer).
    pub fn any() -> Self {
        Self(None)
    }

    /// `(rpc.service, rpc.method)` of `path`, or `_OTHER` twice when it is not known.
    pub fn labels(&self, path: &str) -> RpcLabels {
        match &self.0 {
            Some(known) => known
                .get(path)
                .cloned()
                .unwrap_or((StringValue::from(OTHER), StringValue::from(OTHER))),
            None => {
                let (service, method) = rpc_names(path);
                (service.into(), method.into())
            }
        }
    }

    /// The labels of `path` when it is one of the known methods.
    pub fn known(&self, path: &str) -> Option<RpcLabels> {
        self.0.as_ref()?.get(path).cloned()
    }
}

/// One call being measured: started when the request arrived, recorded with its status.
#[derive(Debug)]
pub(crate) struct CallTimer {
    histogram: Histogram<f64>,
    started: Instant,
    labels: Vec<KeyValue>,
}

impl CallTimer {
    pub(crate) fn server(metrics: &Metrics, known: &KnownMethods, path: &str) -> Self {
        Self::start(metrics.rpc().server.clone(), known.labels(path), Vec::new())
    }

    pub(crate) fn client(metrics: &Metrics, path: &str, peer: &str) -> Self {
        Self::start(
            metrics.rpc().client.clone(),
            KnownMethods::any().labels(path),
            vec![KeyValue::new("server.address", peer.to_owned())],
        )
    }

    fn start(
        histogram: Histogram<f64>,
        (service, method): RpcLabels,
        mut labels: Vec<KeyValue>,
    ) -> Self {
        labels.reserve(4);
        labels.extend([
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service),
            KeyValue::new("rpc.method", method),
        ]);
        Self {
            histogram,
            started: Instant::now(),
            labels,
        }
    }

    /// Records the call with its gRPC status code.
    pub(crate) fn finish(mut self, code: i64) {
        self.labels
            .push(KeyValue::new("rpc.grpc.status_code", code));
        self.histogram
            .record(self.started.elapsed().as_secs_f64(), &self.labels);
    }
}

/// `/pkg.Service/Method` → (`pkg.Service`, `Method`).
pub(crate) fn rpc_names(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default().to_owned();
    let method = parts.next().unwrap_or_default().to_owned();
    (service, method)
}
