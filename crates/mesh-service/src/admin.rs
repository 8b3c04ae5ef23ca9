//! The admin listener (`--admin-listen`): plain HTTP, off the mesh port, serving `/metrics` in
//! the Prometheus text format.
//!
//! Why not behind mTLS: Prometheus scrapes plain HTTP unless it is given a client certificate
//! of the mesh, and a scraper holding one would be a workload with mesh access. What the
//! endpoint shows is bounded, aggregate and secret-free (counts by method, status, reason and
//! outcome; never a user, token or order id), and it accepts nothing. So it listens apart, on an
//! address only the scraper can reach (loopback, or a port a NetworkPolicy opens to the
//! monitoring namespace alone), and serves nothing but `GET /metrics`.

use std::time::Duration;

use mesh_telemetry::metrics::Metrics;
use mesh_telemetry::prom::Samples;
use tokio::net::TcpListener;

use crate::identity::TaskGuard;

/// The content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` from `metrics` on `listener` until the guard is dropped; anything else
/// is 404 (405 for another method on `/metrics`).
pub fn serve(listener: TcpListener, metrics: Metrics) -> TaskGuard {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(http::header::CONTENT_TYPE, PROMETHEUS_TEXT)],
                    metrics.render(),
                )
            }
        }),
    );
    TaskGuard::new(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the admin listener stopped");
        }
    }))
}

/// A scrape that failed.
#[derive(Debug, thiserror::Error)]
#[error("scrape {url}: {detail}")]
pub struct ScrapeError {
    /// What was scraped.
    pub url: String,
    /// Why it failed.
    pub detail: String,
}

/// A client for admin listeners: plain HTTP only, short timeouts, no redirects.
pub fn scrape_client() -> Result<reqwest::Client, ScrapeError> {
    let failed = |detail: String| ScrapeError {
        url: String::new(),
        detail,
    };
    let tls = mesh_tls::client::no_tls_client_config().map_err(|e| failed(e.to_string()))?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| failed(e.to_string()))
}

/// Scrapes `addr` (`host:port`, or a URL; `/metrics` is added when no path is given) with
/// `client` and parses what it serves.
pub async fn scrape(client: &reqwest::Client, addr: &str) -> Result<Samples, ScrapeError> {
    let mut url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    if url.matches('/').count() < 3 {
        url.push_str("/metrics");
    }
    let failed = |detail: String| ScrapeError {
        url: url.clone(),
        detail,
    };
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(format!("status {}", response.status())));
    }
    let text = response.text().await.map_err(|e| failed(e.to_string()))?;
    Ok(Samples::parse(&text))
}
