//! What can go wrong setting telemetry up.

/// A tracer that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter refused the endpoint.
    #[error("OTLP endpoint {endpoint}: {source}")]
    Exporter {
        /// The endpoint as configured.
        endpoint: String,
        /// Why the exporter refused it.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The Prometheus reader could not be made.
    #[error("metrics: {0}")]
    Metrics(String),
}
